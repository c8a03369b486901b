"""The settings base every service extends: environment variables with the
DICOMSERVER_ prefix, optionally a file named by DICOMSERVER_CONFIG_FILE."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DICOMSERVER_",
        env_file=os.environ.get("DICOMSERVER_CONFIG_FILE"),
        extra="ignore",
    )

    # Everything the embedded run writes lives under this folder.
    data_dir: Path = Path("data")
    # gRPC addresses: each service listens on its own and calls the others.
    storage_addr: str = "127.0.0.1:50051"
    metadata_addr: str = "127.0.0.1:50052"
    auth_addr: str = "127.0.0.1:50053"
    ingest_addr: str = "127.0.0.1:50054"
    # The event bus answers here: status and audit statistics (EventBusService,
    # the console asks) and routing (RoutingService: manual sends, dead letters).
    eventbus_addr: str = "127.0.0.1:50055"
    # Where this service's own gRPC server binds, when that differs from the
    # address others call it on (0.0.0.0:PORT in a container).
    grpc_listen: str = ""
    default_tenant: str = "default"
    # Audit records (who did what, when, from where) from the edges to the
    # event bus; at most audit_queue_size wait while the metadata service is
    # away, then the oldest are dropped (dicomserver_audit_dropped_total).
    audit_enabled: bool = True
    audit_queue_size: int = 10000
    log_level: str = "INFO"
    # "text" for people, "json" for log collectors; both carry the request id.
    log_format: Literal["text", "json"] = "text"
    # Port of the Prometheus /metrics endpoint; 0 serves none (the embedded
    # run, where all services share one address).
    metrics_port: int = 0
    # Containers set 0.0.0.0 so Prometheus can scrape from outside the pod.
    metrics_host: str = "127.0.0.1"
    # Seconds a stopping service gives in-flight calls.
    shutdown_grace: float = 5.0
    # Mutual TLS between the services: set all three (or none). Every gRPC
    # server then requires a client certificate signed by the CA, and every
    # channel presents this certificate; it needs serverAuth and clientAuth
    # and must name the host of each *_addr (scripts/devca.py server
    # --also-client).
    grpc_tls_cert_file: Path | None = None
    grpc_tls_key_file: Path | None = None
    grpc_tls_ca_file: Path | None = None

    def listen_address(self, own_addr: str) -> str:
        return self.grpc_listen or own_addr
