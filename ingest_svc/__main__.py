"""python -m ingest_svc: the DIMSE SCP, the IngestService and the
DeidentifyService (de-identified copies through the same pipeline) in one process.

With DICOMSERVER_DIMSE_WORKERS=N > 1 it also starts N-1 processes that run
only the SCP (`python -m ingest_svc --dimse-worker`); all bind the DIMSE port
with SO_REUSEPORT and the kernel spreads new associations across them."""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys

import grpc

from common.audit import AuditLog
from common.blobs import BlobReader
from common.clients import AuthClient, MetadataClient, StorageClient, channel
from common.exposure import ExposedWithoutAuth, require_auth_unless_loopback
from common.gen.dicomserver.v1 import (
    deidentify_service_pb2_grpc,
    ingest_service_pb2,
    ingest_service_pb2_grpc,
)
from common.grpc_server import configure_logging, serve_forever, stop_on_signals, wait_for_signal
from common.ingest import IngestPipeline
from deidentify.service import DeidentifyService
from ingest_svc.peer_send import PeerSender
from ingest_svc.scp import DimseServer, start_scp
from ingest_svc.service import IngestService
from ingest_svc.settings import IngestSettings

log = logging.getLogger("ingest_svc")


def _start(settings: IngestSettings) -> tuple[IngestPipeline, DimseServer, AuditLog]:
    storage = StorageClient(channel(settings.storage_addr))
    metadata = MetadataClient(channel(settings.metadata_addr))
    pipeline = IngestPipeline(storage, metadata)
    auth = AuthClient(channel(settings.auth_addr))
    # Refuses to serve a network address while authentication is off.
    try:
        require_auth_unless_loopback(
            auth,
            {
                "DIMSE listener": settings.dimse_host,
                "gRPC listener": settings.listen_address(settings.ingest_addr),
            },
        )
    except ExposedWithoutAuth as exc:
        log.error("%s", exc)
        sys.exit(2)
    audit = AuditLog.from_settings(settings, metadata, edge="dimse")
    scp = start_scp(settings, pipeline, auth, storage, metadata, audit)
    return pipeline, scp, audit


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def worker(settings: IngestSettings) -> None:
    """A DIMSE-only process sharing the port."""
    stop = stop_on_signals()
    _, scp, audit = _start(settings)
    wait_for_signal(stop)
    scp.stop(settings.shutdown_grace)
    audit.close(settings.shutdown_grace)


def main() -> None:
    settings = IngestSettings()
    configure_logging(settings.log_level, settings.log_format)
    if "--dimse-worker" in sys.argv[1:]:
        worker(settings)
        return
    workers = [
        subprocess.Popen([sys.executable, "-m", "ingest_svc", "--dimse-worker"], preexec_fn=_die_with_parent)
        for _ in range(settings.dimse_workers - 1)
    ]
    stop_requested = stop_on_signals()  # before the DIMSE port opens
    pipeline, scp, audit = _start(settings)
    log.info(
        "DIMSE SCP %s listening on %s:%d (%d processes)",
        settings.ae_title,
        settings.dimse_host,
        settings.dimse_port,
        max(1, settings.dimse_workers),
    )

    def stop() -> None:
        scp.stop(settings.shutdown_grace)
        audit.close(settings.shutdown_grace)
        for proc in workers:
            proc.send_signal(signal.SIGTERM)
        for proc in workers:
            try:
                proc.wait(settings.shutdown_grace + 5)
            except subprocess.TimeoutExpired:
                proc.kill()

    sender = PeerSender(
        settings, StorageClient(channel(settings.storage_addr)), MetadataClient(channel(settings.metadata_addr))
    )
    service = IngestService(pipeline, settings.spool_max_memory, sender)
    storage = StorageClient(channel(settings.storage_addr))
    deidentify = DeidentifyService(pipeline, MetadataClient(channel(settings.metadata_addr)), BlobReader(storage))

    def register(server: grpc.Server) -> None:
        ingest_service_pb2_grpc.add_IngestServiceServicer_to_server(service, server)
        deidentify_service_pb2_grpc.add_DeidentifyServiceServicer_to_server(deidentify, server)

    serve_forever(
        settings,
        register,
        ingest_service_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name,
        settings.ingest_addr,
        on_stop=stop,
        stop=stop_requested,
    )


if __name__ == "__main__":
    main()
