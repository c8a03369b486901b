"""python -m ingest_svc: the DIMSE SCP and the IngestService in one process."""

from __future__ import annotations

import logging

from common.clients import AuthClient, MetadataClient, StorageClient, channel
from common.gen.dicomserver.v1 import ingest_service_pb2, ingest_service_pb2_grpc
from common.grpc_server import configure_logging, serve_forever
from common.ingest import IngestPipeline
from ingest_svc.scp import start_scp
from ingest_svc.service import IngestService
from ingest_svc.settings import IngestSettings

log = logging.getLogger("ingest_svc")


def main() -> None:
    settings = IngestSettings()
    configure_logging(settings.log_level)
    pipeline = IngestPipeline(
        StorageClient(channel(settings.storage_addr)), MetadataClient(channel(settings.metadata_addr))
    )
    scp = start_scp(settings, pipeline, AuthClient(channel(settings.auth_addr)))
    log.info("DIMSE SCP %s listening on %s:%d", settings.ae_title, settings.dimse_host, settings.dimse_port)
    service = IngestService(pipeline, settings.spool_max_memory)
    serve_forever(
        lambda server: ingest_service_pb2_grpc.add_IngestServiceServicer_to_server(service, server),
        [ingest_service_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name],
        settings.ingest_addr,
        settings.shutdown_grace,
        on_stop=scp.shutdown,
    )


if __name__ == "__main__":
    main()
