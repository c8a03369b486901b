"""python -m bench.dimse_qr [--samples N] [--reps N] [--data DIR] [--ours-env NAME=VALUE ...]

The DIMSE query/retrieve figures alone, ours against Orthanc in the same run
(sides alternate which goes first from one sample to the next): a C-ECHO
association (echoscu), study-level C-FIND by PatientID and by a StudyDate
range (findscu, on the index corpus with one copy of the CT corpus), series
C-GET (getscu) and series C-MOVE to storescp (movescu), with the dcmtk
clients `python -m bench` uses. Prints medians [min–max] and each side's CPU
seconds per figure, and writes the same as JSON.

Storing the corpora takes most of a run (~20,000 objects into each server):
with --data DIR the servers' folders are kept there and a later run with the
same DIR starts both servers on them and stores nothing."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import clients, corpus
from bench.__main__ import machine, parse_env
from bench.clients import DCMTK_ENV, NotAvailable, _dcmtk_failure
from bench.report import Figure, table
from bench.servers import (
    CLIENT_AET,
    HOST,
    Server,
    StoreSCP,
    ensure_orthanc,
    start_orthanc,
    start_ours,
)
from bench.workloads import PARALLEL, Bench, Plan, _split

STORED_MARK = "stored.json"


def log(text: str) -> None:
    print(text, flush=True)


def echo(srv: Server) -> None:
    res = subprocess.run(
        ["echoscu", "-aet", CLIENT_AET, "-aec", srv.aet, HOST, str(srv.dimse_port)],
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
    )
    if (failure := _dcmtk_failure(res)) is not None:
        raise NotAvailable(f"echoscu: {failure}")


class QueryRetrieve:
    def __init__(self, bench: Bench, samples: int, reps: int) -> None:
        self.bench = bench
        self.samples = samples
        self.reps = reps

    def store(self, data: Path) -> None:
        """The CT corpus once and the index corpus, into each server, unless
        the data folder says they are there."""
        bench = self.bench
        mark = data / STORED_MARK
        if mark.exists():
            log(f"corpora already stored ({mark})")
            return
        ct = [str(bench.root / p) for p in bench.ct_files]
        index = [str(bench.root / p) for p in bench.index_files]
        for files, what in ((ct, "CT corpus"), (index, "index corpus")):
            for side, srv in bench.servers.items():
                t0 = time.monotonic()
                clients.cstore(srv, _split(files, PARALLEL))
                log(f"  {what} into {side}: {len(files)} objects in {time.monotonic() - t0:.0f} s")
        mark.write_text(json.dumps({"ct_copies": 1}))

    def run(self) -> list[Figure]:
        bench = self.bench
        bench.ct_copies = dict.fromkeys(bench.servers, 1)

        def c_echo(srv: Server, i: int, ctx: Any, fig: Figure) -> float:
            t0 = time.perf_counter()
            echo(srv)
            return (time.perf_counter() - t0) * 1e3

        bench.run("C-ECHO association (echoscu)", "ms", False, self.samples, c_echo)
        bench.run("C-FIND studies, PatientID exact (findscu)", "ms", False, self.samples, bench.cfind_pid_sample)
        bench.run("C-FIND studies, StudyDate range (findscu)", "ms", False, self.samples, bench.cfind_date_sample)
        bench.run("C-GET series (CT series)", "MB/s", True, self.reps, bench.cget_sample)
        bench.run("C-MOVE series to storescp (CT series)", "MB/s", True, self.reps, bench.cmove_sample)
        return bench.figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dimse_qr", description=__doc__.split("\n\n")[1])
    parser.add_argument("--samples", type=int, default=15, help="samples of each latency figure (default 15)")
    parser.add_argument("--reps", type=int, default=8, help="samples of each throughput figure (default 8)")
    parser.add_argument("--only", choices=["ours", "orthanc"], help="one server only")
    parser.add_argument("--data", type=Path, help="keep the servers' folders here and reuse them in later runs")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "dicomserver-bench")
    parser.add_argument("--json", type=Path, help="where to write the results")
    parser.add_argument(
        "--ours-env", action="append", default=[], metavar="NAME=VALUE", help="extra environment for our launcher"
    )
    args = parser.parse_args(argv)

    sides = [args.only] if args.only else ["ours", "orthanc"]
    root, manifest = corpus.ensure(args.cache_dir, corpus.FULL, log)
    if "orthanc" in sides:
        ensure_orthanc(log)
    data = args.data or Path(tempfile.mkdtemp(prefix="dicomserver-qr-"))
    data.mkdir(parents=True, exist_ok=True)
    started, when = time.monotonic(), datetime.datetime.now(datetime.UTC)
    servers: dict[str, Server] = {}
    dest = StoreSCP(data / "storescp")
    bench: Bench | None = None
    figures: list[Figure] = []
    try:
        dest.take()
        ours_env = {
            "DICOMSERVER_DIMSE_PEERS": json.dumps({dest.aet: {"host": HOST, "port": dest.port}}),
            **parse_env(args.ours_env),
        }
        for side in sides:
            if side == "ours":
                servers[side] = start_ours(data / "ours", ours_env)
            else:
                servers[side] = start_orthanc(data / "orthanc", {dest.aet: (HOST, dest.port)})
            log(f"{side}: DIMSE {servers[side].aet}@{HOST}:{servers[side].dimse_port}")
        plan = Plan(reps=args.reps, latency_samples=args.samples, index_chunks=1, store_reps=0)
        bench = Bench(servers, root, manifest, plan, data, dest, log)
        qr = QueryRetrieve(bench, args.samples, args.reps)
        qr.store(data)
        figures = qr.run()
    finally:
        if bench is not None:
            bench.close()
        codes = {name: srv.stop() for name, srv in servers.items()}
        dest.stop()
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
    result = {
        "date": when.isoformat(timespec="seconds"),
        "mode": "dimse_qr",
        "machine": machine(),
        "load_average": os.getloadavg(),
        "ours_env": args.ours_env,
        "totals": totals,
        "elapsed_s": round(time.monotonic() - started, 1),
        "figures": [f.to_json() for f in figures],
    }
    out = args.json or args.cache_dir / "results" / f"qr-{when:%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    log("")
    log(table(figures, sides, totals))
    log(f"\nload average at the end {os.getloadavg()[0]:.2f}; results: {out}")
    if args.data is None:
        shutil.rmtree(data, ignore_errors=True)
    return 0 if all(c == 0 for c in codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
