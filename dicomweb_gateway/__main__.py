"""python -m dicomweb_gateway"""

from __future__ import annotations

import logging
import ssl
import sys

import uvicorn

from common import tls
from common.grpc_server import configure_logging
from common.observability import start_metrics_server
from dicomweb_gateway.app import create_app
from dicomweb_gateway.settings import GatewaySettings
from dicomweb_gateway.slow_clients import HeadDeadlineProtocol

log = logging.getLogger("dicomweb_gateway")


def https_options(settings: GatewaySettings) -> dict[str, object]:
    """uvicorn's TLS arguments: none for plain HTTP; TLS 1.2 or newer, and
    with a CA file a client certificate it signed is required."""
    try:
        context = tls.optional_server_context(
            settings.http_tls_cert_file,
            settings.http_tls_key_file,
            settings.http_tls_ca_file,
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
        # uvicorn annotates it int; it is an asyncio.wait_for timeout, so a fractional grace works.
        timeout_graceful_shutdown=settings.shutdown_grace,  # type: ignore[arg-type]
        timeout_keep_alive=settings.http_keep_alive_timeout,
        h11_max_incomplete_event_size=settings.http_max_header_bytes,
        limit_concurrency=settings.http_max_concurrency,
        http=type("GatewayHttpProtocol", (HeadDeadlineProtocol,), {"head_timeout": settings.http_head_timeout}),
        **https,  # type: ignore[arg-type]
    )


if __name__ == "__main__":
    main()
