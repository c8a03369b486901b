"""Helpers for the security tests: Part 10 objects, multipart bodies, the
hypothesis example budget."""

from __future__ import annotations

import io
import os

from hypothesis import settings
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

_LONG_LENGTH_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UN", b"UR", b"UT"}

# HYPOTHESIS_PROFILE=explore multiplies every test's budget.
_SCALE = 50 if os.environ.get("HYPOTHESIS_PROFILE") == "explore" else 1


def budget(examples: int) -> settings:
    return settings(max_examples=examples * _SCALE)


def make_instance(study: str | None = None, name: str = "Doe^Jane", patient_id: str = "SEC1") -> tuple[Dataset, bytes]:
    """A small CT Part 10 object with a few pixels."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = name
    ds.PatientID = patient_id
    ds.Modality = "CT"
    ds.StudyDate = "20240102"
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(range(128))
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return ds, buf.getvalue()


def multipart(
    parts: list[tuple[dict[str, str], bytes]], boundary: bytes, preamble: bytes = b"", epilogue: bytes = b""
) -> bytes:
    """A multipart body (RFC 2046) of (headers, body) parts."""
    out = bytearray(preamble + (b"\r\n" if preamble else b""))
    for i, (headers, data) in enumerate(parts):
        out += (b"\r\n" if i else b"") + b"--" + boundary + b"\r\n"
        for name, value in headers.items():
            out += f"{name}: {value}\r\n".encode("latin-1")
        out += b"\r\n" + data
    out += (b"\r\n" if parts else b"") + b"--" + boundary + b"--" + epilogue
    return bytes(out)


def raw_element(tag: int, vr: bytes, value: bytes) -> bytes:
    """One Explicit VR Little Endian element, its value padded to even length."""
    value += b" " * (len(value) % 2)
    head = (tag >> 16).to_bytes(2, "little") + (tag & 0xFFFF).to_bytes(2, "little") + vr
    if vr in _LONG_LENGTH_VRS:
        return head + b"\0\0" + len(value).to_bytes(4, "little") + value
    return head + len(value).to_bytes(2, "little") + value


def raw_part10(elements: list[tuple[int, bytes, bytes]], charset: str = "") -> bytes:
    """A CT Part 10 object whose data set holds the four UIDs and these
    elements exactly as given (bytes unchecked), in tag order."""
    meta = Dataset()
    meta.file_meta = FileMetaDataset()
    meta.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.file_meta.MediaStorageSOPClassUID = CTImageStorage
    meta.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buf = io.BytesIO()
    meta.save_as(buf, enforce_file_format=True)
    base = [
        (0x00080016, b"UI", CTImageStorage.encode()),
        (0x00080018, b"UI", generate_uid().encode()),
        (0x0020000D, b"UI", generate_uid().encode()),
        (0x0020000E, b"UI", generate_uid().encode()),
    ]
    if charset:
        base.append((0x00080005, b"CS", charset.encode()))
    return buf.getvalue() + b"".join(raw_element(*e) for e in sorted(base + elements))
