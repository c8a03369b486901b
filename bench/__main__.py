"""python -m bench [--quick] [--only ours|orthanc] [--json PATH]

Benchmarks this server against Orthanc on the same synthetic corpora in the
same run: C-STORE, STOW-RS, QIDO-RS, /metadata, WADO-RS, frames, C-FIND,
C-GET, C-MOVE, and ingest and queries at index scale. Prints a table of
medians [min–max] with the speed ratio, peak RSS and CPU seconds of each
server's process tree, and writes the same as JSON."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import corpus
from bench.report import table
from bench.servers import (
    ScaleoutBackends,
    Server,
    StoreSCP,
    ensure_orthanc,
    start_orthanc,
    start_ours,
)
from bench.workloads import Bench, Plan

FULL_PLAN = Plan(reps=3, latency_samples=15, index_chunks=4, store_reps=2)
QUICK_PLAN = Plan(reps=1, latency_samples=3, index_chunks=1, store_reps=1)


def log(text: str) -> None:
    print(text, flush=True)


def machine() -> dict[str, Any]:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    mem_kb = next(int(ln.split()[1]) for ln in open("/proc/meminfo") if ln.startswith("MemTotal"))
    debian = Path("/etc/debian_version").read_text().strip() if Path("/etc/debian_version").exists() else "?"

    def version(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()[0].strip()
        except (OSError, IndexError):
            return "?"

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "debian": debian,
        "python": platform.python_version(),
        "orthanc": version(["dpkg-query", "-W", "-f=${Version}", "orthanc"]),
        "orthanc_dicomweb": version(["dpkg-query", "-W", "-f=${Version}", "orthanc-dicomweb"]),
        "dcmtk": version(["dpkg-query", "-W", "-f=${Version}", "dcmtk"]),
    }


def parse_env(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--ours-env wants NAME=VALUE, got {item!r}")
        env[key] = value
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[1])
    parser.add_argument("--quick", action="store_true", help="small corpora, one sample each (under 2 minutes)")
    parser.add_argument(
        "--only", choices=["ours", "orthanc"], help="benchmark one server only (no Orthanc needed with 'ours')"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path.home() / ".cache" / "dicomserver-bench",
        help="generated corpora are kept here (default %(default)s)",
    )
    parser.add_argument(
        "--json", type=Path, help="where to write the results (default: <cache-dir>/results/<time>.json)"
    )
    parser.add_argument(
        "--work-dir", type=Path, help="parent of the servers' temp folders (default: the system temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the servers' data folders and logs")
    parser.add_argument("--reps", type=int, help="samples of each throughput figure (default 3, CT stores 2; quick 1)")
    parser.add_argument(
        "--ours-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for our launcher, e.g. DICOMSERVER_DATABASE_URL=...; "
        "{dest_aet} and {dest_port} name the C-MOVE destination (storescp)",
    )
    parser.add_argument(
        "--scaleout",
        action="store_true",
        help="run ours on PostgreSQL (durable), Redis and Kafka started for the run "
        "(scripts/setup --test installs them)",
    )
    args = parser.parse_args(argv)

    plan = QUICK_PLAN if args.quick else FULL_PLAN
    if args.reps:
        plan = dataclasses.replace(plan, reps=args.reps, store_reps=args.reps)
    size = corpus.QUICK if args.quick else corpus.FULL
    sides = [args.only] if args.only else ["ours", "orthanc"]
    started = time.monotonic()
    when = datetime.datetime.now(datetime.UTC)

    root, manifest = corpus.ensure(args.cache_dir, size, log)
    if "orthanc" in sides:
        ensure_orthanc(log)
    work = Path(tempfile.mkdtemp(prefix="dicomserver-bench-", dir=args.work_dir))
    servers: dict[str, Server] = {}
    dest: StoreSCP | None = None
    bench: Bench | None = None
    backends = ScaleoutBackends() if args.scaleout else None
    try:
        dest = StoreSCP(work / "storescp")
        # Both servers know the C-MOVE destination, as Orthanc's config does below.
        ours_env = {"DICOMSERVER_DIMSE_PEERS": json.dumps({dest.aet: {"host": "127.0.0.1", "port": dest.port}})}
        if backends is not None:
            ours_env |= backends.start(log)
        ours_env |= {k: v.format(dest_aet=dest.aet, dest_port=dest.port) for k, v in parse_env(args.ours_env).items()}
        for side in sides:
            if side == "ours":
                servers[side] = start_ours(work / "ours", ours_env)
            else:
                servers[side] = start_orthanc(work / "orthanc", {dest.aet: ("127.0.0.1", dest.port)})
            log(
                f"{side}: DICOMweb {servers[side].dicomweb}, DIMSE {servers[side].aet}@127.0.0.1:{servers[side].dimse_port}"
            )
        bench = Bench(servers, root, manifest, plan, work, dest, log)
        bench.ingest_ct()
        bench.ingest_index()
        bench.retrieve()
        bench.queries()
    finally:
        if bench is not None:
            bench.close()
        codes = {name: srv.stop() for name, srv in servers.items()}
        if dest is not None:
            dest.stop()
        if backends is not None:
            backends.stop()
        for name, srv in servers.items():
            if codes[name] != 0:
                log(f"{name} exited with status {codes[name]}; log tail:\n{srv.log_tail()}")

    totals = {
        name: {
            "peak_rss_mb": srv.sampler.peak_rss_kb / 1024 if srv.sampler else 0.0,
            "cpu_s": sum(srv.sampler.cpu_ticks.values()) / os.sysconf("SC_CLK_TCK") if srv.sampler else 0.0,
            "exit_status": codes[name],
        }
        for name, srv in servers.items()
    }
    elapsed = time.monotonic() - started
    result: dict[str, Any] = {
        "date": when.isoformat(timespec="seconds"),
        "mode": ("quick" if args.quick else "full") + (" on PostgreSQL/Redis/Kafka" if args.scaleout else ""),
        "machine": machine(),
        "corpus": size.key,
        "plan": plan.__dict__,
        "elapsed_s": round(elapsed, 1),
        "totals": totals,
        "figures": [f.to_json() for f in bench.figures] if bench else [],
    }
    out = args.json or args.cache_dir / "results" / f"{when:%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    log("")
    log(table(bench.figures if bench else [], sides, totals))
    log(
        f"\n'ours ×': how many times faster this server is (throughput ours/orthanc, latency orthanc/ours); "
        f"'!': wrong answer, see JSON. {elapsed:.0f} s, {result['machine']['cpu']}, {result['machine']['cores']} cores."
    )
    log(f"results: {out}")
    if args.keep:
        log(f"data kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(c == 0 for c in codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
