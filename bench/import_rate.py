"""The import command against storescu on the same corpus, each into a freshly
launched archive: python -m bench.import_rate [--runs N] [--workers N] [--profile]

The corpus is the benchmark's index corpus (20,000 small objects in 2,000
studies; generated once and cached). storescu sends it over 4 associations
(bench.clients.cstore, TCP_NODELAY=1), the import command with --workers
batches at once. Each sample starts its own archive on an empty data folder.
With --profile, py-spy records the ingest and metadata services during the
import (raw folded stacks next to the results)."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench import clients, corpus
from bench.servers import Server, start_ours

ROOT = Path(__file__).resolve().parent.parent


def _grpc_addrs(srv: Server) -> dict[str, str]:
    assert srv.log_path is not None
    return dict(re.findall(r"^grpc\s+(\w+)\s+(\S+)", srv.log_path.read_text(), re.M))


def _service_pids(srv: Server) -> dict[str, int]:
    assert srv.proc is not None
    pids = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            cmd = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == srv.proc.pid and b"-m" in cmd:
            pids[cmd[cmd.index(b"-m") + 1].decode()] = int(name)
    return pids


def _count(srv: Server) -> int:
    """Instances the archive holds (studies' instance counts)."""
    n, offset = 0, 0
    while True:
        r = httpx.get(
            f"{srv.dicomweb}/studies", params={"limit": 1000, "offset": offset, "includefield": "00201208"}, timeout=60
        )
        studies = r.json() if r.status_code == 200 else []
        n += sum(s.get("00201208", {}).get("Value", [0])[0] for s in studies)
        if len(studies) < 1000:
            return n
        offset += 1000


def run_import(srv: Server, folder: Path, workers: int, out: Path, profile: bool) -> float:
    addrs = _grpc_addrs(srv)
    spies = []
    if profile:
        for svc, pid in _service_pids(srv).items():
            if svc in ("ingest_svc", "metadata_svc"):
                spies.append(
                    subprocess.Popen(
                        [
                            str(Path(sys.executable).parent / "py-spy"),
                            "record",
                            "-p",
                            str(pid),
                            "-d",
                            "600",
                            "-r",
                            "100",
                            "-f",
                            "raw",
                            "-o",
                            str(out / f"profile-{svc}.txt"),
                            "--nonblocking",
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
        time.sleep(1)
    t0 = time.perf_counter()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "importer",
            "import",
            str(folder),
            "--workers",
            str(workers),
            "--no-progress",
            "--ingest",
            addrs["ingest"],
            "--metadata",
            addrs["metadata"],
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - t0
    for spy in spies:
        spy.send_signal(2)  # SIGINT: py-spy writes what it has
        spy.wait(60)
    (out / "import-output.txt").write_text(res.stdout + res.stderr)
    if res.returncode != 0:
        raise RuntimeError(f"import exited {res.returncode}:\n{res.stdout[-3000:]}{res.stderr[-3000:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.import_rate")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "dicomserver-bench")
    parser.add_argument("--quick", action="store_true", help="the small corpus (600 objects)")
    parser.add_argument("--only", choices=["import", "storescu"], help="one side only")
    args = parser.parse_args()
    root, manifest = corpus.ensure(args.cache_dir, corpus.QUICK if args.quick else corpus.FULL)
    folder = root / "index"
    files = sorted(str(p) for p in folder.glob("*.dcm"))
    size = sum(os.path.getsize(f) for f in files)
    out = Path(tempfile.mkdtemp(prefix="import-rate-"))
    print(f"{len(files)} objects, {size / 1e6:.1f} MB; work and profiles in {out}")
    results: dict[str, list[dict[str, float]]] = {"import": [], "storescu": []}
    for run in range(args.runs):
        sides = ("import", "storescu") if run % 2 == 0 else ("storescu", "import")
        for side in (s for s in sides if args.only in (None, s)):
            data = out / f"{side}-{run}"
            srv = start_ours(data, {})
            try:
                cpu0 = srv.sampler.cpu_seconds() if srv.sampler else 0.0
                if side == "import":
                    elapsed = run_import(srv, folder, args.workers, out, args.profile and run == 0)
                else:
                    elapsed = clients.cstore(srv, [files[i::4] for i in range(4)])
                cpu = (srv.sampler.cpu_seconds() if srv.sampler else 0.0) - cpu0
                stored = _count(srv)
            finally:
                srv.stop()
                shutil.rmtree(data, ignore_errors=True)
            sample = {
                "seconds": elapsed,
                "inst_per_s": len(files) / elapsed,
                "mb_per_s": size / 1e6 / elapsed,
                "server_cpu_s": cpu,
                "stored": stored,
            }
            results[side].append(sample)
            print(
                f"{side:9s} run {run}: {elapsed:6.1f} s  {sample['inst_per_s']:6.1f} inst/s  "
                f"{sample['mb_per_s']:5.2f} MB/s  server CPU {cpu:6.1f} s  stored {stored}/{len(files)}",
                flush=True,
            )
    (out / "results.json").write_text(json.dumps(results, indent=1))
    for side, samples in results.items():
        if samples:
            rates = sorted(x["inst_per_s"] for x in samples)
            print(
                f"{side:9s} median {rates[len(rates) // 2]:.1f} inst/s [{rates[0]:.1f}-{rates[-1]:.1f}] of {len(rates)}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
