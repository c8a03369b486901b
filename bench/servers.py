"""The two servers under test, started on free ports and temp folders, and a
sampler of their process trees (peak RSS, CPU seconds)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from testbed.processes import dcmtk_env, stop_process

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
CLIENT_AET = "BENCHSCU"
ORTHANC_PACKAGES = ["orthanc", "orthanc-dicomweb", "orthanc-gdcm"]
TICK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_tcp(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {HOST}:{port}") from None
            time.sleep(0.1)


class TreeSampler:
    """Samples a process and all its descendants from /proc every ``period`` s.

    Peak RSS is the largest sampled sum of VmRSS over the tree; CPU seconds are
    utime + stime of every process seen (last value seen for those that exited),
    plus what the root collected from reaped children."""

    def __init__(self, pid: int, period: float = 0.2) -> None:
        self.pid = pid
        self.period = period
        self.cpu_ticks: dict[tuple[int, int], int] = {}  # (pid, start time) -> ticks
        self.peak_rss_kb = 0
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @staticmethod
    def _stat(pid: int) -> tuple[int, int, int, int] | None:
        """(ppid, utime+stime, cutime+cstime, start time) or None."""
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            return None
        fields = raw[raw.rindex(b")") + 2 :].split()
        # fields[0] is field 3 (state): ppid is field 4, utime 14, stime 15, cutime 16, cstime 17, starttime 22.
        return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14]), int(fields[19])

    def _tree(self) -> dict[int, tuple[int, int, int, int]]:
        stats = {}
        for name in os.listdir("/proc"):
            if name.isdigit() and (st := self._stat(int(name))) is not None:
                stats[int(name)] = st
        children: dict[int, list[int]] = {}
        for pid, st in stats.items():
            children.setdefault(st[0], []).append(pid)
        tree, todo = {}, [self.pid]
        while todo:
            pid = todo.pop()
            if pid in stats:
                tree[pid] = stats[pid]
                todo.extend(children.get(pid, []))
        return tree

    def sample(self) -> None:
        tree = self._tree()
        rss = 0
        for pid in tree:
            try:
                with open(f"/proc/{pid}/statm", "rb") as f:
                    rss += int(f.read().split()[1]) * PAGE_KB
            except OSError:
                pass
        with self.lock:
            for pid, (_, ticks, child_ticks, start) in tree.items():
                self.cpu_ticks[(pid, start)] = ticks + (child_ticks if pid == self.pid else 0)
            self.peak_rss_kb = max(self.peak_rss_kb, rss)

    def cpu_seconds(self) -> float:
        self.sample()
        with self.lock:
            return sum(self.cpu_ticks.values()) / TICK

    def _run(self) -> None:
        while not self.stop_event.wait(self.period):
            self.sample()

    def stop(self) -> None:
        self.sample()
        self.stop_event.set()
        self.thread.join()


@dataclass
class Server:
    """What a workload needs to know about a running server."""

    name: str
    data_dir: Path
    http_port: int = field(default_factory=free_port)
    dimse_port: int = field(default_factory=free_port)
    aet: str = ""
    dicomweb: str = ""
    proc: subprocess.Popen[bytes] | None = None
    sampler: TreeSampler | None = None
    log_path: Path | None = None

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.sampler:
            self.sampler.stop()
        return stop_process(self.proc)

    def log_tail(self, n: int = 30) -> str:
        if self.log_path and self.log_path.exists():
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""


def start_ours(data_dir: Path, extra_env: dict[str, str], timeout: float = 120) -> Server:
    """This server through the launcher, exactly as a user runs it."""
    srv = Server("ours", data_dir, aet="DICOMSERVER")
    data_dir.mkdir(parents=True, exist_ok=True)
    srv.log_path = data_dir.parent / f"{data_dir.name}.log"
    log = srv.log_path.open("w")
    srv.proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "launcher",
            "--data-dir",
            str(data_dir),
            "--http-port",
            str(srv.http_port),
            "--dimse-port",
            str(srv.dimse_port),
            "--ae-title",
            srv.aet,
            "--grpc-base-port",
            "0",
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "DICOMSERVER_LOG_LEVEL": "WARNING", **extra_env},
    )
    srv.sampler = TreeSampler(srv.proc.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = srv.log_path.read_text(errors="replace")
        if m := re.search(r"^DICOMweb\s+(\S+)", text, re.M):
            srv.dicomweb = m.group(1)
        if re.search(r"^ready", text, re.M):
            return srv
        if srv.proc.poll() is not None:
            break
        time.sleep(0.1)
    srv.stop()
    raise RuntimeError("our server did not start:\n" + srv.log_tail())


def ensure_orthanc(log: Callable[[str], object] = print) -> None:
    """Installs the Orthanc packages with apt-get unless dpkg says they are there."""
    missing = []
    for pkg in ORTHANC_PACKAGES:
        res = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
        if "install ok installed" not in res.stdout:
            missing.append(pkg)
    if not missing:
        return
    log(f"installing {' '.join(missing)} with apt-get")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    # The package's service must not start on the default ports: policy-rc.d may not forbid it everywhere.
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", *missing], check=True, env=env, stdout=subprocess.DEVNULL)
    if shutil.which("systemctl"):
        subprocess.run([*sudo, "systemctl", "disable", "--now", "orthanc"], capture_output=True)


def _plugin(package: str, stem: str) -> str:
    out = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=True).stdout
    paths = [p for p in out.splitlines() if p.endswith(".so") and stem in p]
    if not paths:
        raise RuntimeError(f"no {stem} plugin in package {package}")
    return paths[0]


def start_orthanc(data_dir: Path, move_destinations: dict[str, tuple[str, int]], timeout: float = 60) -> Server:
    """Orthanc with the Debian package's defaults, on its own ports and folder.

    Orthanc 1.10 has no option to bind to one address (HttpBindAddresses came
    in 1.12.10): HTTP refuses other hosts (RemoteAccessAllowed false), and the
    DICOM side only answers AE titles it knows, checked against 127.0.0.1."""
    srv = Server("orthanc", data_dir, aet="ORTHANC")
    data_dir.mkdir(parents=True, exist_ok=True)
    modalities = {"bench": [CLIENT_AET, HOST, free_port()]}
    for aet, (host, port) in move_destinations.items():
        modalities[aet.lower()] = [aet, host, port]
    config = {
        "Name": "bench",
        "StorageDirectory": str(data_dir / "storage"),
        "IndexDirectory": str(data_dir / "index"),
        "Plugins": [_plugin("orthanc-dicomweb", "DicomWeb"), _plugin("orthanc-gdcm", "Gdcm")],
        "HttpPort": srv.http_port,
        "DicomPort": srv.dimse_port,
        "DicomAet": srv.aet,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "OrthancExplorerEnabled": False,
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowStore": False,
        "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowGet": False,
        "DicomAlwaysAllowMove": False,
        "DicomCheckModalityHost": True,
        "DicomModalities": modalities,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    cfg = data_dir / "orthanc.json"
    cfg.write_text(json.dumps(config, indent=2))
    srv.log_path = data_dir.parent / f"{data_dir.name}.log"
    log = srv.log_path.open("w")
    srv.proc = subprocess.Popen(
        ["Orthanc", str(cfg)],
        cwd=data_dir,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    srv.sampler = TreeSampler(srv.proc.pid)
    srv.dicomweb = f"http://{HOST}:{srv.http_port}/dicom-web"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if srv.proc.poll() is not None:
            break
        try:
            if httpx.get(f"http://{HOST}:{srv.http_port}/system", timeout=2).status_code == 200:
                wait_tcp(srv.dimse_port, max(1.0, deadline - time.monotonic()))
                return srv
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    srv.stop()
    raise RuntimeError("Orthanc did not start:\n" + srv.log_tail())


class StoreSCP:
    """dcmtk storescp: the common C-MOVE destination for both servers."""

    def __init__(self, out_dir: Path, aet: str = "BENCHDEST") -> None:
        self.aet = aet
        self.port = free_port()
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["storescp", "-aet", aet, "-od", str(out_dir), str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=dcmtk_env(),
            start_new_session=True,
        )
        wait_tcp(self.port, 10)

    def take(self) -> tuple[int, int]:
        """(files, bytes) received since the last call; removes them."""
        n = size = 0
        for p in self.out_dir.iterdir():
            n += 1
            size += p.stat().st_size
            p.unlink()
        return n, size

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        self.proc.wait(10)


class ScaleoutBackends:
    """PostgreSQL (fsync on, as deployed), Redis and Kafka for our side, on
    free loopback ports — the same real servers the test suite starts."""

    def __init__(self) -> None:
        from backends import Kafka, Postgres, Redis  # the tests' server runners

        self.postgres = Postgres(durable=True)
        self.redis = Redis()
        self.kafka = Kafka()

    def start(self, log: Callable[[str], None]) -> dict[str, str]:
        for server in (self.postgres, self.redis, self.kafka):
            server.start()
        log(f"scale-out: PostgreSQL :{self.postgres.port}, Redis :{self.redis.port}, Kafka {self.kafka.bootstrap}")
        return {
            "DICOMSERVER_DATABASE_URL": self.postgres.create_database("bench"),
            "DICOMSERVER_EVENTBUS_DATABASE_URL": self.postgres.create_database("bench_eventbus"),
            "DICOMSERVER_REDIS_URL": self.redis.url,
            "DICOMSERVER_KAFKA_BOOTSTRAP": self.kafka.bootstrap,
        }

    def stop(self) -> None:
        for server in (self.kafka, self.redis, self.postgres):
            getattr(server, "cleanup", server.stop)()
