"""`python -m eventbus` against a real Kafka broker and PostgreSQL: topics
created with the configured partitions, events keyed and ordered per study,
consumers killed mid-batch and restarted, Kafka stopped for 30 s during
ingest, and poison messages moved to the dead-letter topic."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from common.gen.dicomserver.v1 import events_pb2
from testbed.servers import Kafka
from tests.eventbus.bus_support import Bus, index_study, metadata_sops, read_topic, wait_until

PARTITIONS = 3


def topic_name() -> str:
    return f"events-{uuid.uuid4().hex[:8]}"


def outbox_sequences(metadata: Any) -> list[int]:
    events, _ = metadata.index.read_outbox(0, 1000)
    return [e.sequence for e in events]


def bus_for(tmp_path: Path, metadata: Any, kafka: Kafka | None, topic: str, **env: str) -> Bus:
    settings = {"consumer_batch": "50", "kafka_partitions": str(PARTITIONS), **env}
    if kafka is not None:
        settings.update(kafka_bootstrap=kafka.bootstrap, kafka_topic=topic, kafka_dead_letter_topic=topic + ".dlq")
    return Bus(tmp_path, metadata.addr, **settings)


def test_relay_keys_and_orders_events_per_study(kafka: Kafka, metadata_pg: Any, tmp_path: Path) -> None:
    topic = topic_name()
    bus = bus_for(tmp_path, metadata_pg, kafka, topic)
    bus.start()
    try:
        # Interleaved studies, so partitions really mix.
        sops: dict[str, list[str]] = defaultdict(list)
        for round_ in range(4):
            for study in ("7.1", "7.2", "7.3"):
                sops[study] += index_study(metadata_pg.index, "k", f"{study}.{round_}", 1, 2)
        total = 24
        wait_until("audit of every event", lambda: bus.scalar("SELECT count(*) FROM audit_log") == total)
        meta = AdminClient({"bootstrap.servers": kafka.bootstrap}).list_topics(timeout=10).topics
        assert len(meta[topic].partitions) == PARTITIONS and topic + ".dlq" in meta
        messages = read_topic(kafka, topic, total)
        by_key: dict[bytes, list[int]] = defaultdict(list)
        for m in messages:
            event = events_pb2.Event.FromString(m.value())
            assert m.key() == event.instance_stored.location.ref.study_instance_uid.encode()
            by_key[m.key()].append(event.sequence)
        assert sorted(s for seqs in by_key.values() for s in seqs) == outbox_sequences(metadata_pg)
        assert all(seqs == sorted(seqs) for seqs in by_key.values())
        assert {len({m.partition() for m in messages if m.key() == k}) for k in by_key} == {1}
        # The metadata consumer's work is what /metadata serves.
        wait_until(
            "precomputed metadata",
            lambda: all(metadata_pg.index.refresh_metadata("k", f"{s}.{r}") == 0 for s in sops for r in range(4)),
        )
        assert metadata_sops(metadata_pg.index, "k", "7.2.3") == ["7.2.3.1.1", "7.2.3.1.2"]
    finally:
        assert bus.stop() == 0, bus.log()


def _committed(bus: Bus, kafka: Kafka | None, topic: str) -> int:
    """How many events the audit consumer has committed (all applied)."""
    if kafka is None:
        return bus.scalar(
            "SELECT count(*) FROM audit_log WHERE sequence <= "
            "coalesce((SELECT sequence FROM offsets WHERE name = 'consumer:audit'), 0)"
        )
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": f"{topic}.audit"})
    try:
        parts = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
        return sum(max(tp.offset, 0) for tp in parts)  # a fresh topic: offsets count its messages
    finally:
        consumer.close()


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def kill_mid_batch(bus: Bus, kafka: Kafka | None, topic: str, total: int) -> int:
    """SIGKILLs the bus while it has applied events it has not committed;
    returns how many. The bus is frozen (SIGSTOP) to look: a batch is
    applied in a few milliseconds, so killing on sight alone sometimes
    landed just after a commit, and the test then showed nothing."""
    assert bus.proc is not None
    for _ in range(2000):
        wait_until("the first audit entries", lambda: bus.scalar("SELECT count(*) FROM audit_log") >= 40, every=0.002)
        bus.proc.send_signal(signal.SIGSTOP)
        wait_until("the bus stopped", lambda: _state(bus.proc.pid) == "T", every=0.001)  # SIGSTOP lands later
        applied = bus.scalar("SELECT count(*) FROM audit_log")
        uncommitted = applied - _committed(bus, kafka, topic)
        if uncommitted > 0:
            bus.kill()
            return uncommitted
        assert applied < total, "every event was applied and committed before a batch could be caught"
        bus.proc.send_signal(signal.SIGCONT)
        time.sleep(0.001)
    raise AssertionError("never caught the bus between applying a batch and committing it")


@pytest.mark.parametrize("transport", ["embedded", "kafka"])
def test_consumer_killed_mid_batch_loses_nothing_and_applies_once(
    transport: str, request: pytest.FixtureRequest, metadata_pg: Any, tmp_path: Path
) -> None:
    kafka = request.getfixturevalue("kafka") if transport == "kafka" else None
    topic = topic_name()
    total = 300
    index_study(metadata_pg.index, "m", "8.1", 3, total // 3)
    bus = bus_for(tmp_path, metadata_pg, kafka, topic, consumers="audit", consumer_batch="100")
    bus.start()
    uncommitted = kill_mid_batch(bus, kafka, topic, total)
    applied = bus.scalar("SELECT count(*) FROM audit_log")
    assert 0 < uncommitted <= applied < total
    bus.start()
    try:
        wait_until("every event audited", lambda: bus.scalar("SELECT count(*) FROM audit_log") == total)
        # Those applied but not committed before the kill come again first.
        wait_until(
            "the redeliveries", lambda: bus.scalar("SELECT sum(deliveries) FROM audit_log") >= total + uncommitted
        )
    finally:
        assert bus.stop() == 0, bus.log()
    audit = bus.audit()
    assert [seq for seq, _, _ in audit] == outbox_sequences(metadata_pg)  # each once, none missing
    assert sorted(sop for _, sop, _ in audit) == sorted(f"8.1.{se}.{n}" for se in (1, 2, 3) for n in range(1, 101))
    # Those applied but not committed before the kill were delivered again,
    # and had no second effect.
    assert sum(d for _, _, d in audit) >= total + uncommitted


def test_kafka_down_for_30_s_during_ingest(kafka: Kafka, metadata_pg: Any, tmp_path: Path) -> None:
    """The oracle is what the index acknowledged, not the outbox: every
    acknowledged instance reaches the topic and the consumers, once, in its
    study's order."""
    topic = topic_name()
    bus = bus_for(tmp_path, metadata_pg, kafka, topic)
    bus.start()
    acknowledged: list[str] = []
    stop = threading.Event()

    def ingest() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            # Two instances per study, so that order within a study is observable.
            acknowledged.extend(index_study(metadata_pg.index, "o", f"9.{n}", 1, 2))
            time.sleep(0.05)

    try:
        acknowledged.extend(index_study(metadata_pg.index, "o", "9.0", 1, 2))
        wait_until("the first events through Kafka", lambda: bus.scalar("SELECT count(*) FROM audit_log") == 2)
        writer = threading.Thread(target=ingest)
        writer.start()
        kafka.stop()
        during = len(acknowledged)
        time.sleep(30)  # the outage under test
        outage_acks = len(acknowledged) - during
        relayed_during = bus.scalar("SELECT count(*) FROM audit_log")
        kafka.start()
        # Ingest goes on while the relay catches up.
        try:
            wait_until(
                "Kafka taking events again",
                lambda: bus.scalar("SELECT count(*) FROM audit_log") > relayed_during,
                timeout=240,
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the bus said:\n{bus.log()[-4000:]}") from None
        stop.set()
        writer.join()
        assert outage_acks > 50  # ingest kept acknowledging; the outbox grew
        assert relayed_during < len(acknowledged)
        wait_until(
            "every acknowledged instance through Kafka and the consumers",
            lambda: bus.scalar("SELECT count(*) FROM audit_log") >= len(acknowledged),
            timeout=240,
        )
    finally:
        stop.set()
        if kafka.proc is None:
            kafka.start()
        assert bus.stop() == 0, bus.log()
    audit = bus.audit()
    # Each acknowledged instance applied exactly once, and nothing else.
    assert sorted(sop for _, sop, _ in audit) == sorted(acknowledged)
    # The topic itself holds every acknowledged instance, in its study's
    # order (a retried page may repeat events; their first copies are in order).
    first_seen: dict[bytes, list[str]] = defaultdict(list)
    seen: set[int] = set()
    for m in read_topic(kafka, topic, len(acknowledged)):
        event = events_pb2.Event.FromString(m.value())
        if event.sequence not in seen:
            seen.add(event.sequence)
            first_seen[m.key()].append(event.instance_stored.location.ref.sop_instance_uid)
    assert sorted(sop for sops in first_seen.values() for sop in sops) == sorted(acknowledged)
    for key, sops in first_seen.items():
        assert sops == [f"{key.decode()}.1.1", f"{key.decode()}.1.2"], key


def test_poison_message_goes_to_the_dead_letter_topic(kafka: Kafka, metadata_pg: Any, tmp_path: Path) -> None:
    topic = topic_name()
    bus = bus_for(tmp_path, metadata_pg, kafka, topic, consumers="audit", max_attempts="2")
    bus.start()
    try:
        index_study(metadata_pg.index, "p", "10.1", 1, 1)
        wait_until("the topic and the first event", lambda: bus.scalar("SELECT count(*) FROM audit_log") == 1)
        producer = Producer({"bootstrap.servers": kafka.bootstrap})
        producer.produce(topic, key=b"10.1", value=b"\xff\xffnot an event")
        assert producer.flush(10) == 0
        index_study(metadata_pg.index, "p", "10.2", 1, 1)
        wait_until("the event after the poison", lambda: bus.scalar("SELECT count(*) FROM audit_log") == 2)
        (dead,) = read_topic(kafka, topic + ".dlq", 1)
        assert dead.value() == b"\xff\xffnot an event" and dead.key() == b"10.1"
        assert dict(dead.headers())["consumer"] == b"audit"
    finally:
        assert bus.stop() == 0, bus.log()
