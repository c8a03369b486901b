"""python -m bench.codecs: which codec package encodes each transfer syntax.

Encodes one 512x512 16-bit CT frame with every candidate encoder of each
syntax (pydicom's pylibjpeg/pyjpegls plugins, imagecodecs, Pillow), checks
that it decodes back (exactly for lossless, PSNR for lossy), and prints the
median encode time of 20 runs and the size. Two frames: a slice of the bench
CT corpus (synthetic, with noise) and pydicom's J2K_pixelrep_mismatch.dcm (a
real CT slice). common/pixel_codecs.py uses the winners."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RUNS = 20
BENCH_CT = Path.home() / ".cache/dicomserver-bench/v1-ct4x2x50-ix2000/ct/00_0_0025.dcm"


def frames() -> dict[str, np.ndarray]:
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    out = {}
    if BENCH_CT.exists():
        out["bench CT (synthetic, noisy)"] = dcmread(BENCH_CT).pixel_array
    real = get_testdata_file("J2K_pixelrep_mismatch.dcm", download=False)
    if real:
        ds = dcmread(real)
        arr = ds.pixel_array
        out["real CT (pydicom J2K_pixelrep_mismatch)"] = arr.astype(np.uint16) if arr.min() >= 0 else arr
    return out


def windowed(arr: np.ndarray, center: float = 40 + 1024, width: float = 400) -> np.ndarray:
    low = center - width / 2
    return np.clip((arr.astype(np.float64) - low) / width * 255.0 + 0.5, 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def _pydicom_encoder(uid: str, plugin: str, **kw: Any) -> Callable[[np.ndarray], bytes]:
    from pydicom.pixels.encoders.base import get_encoder

    enc = get_encoder(uid)

    def run(arr: np.ndarray) -> bytes:
        signed = arr.dtype.kind == "i"
        bits = 16 if arr.dtype.itemsize == 2 else 8
        return enc.encode(
            arr,
            encoding_plugin=plugin,
            rows=arr.shape[0],
            columns=arr.shape[1],
            samples_per_pixel=1,
            bits_allocated=bits,
            bits_stored=bits,
            pixel_representation=int(signed),
            photometric_interpretation="MONOCHROME2",
            number_of_frames=1,
            **kw,
        )

    return run


Encode = Callable[[np.ndarray], bytes | bytearray]
Decode = Callable[[bytes], np.ndarray]


def candidates() -> dict[str, dict[str, tuple[Encode, Decode | None, bool]]]:
    """syntax -> candidate -> (encode, decode or None, lossless); 8-bit ones get windowed frames."""
    import io

    import imagecodecs
    from openjpeg.utils import decode as openjpeg_decode
    from PIL import Image

    def pil_jpeg(arr: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        return buf.getvalue()

    def j2k_decode(data: bytes) -> np.ndarray:
        return openjpeg_decode(data)

    return {
        "JPEG-LS lossless (1.2.840.10008.1.2.4.80)": {
            "pyjpegls (pydicom plugin)": (
                _pydicom_encoder("1.2.840.10008.1.2.4.80", "pyjpegls"),
                imagecodecs.jpegls_decode,
                True,
            ),
            "imagecodecs.jpegls (CharLS)": (lambda a: imagecodecs.jpegls_encode(a), imagecodecs.jpegls_decode, True),
        },
        "JPEG 2000 lossless (1.2.840.10008.1.2.4.90)": {
            "pylibjpeg-openjpeg (pydicom plugin)": (
                _pydicom_encoder("1.2.840.10008.1.2.4.90", "pylibjpeg"),
                j2k_decode,
                True,
            ),
            "imagecodecs.jpeg2k (OpenJPEG)": (
                lambda a: imagecodecs.jpeg2k_encode(a, codecformat="J2K", reversible=True),
                j2k_decode,
                True,
            ),
        },
        "HTJ2K lossless (1.2.840.10008.1.2.4.201)": {
            "imagecodecs.htj2k (OpenJPH)": (
                lambda a: imagecodecs.htj2k_encode(a, reversible=True),
                imagecodecs.htj2k_decode,
                True,
            ),
        },
        "RLE lossless (1.2.840.10008.1.2.5)": {
            "pylibjpeg-rle (pydicom plugin)": (_pydicom_encoder("1.2.840.10008.1.2.5", "pylibjpeg"), None, True),
            "pydicom (native python)": (_pydicom_encoder("1.2.840.10008.1.2.5", "pydicom"), None, True),
        },
        "JPEG 2000 lossy (1.2.840.10008.1.2.4.91)": {
            "pylibjpeg-openjpeg, ratio 10": (
                _pydicom_encoder("1.2.840.10008.1.2.4.91", "pylibjpeg", j2k_cr=[10]),
                j2k_decode,
                False,
            ),
            "imagecodecs.jpeg2k, level 10": (
                lambda a: imagecodecs.jpeg2k_encode(a, 10, codecformat="J2K", reversible=False),
                j2k_decode,
                False,
            ),
        },
        "HTJ2K lossy (1.2.840.10008.1.2.4.203)": {
            "imagecodecs.htj2k, qstep 0.0005": (
                lambda a: imagecodecs.htj2k_encode(a, 0.0005, reversible=False),
                imagecodecs.htj2k_decode,
                False,
            ),
        },
        "JPEG baseline 8-bit (1.2.840.10008.1.2.4.50), windowed W400 L40": {
            "Pillow (libjpeg-turbo), q90": (pil_jpeg, imagecodecs.jpeg8_decode, False),
            "imagecodecs.jpeg8 (libjpeg-turbo), q90": (
                lambda a: imagecodecs.jpeg8_encode(a, 90),
                imagecodecs.jpeg8_decode,
                False,
            ),
        },
    }


def main() -> int:
    print(f"# median encode time of {RUNS} runs, size, decoded check; {sys.version.split()[0]}")
    for frame_name, frame in frames().items():
        print(f"\n## {frame_name}: {frame.shape[0]}x{frame.shape[1]} {frame.dtype}, {frame.nbytes} bytes native")
        for syntax, cands in candidates().items():
            eight_bit = "8-bit" in syntax
            src = windowed(frame) if eight_bit else frame
            print(f"  {syntax}")
            for name, (encode, decode, lossless) in cands.items():
                try:
                    data = encode(src)
                except Exception as exc:  # a candidate that cannot do it
                    print(f"    {name:<42} fails: {type(exc).__name__}: {str(exc)[:80]}")
                    continue
                times = []
                for _ in range(RUNS):
                    t0 = time.perf_counter()
                    encode(src)
                    times.append(time.perf_counter() - t0)
                check = ""
                if decode is not None:
                    back = decode(bytes(data)).reshape(src.shape)
                    if back.dtype.itemsize == src.dtype.itemsize and back.dtype.kind != src.dtype.kind:
                        back = back.view(src.dtype)  # a decoder that does not know the data are signed
                    peak = 255 if eight_bit else float(2**12 - 1)
                    if lossless:
                        check = "exact" if np.array_equal(back.astype(np.int64), src.astype(np.int64)) else "NOT EXACT"
                    else:
                        check = f"PSNR {psnr(back, src, peak):.1f} dB"
                print(
                    f"    {name:<42} {statistics.median(times) * 1000:7.1f} ms {len(data):>8} bytes "
                    f"({src.nbytes / len(data):4.2f}:1) {check}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
