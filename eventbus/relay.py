"""The outbox relay: publishes outbox events to Kafka in sequence order,
and moves its position only after Kafka acknowledged them. While Kafka is
away the outbox simply grows; events drain when it returns.

Index changes go to the events topic keyed by Study Instance UID (one
study's events stay in one partition, in order). Audit records go to their
own topic keyed by tenant: there is one per request at the edges, reads
included, so they would outnumber index changes many times over on a topic
that every instance consumer (metadata precompute, and any transcode or
webhook consumer) must read through; they have no study to key by; and an
audit trail is kept and accessed under its own rules (retention, ACLs)."""

from __future__ import annotations

import logging
import threading

import grpc
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]  # re-exported, untyped as such

from common.clients import MetadataClient
from common.gen.dicomserver.v1 import events_pb2
from eventbus.handlers import INSTANCE_KINDS
from eventbus.store import Store

log = logging.getLogger(__name__)
POSITION = "relay"


def study_key(event: events_pb2.Event) -> bytes:
    """The partition key of an index change: the Study Instance UID."""
    kind = event.WhichOneof("kind")
    return getattr(event, kind).location.ref.study_instance_uid.encode() if kind in INSTANCE_KINDS else b""


def route(event: events_pb2.Event, topic: str, audit_topic: str) -> tuple[str, bytes]:
    """The topic and partition key of an outbox event."""
    if event.HasField("audit"):
        return audit_topic, event.tenant.encode()
    return topic, study_key(event)


def ensure_topics(bootstrap: str, topics: list[str], partitions: int, replication: int, timeout: float = 30) -> None:
    """Creates missing topics; existing ones are left as they are."""
    # confluent_kafka types conf values as scalars; it documents "logger" taking a Logger.
    admin = AdminClient({"bootstrap.servers": bootstrap, "logger": log})  # type: ignore[dict-item]
    existing = set(admin.list_topics(timeout=timeout).topics)
    missing = [
        NewTopic(t, num_partitions=partitions, replication_factor=replication) for t in topics if t not in existing
    ]
    if not missing:
        return
    for topic, future in admin.create_topics(missing, operation_timeout=timeout).items():
        try:
            future.result(timeout)
            log.info("created topic %s (%d partitions, replication %d)", topic, partitions, replication)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


class Relay:
    def __init__(
        self,
        channel: grpc.Channel,
        store: Store,
        bootstrap: str,
        topic: str,
        batch: int = 500,
        poll_interval: float = 0.2,
        send_timeout: float = 10.0,
        audit_topic: str = "dicomserver.audit",
    ) -> None:
        self._metadata = MetadataClient(channel)
        self._store = store
        self.topic = topic
        self.audit_topic = audit_topic
        self.batch = batch
        self.poll_interval = poll_interval
        self.send_timeout = send_timeout
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,  # no reordering or duplicates from producer retries
                "acks": "all",
                "linger.ms": 5,
                "message.timeout.ms": int(send_timeout * 1000),
                "logger": log,
            }
        )
        self.position = store.offset(POSITION)
        self.published = 0

    def run_once(self) -> int:
        """Publishes one page of the outbox; returns how many events went out."""
        resp = self._metadata.read_outbox(self.position, self.batch)
        if not resp.events:
            return 0
        errors: list[str] = []

        def on_delivery(err: KafkaError | None, _msg: object) -> None:
            if err is not None:
                errors.append(str(err))

        for event in resp.events:
            while True:
                topic, key = route(event, self.topic, self.audit_topic)
                try:
                    self._producer.produce(topic, key=key, value=event.SerializeToString(), on_delivery=on_delivery)
                    break
                except BufferError:  # local queue full: let it drain
                    self._producer.poll(0.5)
        remaining = self._producer.flush(self.send_timeout + 5)
        if remaining or errors:
            raise ConnectionError(f"kafka did not take {remaining or len(errors)} events")
        self.position = resp.events[-1].sequence
        self._store.commit_offset(POSITION, self.position)
        self.published += len(resp.events)
        return len(resp.events)

    def run(self, stop: threading.Event) -> None:
        backlog_warned = False
        while not stop.is_set():
            try:
                if self.run_once() == 0:
                    stop.wait(self.poll_interval)
                elif backlog_warned:
                    log.warning("kafka takes events again; relay at sequence %d", self.position)
                    backlog_warned = False
            except Exception as exc:  # Kafka or the metadata service away: the outbox keeps them
                if not backlog_warned:
                    log.warning("relay paused at sequence %d: %s", self.position, exc)
                    backlog_warned = True
                stop.wait(1.0)

    def close(self) -> None:
        self._producer.flush(5)
