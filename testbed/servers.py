"""Real servers for the scale-out tests: PostgreSQL 15, Redis and a single
Kafka node (KRaft), each started on 127.0.0.1 free ports in a temp folder
and stopped at the end. scripts/setup installs them (Debian packages, the
Kafka jars from Maven Central into a cache)."""

from __future__ import annotations

import base64
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.processes import free_port, stop_process, wait_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
KAFKA_VERSION = "4.1.1"
KAFKA_HOME = Path(
    os.environ.get("DICOMSERVER_KAFKA_HOME") or Path.home() / ".cache" / "dicomserver" / "kafka" / f"{KAFKA_VERSION}-1"
)


def _owned_tempdir(prefix: str, user: str | None) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if user is not None:
        pw = pwd.getpwnam(user)
        os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


@dataclass
class Postgres:
    """A PostgreSQL 15 cluster of its own; as root it runs as the `postgres` user."""

    port: int = field(default_factory=free_port)
    dir: Path | None = None
    user: str | None = None
    # False (tests): no fsync, so the suite stays fast. True: as deployed.
    durable: bool = False

    def _run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        cmd = list(args)
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, check=True, capture_output=True, cwd="/")

    def start(self) -> None:
        self.user = "postgres" if os.geteuid() == 0 else None
        self.dir = _owned_tempdir("dicomserver-pg-", self.user)
        data = self.dir / "data"
        self._run(
            str(PG_BIN / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        opts = f"-k {self.dir} -p {self.port} -h 127.0.0.1 -c max_connections=200"
        if not self.durable:
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(self.dir / "log"), "-w", "-o", opts, "start")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        self._run(
            str(PG_BIN / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-q",
            "-c",
            f'CREATE DATABASE "{name}"',
        )
        return self.url(name)

    def stop(self) -> None:
        if self.dir is None:
            return
        try:
            self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None


@dataclass
class Redis:
    port: int = field(default_factory=free_port)
    dir: Path | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="dicomserver-redis-"))
        subprocess.run(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "yes",
                "--dir",
                str(self.dir),
                "--pidfile",
                str(self.dir / "redis.pid"),
                "--logfile",
                str(self.dir / "redis.log"),
            ],
            check=True,
            capture_output=True,
        )
        wait_port(self.port, 20, what="redis-server")

    def stop(self) -> None:
        """Stops the server (the data goes with it: it keeps none on disk)."""
        if self.dir is None:
            return
        pidfile = self.dir / "redis.pid"
        try:
            pid = int(pidfile.read_text())
        except (OSError, ValueError):
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        pidfile.unlink(missing_ok=True)

    def cleanup(self) -> None:
        self.stop()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


@dataclass
class Kafka:
    """One broker that is its own controller (KRaft), formatted once; stop()
    and start() again keep its log (an outage, not a new cluster)."""

    port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)
    dir: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _java(self, *args: str) -> list[str]:
        assert self.dir is not None  # start() sets it first
        return [
            "java",
            "-Xms256m",
            "-Xmx512m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
            "-cp",
            f"{KAFKA_HOME / 'libs'}/*",
            *args,
        ]

    def _format(self) -> None:
        assert self.dir is not None
        props = self.dir / "server.properties"
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                    f"log.dirs={self.dir / 'data'}",
                    "num.partitions=1",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=3",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=false",
                    "",
                ]
            )
        )
        (self.dir / "log4j2.properties").write_text(
            "\n".join(
                [
                    "rootLogger.level=WARN",
                    "rootLogger.appenderRef.file.ref=file",
                    "appender.file.type=File",
                    "appender.file.name=file",
                    f"appender.file.fileName={self.dir / 'broker.log'}",
                    "appender.file.layout.type=PatternLayout",
                    "appender.file.layout.pattern=%d %p %c: %m%n",
                    "",
                ]
            )
        )
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        subprocess.run(
            self._java("kafka.tools.StorageTool", "format", "--standalone", "-t", cluster_id, "-c", str(props)),
            check=True,
            capture_output=True,
        )

    def start(self, timeout: float = 90) -> None:
        if self.dir is None:
            if not (KAFKA_HOME / ".complete").exists():
                raise RuntimeError(f"no Kafka jars in {KAFKA_HOME}: run scripts/setup")
            self.dir = Path(tempfile.mkdtemp(prefix="dicomserver-kafka-"))
            self._format()
        self.proc = subprocess.Popen(
            self._java("kafka.Kafka", str(self.dir / "server.properties")),
            stdout=open(self.dir / "stdout.log", "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_port(self.port, timeout, self.proc, "kafka")

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_process(self.proc, 30)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


# --- one server of each kind per test session, shared by every conftest ----

_servers: dict[str, object] = {}
_users: dict[str, int] = {}


@contextmanager
def shared(kind: str) -> Iterator[Any]:
    """The session's server of `kind` ("postgres", "redis", "kafka"), started
    on first use and stopped when its last user (a session fixture) ends."""
    if kind not in _servers:
        server: Any = {"postgres": Postgres, "redis": Redis, "kafka": Kafka}[kind]()
        server.start()
        _servers[kind] = server
    _users[kind] = _users.get(kind, 0) + 1
    try:
        yield _servers[kind]
    finally:
        _users[kind] -= 1
        if _users[kind] == 0:
            server = _servers.pop(kind)
            getattr(server, "cleanup", server.stop)()


_databases = itertools.count()


def new_database(pg: Postgres, prefix: str = "db") -> str:
    """A fresh database on the shared server: each module starts empty."""
    return pg.create_database(f"{prefix}_{os.getpid()}_{next(_databases)}")
