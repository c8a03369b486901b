"""How far each reader of the outbox is behind, as a Prometheus gauge: the
relay (outbox → Kafka) and the consumers on the embedded log. Consumers on
Kafka report their lag through Kafka's own consumer-group offsets."""

from __future__ import annotations

import logging
import threading

import grpc
from prometheus_client import Gauge

from common.clients import MetadataClient
from common.errors import ServiceError
from eventbus.store import Store

log = logging.getLogger(__name__)

OUTBOX_LAG = Gauge("dicomserver_outbox_lag_events", "Outbox events a reader has not yet handled", ["reader"])


def watch(channel: grpc.Channel, store: Store, readers: list[str], interval: float, stop: threading.Event) -> None:
    """Updates the gauge every `interval` seconds until `stop`; `readers` are store offset names."""
    metadata = MetadataClient(channel)
    while not stop.wait(interval):
        try:
            latest = metadata.read_outbox_latest()
        except ServiceError as err:
            log.debug("outbox lag not measured: %s", type(err).__name__)
            continue
        for reader in readers:
            OUTBOX_LAG.labels(reader).set(max(0, latest - store.offset(reader)))
