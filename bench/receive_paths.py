"""C-STORE throughput and CPU of the two receive paths.

    .venv/bin/python -m bench.receive_paths archive [--runs 3] [--profile DIR]
    .venv/bin/python -m bench.receive_paths bare [--runs 3] [--profile DIR]

archive: the launched archive (bench.servers.start_ours, a fresh data folder
per measurement) receives the bench CT corpus (400 objects of 0.5 MB) from
storescu (TCP_NODELAY=1, bench.clients.cstore) over 1 association and over 4
(4 storescu processes at once), with DICOMSERVER_DIMSE_LEAN_STORAGE false
(pynetdicom) and true (the storage acceptor); objects/s and CPU seconds of
ingest_svc and of the whole archive.

bare: the same sends to an in-process DimseServer whose pipeline throws every
object away (NullPipeline below): what each receive path costs by
itself, in CPU milliseconds per object (this process's CPU; storescu runs
apart).

Medians of `runs` runs, each run alternating the paths; the load average is
printed, as other work on the machine makes the numbers noisy. --profile
keeps a py-spy raw profile of ingest_svc (archive) or of the bare receiver
(bare), 1 association, each path, and prints its hottest functions.

Measured when the storage acceptor came (2 cores, load average 5-7 from
other work the whole time: objects/s are noisy, CPU seconds much less so):

    archive   path        assoc  objects/s (runs)     ingest_svc CPU      archive CPU
              pynetdicom  1      33.0 (29, 33, 36)    3.46 s  8.65 ms/obj  9.89 s
              lean        1      41.2 (37, 46, 41)    2.22 s  5.55 ms/obj  8.34 s
              pynetdicom  4      50.6 (51, 54, 50)    3.82 s  9.55 ms/obj  9.44 s
              lean        4      50.0 (36, 70, 50)    2.42 s  6.05 ms/obj  7.65 s
    bare      pynetdicom  1      134 (122, 134, 211)  1.17 s  2.93 ms/obj
              lean        1      1240 (1240, 664, 1558) 0.11 s 0.27 ms/obj
              pynetdicom  4      262 (150, 262, 268)  1.17 s  2.92 ms/obj
              lean        4      376 (455, 376, 365)  0.18 s  0.44 ms/obj"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import clients
from bench.profile import service_pids, summarize
from bench.servers import TICK, Server, TreeSampler, start_ours
from common.gen.dicomserver.v1 import auth_service_pb2 as auth_pb
from common.gen.dicomserver.v1 import ingest_service_pb2 as ingest_pb
from ingest_svc.scp import start_scp
from ingest_svc.settings import IngestSettings
from testbed.processes import free_port

CORPUS = Path.home() / ".cache" / "dicomserver-bench" / "v1-ct4x2x50-ix2000" / "ct"
PY_SPY = str(Path(sys.executable).parent / "py-spy")
PATHS = {"pynetdicom": "false", "lean": "true"}


def corpus() -> list[str]:
    files = sorted(str(p) for p in CORPUS.rglob("*.dcm"))
    if len(files) != 400:
        sys.exit(f"expected the 400 CT objects of the bench corpus in {CORPUS} (python -m bench builds it)")
    return files


def split(files: list[str], n: int) -> list[list[str]]:
    return [files[k::n] for k in range(n)]


def process_cpu(pid: int) -> float:
    stat = TreeSampler._stat(pid)
    return stat[1] / TICK if stat else 0.0


class Spy:
    def __init__(self, pid: int, out: Path) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            [PY_SPY, "record", "-p", str(pid), "-r", "200", "-f", "raw", "-o", str(out), "--nonblocking"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.5)

    def stop(self) -> list[str]:
        self.proc.send_signal(2)  # SIGINT: py-spy writes the profile
        self.proc.wait(30)
        return summarize(self.out, 14) if self.out.exists() else ["    (no profile)"]


def archive_run(files: list[str], path: str, associations: int, work: Path, spy: Path | None) -> dict[str, float]:
    srv: Server = start_ours(
        work / f"{path}-{associations}-{time.monotonic_ns()}", {"DICOMSERVER_DIMSE_LEAN_STORAGE": PATHS[path]}
    )
    try:
        assert srv.proc is not None and srv.sampler is not None
        ingest = service_pids(srv.proc.pid)["ingest_svc"]
        spying = Spy(ingest, spy) if spy else None
        load = os.getloadavg()[0]
        cpu0, tree0 = process_cpu(ingest), srv.sampler.cpu_seconds()
        elapsed = clients.cstore(srv, split(files, associations))
        cpu1, tree1 = process_cpu(ingest), srv.sampler.cpu_seconds()
        if spying:
            print(f"  py-spy of ingest_svc, {path}, {associations} association(s): {spy}")
            print("\n".join(spying.stop()))
        return {"rate": len(files) / elapsed, "ingest_cpu": cpu1 - cpu0, "tree_cpu": tree1 - tree0, "load": load}
    finally:
        srv.stop()
        shutil.rmtree(srv.data_dir, ignore_errors=True)


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class NullStaged:
    """Counts what is written and keeps nothing."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.size += len(data)

    def discard(self) -> None:
        pass


@dataclass
class NullPipeline:
    """Every object is thrown away and answered success: what the receive path costs by itself."""

    objects: int = 0

    def stage(self) -> NullStaged:
        return NullStaged()

    def store(self, staged: NullStaged, tenant: str, **_: Any) -> ingest_pb.InstanceOutcome:
        self.objects += 1
        return ingest_pb.InstanceOutcome(status=ingest_pb.STORE_STATUS_STORED, dicom_status=0)


class AllowAll:
    """Every calling AE is a principal of tenant 'default' that may do everything."""

    def authenticate(self, request: auth_pb.AuthenticateRequest) -> auth_pb.Principal:
        return auth_pb.Principal(subject=f"ae:{request.dimse_peer.calling_ae_title}", tenants=["default"])

    def authorize(self, principal: auth_pb.Principal, action: int, tenant: str) -> auth_pb.AuthorizeResponse:
        return auth_pb.AuthorizeResponse(allowed=True)


class Discard:
    def record(self, record: Any) -> None:
        pass


@dataclass
class BareScp:
    port: int
    pipeline: NullPipeline


@contextmanager
def bare_scp(lean: bool) -> Iterator[BareScp]:
    """The real DimseServer on a free port, with NullPipeline and AllowAll."""
    scp = BareScp(free_port(), NullPipeline())
    settings = IngestSettings(dimse_port=scp.port, ae_title="DICOMSERVER", dimse_lean_storage=lean)
    server = start_scp(settings, scp.pipeline, AllowAll(), None, None, Discard())  # type: ignore[arg-type]
    try:
        yield scp
    finally:
        server.stop(0.5)


def bare_run(files: list[str], path: str, associations: int, work: Path, spy: Path | None) -> dict[str, float]:
    with bare_scp(path == "lean") as scp:
        srv = Server("bare", work, dimse_port=scp.port, aet="DICOMSERVER")
        spying = Spy(os.getpid(), spy) if spy else None
        load = os.getloadavg()[0]
        cpu0 = own_cpu()
        elapsed = clients.cstore(srv, split(files, associations))
        cpu = own_cpu() - cpu0
        assert scp.pipeline.objects == len(files), scp.pipeline.objects
        if spying:
            print(f"  py-spy of the bare receiver, {path}, {associations} association(s): {spy}")
            print("\n".join(spying.stop()))
    return {"rate": len(files) / elapsed, "ingest_cpu": cpu, "tree_cpu": cpu, "load": load}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["archive", "bare"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", type=Path, help="keep py-spy profiles here (one extra run per path)")
    args = parser.parse_args()
    files = corpus()
    work = Path(tempfile.mkdtemp(prefix="lean-perf-"))
    run: Callable[..., dict[str, float]] = archive_run if args.mode == "archive" else bare_run
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    try:
        for i in range(args.runs):
            for associations in (1, 4):
                for path in PATHS if i % 2 == 0 else list(PATHS)[::-1]:
                    r = run(files, path, associations, work, None)
                    results.setdefault((path, associations), []).append(r)
                    print(
                        f"run {i + 1}, {path:10} {associations} assoc: {r['rate']:6.1f} objects/s, ingest CPU "
                        f"{r['ingest_cpu']:5.2f} s, all {r['tree_cpu']:5.2f} s, load {r['load']:.1f}",
                        flush=True,
                    )
        print(f"\n{args.mode}: medians of {args.runs} runs, {len(files)} objects")
        for (path, associations), rs in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0] != "pynetdicom")):
            rate = statistics.median(r["rate"] for r in rs)
            cpu = statistics.median(r["ingest_cpu"] for r in rs)
            tree = statistics.median(r["tree_cpu"] for r in rs)
            spread = ", ".join(f"{r['rate']:.0f}" for r in rs)
            print(
                f"  {path:10} {associations} assoc: {rate:6.1f} objects/s (runs {spread}); ingest_svc CPU {cpu:5.2f} s "
                f"= {1000 * cpu / len(files):5.2f} ms/object; archive CPU {tree:5.2f} s"
            )
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            for path in PATHS:
                run(files, path, 1, work, args.profile / f"{args.mode}-{path}.txt")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
