from __future__ import annotations

from common.settings import CommonSettings


class EventbusSettings(CommonSettings):
    # Kafka bootstrap servers, e.g. 127.0.0.1:9092; empty: the embedded event
    # log (consumers read the outbox directly, no relay).
    kafka_bootstrap: str = ""
    kafka_topic: str = "dicomserver.events"
    # Audit records from the edges, keyed by tenant; only the audit consumer
    # reads it (see eventbus/relay.py for why it is a topic of its own).
    kafka_audit_topic: str = "dicomserver.audit"
    # Where events go after max_attempts failed handlings (Kafka); the
    # embedded log keeps them in its own database.
    kafka_dead_letter_topic: str = "dicomserver.events.dead-letter"
    # Used when the service creates missing topics on start.
    kafka_partitions: int = 6
    kafka_replication: int = 1
    # The event bus's own state: embedded-log offsets, the relay position,
    # the audit log and embedded dead letters. Default sqlite:///<data_dir>/eventbus.sqlite3.
    eventbus_database_url: str | None = None
    # Comma-separated consumers to run: metadata, audit.
    consumers: str = "metadata,audit"
    # Events handled per batch; offsets are committed after each batch.
    consumer_batch: int = 100
    # Attempts per event before it goes to the dead letters.
    max_attempts: int = 3
    retry_backoff: float = 0.2
    # Seconds between looks at an empty outbox (embedded log and relay).
    poll_interval: float = 0.2
    relay_batch: int = 500
    # Seconds between measurements of the outbox lag metric.
    lag_interval: float = 10.0

    @property
    def effective_database_url(self) -> str:
        return self.eventbus_database_url or f"sqlite:///{self.data_dir / 'eventbus.sqlite3'}"

    @property
    def consumer_names(self) -> list[str]:
        return [c.strip() for c in self.consumers.split(",") if c.strip()]
