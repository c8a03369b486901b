"""The consumer loop: the same code on either transport. Each event gets
up to max_attempts tries; one that still fails is dead-lettered; the batch's
offsets are committed only after every event in it is done."""

from __future__ import annotations

import logging
import threading
import time

import grpc
from sqlalchemy.exc import OperationalError

from common import errors
from eventbus.handlers import Handler
from eventbus.transports import Delivery, Transport

log = logging.getLogger(__name__)
_TRANSIENT_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
}


def is_transient(exc: Exception) -> bool:
    """An outage, not a bad event: the batch waits instead of dead-lettering."""
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return exc.code() in _TRANSIENT_CODES
    # common.clients' translation of UNAVAILABLE, DEADLINE_EXCEEDED and ABORTED.
    return isinstance(exc, (OperationalError, ConnectionError, TimeoutError, errors.Unavailable, errors.Aborted))


class ConsumerLoop:
    def __init__(
        self,
        name: str,
        transport: Transport,
        handler: Handler,
        batch: int = 100,
        max_attempts: int = 3,
        backoff: float = 0.2,
        poll_interval: float = 0.2,
        linger: float = 0.0,
    ) -> None:
        self.name = name
        self.transport = transport
        self.handler = handler
        self.batch = max(1, batch)
        self.max_attempts = max(1, max_attempts)
        self.backoff = backoff
        self.poll_interval = poll_interval
        # After a batch smaller than `batch`, wait this long before the next
        # poll, so that busy times make fewer, larger batches (one refresh of
        # a series being ingested per batch, one audit transaction per batch).
        self.linger = linger
        self.handled = 0
        self.dead_lettered = 0

    def run_once(self) -> int:
        """Handles one batch and commits it; returns the events handled."""
        deliveries = self.transport.poll(self.batch, self.poll_interval)
        todo = self._coalesced(deliveries)
        many = getattr(self.handler, "handle_many", None)
        if many is not None and todo:
            try:
                many([d.event for d in todo if d.event is not None])
                todo = [d for d in todo if d.event is None]  # undecodable: dead-lettered below
            except Exception as exc:
                if is_transient(exc):
                    raise
                log.warning("%s: a batch failed (%s); handling its events one by one", self.name, type(exc).__name__)
        for delivery in todo:
            self._handle(delivery)
        self.transport.commit()
        self.handled += len(deliveries)
        return len(deliveries)

    def _coalesced(self, deliveries: list[Delivery]) -> list[Delivery]:
        """The deliveries to handle: for a handler with a `coalesce` key, only
        the last event of each key in the batch (the others are covered by it)."""
        key = getattr(self.handler, "coalesce", None)
        if key is None:
            return deliveries
        last = {key(d.event): i for i, d in enumerate(deliveries) if d.event is not None}
        return [d for i, d in enumerate(deliveries) if d.event is None or last[key(d.event)] == i]

    def _handle(self, delivery: Delivery) -> None:
        error = "undecodable event payload"
        for attempt in range(1, self.max_attempts + 1):
            if delivery.event is None:
                break
            try:
                self.handler(delivery.event)
                return
            except Exception as exc:
                if is_transient(exc):
                    raise
                error = f"{type(exc).__name__}: {exc}"[:500]
                log.warning(
                    "%s: event %d failed (attempt %d of %d): %s",
                    self.name,
                    delivery.event.sequence,
                    attempt,
                    self.max_attempts,
                    type(exc).__name__,
                )
                if attempt < self.max_attempts:
                    time.sleep(self.backoff * attempt)
        self.transport.dead_letter(delivery, self.name, error)
        self.dead_lettered += 1
        log.error(
            "%s: event %s dead-lettered",
            self.name,
            delivery.event.sequence if delivery.event is not None else "(undecodable)",
        )

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                handled = self.run_once()
                if handled == 0 and not getattr(self.transport, "blocks_in_poll", False):
                    stop.wait(self.poll_interval)
                elif 0 < handled < self.batch and self.linger > 0:
                    stop.wait(self.linger)
            except Exception as exc:  # transport down: back off and retry the batch
                log.warning("%s: %s; retrying", self.name, type(exc).__name__)
                self.transport.rewind()
                stop.wait(1.0)
