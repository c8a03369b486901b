"""python -m metadata_svc"""

from __future__ import annotations

from common.gen.dicomserver.v1 import metadata_service_pb2, metadata_service_pb2_grpc
from common.grpc_server import configure_logging, serve_forever
from metadata_svc.cache import Cache
from metadata_svc.db import Database
from metadata_svc.index import MetadataIndex
from metadata_svc.service import MetadataService
from metadata_svc.settings import MetadataSettings


def main() -> None:
    settings = MetadataSettings()
    configure_logging(settings.log_level, settings.log_format)
    db = Database.from_url(settings.effective_database_url, pool_size=settings.database_pool_size)
    cache = Cache(settings.redis_url, settings.cache_ttl, settings.redis_timeout) if settings.redis_url else None
    service = MetadataService(MetadataIndex(db, settings.max_query_limit), cache)
    serve_forever(
        settings,
        lambda server: metadata_service_pb2_grpc.add_MetadataServiceServicer_to_server(service, server),
        metadata_service_pb2.DESCRIPTOR.services_by_name["MetadataService"].full_name,
        settings.metadata_addr,
        on_stop=db.dispose,
    )


if __name__ == "__main__":
    main()
