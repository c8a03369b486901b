"""RecordAudit over gRPC (SQLite and PostgreSQL): audit records reach the
outbox readers with every field, never the change feed, whose `latest`
stays the newest index change; bad batches are refused whole."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import grpc
import pytest

from common import audit
from common.gen.dicomserver.v1 import events_pb2
from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from testbed.records import make_ds, record

Audit = events_pb2.AuditRecord


def full_record(tenant: str, n: int = 1) -> Audit:
    rec = Audit(
        tenant=tenant,
        subject=f"user-{n}",
        source_address="192.0.2.7:51234",
        edge="dicomweb",
        action=Audit.ACTION_DELETE,
        operation="DELETE /studies/{study}/series/{series}",
        outcome=Audit.OUTCOME_SUCCESS,
        status=204,
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.4",
        sop_instance_uid="1.2.3.4.5",
        detail="",
        request_id=f"req-{n}",
    )
    rec.time.FromDatetime(datetime(2026, 11, 26, 3, 4, 5, 678000, tzinfo=UTC))
    return rec


def record_audit(stub: Any, *records: Audit) -> None:
    stub.RecordAudit(md_pb.RecordAuditRequest(records=records))


def outbox_after(stub: Any, after: int) -> list[events_pb2.Event]:
    return list(stub.ReadOutbox(md_pb.ReadOutboxRequest(after_sequence=after, limit=1000)).events)


def latest_outbox(stub: Any) -> int:
    return int(stub.ReadOutbox(md_pb.ReadOutboxRequest(after_sequence=2**62, limit=1)).latest_sequence)


def feed(stub: Any, tenant: str, after: int = 0) -> md_pb.ReadChangeFeedResponse:
    return stub.ReadChangeFeed(md_pb.ReadChangeFeedRequest(tenant=tenant, after_sequence=after))


def test_outbox_readers_get_audit_records_and_the_change_feed_does_not(grpc_stub: Any, tenant: str) -> None:
    start = latest_outbox(grpc_stub)
    grpc_stub.IndexInstances(md_pb.IndexInstancesRequest(records=[record(make_ds("5.1", "5.1.1", "5.1.1.1"), tenant)]))
    denied = Audit(
        source_address="[2001:db8::1]:443",
        edge="dicomweb",
        action=Audit.ACTION_AUTHENTICATE,
        operation="GET /studies",
        outcome=Audit.OUTCOME_DENIED,
        status=401,
        detail="bad token",
    )
    record_audit(grpc_stub, full_record(tenant, 1), denied, full_record(tenant, 2))

    events = outbox_after(grpc_stub, start)
    assert [e.WhichOneof("kind") for e in events] == ["instance_stored", "audit", "audit", "audit"]
    assert [e.tenant for e in events] == [tenant, tenant, "", tenant]
    assert events[1].audit == full_record(tenant, 1) and events[3].audit == full_record(tenant, 2)
    # A record without a time gets the time it was recorded.
    assert events[2].audit.time.seconds > 0 and events[2].audit.detail == "bad token"
    assert [e.sequence for e in events] == sorted({e.sequence for e in events})

    # The change feed (numbered per tenant) has the index change only, and
    # its latest position is that change's.
    (change,) = feed(grpc_stub, tenant).events
    assert change.instance_stored == events[0].instance_stored
    assert feed(grpc_stub, tenant).latest_sequence == change.sequence
    assert feed(grpc_stub, tenant, after=change.sequence).events == []
    assert feed(grpc_stub, tenant, after=change.sequence).latest_sequence == change.sequence
    record_audit(grpc_stub, full_record(tenant, 3))
    assert feed(grpc_stub, tenant).latest_sequence == change.sequence


def test_a_tenant_with_only_audit_records_has_an_empty_change_feed(grpc_stub: Any, tenant: str) -> None:
    record_audit(grpc_stub, full_record(tenant))
    empty = feed(grpc_stub, tenant)
    assert empty.events == [] and empty.latest_sequence == 0


def test_empty_batch_changes_nothing(grpc_stub: Any) -> None:
    before = latest_outbox(grpc_stub)
    record_audit(grpc_stub)
    assert latest_outbox(grpc_stub) == before


def _long(name: str) -> Audit:
    rec = full_record("t")
    setattr(rec, name, "9" * (audit.LIMITS[name] + 1))
    return rec


@pytest.mark.parametrize(
    "records",
    [
        pytest.param([full_record("t")] * (audit.MAX_RECORDS_PER_CALL + 1), id="too-many"),
        pytest.param([full_record("Upper")], id="bad-tenant"),
        pytest.param([full_record("t"), full_record("a/b")], id="bad-tenant-second"),
        pytest.param([full_record("t"), _long("subject")], id="long-second"),
        *(pytest.param([_long(name)], id=f"long-{name}") for name in audit.LIMITS if name != "tenant"),
        pytest.param([Audit(tenant="t", detail="a\x00b")], id="nul"),
        pytest.param([Audit(tenant="t", action=99)], id="unknown-action"),
        pytest.param([Audit(tenant="t", outcome=42)], id="unknown-outcome"),
        pytest.param([Audit(tenant="t", time={"seconds": 253402300800})], id="time-out-of-range"),
    ],
)
def test_bad_batches_are_refused_whole(grpc_stub: Any, records: list[Audit]) -> None:
    before = latest_outbox(grpc_stub)
    with pytest.raises(grpc.RpcError) as err:
        record_audit(grpc_stub, *records)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "audit" in (err.value.details() or "") or "tenant" in (err.value.details() or "")
    assert latest_outbox(grpc_stub) == before


def test_the_largest_batch_is_one_transaction(grpc_stub: Any, tenant: str) -> None:
    before = latest_outbox(grpc_stub)
    longest = {name: "7" * limit for name, limit in audit.LIMITS.items() if name != "tenant"}
    record_audit(grpc_stub, *[Audit(tenant=tenant, **longest)] * audit.MAX_RECORDS_PER_CALL)
    events = outbox_after(grpc_stub, before)
    assert len(events) == audit.MAX_RECORDS_PER_CALL
    assert {e.audit.detail for e in events} == {longest["detail"]}
    assert [e.sequence for e in events] == list(range(events[0].sequence, events[0].sequence + len(events)))


def test_old_audit_records_are_pruned_index_changes_stay(grpc_stub: Any, md_index: Any, tenant: str) -> None:
    """prune_audit deletes audit records written before the cutoff and
    nothing else: index changes and newer records stay for the readers."""
    from datetime import timedelta

    from sqlalchemy import update

    from metadata_svc.schema import EventRow

    start = latest_outbox(grpc_stub)
    record_audit(grpc_stub, full_record(tenant, 1), full_record(tenant, 2))
    grpc_stub.IndexInstances(md_pb.IndexInstancesRequest(records=[record(make_ds("6.1", "6.1.1", "6.1.1.1"), tenant)]))
    record_audit(grpc_stub, full_record(tenant, 3))
    old_ones = [e.sequence for e in outbox_after(grpc_stub, start)][:2]
    long_ago = datetime.now(UTC) - timedelta(days=30)
    with md_index.db.writer() as session, session.begin():
        session.execute(update(EventRow).where(EventRow.sequence.in_(old_ones)).values(created=long_ago))
        # The index change is as old: it stays all the same.
        session.execute(
            update(EventRow).where(EventRow.sequence > start, EventRow.kind == "instance").values(created=long_ago)
        )

    assert md_index.prune_audit(datetime.now(UTC) - timedelta(days=7)) == 2
    left = outbox_after(grpc_stub, start)
    assert [(e.WhichOneof("kind"), e.audit.request_id) for e in left] == [("instance_stored", ""), ("audit", "req-3")]
    assert md_index.prune_audit(datetime.now(UTC) - timedelta(days=7)) == 0
