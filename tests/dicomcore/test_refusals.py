"""What dicomcore refuses, and that it refuses with a reason rather than a
crash: truncated copies of real objects cut at every byte, short native pixel
data, garbage, empty input, damaged bytes."""

from __future__ import annotations

import io
import json
import random
import struct
import warnings
import zlib
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import _read_file_meta_info, data_element_generator, read_preamble
from pydicom.uid import ExplicitVRLittleEndian

import dicomcore
from dicomcore import CANNOT_UNDERSTAND, DATASET_MISMATCH
from dicomcore import dataset_json as reference_json
from tests.dicomcore.dicomcore_support import pydicom_files, pynetdicom_files, reference

FILES = {**pydicom_files(), **pynetdicom_files()}


def _read(data: bytes) -> dicomcore.Header | dicomcore.Rejected:
    """read_header on a file object, as the ingest pipeline calls it; a crash fails the test."""
    try:
        return dicomcore.read_header(io.BytesIO(data), len(data))
    except dicomcore.Rejected as exc:
        assert exc.status in (CANNOT_UNDERSTAND, DATASET_MISMATCH)
        assert exc.reason and "internal" not in exc.reason, exc.reason
        return exc


def _boundaries(data: bytes) -> set[int]:
    """Where a cut leaves a complete (shorter) object, as pydicom walks it:
    after each file meta element from the Transfer Syntax UID on, and after
    each top-level element before the pixel data."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = io.BytesIO(data)
        read_preamble(f, False)
        ends, seen_ts = set(), False
        for elem in data_element_generator(f, False, True, stop_when=lambda tag, vr, length: tag >> 16 != 2):
            seen_ts = seen_ts or elem.tag == 0x00020010
            if seen_ts:
                ends.add(f.tell())
        f = io.BytesIO(data)
        read_preamble(f, False)
        meta = _read_file_meta_info(f)
        ts = meta.TransferSyntaxUID
        if ts == "1.2.840.10008.1.2.1.99":  # any cut after the end of the deflate stream
            inflate = zlib.decompressobj(-zlib.MAX_WBITS)
            inflate.decompress(data[f.tell() :])
            return set(range(len(data) - len(inflate.unused_data), len(data) + 1))
        implicit, little = ts == "1.2.840.10008.1.2", ts != "1.2.840.10008.1.2.2"
        pixel = {0x7FE00010, 0x7FE00008, 0x7FE00009}
        for _ in data_element_generator(f, implicit, little, stop_when=lambda tag, vr, length: tag in pixel):
            ends.add(f.tell())
    return ends | {len(data)}


def _cuts(data: bytes) -> list[int]:
    """Every byte of the first 12,000 (every header here), then every 97th."""
    return list(range(0, min(len(data), 12_000))) + list(range(12_000, len(data), 97)) + [len(data)]


@pytest.mark.parametrize(
    "name",
    [
        "test_files/rtplan.dcm",  # implicit VR, nested sequences of defined length
        "test_files/dicomdirtests/DICOMDIR",  # explicit VR, 50 items of directory records
        "test_files/MR_small_bigendian.dcm",  # explicit VR big endian, native pixel data
        "test_files/SC_rgb_rle_2frame.dcm",  # encapsulated, two frames
        "test_files/image_dfl.dcm",  # deflated
        "charset_files/chrSQEncoding.dcm",  # a sequence of undefined length, character sets
    ],
)
def test_truncated_copies_are_refused(name: str) -> None:
    data = Path(FILES[name]).read_bytes()
    boundaries = _boundaries(data)
    accepted = []
    for cut in _cuts(data):
        result = _read(data[:cut])
        if isinstance(result, dicomcore.Rejected):
            continue
        assert cut in boundaries, f"a copy cut at byte {cut} (not an element boundary) was accepted"
        accepted.append(cut)
        ref = reference(data[:cut])
        if ref.rejected is None and cut > 300:
            mine = json.loads(result.json_bytes())
            theirs = json.loads(reference_json.dumps(ref.json))
            assert set(theirs) <= set(mine)
            assert all(mine[k] == theirs[k] for k in theirs)
    assert len(data) in accepted


def test_the_original_of_a_truncated_copy_is_refused() -> None:
    for name in ("test_files/MR_truncated.dcm", "test_files/rtplan_truncated.dcm"):
        result = _read(Path(FILES[name]).read_bytes())
        assert isinstance(result, dicomcore.Rejected)
        assert result.status == CANNOT_UNDERSTAND and result.reason.startswith("object is truncated")


def test_native_pixel_data_shorter_than_its_frames_is_refused() -> None:
    # MR_truncated.dcm as pynetdicom's send_c_store sends it from its path:
    # read by dcmread and encoded again, its Pixel Data's length is what is left.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(FILES["test_files/MR_truncated.dcm"])
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
    data = out.getvalue()
    assert reference(data).rejected is None  # the pydicom path stores it
    result = _read(data)
    assert isinstance(result, dicomcore.Rejected) and result.status == DATASET_MISMATCH
    assert result.reason.startswith("pixel data is shorter than Rows x Columns")


def _native(
    pixel_data: bytes, *, rows: int, columns: int, bits: int, frames: int, tag: int = 0x7FE00010, samples: int = 1
) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.4"
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.SamplesPerPixel = rows, columns, bits, samples
    ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    ds.NumberOfFrames = frames
    vr = {0x7FE00010: "OB" if bits <= 8 else "OW", 0x7FE00008: "OF", 0x7FE00009: "OD"}[tag]
    ds.add_new(tag, vr, pixel_data)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize(
    ("rows", "columns", "bits", "frames", "samples", "length", "refused"),
    [
        (4, 4, 8, 2, 1, 32, False),
        (4, 4, 8, 2, 1, 34, False),  # longer is fine
        (4, 4, 8, 2, 1, 30, True),
        (4, 4, 16, 3, 1, 94, True),
        (2, 3, 8, 1, 3, 18, False),  # RGB
        (2, 3, 8, 1, 3, 16, True),
        (3, 3, 1, 3, 1, 4, False),  # 27 one-bit pixels in 4 bytes
        (3, 3, 1, 3, 1, 2, True),
        (3, 3, 1, 1, 1, 2, False),  # 9 bits: 2 bytes
    ],
)
def test_short_native_pixel_data(
    rows: int, columns: int, bits: int, frames: int, samples: int, length: int, refused: bool
) -> None:
    result = _read(_native(bytes(length), rows=rows, columns=columns, bits=bits, frames=frames, samples=samples))
    if refused:
        assert isinstance(result, dicomcore.Rejected) and result.status == DATASET_MISMATCH
    else:
        assert isinstance(result, dicomcore.Header) and result.pixel is not None


def test_float_pixel_data() -> None:
    data = _native(bytes(4 * 4 * 4 * 2), rows=4, columns=4, bits=32, frames=2, tag=0x7FE00008)
    header = _read(data)
    assert isinstance(header, dicomcore.Header) and header.frames == 2
    assert header.pixel is not None and header.pixel.frame_bits == 4 * 4 * 32
    # Its own tag and VR (common.ingest lists it as 7FE00010 OW).
    assert header.json["7FE00008"] == {"vr": "OF", "BulkDataURI": "bulkdata/7FE00008"}
    assert "7FE00010" not in header.json
    short = _read(_native(bytes(4 * 4 * 4), rows=4, columns=4, bits=32, frames=2, tag=0x7FE00009))
    assert isinstance(short, dicomcore.Rejected) and short.status == DATASET_MISMATCH


def test_encapsulated_pixel_data_without_its_delimiter_is_refused() -> None:
    data = Path(FILES["test_files/SC_rgb_rle.dcm"]).read_bytes()
    assert data.endswith(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")
    result = _read(data[:-8])
    assert isinstance(result, dicomcore.Rejected) and "sequence delimiter" in result.reason


def test_a_file_shorter_than_its_stated_size_is_truncated() -> None:
    data = Path(FILES["test_files/rtplan.dcm"]).read_bytes()
    with pytest.raises(dicomcore.Rejected, match="truncated"):
        dicomcore.read_header(io.BytesIO(data[:-10]), len(data))


@pytest.mark.parametrize(
    "data", [b"", b"\0", b"DICM", bytes(132), bytes(128) + b"DICM", bytes(128) + b"DICM" + bytes(7)]
)
def test_empty_and_tiny_input(data: bytes) -> None:
    result = _read(data)
    assert isinstance(result, dicomcore.Rejected) and result.status == CANNOT_UNDERSTAND


def test_garbage() -> None:
    rng = random.Random(7)
    for size in list(range(0, 300, 7)) + [1000, 5000, 70_000]:
        for prefix in (b"", bytes(128) + b"DICM"):
            result = _read(prefix + rng.randbytes(size))
            assert isinstance(result, dicomcore.Rejected)


def test_garbage_after_a_valid_file_meta() -> None:
    data = Path(FILES["test_files/CT_small.dcm"]).read_bytes()
    meta_end = 132 + 12 + struct.unpack_from("<L", data, 140)[0]
    rng = random.Random(11)
    for _ in range(300):
        result = _read(data[:meta_end] + rng.randbytes(rng.randrange(1, 3000)))
        if isinstance(result, dicomcore.Header):
            result.json_bytes()  # random bytes can be a valid dataset; writing it must work


@pytest.mark.parametrize(
    "name",
    [
        "test_files/rtplan.dcm",
        "test_files/CT_small.dcm",
        "charset_files/chrSQEncoding.dcm",
        "test_files/SC_rgb_rle_2frame.dcm",
        "test_files/MR_small_bigendian.dcm",
    ],
)
def test_damaged_bytes(name: str) -> None:
    data = Path(FILES[name]).read_bytes()
    rng = random.Random(name)
    for _ in range(400):
        damaged = bytearray(data)
        for _ in range(rng.randrange(1, 4)):
            damaged[rng.randrange(132, min(len(data), 8000))] = rng.randrange(256)
        result = _read(bytes(damaged))
        if isinstance(result, dicomcore.Header):
            result.json_bytes()
            if result.pixel is not None:
                assert result.pixel.value_offset + result.pixel.value_length <= len(damaged)


def test_sequences_nested_too_deeply() -> None:
    def sequence(depth: int) -> bytes:  # explicit VR LE, undefined lengths
        inner = b"" if depth == 0 else sequence(depth - 1)
        return (
            b"\x09\x00\x10\x10SQ\0\0\xff\xff\xff\xff"
            + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
            + inner
            + b"\xfe\xff\x0d\xe0\0\0\0\0"
            + b"\xfe\xff\xdd\xe0\0\0\0\0"
        )

    data = _native(b"", rows=0, columns=0, bits=8, frames=1)
    meta_end = 132 + 12 + struct.unpack_from("<L", data, 140)[0]
    deep = data[:meta_end] + sequence(100)
    result = _read(deep)
    assert isinstance(result, dicomcore.Rejected) and "nested too deeply" in result.reason
    fine = _read(data[:meta_end] + sequence(20))
    assert isinstance(fine, dicomcore.Header)


def _deflated_with_pixels(pixel_bytes: int) -> bytes:
    """A Deflated Explicit VR Little Endian object whose Pixel Data is zeros."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", "1.2.3.4.5"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.4", "1.2.3.4.1"
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1024, pixel_bytes // 1024, 8, 8, 7
    ds.SamplesPerPixel, ds.PixelRepresentation, ds.PhotometricInterpretation = 1, 0, "MONOCHROME2"
    ds.PixelData = bytes(pixel_bytes)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_a_deflated_object_that_inflates_past_the_cap_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A zip bomb: refused with its reason, not inflated whole into memory."""
    from dicomcore import part10

    data = _deflated_with_pixels(4 * 1024 * 1024)
    assert len(data) < 20_000  # zeros deflate to almost nothing
    assert isinstance(_read(data), dicomcore.Header)  # under the cap it is read
    monkeypatch.setattr(part10, "MAX_INFLATED", 1024 * 1024)
    refused = _read(data)
    assert isinstance(refused, dicomcore.Rejected)
    assert "inflates to more than 1 MiB" in refused.reason
