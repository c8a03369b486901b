"""Routing put together for `python -m eventbus`: the queue in the event
bus's database, a worker per destination, the quiet-study releaser, the
metrics, the consumer's handler and the RoutingService."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

import grpc
from sqlalchemy.engine import Engine

from common.clients import MetadataClient, StorageClient
from eventbus.routing.config import DicomwebDestination, DimseDestination, Rule
from eventbus.routing.delivery import DestinationWorker, QuietStudies, watch_metrics
from eventbus.routing.dimse import DimseSender
from eventbus.routing.objects import ObjectFiles
from eventbus.routing.queue import DeliveryQueue, Retry
from eventbus.routing.rules import RuleMatcher
from eventbus.routing.sending import Sender
from eventbus.routing.service import RoutingService
from eventbus.routing.stow import StowSender
from eventbus.settings import EventbusSettings

log = logging.getLogger(__name__)


def sender_for(destination: DimseDestination | DicomwebDestination, settings: EventbusSettings) -> Sender:
    if isinstance(destination, DimseDestination):
        return DimseSender(destination, settings.routing_ae_title, settings.routing_spool_dir)
    return StowSender(destination)


class Routing:
    def __init__(
        self, settings: EventbusSettings, engine: Engine, metadata_channel: grpc.Channel, storage_channel: grpc.Channel
    ) -> None:
        if settings.log_level.upper() != "DEBUG":
            # pynetdicom logs every message at INFO; its warnings and errors say why a peer failed.
            logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        self.destinations: dict[str, DimseDestination | DicomwebDestination] = dict(settings.routing_destinations)
        self.rules: list[Rule] = list(settings.routing_rules)
        self.queue = DeliveryQueue(engine)
        self.metadata = MetadataClient(metadata_channel)
        files = ObjectFiles(StorageClient(storage_channel), settings.routing_spool_dir)
        self.workers: dict[str, DestinationWorker] = {}
        for name, dest in self.destinations.items():
            retry = Retry(
                dest.max_attempts or settings.routing_max_attempts,
                settings.routing_backoff if dest.backoff is None else dest.backoff,
                settings.routing_max_backoff if dest.max_backoff is None else dest.max_backoff,
            )
            self.workers[name] = DestinationWorker(
                name,
                dest,
                sender_for(dest, settings),
                self.queue,
                self.metadata,
                files,
                retry,
                dest.batch or settings.routing_batch,
            )
        self.matcher = RuleMatcher(self.rules, self.queue, metadata_channel, self.notify)
        self.quiet = QuietStudies(self.rules, self.queue, self.metadata, self.notify)
        self.service = RoutingService(self.destinations, self.queue, self.metadata, self.notify)
        forgotten = self.queue.forget_studies(r.name for r in self.rules if r.send == "studies")
        if forgotten:
            log.warning("routing: %d noted studies of rules no longer configured are forgotten", forgotten)
        orphans = {n: s.queued for n, s in self.queue.stats().items() if n not in self.destinations and s.queued}
        if orphans:
            log.warning(
                "routing: deliveries queued for destinations no longer configured stay queued: %s",
                ", ".join(f"{n} ({q})" for n, q in sorted(orphans.items())),
            )

    def notify(self, destinations: Iterable[str]) -> None:
        for name in destinations:
            worker = self.workers.get(name)
            if worker is not None:
                worker.notify()

    def wake_all(self) -> None:
        self.notify(list(self.workers))

    def threads(self, stop: threading.Event) -> list[threading.Thread]:
        out = [threading.Thread(target=w.run, args=(stop,), name=f"route-{name}") for name, w in self.workers.items()]
        if self.quiet.rules:
            out.append(threading.Thread(target=self.quiet.run, args=(stop,), name="route-quiet-studies"))
        if self.destinations:
            out.append(
                threading.Thread(
                    target=watch_metrics, args=(self.queue, list(self.destinations), stop), name="route-metrics"
                )
            )
        return out
