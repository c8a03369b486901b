"""python -m bench.compression: the storage the compression policy saves.

Converts, as the compression consumer does (dicomcore.codecs.convert, each
result decoded and compared with the original), every object of the bench
CT corpus and every native pydicom test image with pixel data, to each
lossless target, and prints bytes before and after. Objects a target cannot
take (1-bit or 32-bit pixels for JPEG-LS, ...) or would not shrink are kept
as received and counted as such."""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

from dicomcore import codecs

TARGETS = {
    "JPEG-LS": "1.2.840.10008.1.2.4.80",
    "JPEG 2000": "1.2.840.10008.1.2.4.90",
    "HTJ2K": "1.2.840.10008.1.2.4.201",
}
NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
BENCH_CT = Path.home() / ".cache/dicomserver-bench/v1-ct4x2x50-ix2000/ct"


def pydicom_images() -> list[Path]:
    from pydicom import dcmread
    from pydicom.data import get_testdata_files

    out, seen = [], set()
    for p in sorted(get_testdata_files("*.dcm")):
        try:
            ds = dcmread(p, stop_before_pixels=True)
        except Exception:
            continue
        sop = ds.get("SOPInstanceUID")
        if str(ds.file_meta.get("TransferSyntaxUID", "")) in NATIVE and "Rows" in ds and sop not in seen:
            seen.add(sop)  # one file per instance (pydicom has the same image in several encodings)
            out.append(Path(p))
    return out


def measure(name: str, files: list[Path]) -> None:
    print(f"\n## {name}: {len(files)} objects, {sum(f.stat().st_size for f in files)} bytes")
    for label, target in TARGETS.items():
        before = after = kept = 0
        t0 = time.perf_counter()
        for f in files:
            data = f.read_bytes()
            try:
                out, _ = codecs.convert(data, target, require_lossless=True)
            except codecs.CodecError:
                out = data
            if len(out) >= len(data):
                out, kept = data, kept + 1
            before += len(data)
            after += len(out)
        print(
            f"  {label:<10} {before:>11} -> {after:>11} bytes, saved {100 * (1 - after / before):5.1f} % "
            f"({kept} kept as received), {time.perf_counter() - t0:6.1f} s"
        )


def main() -> int:
    warnings.simplefilter("ignore")
    measure("bench CT corpus", sorted(BENCH_CT.glob("*.dcm")))
    measure("pydicom test images (native, with pixel data)", pydicom_images())
    return 0


if __name__ == "__main__":
    sys.exit(main())
