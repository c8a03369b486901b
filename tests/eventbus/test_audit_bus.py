"""Audit records on the bus: the audit consumer stores every field, the
metadata consumer skips them (embedded log) or never sees them (Kafka: the
relay puts them on their own topic, keyed by tenant), and an audit table of
an older release gains the new columns on start."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, select, text

from common.clients import channel
from common.gen.dicomserver.v1 import events_pb2
from eventbus.consumer import ConsumerLoop
from eventbus.handlers import audit_sink, metadata_precompute
from eventbus.store import AuditEntry, DeadLetter, Store
from eventbus.transports import EmbeddedLog
from metadata_svc.schema import SeriesMetadata
from testbed.servers import Kafka
from tests.eventbus.bus_support import Bus, index_study, metadata_sops, read_topic, wait_until

Audit = events_pb2.AuditRecord
FIELDS = (
    "sequence",
    "tenant",
    "kind",
    "subject",
    "source_address",
    "edge",
    "action",
    "operation",
    "outcome",
    "status",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "detail",
    "request_id",
    "event_time",
)
WHEN = datetime(2026, 11, 26, 3, 4, 5, 678000, tzinfo=UTC)


def audit_record(tenant: str, n: int) -> Audit:
    rec = Audit(
        tenant=tenant,
        subject=f"user-{n}",
        source_address=f"192.0.2.{n}:4000{n}",
        edge="dicomweb",
        action=Audit.ACTION_READ,
        operation="GET /studies/{study}/metadata",
        outcome=Audit.OUTCOME_SUCCESS,
        status=200,
        study_instance_uid=f"4.{n}",
        series_instance_uid=f"4.{n}.1",
        sop_instance_uid=f"4.{n}.1.1",
        detail=f"detail {n}",
        request_id=f"req-{n}",
    )
    rec.time.FromDatetime(WHEN)
    return rec


def refused_login(n: int) -> Audit:
    rec = Audit(
        source_address="[2001:db8::5]:1234",
        edge="dimse",
        action=Audit.ACTION_AUTHENTICATE,
        operation="A-ASSOCIATE",
        outcome=Audit.OUTCOME_DENIED,
        status=0x0001,
        detail="calling AE title not allowed",
        request_id=f"denied-{n}",
    )
    rec.time.FromDatetime(WHEN)
    return rec


def expected_row(sequence: int, rec: Audit, action: str, outcome: str) -> tuple[Any, ...]:
    return (
        sequence,
        rec.tenant,
        "audit",
        rec.subject,
        rec.source_address,
        rec.edge,
        action,
        rec.operation,
        outcome,
        rec.status,
        rec.study_instance_uid,
        rec.series_instance_uid,
        rec.sop_instance_uid,
        rec.detail,
        rec.request_id,
        WHEN.replace(tzinfo=None),
    )


def audit_rows(engine: Any, kind: str = "audit") -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(*(getattr(AuditEntry, f) for f in FIELDS))
            .where(AuditEntry.kind == kind)
            .order_by(AuditEntry.sequence)
        ).all()
    # SQLite hands back naive datetimes: compare in UTC without tzinfo.
    return [(*r[:-1], r[-1].astimezone(UTC).replace(tzinfo=None) if r[-1].tzinfo else r[-1]) for r in rows]


@pytest.fixture(params=["sqlite", "postgresql"])
def metadata(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(f"metadata_{'pg' if request.param == 'postgresql' else 'sqlite'}")


def test_embedded_log_audit_consumer_stores_every_field_and_metadata_skips(metadata: Any, tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'bus.sqlite3'}")
    ch = channel(metadata.addr)
    loops = [
        ConsumerLoop("metadata", EmbeddedLog("metadata", ch, store), metadata_precompute(ch), batch=4),
        ConsumerLoop("audit", EmbeddedLog("audit", ch, store), audit_sink(store), batch=4),
    ]
    sops = index_study(metadata.index, "a", "4.1", 1, 2)
    records = [audit_record("a", 1), refused_login(2), audit_record("b", 3)]
    metadata.index.record_audit(records)
    later = index_study(metadata.index, "a", "4.2", 1, 1)
    while sum(loop.run_once() for loop in loops):
        pass
    assert [loop.dead_lettered for loop in loops] == [0, 0]
    assert store.offset("consumer:metadata") == store.offset("consumer:audit") > 0
    events, _ = metadata.index.read_outbox(0, 100)
    audit_seqs = [e.sequence for e in events if e.HasField("audit")]
    assert audit_rows(store.engine) == [
        expected_row(audit_seqs[0], records[0], "read", "success"),
        expected_row(audit_seqs[1], records[1], "authenticate", "denied"),
        expected_row(audit_seqs[2], records[2], "read", "success"),
    ]
    assert [r[12] for r in audit_rows(store.engine, "instance_stored")] == sops + later
    # The metadata consumer did its work around the audit records.
    assert metadata.index.refresh_metadata("a", "4.1") == 0 and metadata.index.refresh_metadata("a", "4.2") == 0
    assert metadata_sops(metadata.index, "a", "4.1") == sops and metadata_sops(metadata.index, "a", "4.2") == later
    with store.engine.connect() as conn:
        assert conn.execute(select(DeadLetter)).all() == []
    # Delivered again (at-least-once): still one entry each.
    again = ConsumerLoop("audit-replay", EmbeddedLog("audit-replay", ch, store), audit_sink(store), batch=100)
    again.run_once()
    with store.engine.connect() as conn:
        assert conn.execute(select(AuditEntry.deliveries).where(AuditEntry.kind == "audit")).scalars().all() == [
            2,
            2,
            2,
        ]
    store.dispose()


def test_an_older_audit_table_gains_the_new_columns(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    old = create_engine(url)
    with old.begin() as conn:  # the table as the previous release made it
        conn.execute(
            text(
                "CREATE TABLE audit_log (id INTEGER NOT NULL PRIMARY KEY, sequence BIGINT NOT NULL,"
                " tenant VARCHAR(63) NOT NULL, kind VARCHAR(40) NOT NULL, study_instance_uid VARCHAR(64) NOT NULL,"
                " series_instance_uid VARCHAR(64) NOT NULL, sop_instance_uid VARCHAR(64) NOT NULL,"
                " event_time DATETIME NOT NULL, recorded DATETIME NOT NULL, deliveries INTEGER NOT NULL,"
                " CONSTRAINT uq_audit_sequence UNIQUE (sequence))"
            )
        )
        conn.execute(
            text(
                "INSERT INTO audit_log (sequence, tenant, kind, study_instance_uid, series_instance_uid,"
                " sop_instance_uid, event_time, recorded, deliveries)"
                " VALUES (1, 'a', 'instance_stored', '1.2', '1.2.3', '1.2.3.4', '2026-01-01', '2026-01-01', 1)"
            )
        )
    old.dispose()
    store = Store(url)
    event = events_pb2.Event(sequence=2, tenant="a", audit=audit_record("a", 1))
    store.audit(event)
    rows = audit_rows(store.engine, "instance_stored") + audit_rows(store.engine)
    assert rows[0][:3] == (1, "a", "instance_stored") and rows[0][3:10] == ("", "", "", "", "", "", 0)
    assert rows[1] == expected_row(2, audit_record("a", 1), "read", "success")
    indexes = {i["name"] for i in inspect(store.engine).get_indexes("audit_log")}
    assert {"ix_audit_tenant_study_time", "ix_audit_subject_time"} <= indexes
    store.dispose()
    Store(url).dispose()  # a second start finds nothing to add


def test_kafka_audit_records_have_their_own_topic(kafka: Kafka, metadata_pg: Any, tmp_path: Path) -> None:
    topic = f"events-{uuid.uuid4().hex[:8]}"
    audit_topic = topic + ".audit"
    bus = Bus(
        tmp_path,
        metadata_pg.addr,
        kafka_bootstrap=kafka.bootstrap,
        kafka_topic=topic,
        kafka_audit_topic=audit_topic,
        kafka_dead_letter_topic=topic + ".dlq",
        kafka_partitions="3",
    )
    bus.start()
    try:
        sops = index_study(metadata_pg.index, "k", "6.1", 1, 2)
        records = [audit_record("k", 1), refused_login(2), audit_record("j", 3), audit_record("k", 4)]
        metadata_pg.index.record_audit(records)
        sops += index_study(metadata_pg.index, "k", "6.2", 1, 1)
        wait_until("every event in the audit log", lambda: bus.scalar("SELECT count(*) FROM audit_log") == 7)
        instance_messages = read_topic(kafka, topic, 3)
        audit_messages = read_topic(kafka, audit_topic, 4)
        assert (
            sorted(events_pb2.Event.FromString(m.value()).WhichOneof("kind") for m in instance_messages)
            == ["instance_stored"] * 3
        )
        by_request = {events_pb2.Event.FromString(m.value()).audit.request_id: m for m in audit_messages}
        assert sorted(by_request) == sorted(r.request_id for r in records)
        assert [by_request[r.request_id].key() for r in records] == [b"k", b"", b"j", b"k"]
        assert len({by_request[r.request_id].partition() for r in (records[0], records[3])}) == 1
        events, _ = metadata_pg.index.read_outbox(0, 100)
        audit_seqs = [e.sequence for e in events if e.HasField("audit")]
        assert audit_rows(bus.db) == [
            expected_row(seq, rec, action, outcome)
            for seq, rec, (action, outcome) in zip(
                audit_seqs,
                records,
                [("read", "success"), ("authenticate", "denied"), ("read", "success"), ("read", "success")],
                strict=False,
            )
        ]

        def precomputed() -> int:
            with metadata_pg.index.db.reader() as session:
                return len(session.scalars(select(SeriesMetadata)).all())

        wait_until("the metadata consumer's work", lambda: precomputed() == 2)
        assert metadata_pg.index.refresh_metadata("k", "6.1") == 0 == metadata_pg.index.refresh_metadata("k", "6.2")
        assert metadata_sops(metadata_pg.index, "k", "6.1") + metadata_sops(metadata_pg.index, "k", "6.2") == sops
        assert bus.scalar("SELECT count(*) FROM dead_letters") == 0
    finally:
        assert bus.stop() == 0, bus.log()
