"""Routing through outages, against the launched server: a destination that
is down for 30 s holds up no other, keeps its queue across a restart of the
event bus (the whole server, on the same data) and receives everything
once it is back; and routing on Kafka, the consumer reading the events
topic instead of the outbox."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from common.clients import RoutingClient, channel
from testbed.servers import Kafka
from tests.eventbus.routing_support import (
    StoreScp,
    c_store,
    dataset_bytes,
    make_objects,
    routing_env,
    wait_for,
)
from tests.support import Archive

DOWN_FOR = 30.0


def queues(archive: Archive) -> dict[str, tuple[int, int]]:
    """(queued, dead letters) per destination, from the event bus's RoutingService."""
    ch = channel(archive.grpc_addrs["eventbus"])
    try:
        return {d.name: (d.queued, d.dead_letters) for d in RoutingClient(ch).list_destinations("default")}
    finally:
        ch.close()


def test_a_destination_down_for_30_s_gets_everything_after_it_comes_back_across_a_restart(tmp_path: Path) -> None:
    late, up = StoreScp("LATE", tmp_path / "late"), StoreScp("UP", tmp_path / "up")
    env = routing_env(
        {
            "LATE": late.destination(["default"], backoff=1, max_backoff=4, max_attempts=40),
            "UP": up.destination(["default"]),
        },
        [{"name": "everything", "tenant": "default", "destinations": ["LATE", "UP"]}],
    )
    up.start()
    archive = Archive(tmp_path / "archive", extra_env=env)
    archive.start()
    restarted: Archive | None = None
    try:
        went_down = time.monotonic()
        objects = make_objects(tmp_path / "objects", copies=2)  # 18 objects, every stored syntax twice
        c_store(archive, objects, "MODALITY")
        # The destination that is up gets everything meanwhile.
        wait_for("UP to receive everything", lambda: up.received().keys() >= objects.keys())
        wait_for("LATE's queue", lambda: queues(archive)["LATE"] == (len(objects), 0))
        assert archive.stop() == 0, "".join(archive.output)
        # The event bus (with the rest of the server) restarts on the same data: the queue is still there.
        restarted = Archive(tmp_path / "archive", extra_env=env)
        restarted.start()
        assert queues(restarted)["LATE"] == (len(objects), 0)
        time.sleep(max(0.0, went_down + DOWN_FOR - time.monotonic()))
        assert late.received() == {}
        late.start()
        back = time.monotonic()
        got = wait_for("LATE to receive everything", lambda: (r := late.received()).keys() >= objects.keys() and r)
        print(f"LATE received {len(objects)} objects {time.monotonic() - back:.1f} s after it came back")
        for uid, path in objects.items():
            assert dataset_bytes(got[uid]) == dataset_bytes(path), path.name
        wait_for("an empty queue", lambda: queues(restarted)["LATE"] == (0, 0))
        assert len(late.received()) == len(objects)
    finally:
        for a in (archive, restarted):
            if a is not None and a.proc is not None and a.proc.poll() is None:
                a.stop()
        late.stop()
        up.stop()


@pytest.mark.timeout(600)
def test_routing_on_kafka(kafka: Kafka, tmp_path: Path) -> None:
    peer = StoreScp("PEER", tmp_path / "peer")
    topic = f"routing-{uuid.uuid4().hex[:8]}"
    env = routing_env(
        {"PEER": peer.destination(["default"])},
        [
            {
                "name": "ct-from-modality",
                "tenant": "default",
                "calling_ae_titles": ["MODALITY"],
                "modalities": ["CT"],
                "destinations": ["PEER"],
            }
        ],
        DICOMSERVER_KAFKA_BOOTSTRAP=kafka.bootstrap,
        DICOMSERVER_KAFKA_TOPIC=topic,
        DICOMSERVER_KAFKA_AUDIT_TOPIC=f"{topic}.audit",
        DICOMSERVER_KAFKA_DEAD_LETTER_TOPIC=f"{topic}.dead-letter",
        DICOMSERVER_KAFKA_PARTITIONS="3",
    )
    peer.start()
    archive = Archive(tmp_path / "archive", extra_env=env)
    archive.start()
    try:
        ct = make_objects(tmp_path / "ct", ["CT_small.dcm"], copies=3)
        mr = make_objects(tmp_path / "mr", ["MR_small.dcm"])
        c_store(archive, {**ct, **mr}, "MODALITY")
        got = wait_for("the CTs", lambda: (r := peer.received()).keys() >= ct.keys() and r, timeout=120)
        for uid, path in ct.items():
            assert dataset_bytes(got[uid]) == dataset_bytes(path)
        wait_for("an empty queue", lambda: queues(archive)["PEER"] == (0, 0))
        assert not set(mr) & set(peer.received())

        # It was the routing consumer group on the events topic that read them
        # all (the MR's event too); its offsets are committed after the work,
        # so they may trail the empty queue a little.
        def committed() -> int:
            consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": f"{topic}.routing"})
            try:
                parts = consumer.committed([TopicPartition(topic, p) for p in range(3)], timeout=30)
            finally:
                consumer.close()
            return sum(max(tp.offset, 0) for tp in parts)

        wait_for("the routing group's offsets", lambda: committed() >= len(ct) + len(mr), timeout=60)
    finally:
        assert archive.stop() == 0, "".join(archive.output)
        peer.stop()
