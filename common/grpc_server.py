"""Runs a gRPC service process: health, reflection, graceful SIGTERM."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from common import observability, tls
from common.settings import CommonSettings

log = logging.getLogger(__name__)

# Object bytes travel in 1 MiB chunks; headroom for the envelope and for
# metadata replies that carry many instances.
MAX_MESSAGE = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
]


def configure_logging(level: str, fmt: str = "text") -> None:
    observability.configure_logging(level, fmt)


def build_server(
    register: Callable[[grpc.Server], None],
    service_names: Sequence[str],
    address: str,
    max_workers: int = 16,
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.Server, health.HealthServicer, int]:
    """A started server with health and reflection; returns its bound port.
    With `credentials` it serves TLS only (tls.grpc_server_credentials)."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        options=CHANNEL_OPTIONS,
        interceptors=[observability.ServerInterceptor()],
    )
    register(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    server.start()
    for name in ("", *service_names):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, health_servicer, port


def wait_for_signal(stop: threading.Event) -> None:
    """Blocks the main thread until `stop` is set by a signal handler.

    Waits in short slices: a signal the kernel delivers to another thread
    does not interrupt a blocked main thread, and Python runs handlers only
    on the main thread, so an untimed wait could sleep through SIGTERM."""
    while not stop.wait(0.25):
        pass


def stop_on_signals() -> threading.Event:
    """An event SIGTERM and SIGINT set from now on. A service that opens a
    port before serve_forever calls this first, so that a SIGTERM in between
    stops it gracefully instead of killing it."""
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    return stop


def serve_forever(
    settings: CommonSettings,
    register: Callable[[grpc.Server], None],
    service_name: str,
    own_addr: str,
    on_stop: Callable[[], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Serves until SIGTERM or SIGINT (or `stop` from stop_on_signals), then
    drains in-flight calls for the shutdown grace."""
    stop = stop or stop_on_signals()
    address = settings.listen_address(own_addr)
    credentials = tls.grpc_server_credentials(settings)
    server, health_servicer, port = build_server(register, [service_name], address, credentials=credentials)
    observability.start_metrics_server(settings.metrics_port, settings.metrics_host)
    log.info("%s listening on %s%s", service_name, address, " (mutual TLS)" if credentials else "")
    wait_for_signal(stop)
    health_servicer.enter_graceful_shutdown()
    server.stop(settings.shutdown_grace).wait()
    if on_stop is not None:
        on_stop()
    log.info("stopped")
