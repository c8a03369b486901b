"""Transfer syntax changes, with the codecs dicomcore.codecs finds
installed: lossless (RLE, JPEG-LS, JPEG 2000, HTJ2K), lossy for browsers
(JPEG Baseline 8-bit, JPEG 2000, HTJ2K, each within its quality bound,
dicomcore.codecs.QUALITY) and native (Explicit VR Little and Big Endian,
Implicit VR, Deflated). Every conversion is decoded again before it is sent.

Only asked-for changes come here: the stored bytes are served untouched
whenever the client accepts them."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID, ExplicitVRLittleEndian

from dicomcore import codecs
from dicomweb_gateway.objects import Layout

# What objects can be converted to here (encoders installed).
TARGETS = codecs.encodable()
LOSSY_TARGETS = TARGETS & codecs.LOSSY


class CannotTranscode(ValueError):
    pass


def can_decode(ts: str) -> bool:
    return codecs.can_decode(ts)


def can_transcode(source: str, target: str) -> bool:
    return source == target or (target in TARGETS and can_decode(source))


def transcode(data: bytes, target: str) -> bytes:
    """The Part 10 object re-encoded in `target`, checked by decoding it.
    Raises CannotTranscode."""
    try:
        out, _checked = codecs.convert(data, target)
    except codecs.CodecError as exc:
        raise CannotTranscode(str(exc)) from None
    return out


def encode_frame(layout: Layout, arr: np.ndarray, target: str) -> bytes:
    """A decoded frame of the object `layout` describes, encoded in `target`
    and checked by decoding. Raises CannotTranscode."""
    try:
        return codecs.encode_frame(layout.header, arr, target)
    except codecs.CodecError as exc:
        raise CannotTranscode(str(exc)) from None


def _frame_base(layout: Layout, ts: str) -> Dataset:
    """The cached header's attributes in a new dataset (the header itself is shared)."""
    ds = Dataset()
    ds.update(layout.header)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(ts)
    ds.NumberOfFrames = 1
    return ds


def frame_dataset(layout: Layout, frame: bytes) -> Dataset:
    """A dataset holding one compressed frame, ready for pydicom's decoders."""
    ds = _frame_base(layout, layout.transfer_syntax)
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    for tag in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if tag in ds:
            del ds[tag]
    return ds


def decode_frame(layout: Layout, frame: bytes | None, number: int, **options: Any) -> np.ndarray:
    """Frame `number` (1-based) as an array. `frame` is its stored bytes, or
    None when the layout holds the whole dataset (deflated objects)."""
    try:
        if layout.whole_object:
            return pixel_array(layout.header, index=number - 1, **options)
        if layout.encapsulated:
            assert frame is not None
            return pixel_array(frame_dataset(layout, frame), index=0, **options)
        ds = _frame_base(layout, ExplicitVRLittleEndian)  # frame bytes are little endian already
        ds.PixelData = frame
        ds["PixelData"].VR = "OW" if int(ds.BitsAllocated) > 8 else "OB"
        return pixel_array(ds, index=0, **options)
    except Exception as exc:
        raise CannotTranscode(f"the frame cannot be decoded ({type(exc).__name__}: {str(exc)[:120]})") from None


def native_bytes(arr: np.ndarray) -> bytes:
    """Decoded samples as native little-endian frame bytes (colour-by-pixel)."""
    if arr.dtype.itemsize > 1 and arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return bytes(np.ascontiguousarray(arr).tobytes())
