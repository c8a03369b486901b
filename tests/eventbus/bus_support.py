"""Helpers of the event-bus tests: indexing through the real ingest record
builder, running `python -m eventbus`, reading its database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer
from sqlalchemy import create_engine, text

from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from testbed.processes import stop_process
from testbed.records import make_ds, record
from testbed.servers import Kafka

ROOT = Path(__file__).resolve().parents[2]


def index_study(index, tenant: str, study: str, series: int, per_series: int) -> list[str]:  # type: ignore[no-untyped-def]
    """Indexes one study instance by instance (one event each); returns SOP UIDs."""
    sops = []
    for se in range(1, series + 1):
        for n in range(1, per_series + 1):
            sop = f"{study}.{se}.{n}"
            index.index(
                [record(make_ds(study, f"{study}.{se}", sop, series_number=str(se), instance_number=str(n)), tenant)],
                md_pb.DUPLICATE_POLICY_OVERWRITE,
            )
            sops.append(sop)
    return sops


def wait_until(what: str, check: Callable[[], bool], timeout: float = 60, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


class Bus:
    """`python -m eventbus` as a child process with its own database."""

    def __init__(self, data_dir: Path, metadata_addr: str, **env: str) -> None:
        self.data_dir = data_dir
        self.env = {
            **os.environ,
            "DICOMSERVER_DATA_DIR": str(data_dir),
            "DICOMSERVER_METADATA_ADDR": metadata_addr,
            # Its RoutingService on a free port: several buses may run at once.
            "DICOMSERVER_EVENTBUS_ADDR": "127.0.0.1:0",
            "DICOMSERVER_LOG_LEVEL": "WARNING",
            **{f"DICOMSERVER_{k.upper()}": v for k, v in env.items()},
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.db = create_engine(f"sqlite:///{data_dir / 'eventbus.sqlite3'}")

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "eventbus"],
            cwd=ROOT,
            env=self.env,
            stdout=open(self.data_dir / "eventbus.log", "ab"),
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int:
        if self.proc is None:
            return 0
        code = stop_process(self.proc)
        self.proc = None
        return code

    def log(self) -> str:
        return (self.data_dir / "eventbus.log").read_text(errors="replace")

    def scalar(self, sql: str) -> int:
        try:
            with self.db.connect() as conn:
                return int(conn.execute(text(sql)).scalar() or 0)
        except Exception:  # not created yet
            return 0

    def audit(self) -> list[tuple[int, str, int]]:
        with self.db.connect() as conn:
            return [
                tuple(r)
                for r in conn.execute(
                    text("SELECT sequence, sop_instance_uid, deliveries FROM audit_log ORDER BY sequence")
                )
            ]  # type: ignore[misc]


def metadata_sops(index, tenant: str, study: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [json.loads(h)["00080018"]["Value"][0] for h in index.get_metadata(tenant, study)]


def read_topic(kafka: Kafka, topic: str, expected: int, timeout: float = 60) -> list[Any]:
    """Every message of a topic, with a throwaway consumer group."""
    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    messages: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(messages) < expected and time.monotonic() < deadline:
            messages += [m for m in consumer.consume(100, 0.5) if m.error() is None]
    finally:
        consumer.close()
    return messages
