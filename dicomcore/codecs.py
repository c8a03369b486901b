"""Pixel data codecs: re-encoding a DICOM object, or one frame, in another
transfer syntax, and proving the result by decoding it.

Encoders, chosen by measurement (python -m bench.codecs, 512x512x16 CT):
- RLE Lossless: pylibjpeg-rle (through pydicom);
- JPEG-LS Lossless: pyjpegls (CharLS, through pydicom): signed data too;
- JPEG 2000 Lossless and lossy: pylibjpeg-openjpeg (through pydicom);
- HTJ2K Lossless and lossy: imagecodecs (OpenJPH), the only HTJ2K encoder
  installable here; 10x faster than JPEG 2000 for 6-9 % more bytes;
- JPEG Baseline (8 bit): Pillow (libjpeg-turbo);
- Explicit VR Big Endian: pydicom, pixel words swapped here.
Decoding is pydicom's (pylibjpeg-openjpeg decodes HTJ2K).

Every conversion is decoded again before it is handed out: lossless ones
must give back identical pixels, lossy ones must meet QUALITY (PSNR against
the original; JPEG Baseline against the original windowed to 8 bits).
A target whose encoder is not installed is not offered (`encodable()`)."""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.pixels.utils import pixel_array
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

HTJ2K_LOSSLESS = UID("1.2.840.10008.1.2.4.201")
HTJ2K_LOSSY = UID("1.2.840.10008.1.2.4.203")
NATIVE = frozenset(
    {ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian}
)
LOSSLESS = frozenset({RLELossless, JPEGLSLossless, JPEG2000Lossless, HTJ2K_LOSSLESS})
LOSSY = frozenset({JPEGBaseline8Bit, JPEG2000, HTJ2K_LOSSY})

# The quality bound of each lossy target: the decoded result's PSNR in dB
# against the original (peak: 2^Bits Stored - 1), for JPEG Baseline against
# the original windowed to 8 bits (peak 255). A conversion below it fails.
QUALITY = {JPEG2000: 40.0, HTJ2K_LOSSY: 40.0, JPEGBaseline8Bit: 30.0}
# Encoder settings of the lossy targets.
J2K_RATIO = 10  # JPEG 2000 lossy: compression ratio of its one layer
HTJ2K_QSTEP = 0.0005  # HTJ2K lossy: OpenJPH's quantization step (the data are coded at 16 bits)
JPEG_QUALITY = 90
# Lossy Image Compression Method (0028,2114) of each lossy target.
_METHOD = {JPEGBaseline8Bit: "ISO_10918_1", JPEG2000: "ISO_15444_1", HTJ2K_LOSSY: "ISO_15444_15"}


class CodecError(ValueError):
    """The object cannot be converted, or its conversion failed its check."""


@dataclass(frozen=True)
class Checked:
    """What the check of a conversion found."""

    lossless: bool
    psnr: float  # inf for identical pixels


@functools.cache
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


@functools.cache
def can_encode(ts: str) -> bool:
    """Whether objects can be converted to `ts` with what is installed."""
    uid = UID(ts)
    if uid in NATIVE:
        return True
    if uid in (HTJ2K_LOSSLESS, HTJ2K_LOSSY):
        return _imagecodecs() is not None
    if uid == JPEGBaseline8Bit:
        try:
            from PIL import features

            return bool(features.check_codec("jpg"))
        except ImportError:
            return False
    if uid in (RLELossless, JPEGLSLossless, JPEG2000Lossless, JPEG2000):
        try:
            return bool(get_encoder(uid).is_available)
        except NotImplementedError:
            return False
    return False


def encodable() -> frozenset[str]:
    """The transfer syntaxes objects can be converted to here."""
    return frozenset(ts for ts in NATIVE | LOSSLESS | LOSSY if can_encode(ts))


def _imagecodecs() -> Any:
    try:
        import imagecodecs
    except ImportError:
        return None
    return imagecodecs if getattr(imagecodecs, "HTJ2K", None) and imagecodecs.HTJ2K.available else None


# ---- whole objects ---------------------------------------------------------


def convert(data: bytes, target: str, *, require_lossless: bool = False) -> tuple[bytes, Checked]:
    """The Part 10 object `data` re-encoded in `target`, and what its check
    found. Raises CodecError (unknown target, missing codec, unreadable object,
    or a result that does not decode to the original's pixels or within the
    target's quality bound)."""
    target = UID(target)
    if require_lossless and target in LOSSY:
        raise CodecError(f"{target} is lossy")
    if not can_encode(target):
        raise CodecError(f"no encoder for {target} is installed")
    try:
        ds = dcmread(io.BytesIO(data))
    except Exception as exc:
        raise CodecError(f"the object cannot be read ({type(exc).__name__})") from None
    source = ds.file_meta.TransferSyntaxUID
    if source == target:
        return data, Checked(True, float("inf"))
    original: np.ndarray | None = None
    try:
        if "PixelData" in ds:
            if source.is_compressed and not can_decode(source):
                raise CodecError(f"no decoder for {source} is installed")
            original = _all_frames(ds)
            _to_native(ds, original)
        expected, peak = _expected(ds, original, target) if original is not None else (None, 0.0)
        out = recode(ds, original, target)
        result = _write(out, target)
    except CodecError:
        raise
    except Exception as exc:
        raise CodecError(f"cannot encode in {target} ({type(exc).__name__}: {str(exc)[:120]})") from None
    return result, check(result, expected, target, peak)


def _all_frames(ds: Dataset) -> np.ndarray:
    """Every frame as decoded, shaped (frames, rows, columns[, samples])."""
    arr = pixel_array(ds) if not ds.file_meta.TransferSyntaxUID.is_compressed else ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames == 1:
        arr = arr[np.newaxis, ...]
    return arr


def _to_native(ds: Dataset, arr: np.ndarray) -> None:
    """Makes `ds` hold `arr` natively, with the attributes that describe it
    (a decoded YBR object comes out as RGB)."""
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        if int(ds.get("SamplesPerPixel", 1)) == 3 and str(ds.get("PhotometricInterpretation", "")).startswith("YBR"):
            ds.PhotometricInterpretation = "RGB"
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        ds.PlanarConfiguration = 0  # the decoded array is colour-by-pixel
    ds.PixelData = _native_bytes(arr, int(ds.BitsAllocated))
    ds["PixelData"].VR = "OW" if int(ds.BitsAllocated) > 8 else "OB"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for tag in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if tag in ds:
            del ds[tag]


def _native_bytes(arr: np.ndarray, bits_allocated: int) -> bytes:
    if bits_allocated == 1:
        return bytes(np.packbits(arr.astype(np.uint8).ravel(), bitorder="little").tobytes())
    dtype = arr.dtype.newbyteorder("<") if arr.dtype.itemsize > 1 else arr.dtype
    return bytes(np.ascontiguousarray(arr.astype(dtype, copy=False)).tobytes())


def recode(ds: Dataset, frames: np.ndarray | None, target: UID) -> Dataset:
    """`ds` (native, its pixels `frames`; None without pixel data) with its
    pixel data encoded in `target`; `ds` itself is changed."""
    if frames is None or target in NATIVE:
        ds.file_meta.TransferSyntaxUID = target
        if frames is not None and target == ExplicitVRBigEndian and int(ds.BitsAllocated) in (16, 32):
            ds.PixelData = frames.astype(f">{frames.dtype.kind}{frames.dtype.itemsize}").tobytes()
        return ds
    bits = int(ds.BitsAllocated)
    if target == JPEGBaseline8Bit:
        frames = _eight_bit(ds, frames)
        fragments = [_jpeg(ds, f) for f in frames]
    elif target in (HTJ2K_LOSSLESS, HTJ2K_LOSSY):
        if bits not in (8, 16) or int(ds.get("SamplesPerPixel", 1)) not in (1, 3):
            raise CodecError("HTJ2K here takes 8 or 16 bit data with 1 or 3 samples")
        codecs = _imagecodecs()
        if target == HTJ2K_LOSSLESS:
            fragments = [bytes(codecs.htj2k_encode(f, reversible=True, rgb=False)) for f in frames]
        else:
            fragments = [bytes(codecs.htj2k_encode(f, HTJ2K_QSTEP, reversible=False, rgb=False)) for f in frames]
    else:
        kwargs: dict[str, Any] = {"j2k_cr": [J2K_RATIO]} if target == JPEG2000 else {}
        if target in (JPEG2000Lossless, JPEG2000) and int(ds.get("SamplesPerPixel", 1)) == 3:
            kwargs["use_mct"] = False  # keeps Photometric Interpretation as it is
        ds.compress(target, arr=frames if len(frames) > 1 else frames[0], generate_instance_uid=False, **kwargs)
        _mark_lossy(ds, target, bits)
        return ds
    ds.PixelData = encapsulate(fragments, has_bot=len(fragments) > 1)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = target
    _mark_lossy(ds, target, bits)
    return ds


def _mark_lossy(ds: Dataset, target: UID, bits_allocated: int) -> None:
    if target not in LOSSY:
        return
    ds.LossyImageCompression = "01"
    native = (
        int(ds.Rows)
        * int(ds.Columns)
        * int(ds.get("SamplesPerPixel", 1))
        * bits_allocated
        / 8
        * int(ds.get("NumberOfFrames", 1) or 1)
    )
    encoded = sum(len(f) for f in generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1)))
    ds.LossyImageCompressionRatio = [f"{native / max(1, encoded):.2f}"[:16]]
    ds.LossyImageCompressionMethod = [_METHOD[target]]


def _window(ds: Dataset) -> tuple[float, float]:
    """The first VOI window in stored values (rescale undone), else the stored range."""
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None:
        c = float(center[0] if isinstance(center, Sequence) and not isinstance(center, str) else center)
        w = float(width[0] if isinstance(width, Sequence) and not isinstance(width, str) else width)
        if w > 0:
            return (c - intercept) / slope, w / abs(slope)
    stored = int(ds.get("BitsStored", ds.BitsAllocated))
    low = -(2 ** (stored - 1)) if int(ds.get("PixelRepresentation", 0)) else 0
    return low + (2**stored) / 2, float(2**stored)


def eight_bit_reference(ds: Dataset, frames: np.ndarray) -> np.ndarray:
    """The frames as JPEG Baseline gets them: 8-bit samples, windowed when deeper."""
    if int(ds.BitsAllocated) == 8:
        return frames.astype(np.uint8)
    center, width = _window(ds)
    low = center - width / 2
    out = np.clip((frames.astype(np.float64) - low) / width * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        out = 255 - out
    return out


def _eight_bit(ds: Dataset, frames: np.ndarray) -> np.ndarray:
    """The 8-bit frames and the attributes that now describe them."""
    photometric = str(ds.get("PhotometricInterpretation", ""))
    samples = int(ds.get("SamplesPerPixel", 1))
    if samples not in (1, 3) or photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB"):
        raise CodecError(f"JPEG Baseline takes monochrome or RGB pixels, not {photometric}")
    if int(ds.BitsAllocated) not in (8, 16):
        raise CodecError("JPEG Baseline takes 8 or 16 bit data")
    out = eight_bit_reference(ds, frames)
    if int(ds.BitsAllocated) != 8:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PhotometricInterpretation = "MONOCHROME2"
        for keyword in (
            "RescaleIntercept",
            "RescaleSlope",
            "RescaleType",
            "WindowCenter",
            "WindowWidth",
            "VOILUTSequence",
            "SmallestImagePixelValue",
            "LargestImagePixelValue",
            "WindowCenterWidthExplanation",
            "ModalityLUTSequence",
        ):
            if keyword in ds:
                del ds[keyword]
        ds.WindowCenter, ds.WindowWidth = 127.5, 256
    if samples == 3:
        ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.PlanarConfiguration = 0
    return out


def _jpeg(ds: Dataset, frame: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    if frame.ndim == 3:  # 4:2:2, as YBR_FULL_422 says
        Image.fromarray(frame, "RGB").save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=1)
    else:
        Image.fromarray(frame, "L").save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _write(ds: Dataset, target: UID) -> bytes:
    """Part 10 bytes of `ds` in `target` (values read in another byte order are re-encoded)."""
    out = io.BytesIO()
    ds.file_meta.TransferSyntaxUID = target
    if not getattr(ds, "preamble", None):
        ds.preamble = b"\x00" * 128
    dcmwrite(
        out,
        ds,
        implicit_vr=target == ImplicitVRLittleEndian,
        little_endian=target != ExplicitVRBigEndian,
        force_encoding=True,
    )
    return out.getvalue()


# ---- the check ---------------------------------------------------------------


def psnr(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(peak**2 / mse))


def check(result: bytes, expected: np.ndarray | None, target: UID, peak: float) -> Checked:
    """Decodes `result` and holds it against the frames it must give back:
    the same for a lossless target, within QUALITY (PSNR, `peak`) for a lossy one."""
    if expected is None:
        return Checked(True, float("inf"))
    try:
        back = _all_frames(dcmread(io.BytesIO(result)))
    except Exception as exc:
        raise CodecError(f"the {target} result does not decode ({type(exc).__name__})") from None
    if back.shape != expected.shape:
        raise CodecError(f"the {target} result has other dimensions")
    if target in LOSSY:
        quality = psnr(back, expected, peak)
        if quality < QUALITY[target]:
            raise CodecError(
                f"the {target} result is below its quality bound ({quality:.1f} < {QUALITY[target]} dB PSNR)"
            )
        return Checked(False, quality)
    if not np.array_equal(back.astype(np.int64), expected.astype(np.int64)):
        raise CodecError(f"the {target} result does not decode to the original pixels")
    return Checked(True, float("inf"))


def _expected(ds: Dataset, frames: np.ndarray, target: UID) -> tuple[np.ndarray, float]:
    """What a `target` result must decode to (before `ds` is recoded), and the PSNR peak."""
    if target == JPEGBaseline8Bit:
        return eight_bit_reference(ds, frames), 255.0
    return frames, float(2 ** int(ds.get("BitsStored", ds.BitsAllocated)) - 1)


# ---- single frames -------------------------------------------------------------


def encode_frame(header: Dataset, frame: np.ndarray, target: str) -> bytes:
    """One decoded frame (as pydicom gives it for `header`) encoded in `target`,
    checked by decoding: the bytes of one frame of a `target` object."""
    target = UID(target)
    if target in NATIVE or not can_encode(target):
        raise CodecError(f"frames are not encoded in {target} here")
    ds = Dataset()
    ds.update(header)
    # pydicom types file_meta as FileMetaDataset; its setter takes any Dataset and converts it.
    ds.file_meta = header.file_meta.copy() if hasattr(header, "file_meta") else Dataset()  # type: ignore[assignment]
    ds.NumberOfFrames = 1
    frames = frame[np.newaxis, ...]
    for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if tag in ds:
            del ds[tag]
    _to_native_header(ds)
    ds.PixelData = _native_bytes(frames, int(ds.BitsAllocated))
    try:
        expected, peak = _expected(ds, frames, target)
        out = recode(ds, frames, target)
        data = b"".join(generate_frames(out.PixelData, number_of_frames=1))
        result = _write(out, target)
    except CodecError:
        raise
    except Exception as exc:
        raise CodecError(f"cannot encode the frame in {target} ({type(exc).__name__}: {str(exc)[:120]})") from None
    check(result, expected, target, peak)
    return data


def _to_native_header(ds: Dataset) -> None:
    if ds.file_meta.get("TransferSyntaxUID") is not None and UID(ds.file_meta.TransferSyntaxUID).is_compressed:
        if int(ds.get("SamplesPerPixel", 1)) == 3 and str(ds.get("PhotometricInterpretation", "")).startswith("YBR"):
            ds.PhotometricInterpretation = "RGB"
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        ds.PlanarConfiguration = 0
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for tag in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if tag in ds:
            del ds[tag]
