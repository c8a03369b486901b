"""Writing the outbox inside the caller's transaction: index changes,
numbered per tenant (the change feed's positions), and audit records
(RecordAudit), each batch with one INSERT; and pruning old audit records."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import Connection, bindparam, delete, func, insert, select, text

from common.gen.dicomserver.v1 import events_pb2
from metadata_svc.schema import KIND_AUDIT, KIND_INSTANCE, EventRow

# PostgreSQL: writers take this transaction lock before they read what they
# change, so outbox sequences are handed out in commit order (a reader that
# has seen sequence N has seen every event before N: the relay and the
# embedded event log read by sequence) and the index rows a writer read stay
# as it read them. SQLite serializes writers anyway (BEGIN IMMEDIATE).
OUTBOX_LOCK = 0x6F7574  # "out"
_LOCK = text(f"SELECT pg_advisory_xact_lock({OUTBOX_LOCK})")  # a constant: no parameters to bind
_NEWEST_FEED_SEQUENCE = select(func.max(EventRow.feed_sequence)).where(EventRow.tenant == bindparam("tenant"))
_INSERT = insert(EventRow)


def lock(conn: Connection) -> None:
    """Serializes this transaction with every other outbox writer until it ends."""
    if conn.dialect.name == "postgresql":
        conn.execute(_LOCK)


def append_changes(
    conn: Connection,
    changes: Sequence[tuple[events_pb2.Event, str]],
    now: datetime,
    newest_feed: Mapping[str, int] | None = None,
) -> None:
    """Index changes (an event and its Study Instance UID, the relay's key),
    in order. The caller holds the lock, so each tenant's next feed number
    is its newest plus one; `newest_feed` has those the caller read since
    it took the lock (the others are read here)."""
    if not changes:
        return
    feed = dict(newest_feed or {})
    for tenant in dict.fromkeys(event.tenant for event, _ in changes):
        if tenant not in feed:
            feed[tenant] = conn.scalar(_NEWEST_FEED_SEQUENCE, {"tenant": tenant}) or 0
    rows = []
    for event, study_uid in changes:
        feed[event.tenant] += 1
        rows.append(
            {
                "tenant": event.tenant,
                "kind": KIND_INSTANCE,
                "feed_sequence": feed[event.tenant],
                "study_instance_uid": study_uid,
                "created": now,
                "payload": event.SerializeToString(),
            }
        )
    conn.execute(_INSERT, rows)


def append_audit(conn: Connection, records: Sequence[events_pb2.AuditRecord], now: datetime) -> None:
    """Audit records (checked by the caller), each as an Event of its tenant
    ("" when none was known); a record without a time gets `now`. Only the
    outbox readers see them: the change feed shows index changes only."""
    if not records:
        return
    lock(conn)
    rows = []
    for rec in records:
        event = events_pb2.Event(tenant=rec.tenant, audit=rec)
        if not rec.HasField("time"):
            event.audit.time.FromDatetime(now)
        rows.append(
            {
                "tenant": rec.tenant,
                "kind": KIND_AUDIT,
                "feed_sequence": None,
                "study_instance_uid": rec.study_instance_uid,
                "created": now,
                "payload": event.SerializeToString(),
            }
        )
    conn.execute(_INSERT, rows)


def prune_audit(conn: Connection, older_than: datetime) -> int:
    """Deletes audit records written before `older_than`; returns how many.
    Index changes stay (the change feed keeps them all)."""
    result = conn.execute(delete(EventRow).where(EventRow.kind == KIND_AUDIT, EventRow.created < older_than))
    return int(result.rowcount or 0)
