"""DELETE of a study, series or instance: the index entries go first (which
writes the InstanceDeleted events to the outbox), then the stored objects they
referenced, so storage is reclaimed and nothing is ever served half-deleted."""

from __future__ import annotations

import logging

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from common import errors
from common.clients import StorageClient
from common.gen.dicomserver.v1 import dicom_pb2
from dicomweb_gateway.context import gateway, tenant_for
from dicomweb_gateway.errors import not_found
from dicomweb_gateway.reading import path_ids

log = logging.getLogger(__name__)
audit = logging.getLogger("dicomweb_gateway.audit")


def reclaim(storage: StorageClient, removed: list[dicom_pb2.InstanceLocation]) -> int:
    """Deletes the objects; returns how many could not be deleted."""
    failed = 0
    for loc in removed:
        try:
            storage.delete(loc.object_key)
        except errors.ServiceError as exc:
            # The index no longer references it: garbage a sweeper can find, not data.
            failed += 1
            log.warning("could not delete an unreferenced object: %s", exc)
    return failed


async def delete_resource(request: Request) -> Response:
    study, series, sop = path_ids(request)
    level = "instance" if sop else "series" if series else "study"
    gw = gateway(request)
    tenant = tenant_for(request)
    try:
        removed = await run_in_threadpool(gw.metadata.delete, tenant, study, series, sop)
    except errors.NotFound:
        raise not_found(f"no such {level}") from None
    failed = await run_in_threadpool(reclaim, gw.storage, removed)
    # Audit record: what kind of resource and how much, never patient data.
    audit.info(
        "DELETE %s in tenant %s: %d instance(s) removed, %d object(s) left for the sweeper",
        level,
        tenant,
        len(removed),
        failed,
    )
    return Response(status_code=204)
