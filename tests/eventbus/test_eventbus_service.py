"""EventBusService.GetAuditStatistics over a real audit log (the Store the
audit consumer writes), served over gRPC: calling AE titles, source hosts
and reads per study of the asked tenants only; bad requests refused."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from common.clients import EventBusClient, MetadataClient, channel
from common.errors import InvalidArgument
from common.gen.dicomserver.v1 import eventbus_service_pb2_grpc, events_pb2
from common.grpc_server import build_server
from eventbus.service import EventBusService, source_host
from eventbus.store import Store

Record = events_pb2.AuditRecord


def _event(seq: int, tenant: str, age_days: float = 0, **fields: object) -> events_pb2.Event:
    when = Timestamp()
    when.FromDatetime(datetime.now(UTC) - timedelta(days=age_days))
    return events_pb2.Event(sequence=seq, tenant=tenant, audit=Record(time=when, tenant=tenant, **fields))


@pytest.fixture
def client(tmp_path: Path) -> Iterator[EventBusClient]:
    store = Store(f"sqlite:///{tmp_path / 'eventbus.sqlite3'}")
    read = dict(edge="dicomweb", action=Record.ACTION_READ, outcome=Record.OUTCOME_SUCCESS)
    events = [
        _event(1, "a", edge="dimse", subject="ae:CT1", source_address="10.0.0.5:4001", action=Record.ACTION_WRITE),
        _event(2, "a", edge="dimse", subject="ae:CT1", source_address="10.0.0.5:4002", action=Record.ACTION_WRITE),
        _event(
            3,
            "a",
            edge="dimse",
            subject="ae:MR2",
            source_address="10.0.0.6:4003",
            action=Record.ACTION_READ,
            outcome=Record.OUTCOME_SUCCESS,
            study_instance_uid="1.2.1",
        ),
        _event(4, "a", source_address="::1:5000", study_instance_uid="1.2.1", **read),
        _event(5, "a", source_address="::1:5001", study_instance_uid="1.2.2", **read),
        _event(
            6, "a", source_address="::1:5002", study_instance_uid="1.2.1", **{**read, "outcome": Record.OUTCOME_FAILURE}
        ),
        _event(7, "a", age_days=40, source_address="::1:5003", study_instance_uid="1.2.3", **read),
        _event(
            8,
            "b",
            edge="dimse",
            subject="ae:OTHER",
            source_address="10.9.9.9:1",
            study_instance_uid="1.2.1",
            **{k: v for k, v in read.items() if k != "edge"},
        ),
    ]
    store.audit_many(events)
    service = EventBusService(store, MetadataClient(channel("127.0.0.1:1")), "embedded", ["audit"], ["consumer:audit"])
    server, _, port = build_server(
        lambda srv: eventbus_service_pb2_grpc.add_EventBusServiceServicer_to_server(service, srv),
        ["dicomserver.v1.EventBusService"],
        "127.0.0.1:0",
    )
    ch = channel(f"127.0.0.1:{port}")
    try:
        yield EventBusClient(ch)
    finally:
        ch.close()
        server.stop(0)
        store.dispose()


def test_audit_statistics_of_a_tenant(client: EventBusClient) -> None:
    stats = client.audit_statistics(["a"], days=30)
    assert stats.records == 6  # the 40-day-old record is outside the period
    assert [(c.key, c.count) for c in stats.calling_ae_titles] == [("CT1", 2), ("MR2", 1)]
    assert [(c.key, c.count) for c in stats.sources] == [("::1", 3), ("10.0.0.5", 2), ("10.0.0.6", 1)]
    # Successful reads only, DIMSE and DICOMweb alike; tenant b's read of 1.2.1 does not count.
    assert [(c.key, c.count) for c in stats.study_reads] == [("1.2.1", 2), ("1.2.2", 1)]
    assert [c.key for c in client.audit_statistics(["a"], top=1).study_reads] == ["1.2.1"]


def test_audit_statistics_of_several_tenants_and_longer_periods(client: EventBusClient) -> None:
    stats = client.audit_statistics(["a", "b"], days=60)
    assert stats.records == 8
    assert {c.key for c in stats.calling_ae_titles} == {"CT1", "MR2", "OTHER"}
    assert dict((c.key, c.count) for c in stats.study_reads)["1.2.1"] == 3


def test_status_without_the_metadata_service_reports_no_lag(client: EventBusClient) -> None:
    status = client.status()
    assert status.transport == "embedded" and list(status.consumers) == ["audit"]
    assert [(r.reader, r.position, r.lag) for r in status.readers] == [("consumer:audit", 0, 0)]
    assert status.outbox_latest == 0 and status.dead_letters == 0


@pytest.mark.parametrize("tenants,days,top", [([], 0, 0), (["a/b"], 0, 0), (["a"], 400, 0), (["a"], 0, 101)])
def test_bad_requests_are_refused(client: EventBusClient, tenants: list[str], days: int, top: int) -> None:
    with pytest.raises(InvalidArgument):
        client.audit_statistics(tenants, days=days, top=top)


def test_source_host() -> None:
    assert source_host("10.0.0.5:4242") == "10.0.0.5"
    assert source_host("::1:4242") == "::1"
    assert source_host("[::1]:4242") == "::1"
    assert source_host("host") == "host"
