"""Two transports, one consumer contract: `poll()` hands out a batch of
events, `commit()` marks the last batch done, `dead_letter()` parks an
event that kept failing. Kafka consumer groups when Kafka is configured;
otherwise the embedded event log, the outbox read through MetadataService."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from common.clients import MetadataClient
from common.gen.dicomserver.v1 import events_pb2
from eventbus.store import Store

log = logging.getLogger(__name__)


@dataclass
class Delivery:
    event: events_pb2.Event | None  # None: the payload could not be decoded
    payload: bytes
    key: bytes = b""


class Transport(Protocol):
    def poll(self, max_events: int, timeout: float) -> list[Delivery]: ...
    def commit(self) -> None: ...
    def rewind(self) -> None: ...
    def dead_letter(self, delivery: Delivery, consumer: str, error: str) -> None: ...
    def close(self) -> None: ...


class EmbeddedLog:
    """The outbox as a log: reads after the consumer's stored offset; the
    offset moves only on commit(), after the batch was handled."""

    def __init__(self, name: str, channel: grpc.Channel, store: Store) -> None:
        self.name = name
        self._metadata = MetadataClient(channel)
        self._store = store
        self._offset = store.offset(self._key)
        self._pending = self._offset

    @property
    def _key(self) -> str:
        return f"consumer:{self.name}"

    def poll(self, max_events: int, timeout: float) -> list[Delivery]:
        resp = self._metadata.read_outbox(self._pending, max_events)
        if resp.events:
            self._pending = resp.events[-1].sequence
        return [Delivery(ev, ev.SerializeToString()) for ev in resp.events]

    def commit(self) -> None:
        if self._pending != self._offset:
            self._store.commit_offset(self._key, self._pending)
            self._offset = self._pending

    def rewind(self) -> None:
        """Forgets an uncommitted batch (it is read again)."""
        self._pending = self._offset

    def dead_letter(self, delivery: Delivery, consumer: str, error: str) -> None:
        self._store.dead_letter(consumer, delivery.event.sequence if delivery.event else 0, error, delivery.payload)

    def close(self) -> None:
        pass


class KafkaLog:
    """A consumer group per consumer name, named after the first topic;
    offsets committed synchronously after the batch is handled
    (at-least-once). Dead letters go to their own topic, flushed before the
    offsets move. `topic` may be several (the audit consumer reads the
    events and the audit topics)."""

    blocks_in_poll = True

    def __init__(self, name: str, bootstrap: str, topic: str | Sequence[str], dead_letter_topic: str) -> None:
        topics = [topic] if isinstance(topic, str) else list(topic)
        topic = topics[0]
        self.name = name
        # First offset per partition of what was consumed but not committed.
        self._batch_start: dict[tuple[str, int], int] = {}
        self.dead_letter_topic = dead_letter_topic
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"{topic}.{name}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 10000,
                "heartbeat.interval.ms": 1000,
                "logger": log,
            }
        )
        self._consumer.subscribe(topics)
        self._producer: Producer | None = None
        self._bootstrap = bootstrap
        self._uncommitted = False

    def poll(self, max_events: int, timeout: float) -> list[Delivery]:
        out = []
        for msg in self._consumer.consume(num_messages=max_events, timeout=timeout):
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("kafka consume: %s", err)
                continue
            payload = msg.value() or b""
            try:
                event: events_pb2.Event | None = events_pb2.Event.FromString(payload)
            except Exception:  # a poison message: handled as one that always fails
                event = None
            out.append(Delivery(event, payload, msg.key() or b""))
            # confluent_kafka types these Optional; a consumed message without error has all three.
            self._batch_start.setdefault((msg.topic(), msg.partition()), msg.offset())  # type: ignore[arg-type]
            self._uncommitted = True
        return out

    def commit(self) -> None:
        if not self._uncommitted:
            return
        try:
            self._consumer.commit(asynchronous=False)
            self._uncommitted = False
            self._batch_start.clear()
        except KafkaException as exc:
            # E.g. a rebalance took the partitions: the batch is delivered again.
            log.warning("kafka commit failed (%s); events will be redelivered", exc)

    def rewind(self) -> None:
        """Seeks back to the first uncommitted event of each partition."""
        for (topic, partition), offset in self._batch_start.items():
            try:
                self._consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:  # no longer assigned: its new owner starts at the commit
                log.info("kafka seek: %s", exc)
        self._batch_start.clear()
        self._uncommitted = False

    def dead_letter(self, delivery: Delivery, consumer: str, error: str) -> None:
        if self._producer is None:
            self._producer = Producer({"bootstrap.servers": self._bootstrap, "enable.idempotence": True, "logger": log})
        failed: list[str] = []
        self._producer.produce(
            self.dead_letter_topic,
            value=delivery.payload,
            key=delivery.key,
            headers={"consumer": consumer, "error": error[:1000]},
            on_delivery=lambda err, _m: failed.append(str(err)) if err else None,
        )
        if self._producer.flush(30) > 0 or failed:
            raise RuntimeError(f"dead letter not delivered: {failed or 'timeout'}")

    def close(self) -> None:
        self._consumer.close()
        if self._producer is not None:
            self._producer.flush(5)
