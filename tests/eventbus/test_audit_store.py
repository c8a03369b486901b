"""The event bus's audit log store (eventbus/store.py) on SQLite and
PostgreSQL: each event is one row however often it is delivered, within a
batch or across batches, and every delivery is counted."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from common.gen.dicomserver.v1 import events_pb2
from eventbus.store import AUDIT_CHUNK, AuditEntry, Store
from testbed.servers import Postgres, new_database

Record = events_pb2.AuditRecord


def _stored(seq: int) -> events_pb2.Event:
    ev = events_pb2.Event(sequence=seq, tenant="t")
    ref = ev.instance_stored.location.ref
    ref.study_instance_uid, ref.series_instance_uid, ref.sop_instance_uid = "1.2", "1.2.3", f"1.2.3.{seq}"
    return ev


def _audit(seq: int) -> events_pb2.Event:
    return events_pb2.Event(
        sequence=seq,
        tenant="t",
        audit=Record(
            tenant="t",
            edge="dimse",
            subject="ae:CT1",
            action=Record.ACTION_WRITE,
            outcome=Record.OUTCOME_SUCCESS,
            status=0xB000,
            study_instance_uid="1.2",
        ),
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "sqlite":
        return Store(f"sqlite:///{tmp_path / 'bus.sqlite3'}")
    pg: Postgres = request.getfixturevalue("postgres")
    return Store(new_database(pg, "auditstore"))


def _rows(store: Store) -> dict[int, tuple[str, str, str, str, int, int]]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(
                AuditEntry.sequence,
                AuditEntry.kind,
                AuditEntry.subject,
                AuditEntry.sop_instance_uid,
                AuditEntry.outcome,
                AuditEntry.status,
                AuditEntry.deliveries,
            )
        )
        return {r[0]: tuple(r[1:]) for r in rows}  # type: ignore[misc]


def test_each_event_is_one_row_and_every_delivery_counts(store: Store) -> None:
    first = [_stored(1), _audit(2), _stored(1), _stored(3)]  # 1 delivered twice in one batch
    store.audit_many(first)
    store.audit_many([_stored(3), _audit(2)])  # redelivered in a later batch
    rows = _rows(store)
    assert rows == {
        1: ("instance_stored", "", "1.2.3.1", "", 0, 2),
        2: ("audit", "ae:CT1", "", "success", 0xB000, 2),
        3: ("instance_stored", "", "1.2.3.3", "", 0, 2),
    }
    store.dispose()


def test_batches_longer_than_a_chunk_keep_every_event(store: Store) -> None:
    n = AUDIT_CHUNK * 2 + 3
    store.audit_many([_audit(k) if k % 2 else _stored(k) for k in range(1, n + 1)])
    rows = _rows(store)
    assert sorted(rows) == list(range(1, n + 1))
    assert {r[-1] for r in rows.values()} == {1}
    store.dispose()
