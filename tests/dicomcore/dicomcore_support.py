"""The objects dicomcore is checked on, and what the current pydicom path
(common.ingest + dicomcore.dataset_json) makes of them."""

from __future__ import annotations

import glob
import importlib.util
import io
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pynetdicom
from pydicom.data import DATA_ROOT

from dicomcore import dataset_json
from tests.dicomcore import reference_support as ingest

KEYWORDS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "IssuerOfPatientID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "StudyDescription",
    "ReferringPhysicianName",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "SeriesDate",
    "SeriesTime",
    "BodyPartExamined",
    "InstanceNumber",
    "ContentDate",
    "ContentTime",
    "SpecificCharacterSet",
]
INT_KEYWORDS = ["Rows", "Columns", "NumberOfFrames", "BitsAllocated", "SamplesPerPixel"]


def _files_under(root: str | Path) -> list[str]:
    return sorted(p for p in glob.glob(os.path.join(root, "**", "*"), recursive=True) if os.path.isfile(p))


def pydicom_files() -> dict[str, str]:
    """pydicom's own test data as get_testdata_files() and get_charset_files()
    list it locally (read from the package's folders, so that nothing is ever
    downloaded: get_testdata_files() tries to)."""
    out = {}
    for sub in ("test_files", "charset_files"):
        for p in _files_under(os.path.join(DATA_ROOT, sub)):
            if not p.endswith(".py"):
                out[os.path.relpath(p, DATA_ROOT)] = p
    return out


def pydicom_data_files() -> dict[str, str]:
    """The files of the pydicom-data package, when it is installed."""
    spec = importlib.util.find_spec("pydicom_data")
    if spec is None or not spec.submodule_search_locations:
        return {}
    root = list(spec.submodule_search_locations)[0]
    return {"pydicom-data/" + os.path.relpath(p, root): p for p in _files_under(root) if not p.endswith(".py")}


def pynetdicom_files() -> dict[str, str]:
    folder = Path(pynetdicom.__file__).parent / "tests" / "dicom_files"
    if not folder.is_dir():
        return {}
    return {"pynetdicom/" + p.name: str(p) for p in sorted(folder.iterdir()) if p.is_file()}


@dataclass
class Reference:
    """What the ingest pipeline makes of an object today."""

    rejected: ingest.Rejected | None
    json: dict[str, Any] | None = None
    frames: int = 0
    texts: dict[str, Any] | None = None
    ints: dict[str, int] | None = None


def reference(data: bytes) -> Reference:
    """common.ingest.parse_header and build_record's steps, in their order
    (the UIDs' texts are read before the strict DICOM JSON conversion, the
    other texts after it), without the checks build_record adds on UIDs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds, frames = ingest.parse_header(io.BytesIO(data), len(data))
        except ingest.Rejected as exc:
            return Reference(exc)
        texts: dict[str, Any] = {}

        def text(kw: str) -> None:
            try:
                texts[kw] = ingest._text(ds, kw)
            except ingest.Rejected as exc:
                texts[kw] = exc

        for kw in KEYWORDS[:4]:
            text(kw)
        attrs = dataset_json.dataset_to_json(ds)
        if frames:
            ts = ds.file_meta.TransferSyntaxUID
            vr = "OB" if (ts.is_transfer_syntax and ts.is_compressed) or ingest._int(ds, "BitsAllocated") <= 8 else "OW"
            attrs[dataset_json.PIXEL_DATA] = {"vr": vr, "BulkDataURI": dataset_json.bulk_uri(dataset_json.PIXEL_DATA)}
        for kw in KEYWORDS[4:]:
            text(kw)
        ints = {kw: ingest._int(ds, kw) for kw in INT_KEYWORDS}
    return Reference(None, attrs, frames, texts, ints)


def read_pydicom(path: str | Path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


# A small encoder, for objects pydicom would not write (invalid values, odd
# lengths, UN sequences, implicit VR items in explicit VR sequences).

_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
_TEXT_PAD = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT"}


def element(
    tag: int, vr: str, value: bytes, *, implicit: bool = False, little: bool = True, undefined: bool = False
) -> bytes:
    """One data element; an odd value gets its padding byte."""
    e = "<" if little else ">"
    if len(value) % 2:
        value += b" " if vr in _TEXT_PAD else b"\0"
    length = 0xFFFFFFFF if undefined else len(value)
    head = struct.pack(e + "HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + struct.pack(e + "L", length) + value
    if vr in _LONG_VRS:
        return head + vr.encode() + b"\0\0" + struct.pack(e + "L", length) + value
    return head + vr.encode() + struct.pack(e + "H", length) + value


def item(body: bytes, *, undefined: bool = False, little: bool = True) -> bytes:
    e = "<" if little else ">"
    if undefined:
        return struct.pack(e + "HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + body + struct.pack(e + "HHL", 0xFFFE, 0xE00D, 0)
    return struct.pack(e + "HHL", 0xFFFE, 0xE000, len(body)) + body


def sequence(
    tag: int,
    items: list[bytes],
    *,
    implicit: bool = False,
    little: bool = True,
    undefined: bool = False,
    vr: str = "SQ",
) -> bytes:
    e = "<" if little else ">"
    body = b"".join(items)
    if undefined:
        body += struct.pack(e + "HHL", 0xFFFE, 0xE0DD, 0)
    return element(tag, vr, body, implicit=implicit, little=little, undefined=undefined)


def part10(body: bytes, transfer_syntax: str = "1.2.840.10008.1.2.1") -> bytes:
    """A Part 10 object: preamble, file meta information, then `body` as it is."""

    def meta_element(elem: int, vr: str, value: bytes) -> bytes:
        return element(0x00020000 | elem, vr, value + (b"\0" if len(value) % 2 else b""))

    meta = (
        meta_element(0x0001, "OB", b"\0\1")
        + meta_element(0x0002, "UI", b"1.2.840.10008.5.1.4.1.1.7")
        + meta_element(0x0003, "UI", b"1.2.826.0.1.3680043.8.498.6")
        + meta_element(0x0010, "UI", transfer_syntax.encode())
    )
    return bytes(128) + b"DICM" + element(0x00020000, "UL", struct.pack("<L", len(meta))) + meta + body
