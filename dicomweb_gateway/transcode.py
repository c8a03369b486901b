"""Transfer syntax changes with the installed codecs (pydicom's pixel
handlers: pylibjpeg-libjpeg, -openjpeg, -rle, pyjpegls).

Only asked-for changes come here: the stored bytes are served untouched
whenever the client accepts them."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from dicomweb_gateway.objects import Layout

NATIVE_TARGETS = {ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian}
# Lossless encoders only: a lossy re-encode is never done silently.
COMPRESSED_TARGETS = {RLELossless, JPEGLSLossless, JPEG2000Lossless}
TARGETS = NATIVE_TARGETS | COMPRESSED_TARGETS


class CannotTranscode(ValueError):
    pass


def can_decode(ts: str) -> bool:
    uid = UID(ts)
    if not uid.is_transfer_syntax:
        return False
    if not uid.is_compressed:
        return True
    try:
        return bool(get_decoder(uid).is_available)
    except NotImplementedError:
        return False


def can_transcode(source: str, target: str) -> bool:
    return source == target or (target in TARGETS and can_decode(source))


def transcode(data: bytes, target: str) -> bytes:
    """The Part 10 object re-encoded in `target`. Raises CannotTranscode."""
    try:
        ds = dcmread(io.BytesIO(data))
    except Exception as exc:
        raise CannotTranscode(f"the stored object cannot be read ({type(exc).__name__})") from None
    source = ds.file_meta.TransferSyntaxUID
    if source == target:
        return data
    try:
        if not source.is_little_endian:
            ds = _as_little_endian(ds)
        elif "PixelData" in ds and source.is_compressed:
            ds.decompress(generate_instance_uid=False)
        if UID(target).is_compressed and "PixelData" in ds:
            ds.compress(target, generate_instance_uid=False)
        else:
            ds.file_meta.TransferSyntaxUID = UID(target)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True, implicit_vr=target == ImplicitVRLittleEndian, little_endian=True)
    except Exception as exc:
        raise CannotTranscode(f"cannot re-encode in {target} ({type(exc).__name__}: {str(exc)[:120]})") from None
    return out.getvalue()


def _as_little_endian(ds: Dataset) -> Dataset:
    """A copy of a big endian dataset with decoded values (pydicom will not
    change endianness in place) and its pixel words swapped."""
    out = Dataset()
    out.file_meta = ds.file_meta
    for elem in ds:
        out.add(elem)
    bits = int(ds.get("BitsAllocated", 8))
    if "PixelData" in out and out["PixelData"].VR == "OW" and bits in (16, 32):
        arr = np.frombuffer(ds.PixelData, dtype=f">u{bits // 8}")
        out.PixelData = arr.astype(f"<u{bits // 8}").tobytes()
    return out


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
