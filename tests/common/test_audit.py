"""common.audit.AuditLog against real services: records survive a stopped
metadata service and arrive once it is back; the queue keeps the newest
when full and counts what it dropped; records go all the way through the
launched archive's event bus into its audit table; whatever a caller
passes, record() neither raises nor lets a malformed field spoil a batch."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY
from sqlalchemy import create_engine, text

from common import audit, errors
from common.audit import AuditLog
from common.clients import MetadataClient, channel
from common.gen.dicomserver.v1 import events_pb2
from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from common.gen.dicomserver.v1 import metadata_service_pb2_grpc as md_grpc
from testbed.processes import free_port, stop_process
from tests.support import ROOT, Archive

Audit = events_pb2.AuditRecord


def dropped(reason: str) -> float:
    return REGISTRY.get_sample_value("dicomserver_audit_dropped_total", {"reason": reason}) or 0.0


def wait_until(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class MetadataProcess:
    """`python -m metadata_svc` on a fixed port and data folder, stopped and
    started again as an operator would."""

    def __init__(self, data_dir: Path) -> None:
        self.addr = f"127.0.0.1:{free_port()}"
        self.env = {
            **os.environ,
            "DICOMSERVER_DATA_DIR": str(data_dir),
            "DICOMSERVER_METADATA_ADDR": self.addr,
            "DICOMSERVER_LOG_LEVEL": "WARNING",
        }
        self.log = data_dir / "metadata.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "metadata_svc"],
            cwd=ROOT,
            env=self.env,
            stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT,
        )
        with grpc.insecure_channel(self.addr) as ch:

            def serving() -> bool:
                assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
                try:
                    return (
                        health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1).status
                        == health_pb2.HealthCheckResponse.SERVING
                    )
                except grpc.RpcError:
                    return False

            wait_until("metadata_svc serving", serving)

    def stop(self) -> None:
        if self.proc is not None:
            assert stop_process(self.proc) == 0, self.log.read_text()
            self.proc = None

    def audit_events(self, prefix: str = "") -> list[events_pb2.Event]:
        """Audit events in the outbox whose request id starts with `prefix`."""
        events: list[events_pb2.Event] = []
        with grpc.insecure_channel(self.addr) as ch:
            stub = md_grpc.MetadataServiceStub(ch)
            while page := stub.ReadOutbox(
                md_pb.ReadOutboxRequest(after_sequence=events[-1].sequence if events else 0, limit=1000)
            ).events:
                events.extend(page)
        return [e for e in events if e.HasField("audit") and e.audit.request_id.startswith(prefix)]

    def audit_request_ids(self, prefix: str = "") -> list[str]:
        return [e.audit.request_id.removeprefix(prefix) for e in self.audit_events(prefix)]


@pytest.fixture
def metadata_process(tmp_path: Path) -> Iterator[MetadataProcess]:
    """One to stop and start."""
    md = MetadataProcess(tmp_path)
    yield md
    md.stop()


@pytest.fixture(scope="module")
def running_metadata(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetadataProcess]:
    """One that keeps running; each test tells its records by request id prefix."""
    md = MetadataProcess(tmp_path_factory.mktemp("md"))
    md.start()
    yield md
    md.stop()


@pytest.fixture
def prefix() -> str:
    return uuid.uuid4().hex[:8] + "-"


def numbered(n: int, prefix: str = "") -> Audit:
    return Audit(
        tenant="t",
        subject="alice",
        edge="dicomweb",
        action=Audit.ACTION_READ,
        outcome=Audit.OUTCOME_SUCCESS,
        status=200,
        operation="GET /studies",
        request_id=f"{prefix}r{n}",
    )


def test_records_wait_out_a_stopped_metadata_service(metadata_process: MetadataProcess) -> None:
    metadata_process.start()
    log = AuditLog(
        MetadataClient(channel(metadata_process.addr)),
        flush_interval=0.05,
        retry_backoff=0.05,
        max_backoff=0.2,
        call_timeout=2,
    )
    try:
        for n in range(3):
            log.record(numbered(n))
        assert log.flush(30)
        assert metadata_process.audit_request_ids() == ["r0", "r1", "r2"]

        metadata_process.stop()
        for n in range(3, 8):
            log.record(numbered(n))
        assert not log.flush(1.0)  # nobody to take them
        assert log.pending == 5 and log.dropped == 0

        metadata_process.start()
        assert log.flush(60)
        assert metadata_process.audit_request_ids() == [f"r{n}" for n in range(8)]  # each once, in order
        assert log.delivered == 8 and log.dropped == 0
    finally:
        log.close(5)


def wait_until_waiting(log: AuditLog, timeout: float = 30) -> None:
    """Until the sender thread sleeps in _next_batch (waiting for records or
    for the interval): synchronisation on the thread's stack, not a sleep."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frame = sys._current_frames().get(log._thread.ident) if log._thread else None  # noqa: SLF001
        names = []
        while frame is not None:
            names.append(frame.f_code.co_name)
            frame = frame.f_back
        if names[:2] == ["wait", "_next_batch"]:
            return
        time.sleep(0.005)
    raise AssertionError("the audit sender never went back to waiting")


def test_records_after_a_quiet_spell_go_out_without_a_flush(running_metadata: MetadataProcess, prefix: str) -> None:
    """The sender sleeps while the queue is empty; a new record must wake it
    (it once slept until the next full batch or shutdown)."""
    log = AuditLog(MetadataClient(channel(running_metadata.addr)), flush_interval=0.05)
    try:
        for n in range(3):
            log.record(numbered(n, prefix))
            deadline = time.monotonic() + 30
            while log.pending and time.monotonic() < deadline:
                time.sleep(0.05)
            assert log.pending == 0, f"record {n} was not sent"
            wait_until_waiting(log)  # the sender sleeps again before the next record
        assert [r for r in running_metadata.audit_request_ids() if r.startswith(prefix)] == [
            f"{prefix}r{n}" for n in range(3)
        ]
    finally:
        log.close(5)


def test_a_full_queue_drops_the_oldest_and_counts_them(metadata_process: MetadataProcess) -> None:
    """Nothing is sent until flush() (a long interval, a large batch): the
    queue bound alone decides what is kept."""
    before = dropped("queue_full")
    log = AuditLog(
        MetadataClient(channel(metadata_process.addr)),
        queue_size=5,
        batch_size=200,
        flush_interval=3600,
        retry_backoff=0.05,
        max_backoff=0.2,
        call_timeout=2,
    )
    try:
        for n in range(8):
            log.record(numbered(n))
        assert log.pending == 5 and log.dropped == 3
        assert dropped("queue_full") == before + 3
        metadata_process.start()
        assert log.flush(60)
        assert metadata_process.audit_request_ids() == ["r3", "r4", "r5", "r6", "r7"]
    finally:
        log.close(5)


def test_flush_sends_at_once_on_a_freshly_booted_machine(
    running_metadata: MetadataProcess, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The monotonic clock counts from boot: one second after boot, with an
    hour's flush interval, flush() still sends what is queued at once (it
    once meant "due" as time 0.0 and waited until the uptime passed the
    interval). The clock is shifted, as booting cannot be caused here."""
    real = time.monotonic
    offset = real() - 1.0
    monkeypatch.setattr(audit, "time", SimpleNamespace(monotonic=lambda: real() - offset))
    log = AuditLog(MetadataClient(channel(running_metadata.addr)), batch_size=200, flush_interval=3600)
    try:
        for n in range(3):
            log.record(numbered(n, prefix))
        assert log.flush(30), "flush() waited for the flush interval"
        assert running_metadata.audit_request_ids(prefix) == ["r0", "r1", "r2"]
        # Later records wait for the interval again: flush() changed nothing for good.
        log.record(numbered(3, prefix))
        wait_until_waiting(log)  # back to sleep, for the interval, with the record queued
        assert log.pending == 1
    finally:
        log.close(5)


def test_close_delivers_what_is_queued_then_drops_later_records(running_metadata: MetadataProcess, prefix: str) -> None:
    log = AuditLog(MetadataClient(channel(running_metadata.addr)), flush_interval=3600)
    for n in range(250):  # more than one batch
        log.record(numbered(n, prefix))
    before = dropped("closed")
    log.close(30)
    assert running_metadata.audit_request_ids(prefix) == [f"r{n}" for n in range(250)]
    log.record(numbered(999, prefix))
    assert dropped("closed") == before + 1 and log.pending == 0


def test_close_with_the_service_away_gives_up_and_counts(tmp_path: Path) -> None:
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens there
    log = AuditLog(MetadataClient(channel(nowhere)), flush_interval=0.01, retry_backoff=0.05, call_timeout=0.5)
    before = dropped("shutdown")
    for n in range(4):
        log.record(numbered(n))
    log.close(0.5)
    assert dropped("shutdown") == before + 4 and log.delivered == 0 and log.pending == 0


def test_record_never_raises_and_fixes_what_it_can(running_metadata: MetadataProcess, prefix: str) -> None:
    log = AuditLog(MetadataClient(channel(running_metadata.addr)), edge="dimse", flush_interval=0.05)
    invalid = dropped("invalid")
    try:
        log.record(no_such_field="x")
        log.record(status="not a number")
        log.record(action="no such action")
        assert dropped("invalid") == invalid + 3
        # Over-long and malformed values from a hostile request still make a record.
        log.record(
            tenant="Not/A/Tenant",
            study_instance_uid="1." * 200,
            operation="GET /studies/\x00\n",
            detail="refused",
            request_id=prefix + "hostile",
            action="read",
            outcome="denied",
            status=400,
        )
        log.record(
            Audit(tenant="t", request_id=prefix + "named", action=Audit.ACTION_WRITE),
            outcome="failure",
            time=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        )
        assert log.flush(30)
        hostile, named = running_metadata.audit_events(prefix)
        assert hostile.tenant == "" and hostile.audit.tenant == ""
        assert hostile.audit.study_instance_uid == ("1." * 32)
        assert hostile.audit.operation == "GET /studies/\ufffd\ufffd"
        assert hostile.audit.detail == "refused (the tenant asked for is malformed)"
        assert (hostile.audit.edge, hostile.audit.action, hostile.audit.outcome, hostile.audit.status) == (
            "dimse",
            Audit.ACTION_READ,
            Audit.OUTCOME_DENIED,
            400,
        )
        assert hostile.audit.time.seconds > 0
        assert (named.tenant, named.audit.action, named.audit.outcome) == (
            "t",
            Audit.ACTION_WRITE,
            Audit.OUTCOME_FAILURE,
        )
        assert named.audit.time.ToDatetime(tzinfo=UTC) == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    finally:
        log.close(5)


def test_a_refused_record_does_not_take_its_batch_with_it(running_metadata: MetadataProcess, prefix: str) -> None:
    """The real service never refuses a sanitized record; this client does
    (a fault that cannot be caused otherwise) for one record of ten."""
    real = MetadataClient(channel(running_metadata.addr))

    class Refusing:
        def record_audit(self, records: list[Audit], timeout: float = 10.0) -> None:
            if any(r.request_id == prefix + "r6" for r in records):
                raise errors.InvalidArgument("audit record refused")
            real.record_audit(records, timeout=timeout)

    before = dropped("refused")
    log = AuditLog(Refusing(), flush_interval=3600)
    for n in range(10):
        log.record(numbered(n, prefix))
    log.close(30)
    assert running_metadata.audit_request_ids(prefix) == [f"r{n}" for n in range(10) if n != 6]
    assert dropped("refused") == before + 1


def test_disabled_log_sends_nothing(running_metadata: MetadataProcess, prefix: str) -> None:
    log = AuditLog(MetadataClient(channel(running_metadata.addr)), enabled=False, flush_interval=0.01)
    log.record(numbered(1, prefix))
    assert log.pending == 0 and log.flush(1)
    log.close(1)
    assert running_metadata.audit_request_ids(prefix) == []


def test_settings_turn_it_off_and_bound_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from common.settings import CommonSettings

    defaults = AuditLog.from_settings(CommonSettings(), None, "dicomweb")
    assert (defaults.enabled, defaults.queue_size, defaults.edge) == (True, 10000, "dicomweb")
    monkeypatch.setenv("DICOMSERVER_AUDIT_ENABLED", "false")
    monkeypatch.setenv("DICOMSERVER_AUDIT_QUEUE_SIZE", "7")
    configured = AuditLog.from_settings(CommonSettings(), None, "dimse")
    assert (configured.enabled, configured.queue_size) == (False, 7)


def test_sanitized_records_pass_the_service_check() -> None:
    hostile = Audit(tenant="UPPER", subject="s" * 1000, detail="\x00" * 2000, action=77, outcome=99)
    clean = audit.sanitize(hostile)
    audit.check(clean)
    assert (clean.tenant, len(clean.subject), clean.action, clean.outcome) == ("", 256, 0, 0)
    with pytest.raises(audit.InvalidValue):
        audit.check(hostile)


def test_through_the_archive_to_the_audit_table(archive: Archive) -> None:
    """AuditLog → the archive's metadata service → its event bus → the
    audit consumer's table, every field as recorded."""
    request_id = uuid.uuid4().hex
    when = datetime(2026, 11, 26, 12, 0, 1, 250000, tzinfo=UTC)
    log = AuditLog(MetadataClient(channel(archive.grpc_addrs["metadata"])), edge="dicomweb")
    log.record(
        tenant="default",
        subject="alice",
        source_address="198.51.100.4:55001",
        action=Audit.ACTION_DELETE,
        operation="DELETE /studies/{study}/series/{series}",
        outcome=Audit.OUTCOME_SUCCESS,
        status=204,
        study_instance_uid="1.2.840.1",
        series_instance_uid="1.2.840.1.2",
        sop_instance_uid="",
        detail="",
        request_id=request_id,
        time=when,
    )
    log.record(
        source_address="198.51.100.9:40000",
        action="authenticate",
        operation="GET /studies",
        outcome="denied",
        status=401,
        detail="bearer token expired",
        request_id=request_id + "-denied",
        time=when,
    )
    log.close(30)
    assert log.delivered == 2

    engine = create_engine(f"sqlite:///{archive.data_dir / 'eventbus.sqlite3'}")
    columns = (
        "tenant, kind, subject, source_address, edge, action, operation, outcome, status,"
        " study_instance_uid, series_instance_uid, sop_instance_uid, detail, request_id, event_time"
    )

    def rows() -> list[Any]:
        try:
            with engine.connect() as conn:
                return list(
                    conn.execute(
                        text(f"SELECT {columns} FROM audit_log WHERE request_id LIKE :r ORDER BY sequence"),
                        {"r": request_id + "%"},
                    )
                )
        except Exception:  # the table is being written
            return []

    try:
        wait_until("the audit consumer's entries", lambda: len(rows()) == 2)
        stamp = when.replace(tzinfo=None)
        assert [tuple(r[:-1]) + (datetime.fromisoformat(str(r[-1])).replace(tzinfo=None),) for r in rows()] == [
            (
                "default",
                "audit",
                "alice",
                "198.51.100.4:55001",
                "dicomweb",
                "delete",
                "DELETE /studies/{study}/series/{series}",
                "success",
                204,
                "1.2.840.1",
                "1.2.840.1.2",
                "",
                "",
                request_id,
                stamp,
            ),
            (
                "",
                "audit",
                "",
                "198.51.100.9:40000",
                "dicomweb",
                "authenticate",
                "GET /studies",
                "denied",
                401,
                "",
                "",
                "",
                "bearer token expired",
                request_id + "-denied",
                stamp,
            ),
        ]
    finally:
        engine.dispose()
