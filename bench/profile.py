"""python -m bench.profile WORKLOAD [--seconds N]

Where our server spends its time in one workload: starts the server, attaches
py-spy (install it into .venv: `.venv/bin/pip install py-spy`; it is not a
requirement of the project) to each service process, runs the workload on the
cached full corpus, and prints each service's CPU seconds and its hottest
functions (share of that service's samples, self and inclusive).

WORKLOAD: cstore (CT corpus, 1 association), cstore-small (index corpus,
4 associations), stow (CT corpus, sequential), wado (CT series, repeated),
cget and cmove (every CT series with getscu, with movescu to storescp),
cfind (study-level findscu by StudyDate range and by PatientID, 40 of
each). With --data DIR the server runs on a data folder a run of
`python -m bench.dimse_qr --data DIR` filled (its `ours`), and nothing is
stored first."""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import clients, corpus
from bench.clients import DicomWeb
from bench.servers import HOST, TICK, StoreSCP, TreeSampler, start_ours

SERVICES = ["storage_svc", "metadata_svc", "auth_svc", "ingest_svc", "dicomweb_gateway", "eventbus"]


def service_pids(root_pid: int) -> dict[str, int]:
    found = {}
    for pid in TreeSampler(root_pid, period=3600)._tree():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for svc in SERVICES:
            if svc.encode() in cmd:
                found[svc] = pid
    return found


def summarize(raw: Path, top: int) -> list[str]:
    """Top functions of a py-spy raw (collapsed) profile: self and inclusive shares."""
    self_n: collections.Counter[str] = collections.Counter()
    incl_n: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():  # a line cut short when py-spy stopped
            continue
        n = int(count)
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")" if " (" in f else f
            for f in stack.split(";")
        ]
        if frames and frames[0].startswith("process "):
            frames = frames[1:]
        if frames and frames[0].startswith("thread "):
            frames = frames[1:]
        total += n
        if frames:
            self_n[frames[-1]] += n
        for f in set(frames):
            incl_n[f] += n
    if not total:
        return ["    (no samples)"]
    out = [f"    {total} samples; self:"]
    out += [f"      {100 * n / total:5.1f}%  {f}" for f, n in self_n.most_common(top)]
    out.append("    inclusive:")
    out += [f"      {100 * n / total:5.1f}%  {f}" for f, n in incl_n.most_common(top * 2)]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[1])
    parser.add_argument("workload", choices=["cstore", "cstore-small", "stow", "wado", "cget", "cmove", "cfind"])
    parser.add_argument("--data", type=Path, help="a data folder of bench.dimse_qr (its corpora already stored)")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "dicomserver-bench")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--out", type=Path, help="keep the raw profiles here")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    root, manifest = corpus.ensure(args.cache_dir, corpus.FULL)
    work = Path(tempfile.mkdtemp(prefix="dicomserver-profile-"))
    out = args.out or work / "profiles"
    out.mkdir(parents=True, exist_ok=True)
    dest = StoreSCP(work / "storescp") if args.workload == "cmove" else None
    env = {"DICOMSERVER_DIMSE_PEERS": json.dumps({dest.aet: {"host": HOST, "port": dest.port}})} if dest else {}
    srv = start_ours(args.data / "ours" if args.data else work / "ours", env)
    spies = {}
    try:
        ct = [str(root / f["path"]) for st in manifest["ct"]["studies"] for se in st["series"] for f in se["files"]]
        series = [(st["uid"], se["uid"]) for st in manifest["ct"]["studies"] for se in st["series"]]
        if args.workload in ("wado", "cget", "cmove", "cfind") and args.data is None:  # the data first, unprofiled
            clients.cstore(srv, [ct])
        assert srv.proc is not None  # start_ours() started it
        pids = service_pids(srv.proc.pid)
        # _stat() is None for a process that has gone: a TypeError then (a known gap, left as it is).
        cpu0 = {svc: TreeSampler._stat(pid)[1] for svc, pid in pids.items()}  # type: ignore[index]
        for svc, pid in pids.items():
            spies[svc] = subprocess.Popen(
                [
                    py_spy,
                    "record",
                    "--pid",
                    str(pid),
                    "--format",
                    "raw",
                    "--rate",
                    "100",
                    "--nonblocking",
                    "-o",
                    str(out / f"{svc}.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        time.sleep(1)
        t0 = time.perf_counter()
        if args.workload == "cstore":
            clients.cstore(srv, [ct])
            what = f"{len(ct)} CT instances over 1 association"
        elif args.workload == "cstore-small":
            small = [
                str(root / f["path"])
                for st in manifest["index"]["studies"][:200]
                for se in st["series"]
                for f in se["files"]
            ]
            clients.cstore(srv, [small[k::4] for k in range(4)])
            what = f"{len(small)} small instances over 4 associations"
        elif args.workload == "stow":
            web = DicomWeb(srv.dicomweb)
            data = [Path(p).read_bytes() for p in ct]
            for k in range(0, len(data), 10):
                web.stow(data[k : k + 10])
            what = f"{len(ct)} CT instances, STOW-RS batches of 10"
        elif args.workload == "cget":
            n = sum(clients.cget_series(srv, st, se)[1] for st, se in series)
            what = f"C-GET of every CT series, {n / 1e6:.0f} MB"
        elif args.workload == "cmove":
            assert dest is not None
            n = 0
            for st, se in series:
                clients.cmove_series(srv, dest.aet, st, se)
                n += dest.take()[1]
            what = f"C-MOVE of every CT series to storescp, {n / 1e6:.0f} MB"
        elif args.workload == "cfind":
            for i in range(40):
                clients.cfind_studies(srv, {"StudyDate": f"{2000 + i % 25}0101-{2000 + i % 25}0630"})
                clients.cfind_studies(srv, {"PatientID": f"PID{(i * 37 + 11) % 2000:05d}"})
            what = "80 study-level C-FINDs"
        else:
            web = DicomWeb(srv.dicomweb)
            n = 0
            for st in manifest["ct"]["studies"]:
                for se in st["series"]:
                    n += web.get_bytes(
                        f"/studies/{st['uid']}/series/{se['uid']}", 'multipart/related; type="application/dicom"'
                    )
            what = f"WADO-RS of every CT series, {n / 1e6:.0f} MB"
        elapsed = time.perf_counter() - t0
        cpu = {svc: (TreeSampler._stat(pid)[1] - cpu0[svc]) / TICK for svc, pid in pids.items()}  # type: ignore[index]
    finally:
        for spy in spies.values():
            spy.send_signal(signal.SIGINT)
        for spy in spies.values():
            spy.wait(60)
        srv.stop()
        if dest is not None:
            dest.stop()
    print(f"{what}: {elapsed:.1f} s wall")
    for svc in sorted(cpu, key=cpu.__getitem__, reverse=True):
        print(f"  {svc}: {cpu[svc]:.1f} CPU s")
        if cpu[svc] > 0.2 * max(cpu.values()):
            print("\n".join(summarize(out / f"{svc}.txt", args.top)))
    if args.out is None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        shutil.rmtree(work / "ours", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
