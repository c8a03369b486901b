"""python -m metadata_svc"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

from common.gen.dicomserver.v1 import metadata_service_pb2, metadata_service_pb2_grpc
from common.grpc_server import configure_logging, serve_forever, stop_on_signals
from metadata_svc.cache import Cache
from metadata_svc.db import Database
from metadata_svc.index import MetadataIndex
from metadata_svc.service import MetadataService
from metadata_svc.settings import MetadataSettings

log = logging.getLogger("metadata_svc")


def prune_audit(index: MetadataIndex, settings: MetadataSettings, stop: threading.Event) -> None:
    """Deletes audit records older than the retention, now and every interval."""
    while True:
        cutoff = datetime.now(UTC) - timedelta(hours=settings.audit_outbox_retention_hours)
        try:
            pruned = index.prune_audit(cutoff)
            if pruned:
                log.info("pruned %d audit records older than %s from the outbox", pruned, cutoff.isoformat())
        except Exception as exc:  # the database may be away for a while; try again next time
            log.warning("audit pruning failed: %s", type(exc).__name__)
        if stop.wait(settings.audit_prune_interval):
            return


def main() -> None:
    settings = MetadataSettings()
    configure_logging(settings.log_level, settings.log_format)
    db = Database.from_url(settings.effective_database_url, pool_size=settings.database_pool_size)
    cache = Cache(settings.redis_url, settings.cache_ttl, settings.redis_timeout) if settings.redis_url else None
    index = MetadataIndex(db, settings.max_query_limit)
    service = MetadataService(index, cache)
    stop = stop_on_signals()
    if settings.audit_outbox_retention_hours > 0:
        threading.Thread(target=prune_audit, args=(index, settings, stop), name="audit-prune", daemon=True).start()
    serve_forever(
        settings,
        lambda server: metadata_service_pb2_grpc.add_MetadataServiceServicer_to_server(service, server),
        metadata_service_pb2.DESCRIPTOR.services_by_name["MetadataService"].full_name,
        settings.metadata_addr,
        on_stop=db.dispose,
        stop=stop,
    )


if __name__ == "__main__":
    main()
