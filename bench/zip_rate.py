"""A CT series as a zip against the same series as multipart WADO-RS, from a
freshly launched archive: python -m bench.zip_rate [--samples N] [--quick]

The series are those of the benchmark's CT corpus (512x512 16-bit slices),
stored over STOW-RS; each sample downloads one series both ways (order
alternating), on one connection as bench.clients does, and checks the bytes."""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import httpx

from bench import corpus
from bench.clients import DicomWeb
from bench.servers import start_ours

MULTIPART = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.zip_rate")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "dicomserver-bench")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    root, manifest = corpus.ensure(args.cache_dir, corpus.QUICK if args.quick else corpus.FULL)
    work = Path(tempfile.mkdtemp(prefix="zip-rate-"))
    srv = start_ours(work / "data", {})
    try:
        web = DicomWeb(srv.dicomweb)
        series = []
        for study in manifest["ct"]["studies"]:
            for se in study["series"]:
                web.stow([(root / f["path"]).read_bytes() for f in se["files"]])
                series.append((study["uid"], se["uid"], {(root / f["path"]).read_bytes() for f in se["files"]}))
        rates: dict[str, list[float]] = {"multipart": [], "zip": []}
        with httpx.Client(base_url=srv.dicomweb, timeout=120) as http:
            for i in range(args.samples):
                study, se, sent = series[i % len(series)]
                size = sum(len(b) for b in sent)
                for kind in ("multipart", "zip") if i % 2 == 0 else ("zip", "multipart"):
                    accept = MULTIPART if kind == "multipart" else "application/zip"
                    t0 = time.perf_counter()
                    r = http.get(f"/studies/{study}/series/{se}", headers={"Accept": accept})
                    elapsed = time.perf_counter() - t0
                    assert r.status_code == 200, r.text[:200]
                    if kind == "zip":
                        with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
                            assert {zf.read(n) for n in zf.namelist()} == sent
                    rates[kind].append(size / 1e6 / elapsed)
        for kind, values in rates.items():
            print(
                f"{kind:9s} median {statistics.median(values):6.1f} MB/s  [{min(values):.1f}-{max(values):.1f}] "
                f"of {len(values)} series of {size / 1e6:.1f} MB"
            )
        web.close()
    finally:
        srv.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
