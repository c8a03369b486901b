"""Pixel layouts: each frame's bytes, as the layout locates them in the file,
equal the frame pydicom finds (pydicom.encaps.generate_frames, or a slice of
native Pixel Data); multi-frame encapsulated data with and without offset
tables; only item headers are read."""

from __future__ import annotations

import base64
import io
import os
import random
import struct
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

import dicomcore
from dicomcore.header import FIRST_READ
from tests.dicomcore.dicomcore_support import pydicom_files, pynetdicom_files, read_pydicom

FILES = {**pydicom_files(), **pynetdicom_files()}

# Objects with pixel data and no layout, and why.
NO_LAYOUT = {
    "test_files/image_dfl.dcm": "deflated: positions in the inflated dataset are not positions in the object",
    "pynetdicom/SCImageStorage_Deflated.dcm": "deflated",
    "test_files/nested_priv_SQ.dcm": "no Rows, Columns or Bits Allocated: a frame has no size",
}


def _frames(data: bytes, header: dicomcore.Header) -> list[bytes]:
    assert header.pixel is not None
    return [
        b"".join(data[o : o + n] for o, n in header.pixel.frame_ranges(i, header.frames)) for i in range(header.frames)
    ]


@pytest.mark.parametrize("name", sorted(FILES))
def test_frames_equal_pydicoms(name: str) -> None:
    path = FILES[name]
    data = Path(path).read_bytes()
    try:
        header = dicomcore.read_header(data)
    except dicomcore.Rejected:
        return  # test_equivalence checks refusals
    if header.frames == 0:
        assert header.pixel is None
        return
    try:
        ds = read_pydicom(path)
    except Exception:
        pytest.skip("pydicom cannot read the whole object")
    if "PixelData" not in ds:  # Rows, but no pixel data
        assert header.pixel is None
        return
    if header.pixel is None:
        assert name in NO_LAYOUT
        return
    assert name not in NO_LAYOUT
    layout = header.pixel
    if layout.encapsulated:
        offsets = None
        if "ExtendedOffsetTable" in ds:
            offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
        expected = list(generate_frames(ds.PixelData, number_of_frames=header.frames, extended_offsets=offsets))
        assert _frames(data, header) == expected
    else:
        assert data[layout.value_offset : layout.value_offset + layout.value_length] == ds.PixelData
        assert layout.frame_bits % 8 == 0
        size = layout.frame_bits // 8
        assert _frames(data, header) == [ds.PixelData[i * size : (i + 1) * size] for i in range(header.frames)]
        assert layout.big_endian == (not ds.original_encoding[1])


def test_multi_frame_native() -> None:
    header = dicomcore.read_header(Path(FILES["test_files/rtdose.dcm"]).read_bytes())
    assert header.frames == 15 and header.pixel is not None
    assert header.pixel.frame_bits == 10 * 10 * 32 and header.pixel.bits_allocated == 32


def _object(
    pixel_data: bytes,
    frames: int,
    *,
    encapsulated: bool = True,
    bits: int = 8,
    rows: int = 4,
    extended: tuple[bytes, bytes] | None = None,
) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit if encapsulated else ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.3"
    ds.Rows = ds.Columns = rows
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = frames
    if extended is not None:
        ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = extended
    ds.PixelData = pixel_data
    ds["PixelData"].VR = "OB"
    if encapsulated:
        ds["PixelData"].is_undefined_length = True
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _jpegs(count: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    return [bytes(rng.randrange(256) for _ in range(2 * rng.randrange(20, 60))) for _ in range(count)]


def test_basic_offset_table_with_several_fragments_a_frame() -> None:
    frames = _jpegs(3)
    data = _object(encapsulate(frames, fragments_per_frame=2, has_bot=True), 3)
    header = dicomcore.read_header(data)
    assert header.pixel is not None and header.pixel.frame_first_fragment == (0, 2, 4)
    assert _frames(data, header) == frames


def _items(encapsulated: bytes) -> list[int]:
    """Offsets of the items after the Basic Offset Table, from the first of them."""
    pos, out = 8 + struct.unpack_from("<L", encapsulated, 4)[0], []
    first = pos
    while pos < len(encapsulated):
        tag = struct.unpack_from("<HH", encapsulated, pos)
        length = struct.unpack_from("<L", encapsulated, pos + 4)[0]
        if tag == (0xFFFE, 0xE0DD):
            break
        out.append(pos - first)
        pos += 8 + length
    return out


def test_extended_offset_table() -> None:
    frames = _jpegs(3)
    encapsulated = encapsulate(frames, fragments_per_frame=2, has_bot=False)
    offsets = _items(encapsulated)[::2]
    table = (struct.pack("<3Q", *offsets), struct.pack("<3Q", *(len(f) for f in frames)))
    data = _object(encapsulated, 3, extended=table)
    header = dicomcore.read_header(data)
    assert header.pixel is not None and header.pixel.frame_first_fragment == (0, 2, 4)
    assert _frames(data, header) == frames
    assert header.json["7FE00001"] == {"vr": "OV", "InlineBinary": base64.b64encode(table[0]).decode()}


def test_extended_offset_table_as_pydicom_writes_it() -> None:
    frames = _jpegs(4)
    encapsulated, offsets, lengths = encapsulate_extended(frames)
    data = _object(encapsulated, 4, extended=(offsets, lengths))
    header = dicomcore.read_header(data)
    assert header.pixel is not None and header.pixel.frame_first_fragment == (0, 1, 2, 3)
    assert _frames(data, header) == list(
        generate_frames(encapsulated, number_of_frames=4, extended_offsets=(offsets, lengths))
    )


def test_one_fragment_a_frame_without_offset_table() -> None:
    frames = _jpegs(5)
    data = _object(encapsulate(frames, has_bot=False), 5)
    header = dicomcore.read_header(data)
    assert header.pixel is not None and header.pixel.frame_first_fragment == (0, 1, 2, 3, 4)
    assert _frames(data, header) == frames


def test_one_frame_in_several_fragments() -> None:
    frames = _jpegs(1)
    encapsulated = encapsulate(frames, fragments_per_frame=3, has_bot=False)
    data = _object(encapsulated, 1)
    header = dicomcore.read_header(data)
    assert header.pixel is not None and header.pixel.frame_first_fragment == (0,)
    assert len(header.pixel.fragment_offsets) == 3
    assert _frames(data, header) == frames


def test_frames_that_cannot_be_told_apart_get_no_layout() -> None:
    # Three frames in six fragments and no offset table: PS3.5 A.4 leaves it undecidable.
    data = _object(encapsulate(_jpegs(3), fragments_per_frame=2, has_bot=False), 3)
    header = dicomcore.read_header(data)
    assert header.frames == 3 and header.pixel is None
    assert header.json["7FE00010"] == {"vr": "OB", "BulkDataURI": "bulkdata/7FE00010"}


def test_an_offset_table_off_the_item_boundaries_is_not_trusted() -> None:
    frames = _jpegs(3)
    encapsulated = bytearray(encapsulate(frames, has_bot=True))
    struct.pack_into("<L", encapsulated, 12, 3)  # the second frame's offset: inside the first fragment
    data = _object(bytes(encapsulated), 3)
    header = dicomcore.read_header(data)
    assert header.pixel is not None and header.pixel.frame_first_fragment == (0, 1, 2)  # counts agree
    assert _frames(data, header) == frames
    encapsulated = bytearray(encapsulate(frames, fragments_per_frame=2, has_bot=True))
    struct.pack_into("<L", encapsulated, 12, 3)
    assert dicomcore.read_header(_object(bytes(encapsulated), 3)).pixel is None


def test_an_extended_offset_table_of_the_wrong_size_falls_back_to_the_basic_one() -> None:
    frames = _jpegs(3)
    encapsulated = encapsulate(frames, fragments_per_frame=2, has_bot=True)
    data = _object(encapsulated, 3, extended=(struct.pack("<2Q", 0, 1), struct.pack("<2Q", 1, 1)))
    header = dicomcore.read_header(data)
    assert header.pixel is not None and header.pixel.frame_first_fragment == (0, 2, 4)


def test_one_bit_frames_are_bits_not_bytes() -> None:
    # 3 frames of 3 x 3 one-bit pixels: 27 bits in 4 bytes, frames not byte aligned.
    data = _object(b"\xff\x00\xaa\x55", 3, encapsulated=False, bits=1, rows=3)
    header = dicomcore.read_header(data)
    assert header.pixel is not None and header.pixel.frame_bits == 9
    assert header.json["7FE00010"] == {"vr": "OB", "BulkDataURI": "bulkdata/7FE00010"}
    start = header.pixel.value_offset
    assert header.pixel.frame_ranges(0, 3) == [(start, 2)]
    assert header.pixel.frame_ranges(1, 3) == [(start + 1, 2)]
    assert header.pixel.frame_ranges(2, 3) == [(start + 2, 2)]


def test_to_proto() -> None:
    frames = _jpegs(3)
    data = _object(encapsulate(frames, fragments_per_frame=2, has_bot=True), 3)
    layout = dicomcore.read_header(data).pixel
    assert layout is not None
    message = layout.to_proto()
    assert message.encapsulated and message.value_offset == layout.value_offset
    assert list(message.fragment_offsets) == list(layout.fragment_offsets)
    assert list(message.fragment_lengths) == list(layout.fragment_lengths)
    assert list(message.frame_first_fragment) == [0, 2, 4]
    native = dicomcore.read_header(Path(FILES["test_files/MR_small_bigendian.dcm"]).read_bytes()).pixel
    assert native is not None
    message = native.to_proto()
    assert not message.encapsulated and message.big_endian and message.frame_bits == 64 * 64 * 16
    assert message.bits_allocated == 16 and message.value_length == 8192


class _CountingFile(io.FileIO):
    read_bytes = 0

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        out = super().read(size)
        self.read_bytes += len(out or b"")
        return out


def test_native_pixel_values_are_never_read() -> None:
    path = FILES["pynetdicom/RTImageStorage.dcm"]  # 2 MB, nearly all pixel data
    with _CountingFile(path) as f:
        header = dicomcore.read_header(f, os.path.getsize(path))
        assert header.pixel is not None and header.pixel.value_length == 2097152
        assert f.read_bytes <= FIRST_READ


def test_encapsulated_fragments_are_never_read(tmp_path: Path) -> None:
    rng = random.Random(3)
    frames = [rng.randbytes(40_000) for _ in range(40)]
    path = tmp_path / "big.dcm"
    path.write_bytes(_object(encapsulate(frames, fragments_per_frame=2, has_bot=True), 40))
    with _CountingFile(path) as f:
        header = dicomcore.read_header(f, path.stat().st_size)
        assert header.pixel is not None and len(header.pixel.fragment_offsets) == 80
        # The header, 8 bytes an item, and the last 256 KiB read at once.
        assert f.read_bytes < FIRST_READ + 80 * 8 + 256 * 1024
    data = path.read_bytes()
    assert _frames(data, header) == frames
