"""python -m dicomweb_gateway"""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from common import tls
from common.grpc_server import configure_logging
from common.observability import start_metrics_server
from dicomweb_gateway.app import create_app
from dicomweb_gateway.settings import GatewaySettings

log = logging.getLogger("dicomweb_gateway")


class HeadDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head: from the
    connection's start (after any TLS handshake), or from the first byte of
    the next request on a kept-alive connection, until the whole request line
    and headers are in. A client that trickles its head (slowloris) is
    disconnected instead of holding a connection, and a share of
    limit_concurrency, forever; uvicorn itself only times out idle keep-alive."""

    head_timeout: float = 20.0
    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            self._arm()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_deadline is None:
            self._head_deadline = self.loop.call_later(self.head_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _too_slow(self) -> None:
        self._head_deadline = None
        if self.conn.their_state is h11.IDLE:
            self.transport.close()


def https_options(settings: GatewaySettings) -> dict[str, object]:
    """uvicorn's TLS arguments: none for plain HTTP; TLS 1.2 or newer, and
    with a CA file a client certificate it signed is required."""
    try:
        context = tls.optional_server_context(
            settings.http_tls_cert_file, settings.http_tls_key_file, settings.http_tls_ca_file,
            "DICOMSERVER_HTTP_TLS",
        )
    except (OSError, ssl.SSLError) as exc:
        raise tls.TLSConfigError(f"cannot load the HTTPS certificate or CA: {exc}") from None
    if context is None:
        return {}
    return {
        "ssl_certfile": settings.http_tls_cert_file,
        "ssl_keyfile": settings.http_tls_key_file,
        "ssl_ca_certs": settings.http_tls_ca_file,
        "ssl_cert_reqs": context.verify_mode,
        # The same certificate, key and CA as above, with the version floor
        # uvicorn's own factory does not set.
        "ssl_context_factory": lambda _config, _default: context,
    }


def main() -> None:
    settings = GatewaySettings()
    configure_logging(settings.log_level, settings.log_format)
    try:
        https = https_options(settings)
    except tls.TLSConfigError as exc:
        log.error("%s", exc)
        sys.exit(2)
    start_metrics_server(settings.metrics_port, settings.metrics_host)
    app = create_app(settings)
    scheme = "https" if https else "http"
    log.info("DICOMweb listening on %s://%s:%d%s", scheme, settings.http_host, settings.http_port, settings.base_path)
    # uvicorn handles SIGTERM/SIGINT: stops accepting, drains, runs the lifespan shutdown.
    uvicorn.run(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        log_level=settings.log_level.lower(),
        # Access log lines carry UIDs and query strings (patient names): off unless asked for.
        access_log=settings.access_log,
        timeout_graceful_shutdown=settings.shutdown_grace,
        timeout_keep_alive=settings.http_keep_alive_timeout,
        h11_max_incomplete_event_size=settings.http_max_header_bytes,
        limit_concurrency=settings.http_max_concurrency,
        http=type("GatewayHttpProtocol", (HeadDeadlineProtocol,), {"head_timeout": settings.http_head_timeout}),
        **https,  # type: ignore[arg-type]
    )


if __name__ == "__main__":
    main()
