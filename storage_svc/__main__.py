"""python -m storage_svc"""

from __future__ import annotations

from common.gen.dicomserver.v1 import storage_service_pb2, storage_service_pb2_grpc
from common.grpc_server import configure_logging, serve_forever
from storage_svc.backend import open_store
from storage_svc.service import StorageService
from storage_svc.settings import StorageSettings


def main() -> None:
    settings = StorageSettings()
    configure_logging(settings.log_level, settings.log_format)
    service = StorageService(open_store(settings))
    serve_forever(
        settings,
        lambda server: storage_service_pb2_grpc.add_StorageServiceServicer_to_server(service, server),
        storage_service_pb2.DESCRIPTOR.services_by_name["StorageService"].full_name,
        settings.storage_addr,
    )


if __name__ == "__main__":
    main()
