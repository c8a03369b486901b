"""python -m eventbus

Runs the outbox relay (when Kafka is configured) and the consumers named
in DICOMSERVER_CONSUMERS, each in its own thread, until SIGTERM."""

from __future__ import annotations

import logging
import signal
import threading

from common.clients import channel
from common.grpc_server import configure_logging, wait_for_signal
from common.observability import start_metrics_server
from eventbus.consumer import ConsumerLoop
from eventbus.handlers import Handler, audit_sink, metadata_precompute, wants_audit
from eventbus import lag
from eventbus.relay import POSITION, Relay, ensure_topics
from eventbus.settings import EventbusSettings
from eventbus.store import Store
from eventbus.transports import EmbeddedLog, KafkaLog, Transport

log = logging.getLogger("eventbus")


def _wait_for_topics(settings: EventbusSettings, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            ensure_topics(settings.kafka_bootstrap, [settings.kafka_topic, settings.kafka_audit_topic,
                                                     settings.kafka_dead_letter_topic],
                          settings.kafka_partitions, settings.kafka_replication, timeout=10)
            return True
        except Exception as exc:  # Kafka not there yet
            log.warning("kafka topics not ready (%s); retrying", type(exc).__name__)
            stop.wait(2.0)
    return False


def main() -> None:
    settings = EventbusSettings()
    configure_logging(settings.log_level, settings.log_format)
    start_metrics_server(settings.metrics_port, settings.metrics_host)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    store = Store(settings.effective_database_url)
    md_channel = channel(settings.metadata_addr)
    handlers: dict[str, Handler] = {
        "metadata": metadata_precompute(md_channel),
        "audit": audit_sink(store),
    }
    unknown = [n for n in settings.consumer_names if n not in handlers]
    if unknown:
        raise SystemExit(f"unknown consumers: {', '.join(unknown)} (known: {', '.join(handlers)})")
    kafka = bool(settings.kafka_bootstrap)
    if kafka and not _wait_for_topics(settings, stop):
        return

    threads: list[threading.Thread] = []
    closers = []
    if kafka:
        relay = Relay(md_channel, store, settings.kafka_bootstrap, settings.kafka_topic, settings.relay_batch,
                      settings.poll_interval, audit_topic=settings.kafka_audit_topic)
        threads.append(threading.Thread(target=relay.run, args=(stop,), name="relay"))
        closers.append(relay.close)
    for name in settings.consumer_names:
        topics = [settings.kafka_topic] + ([settings.kafka_audit_topic] if wants_audit(handlers[name]) else [])
        transport: Transport = (
            KafkaLog(name, settings.kafka_bootstrap, topics, settings.kafka_dead_letter_topic)
            if kafka else EmbeddedLog(name, md_channel, store)
        )
        loop = ConsumerLoop(name, transport, handlers[name], settings.consumer_batch, settings.max_attempts,
                            settings.retry_backoff, settings.poll_interval)
        threads.append(threading.Thread(target=loop.run, args=(stop,), name=f"consumer-{name}"))
        closers.append(transport.close)
    readers = [POSITION] if kafka else [f"consumer:{n}" for n in settings.consumer_names]
    threads.append(threading.Thread(target=lag.watch, args=(md_channel, store, readers, settings.lag_interval, stop),
                                    name="lag"))
    for t in threads:
        t.start()
    log.info("eventbus running: %s on %s", ", ".join(settings.consumer_names) or "no consumers",
             "kafka" if kafka else "the embedded event log")
    wait_for_signal(stop)
    for t in threads:
        t.join(30)
    for close in closers:
        close()
    store.dispose()
    md_channel.close()
    log.info("stopped")


if __name__ == "__main__":
    main()
