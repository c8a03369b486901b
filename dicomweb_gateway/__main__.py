"""python -m dicomweb_gateway"""

from __future__ import annotations

import logging

import uvicorn

from common.grpc_server import configure_logging
from common.observability import start_metrics_server
from dicomweb_gateway.app import create_app
from dicomweb_gateway.settings import GatewaySettings

log = logging.getLogger("dicomweb_gateway")


def main() -> None:
    settings = GatewaySettings()
    configure_logging(settings.log_level, settings.log_format)
    start_metrics_server(settings.metrics_port, settings.metrics_host)
    app = create_app(settings)
    log.info("DICOMweb listening on http://%s:%d%s", settings.http_host, settings.http_port, settings.base_path)
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
    )


if __name__ == "__main__":
    main()
