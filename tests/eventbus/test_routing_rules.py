"""Routing in process, against a real MetadataService on SQLite, with the
event bus's database (the queues) on SQLite and on PostgreSQL: which
events the rules queue for which destination (tenant, calling AE title,
modality, SOP class and indexed attributes), studies sent whole once quiet,
the settings' tenant walls, and the delivery queue's retries, dead letters,
replay and send progress. Delivery to real peers is tests/eventbus/
test_routing_delivery.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from pydantic import ValidationError

from common import errors
from common.clients import MetadataClient, RoutingClient, channel
from common.gen.dicomserver.v1 import events_pb2
from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from common.gen.dicomserver.v1 import metadata_service_pb2_grpc as md_grpc
from common.gen.dicomserver.v1 import routing_service_pb2 as rt_pb
from common.gen.dicomserver.v1 import routing_service_pb2_grpc as rt_grpc
from common.grpc_server import build_server
from eventbus.routing.config import Rule
from eventbus.routing.delivery import QuietStudies
from eventbus.routing.queue import DeliveryQueue, Retry, Target
from eventbus.routing.rules import RuleMatcher, check_rules
from eventbus.routing.service import RoutingService
from eventbus.settings import EventbusSettings
from eventbus.store import Store
from testbed.records import make_ds
from testbed.servers import new_database
from tests.eventbus.bus_support import record

MetadataServer = Any  # tests/eventbus/conftest.py
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
SC = "1.2.840.10008.5.1.4.1.1.7"
SR = "1.2.840.10008.5.1.4.1.1.88.22"


def dimse(*tenants: str) -> dict[str, Any]:
    return {"type": "dimse", "host": "127.0.0.1", "port": 104, "ae_title": "PEER", "tenants": list(tenants)}


@dataclass
class World:
    md: MetadataServer
    ch: grpc.Channel
    queue: DeliveryQueue
    notified: set[str]

    def index(
        self,
        tenant: str,
        study: str,
        sop: str,
        *,
        series: str = "",
        ae: str = "",
        modality: str = "CT",
        sop_class: str = CT,
        description: str = "",
        study_date: str = "",
    ) -> None:
        ds = make_ds(
            study, series or f"{study}.1", sop, modality=modality, description=description, study_date=study_date
        )
        ds.SOPClassUID = sop_class
        rec = record(ds, tenant)
        rec.source.calling_ae_title = ae
        self.md.index.index([rec], md_pb.DUPLICATE_POLICY_OVERWRITE)

    def events(self, after: int = 0) -> list[events_pb2.Event]:
        stub = md_grpc.MetadataServiceStub(self.ch)
        return list(stub.ReadOutbox(md_pb.ReadOutboxRequest(after_sequence=after, limit=1000)).events)

    def matcher(self, *rules: Rule) -> RuleMatcher:
        return RuleMatcher(list(rules), self.queue, self.ch, self.notified.update)

    def queued(self, destination: str) -> set[tuple[str, str, str]]:
        """(tenant, SOP Instance UID, origin) of what waits for a destination."""
        return {(j.tenant, j.sop, j.origin) for j in self.queue.due(destination, time.time() + 1e6, 1000)}


@pytest.fixture(params=["sqlite", "postgresql"])
def bus_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The event bus's own database, where the queues are."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'bus.sqlite3'}"
    return new_database(request.getfixturevalue("postgres"), "routing")


@pytest.fixture
def world(metadata_sqlite: MetadataServer, bus_url: str) -> Iterator[World]:
    store = Store(bus_url)
    ch = channel(metadata_sqlite.addr)
    yield World(metadata_sqlite, ch, DeliveryQueue(store.engine), set())
    ch.close()
    store.dispose()


def rule(name: str, tenant: str, *destinations: str, **conditions: Any) -> Rule:
    return Rule(name=name, tenant=tenant, destinations=list(destinations), **conditions)


def test_rules_match_tenant_calling_ae_modality_sop_class_and_indexed_attributes(world: World) -> None:
    world.index("a", "1.1", "1.1.1", ae="CT1", description="HEAD CT", study_date="20240505")
    world.index("a", "1.2", "1.2.1", ae="MR1", modality="MR", sop_class=MR, description="KNEE")
    world.index("a", "1.3", "1.3.1", ae="CT1", modality="OT", sop_class=SC, description="HEAD", study_date="20230101")
    # Tenant b's instance meets every condition of tenant a's rules.
    world.index(
        "b", "2.1", "2.1.1", ae="CT1", modality="MR", sop_class=MR, description="HEAD CT", study_date="20240505"
    )
    world.matcher(
        rule("from-ct1", "a", "D1", calling_ae_titles=["CT1"]),
        rule("mr", "a", "D2", modalities=["MR"]),
        rule("secondary-capture", "a", "D2", sop_classes=[SC]),
        rule("recent-heads", "a", "D3", match={"StudyDescription": "*HEAD*", "StudyDate": "20240101-"}),
        rule("everything-of-b", "b", "DB"),
    ).handle_many(world.events())
    assert world.queued("D1") == {("a", "1.1.1", "rule:from-ct1"), ("a", "1.3.1", "rule:from-ct1")}
    assert world.queued("D2") == {("a", "1.2.1", "rule:mr"), ("a", "1.3.1", "rule:secondary-capture")}
    assert world.queued("D3") == {("a", "1.1.1", "rule:recent-heads")}
    assert world.queued("DB") == {("b", "2.1.1", "rule:everything-of-b")}
    assert world.notified == {"D1", "D2", "D3", "DB"}


def test_an_instance_two_rules_send_to_one_destination_is_queued_once(world: World) -> None:
    world.index("a", "1.1", "1.1.1", ae="CT1")
    world.matcher(rule("one", "a", "D1"), rule("two", "a", "D1", modalities=["CT"])).handle_many(world.events())
    assert world.queued("D1") == {("a", "1.1.1", "rule:one")}


def test_deleted_instances_and_audit_records_route_nothing(world: World) -> None:
    world.index("a", "1.1", "1.1.1")
    world.md.index.delete("a", "1.1")
    audit = events_pb2.Event(sequence=10**9, tenant="a", audit=events_pb2.AuditRecord(tenant="a"))
    # The instance is gone by the time the rule asks the index: nothing matches.
    world.matcher(rule("ct", "a", "D1", modalities=["CT"])).handle_many([*world.events(), audit])
    world.matcher(rule("any", "a", "D2")).handle_many([e for e in world.events() if e.HasField("instance_deleted")])
    assert world.queued("D1") == set() and world.queued("D2") == set()


def test_events_from_before_routing_started_are_not_routed(world: World) -> None:
    world.index("a", "1.1", "1.1.1")
    first = world.queue.start_sequence(world.events()[-1].sequence)
    world.index("a", "1.2", "1.2.1")
    assert world.queue.start_sequence(10**6) == first  # kept from the first start
    matcher = world.matcher(rule("any", "a", "D1"))
    matcher.since = first
    matcher.handle_many(world.events())
    assert world.queued("D1") == {("a", "1.2.1", "rule:any")}


def test_a_studies_rule_sends_the_whole_study_once_it_is_quiet(world: World) -> None:
    world.index("a", "1.1", "1.1.1", modality="CT")
    world.index("a", "1.1", "1.1.2", series="1.1.2", modality="SR", sop_class=SR)
    world.index("a", "1.2", "1.2.1", modality="SR", sop_class=SR)  # no CT: never noted
    studies = rule("ct-studies", "a", "D1", "D2", modalities=["CT"], send="studies", quiet_seconds=30)
    world.matcher(studies).handle_many(world.events())
    assert world.queued("D1") == set()
    quiet = QuietStudies([studies], world.queue, MetadataClient(world.ch), world.notified.update)
    assert quiet.run_once(time.time()) == 0  # not quiet yet
    assert quiet.run_once(time.time() + 31) == 1
    whole = {("a", "1.1.1", "rule:ct-studies"), ("a", "1.1.2", "rule:ct-studies")}
    assert world.queued("D1") == whole and world.queued("D2") == whole
    assert quiet.run_once(time.time() + 31) == 0  # released once


def test_a_study_that_gets_another_instance_waits_again(world: World) -> None:
    world.index("a", "1.1", "1.1.1")
    studies = rule("s", "a", "D1", send="studies", quiet_seconds=10)
    matcher = world.matcher(studies)
    matcher.handle_many(world.events())
    (noted,) = world.queue.quiet_studies({"s": 10}, time.time() + 11)
    # A newer instance of the study arrives between the look and the release.
    world.index("a", "1.1", "1.1.2")
    matcher.handle_many(world.events(after=world.events()[-2].sequence))
    assert not world.queue.release_study(noted, [Target("D1", "a", "1.1", "1.1.1", "1.1.1", "rule:s")], time.time())
    assert world.queued("D1") == set()
    (again,) = world.queue.quiet_studies({"s": 10}, time.time() + 11)
    assert again.last_event_at > noted.last_event_at


def test_queue_retries_with_exponential_backoff_then_dead_letters_and_replays(bus_url: str) -> None:
    store = Store(bus_url)
    queue = DeliveryQueue(store.engine)
    retry = Retry(max_attempts=3, backoff=2.0, max_backoff=3.0)
    assert [retry.delay(n) for n in (1, 2, 3, 10)] == [2.0, 3.0, 3.0, 3.0]
    t0 = 1000.0
    targets = [Target("D", "a", "1", "1.1", f"1.1.{n}", "send") for n in (1, 2)]
    send = queue.create_send("a", "D", "1", "", "", targets, t0)
    first, second = queue.due("D", t0, 10)
    queue.delivered([first])
    assert queue.failed([(second, "refused")], retry, t0) == []
    assert queue.due("D", t0 + 1.9, 10) == []  # backing off
    (again,) = queue.due("D", t0 + 2, 10)
    assert again.attempts == 1
    assert queue.failed([(again, "refused")], retry, t0 + 2) == []
    (last,) = queue.due("D", t0 + 5, 10)
    assert queue.failed([(last, "refused")], retry, t0 + 5) == [last]
    assert queue.stats("a")["D"].queued == 0 and queue.stats("a")["D"].dead_letters == 1
    progress = queue.get_send("a", send.id)
    assert progress is not None and (progress.total, progress.sent, progress.failed) == (2, 1, 1)
    (dead,), truncated = queue.dead_letters("a", "", 0, 10)
    assert (dead.attempts, dead.error, dead.sop_instance_uid, truncated) == (3, "refused", "1.1.2", False)
    assert queue.dead_letters("b", "", 0, 10) == ([], False)  # another tenant's view
    assert queue.replay("b", [], "", ["D"], t0 + 6) == []
    assert queue.replay("a", [], "", ["D"], t0 + 6) == ["D"]
    (replayed,) = queue.due("D", t0 + 6, 10)
    assert (replayed.attempts, replayed.origin) == (0, f"send:{send.id}")
    queue.delivered([replayed])
    progress = queue.get_send("a", send.id)
    assert progress is not None and (progress.sent, progress.failed) == (2, 0)
    store.dispose()


@pytest.mark.parametrize(
    "destinations, rules, message",
    [
        ({"P": dimse("a")}, [{"name": "r", "tenant": "b", "destinations": ["P"]}], "not bound to tenant b"),
        ({"P": dimse("a")}, [{"name": "r", "tenant": "a", "destinations": ["Q"]}], "no destination named Q"),
        ({"P": dimse("a")}, [{"name": "r", "tenant": "a", "destinations": ["P"]}] * 2, "two routing rules"),
        (
            {"P": dimse("a")},
            [{"name": "r", "tenant": "a", "destinations": ["P"], "match": {"StudyDate": "2024-13"}}],
            "not a valid DA value",
        ),
        (
            {"P": dimse("a")},
            [{"name": "r", "tenant": "a", "destinations": ["P"], "match": {"NoSuchThing": "x"}}],
            "unknown attribute",
        ),
        ({"P": {**dimse("a"), "tenants": []}}, [], "at least 1 item"),
        ({"P": {"type": "dicomweb", "url": "http://x", "auth": "bearer", "tenants": ["a"]}}, [], "token_file"),
        ({"bad name": dimse("a")}, [], "destination name"),
    ],
)
def test_settings_keep_rules_within_their_tenant(
    destinations: dict[str, Any], rules: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        EventbusSettings(routing_destinations=destinations, routing_rules=rules)


def test_a_rule_on_an_attribute_the_index_cannot_filter_stops_the_start(world: World) -> None:
    check_rules(world.ch, [rule("ok", "a", "D", match={"PatientID": "X*"}, modalities=["CT"])])
    with pytest.raises(ValueError, match="not an indexed attribute"):
        check_rules(world.ch, [rule("bad", "a", "D", match={"Manufacturer": "ACME"})])


def test_routing_service_sends_lists_and_replays_within_the_tenant(world: World) -> None:
    world.index("a", "1.1", "1.1.1")
    world.index("a", "1.1", "1.1.2")
    world.index("b", "2.1", "2.1.1")
    settings = EventbusSettings(routing_destinations={"PA": dimse("a"), "PB": dimse("b"), "PAB": dimse("a", "b")})
    service = RoutingService(
        settings.routing_destinations, world.queue, MetadataClient(world.ch), world.notified.update
    )
    server, _health, port = build_server(
        lambda s: rt_grpc.add_RoutingServiceServicer_to_server(service, s),
        ["dicomserver.v1.RoutingService"],
        "127.0.0.1:0",
    )
    client = RoutingClient(channel(f"127.0.0.1:{port}"))
    try:
        assert [d.name for d in client.list_destinations("a")] == ["PA", "PAB"]
        sent = client.send(rt_pb.SendRequest(tenant="a", destination="PA", study_instance_uid="1.1"))
        assert (sent.total, sent.sent) == (2, 0) and world.notified == {"PA"}
        assert client.get_send("a", sent.id).total == 2
        (pa,) = [d for d in client.list_destinations("a") if d.name == "PA"]
        assert pa.queued == 2 and pa.HasField("oldest_queued") and pa.address == "PEER@127.0.0.1:104"
        # Tenant walls: b's destination, b's study, a's send, as seen from the other side.
        for request in (
            rt_pb.SendRequest(tenant="a", destination="PB", study_instance_uid="1.1"),
            rt_pb.SendRequest(tenant="a", destination="NOPE", study_instance_uid="1.1"),
            rt_pb.SendRequest(tenant="a", destination="PAB", study_instance_uid="2.1"),
        ):
            with pytest.raises(errors.NotFound):
                client.send(request)
        with pytest.raises(errors.NotFound):
            client.get_send("b", sent.id)
        with pytest.raises(errors.InvalidArgument):
            client.send(rt_pb.SendRequest(tenant="a", destination="PA", study_instance_uid="not-a-uid"))
        # Dead letters and replay.
        jobs = world.queue.due("PA", time.time(), 10)
        world.queue.dead_letter([(j, "poison") for j in jobs], time.time())
        listed = client.list_dead_letters(rt_pb.ListDeadLettersRequest(tenant="a", limit=1))
        assert len(listed.dead_letters) == 1 and listed.truncated
        assert client.list_dead_letters(rt_pb.ListDeadLettersRequest(tenant="b")).dead_letters == []
        with pytest.raises(errors.NotFound):
            client.list_dead_letters(rt_pb.ListDeadLettersRequest(tenant="b", destination="PA"))
        assert client.replay_dead_letters(rt_pb.ReplayDeadLettersRequest(tenant="b")) == 0
        first = listed.dead_letters[0].id
        assert client.replay_dead_letters(rt_pb.ReplayDeadLettersRequest(tenant="a", ids=[first])) == 1
        assert client.replay_dead_letters(rt_pb.ReplayDeadLettersRequest(tenant="a", destination="PA")) == 1
        assert world.queue.stats("a")["PA"].queued == 2
    finally:
        server.stop(None)
