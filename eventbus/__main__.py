"""python -m eventbus

Runs the outbox relay (when Kafka is configured), the consumers named in
DICOMSERVER_CONSUMERS, each in its own thread, and routing (a delivery
worker per destination), until SIGTERM; serves EventBusService (status and
audit statistics) and RoutingService on DICOMSERVER_EVENTBUS_ADDR."""

from __future__ import annotations

import logging
import signal
import threading
import time

import grpc
from pydantic import ValidationError

from common import tls
from common.clients import MetadataClient, StorageClient, channel
from common.errors import ServiceError
from common.gen.dicomserver.v1 import (
    eventbus_service_pb2,
    eventbus_service_pb2_grpc,
    routing_service_pb2,
    routing_service_pb2_grpc,
)
from common.grpc_server import build_server, configure_logging, wait_for_signal
from common.observability import start_metrics_server
from eventbus import lag
from eventbus.compression import check_rules, compression
from eventbus.consumer import ConsumerLoop
from eventbus.handlers import Handler, audit_sink, metadata_precompute, wants_audit
from eventbus.relay import POSITION, Relay, ensure_topics
from eventbus.routing.router import Routing
from eventbus.routing.rules import check_rules as check_routing_rules
from eventbus.routing.rules import latest_sequence
from eventbus.service import EventBusService
from eventbus.settings import EventbusSettings
from eventbus.store import Store
from eventbus.transports import EmbeddedLog, KafkaLog, Transport

log = logging.getLogger("eventbus")


def _wait_for_topics(settings: EventbusSettings, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            ensure_topics(
                settings.kafka_bootstrap,
                [settings.kafka_topic, settings.kafka_audit_topic, settings.kafka_dead_letter_topic],
                settings.kafka_partitions,
                settings.kafka_replication,
                timeout=10,
            )
            return True
        except Exception as exc:  # Kafka not there yet
            log.warning("kafka topics not ready (%s); retrying", type(exc).__name__)
            stop.wait(2.0)
    return False


def _wait_for_metadata(md_channel: grpc.Channel, stop: threading.Event, timeout: float = 60.0) -> None:
    """Waits up to `timeout` (or until `stop`) for the metadata service to
    take connections; past the timeout the consumers start anyway and retry
    on their own."""
    ready = grpc.channel_ready_future(md_channel)
    deadline = time.monotonic() + timeout
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            ready.result(timeout=0.5)
            return
        except grpc.FutureTimeoutError:
            continue
    ready.cancel()


def _start_routing(routing: Routing, md_channel: grpc.Channel, stop: threading.Event) -> bool:
    """Waits for the index to say every rule's conditions can be asked of
    it, and learns where in the outbox routing started."""
    while not stop.is_set():
        try:
            check_routing_rules(md_channel, routing.rules)
            routing.matcher.since = routing.queue.start_sequence(latest_sequence(md_channel))
            return True
        except ServiceError as exc:  # the metadata service not there yet
            log.warning("routing rules not checked yet (%s); retrying", type(exc).__name__)
            stop.wait(2.0)
    return False


def main() -> None:
    try:
        settings = EventbusSettings()
    except ValidationError as exc:
        raise SystemExit(f"eventbus settings: {exc}") from None
    configure_logging(settings.log_level, settings.log_format)
    start_metrics_server(settings.metrics_port, settings.metrics_host)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    store = Store(settings.effective_database_url)
    md_channel = channel(settings.metadata_addr)
    st_channel = channel(settings.storage_addr)
    routing = Routing(settings, store.engine, md_channel, st_channel)
    handlers: dict[str, Handler] = {
        "metadata": metadata_precompute(md_channel),
        "audit": audit_sink(store),
        "routing": routing.matcher,
    }
    if "compression" in settings.consumer_names:
        check_rules(settings.compression_rules)
        handlers["compression"] = compression(
            settings.compression_rules, StorageClient(st_channel), MetadataClient(md_channel)
        )
    unknown = [n for n in settings.consumer_names if n not in handlers]
    if unknown:
        raise SystemExit(f"unknown consumers: {', '.join(unknown)} (known: {', '.join(handlers)})")
    # "routing" listed without any rule has nothing to match.
    names = [n for n in settings.consumer_names if n != "routing" or routing.rules]
    if "routing" in names:
        try:
            if not _start_routing(routing, md_channel, stop):
                return
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
    kafka = bool(settings.kafka_bootstrap)
    if "routing" in names and not kafka and store.offset("consumer:routing") < routing.matcher.since:
        store.commit_offset("consumer:routing", routing.matcher.since)  # nothing before it is routed
    if kafka and not _wait_for_topics(settings, stop):
        return

    threads: list[threading.Thread] = []
    closers = []
    if kafka:
        relay = Relay(
            md_channel,
            store,
            settings.kafka_bootstrap,
            settings.kafka_topic,
            settings.relay_batch,
            settings.poll_interval,
            audit_topic=settings.kafka_audit_topic,
        )
        threads.append(threading.Thread(target=relay.run, args=(stop,), name="relay"))
        closers.append(relay.close)
    for name in names:
        topics = [settings.kafka_topic] + ([settings.kafka_audit_topic] if wants_audit(handlers[name]) else [])
        transport: Transport = (
            KafkaLog(name, settings.kafka_bootstrap, topics, settings.kafka_dead_letter_topic)
            if kafka
            else EmbeddedLog(name, md_channel, store)
        )
        loop = ConsumerLoop(
            name,
            transport,
            handlers[name],
            settings.consumer_batch,
            settings.max_attempts,
            settings.retry_backoff,
            settings.poll_interval,
            settings.consumer_linger,
        )
        threads.append(threading.Thread(target=loop.run, args=(stop,), name=f"consumer-{name}"))
        closers.append(transport.close)
    readers = [POSITION] if kafka else [f"consumer:{n}" for n in names]
    threads.append(
        threading.Thread(target=lag.watch, args=(md_channel, store, readers, settings.lag_interval, stop), name="lag")
    )
    threads += routing.threads(stop)

    def start_threads() -> None:
        # Started with the rest of the archive, the consumers would begin by
        # retrying; the gRPC services below answer meanwhile (health probes).
        _wait_for_metadata(md_channel, stop)
        for t in threads:
            t.start()

    starter = threading.Thread(target=start_threads, name="starter")
    starter.start()
    status = EventBusService(store, MetadataClient(md_channel), "kafka" if kafka else "embedded", names, readers)

    def register(srv: grpc.Server) -> None:
        eventbus_service_pb2_grpc.add_EventBusServiceServicer_to_server(status, srv)
        routing_service_pb2_grpc.add_RoutingServiceServicer_to_server(routing.service, srv)

    try:
        server, health, _ = build_server(
            register,
            [
                eventbus_service_pb2.DESCRIPTOR.services_by_name["EventBusService"].full_name,
                routing_service_pb2.DESCRIPTOR.services_by_name["RoutingService"].full_name,
            ],
            settings.listen_address(settings.eventbus_addr),
            credentials=tls.grpc_server_credentials(settings),
        )
    except OSError as exc:
        # The console and manual routing ask it; consumers and deliveries run on without it.
        log.warning("EventBusService and RoutingService not served: %s", exc)
        server = health = None
    log.info(
        "eventbus running: %s on %s; %d routing destinations",
        ", ".join(names) or "no consumers",
        "kafka" if kafka else "the embedded event log",
        len(routing.workers),
    )
    wait_for_signal(stop)
    if server is not None and health is not None:
        health.enter_graceful_shutdown()
    routing.wake_all()
    starter.join()
    for t in threads:
        t.join(30)
    if server is not None:
        server.stop(settings.shutdown_grace).wait()
    for close in closers:
        close()
    store.dispose()
    md_channel.close()
    st_channel.close()
    log.info("stopped")


if __name__ == "__main__":
    main()
