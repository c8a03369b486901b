from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from common.settings import CommonSettings
from eventbus.routing.config import Destination, Rule, check_walls


class CompressionRule(BaseModel):
    """One rule of the compression policy: instances of `tenant` received
    from `calling_ae_title` ("*": any; DICOMweb stores have none) are kept
    as received, or stored losslessly compressed. The first match wins."""

    tenant: str = "*"
    calling_ae_title: str = "*"
    compress: Literal["keep", "jpeg-ls", "jpeg2000", "htj2k"] = "keep"


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
    # Comma-separated consumers to run: metadata, audit, compression (run
    # whenever compression_rules has a rule), routing (run whenever
    # routing_rules has a rule).
    consumers: str = "metadata,audit"
    # The compression policy (eventbus.compression): a JSON list of
    # {"tenant", "calling_ae_title", "compress": "keep" | "jpeg-ls" |
    # "jpeg2000" | "htj2k"}; first match wins; none: keep as received.
    compression_rules: list[CompressionRule] = []
    # Events handled per batch; offsets are committed after each batch.
    consumer_batch: int = 100
    # Attempts per event before it goes to the dead letters.
    max_attempts: int = 3
    retry_backoff: float = 0.2
    # Seconds between looks at an empty outbox (embedded log and relay).
    poll_interval: float = 0.2
    # Seconds a consumer waits after a batch smaller than consumer_batch:
    # while images stream in, a series' metadata is refreshed about once
    # this often instead of once per small batch (the metadata it serves
    # meanwhile is read from the instances, never stale).
    consumer_linger: float = 1.0
    relay_batch: int = 500
    # Seconds between measurements of the outbox lag metric.
    lag_interval: float = 10.0
    # Routing (eventbus/routing; docs/configuration.md "Routing"), JSON. Destinations by
    # name: {"PACS": {"type": "dimse", "host", "port", "ae_title", "tenants"},
    # "RESEARCH": {"type": "dicomweb", "url", "auth", "token_file" or
    # "token_env", "tenants"}}; and the rules that send to them: [{"name",
    # "tenant", "destinations", "calling_ae_titles", "modalities",
    # "sop_classes", "match", "send": "instances" or "studies",
    # "quiet_seconds"}]. A rule may only name destinations bound to its tenant.
    routing_destinations: dict[str, Destination] = {}
    routing_rules: list[Rule] = []
    # Tries of one delivery before it becomes a dead letter; after the n-th
    # failure it waits routing_backoff * 2^(n-1) seconds, at most
    # routing_max_backoff (a destination may set its own max_attempts,
    # backoff, max_backoff and batch). The defaults give up after about 30 min.
    routing_max_attempts: int = Field(default=10, ge=1)
    routing_backoff: float = Field(default=5.0, ge=0)
    routing_max_backoff: float = Field(default=600.0, ge=0)
    # Instances per association or STOW-RS request.
    routing_batch: int = Field(default=50, ge=1, le=500)
    # Our AE title on associations to DIMSE destinations (each may set its own).
    routing_ae_title: str = Field(default="DICOMSERVER", min_length=1, max_length=16)
    # Where objects in a bucket are downloaded before they are sent; default the temp folder.
    routing_spool_dir: str | None = None

    @model_validator(mode="after")
    def _tenant_walls(self) -> EventbusSettings:
        check_walls(self.routing_destinations, self.routing_rules)
        return self

    @property
    def effective_database_url(self) -> str:
        return self.eventbus_database_url or f"sqlite:///{self.data_dir / 'eventbus.sqlite3'}"

    @property
    def consumer_names(self) -> list[str]:
        names = [c.strip() for c in self.consumers.split(",") if c.strip()]
        if self.compression_rules and "compression" not in names:
            names.append("compression")
        if self.routing_rules and "routing" not in names:
            names.append("routing")
        return names
