"""python -m storage_svc"""

from __future__ import annotations

from common.clients import MetadataClient, channel
from common.gen.dicomserver.v1 import storage_service_pb2, storage_service_pb2_grpc
from common.grpc_server import configure_logging, serve_forever
from storage_svc.backend import open_store
from storage_svc.service import StorageService
from storage_svc.settings import StorageSettings
from storage_svc.sweeper import Sweeper


def main() -> None:
    settings = StorageSettings()
    configure_logging(settings.log_level, settings.log_format)
    store = open_store(settings)
    sweeper = Sweeper(store, MetadataClient(channel(settings.metadata_addr, settings)), settings)
    service = StorageService(store, sweeper.sweep)
    sweeper.start()
    serve_forever(
        settings,
        lambda server: storage_service_pb2_grpc.add_StorageServiceServicer_to_server(service, server),
        storage_service_pb2.DESCRIPTOR.services_by_name["StorageService"].full_name,
        settings.storage_addr,
        on_stop=sweeper.stop,
    )


if __name__ == "__main__":
    main()
