"""Routing over HTTP: the event bus's RoutingService, in the caller's tenant.

GET  {base}/routing/destinations                      destinations bound to the tenant, with their queues
POST {base}/routing/destinations/{name}/studies/{study}[/series/{series}[/instances/{sop}]]
                                                      send it there: 202, the send's progress, Location
GET  {base}/routing/sends/{id}                        a send's progress
GET  {base}/routing/dead-letters?destination=&after=&limit=    (admin scope)
POST {base}/routing/dead-letters/replay               (admin scope) body {"ids": [...]},
                                                      {"destination": "..."} or {} for all"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from common.clients import RoutingClient
from common.gen.dicomserver.v1 import routing_service_pb2 as pb
from dicomweb_gateway.context import Urls, access, gateway, path_uid, tenant_for
from dicomweb_gateway.errors import ApiError, bad_request

MAX_BODY = 64 * 1024
MAX_LIMIT = 1000
_KINDS = {pb.DESTINATION_KIND_DIMSE: "dimse", pb.DESTINATION_KIND_DICOMWEB: "dicomweb"}


def _client(request: Request) -> RoutingClient:
    client = gateway(request).routing
    if client is None:
        raise ApiError(503, "routing is not available", {"Retry-After": "5"})
    return client


def _require_admin(request: Request) -> None:
    if "admin" not in access(request).principal.scopes:
        raise ApiError(403, "the 'admin' scope is required")


def _time(ts: Timestamp, present: bool = True) -> str | None:
    return ts.ToJsonString() if present else None


def _progress(send: pb.SendProgress) -> dict[str, Any]:
    return {
        "id": send.id,
        "destination": send.destination,
        "study": send.study_instance_uid,
        "series": send.series_instance_uid or None,
        "instance": send.sop_instance_uid or None,
        "total": send.total,
        "sent": send.sent,
        "failed": send.failed,
        "skipped": send.skipped,
        "queued": send.total - send.sent - send.failed - send.skipped,
        "created": _time(send.created),
    }


def _name(request: Request) -> str:
    name = request.path_params["name"]
    if not 0 < len(name) <= 64:
        raise bad_request("a destination name has 1 to 64 characters")
    return str(name)


def _int_param(request: Request, name: str, default: int, upper: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) > upper:
        raise bad_request(f"{name} must be an integer from 0 to {upper}")
    return int(raw)


async def list_destinations(request: Request) -> Response:
    destinations = await run_in_threadpool(_client(request).list_destinations, tenant_for(request))
    return JSONResponse(
        {
            "destinations": [
                {
                    "name": d.name,
                    "kind": _KINDS.get(d.kind, "unknown"),
                    "address": d.address,
                    "queued": d.queued,
                    "oldest_queued": _time(d.oldest_queued, d.HasField("oldest_queued")),
                    "dead_letters": d.dead_letters,
                }
                for d in destinations
            ]
        }
    )


async def send(request: Request) -> Response:
    study = path_uid(request, "study", "Study Instance UID")
    series = path_uid(request, "series", "Series Instance UID") if "series" in request.path_params else ""
    sop = path_uid(request, "sop", "SOP Instance UID") if "sop" in request.path_params else ""
    req = pb.SendRequest(
        tenant=tenant_for(request),
        destination=_name(request),
        study_instance_uid=study,
        series_instance_uid=series,
        sop_instance_uid=sop,
    )
    progress = await run_in_threadpool(_client(request).send, req)
    location = f"{Urls.for_request(request).root}/routing/sends/{progress.id}"
    return JSONResponse(_progress(progress), status_code=202, headers={"Location": location})


async def get_send(request: Request) -> Response:
    raw = request.path_params["id"]
    if not raw.isdigit() or len(raw) > 18:
        raise bad_request("a send id is a number")
    progress = await run_in_threadpool(_client(request).get_send, tenant_for(request), int(raw))
    return JSONResponse(_progress(progress))


async def list_dead_letters(request: Request) -> Response:
    _require_admin(request)
    unknown = set(request.query_params) - {"destination", "after", "limit"}
    if unknown:
        raise bad_request(f"unknown parameter '{sorted(unknown)[0][:64]}'")
    destination = request.query_params.get("destination", "")
    if len(destination) > 64:
        raise bad_request("a destination name has 1 to 64 characters")
    req = pb.ListDeadLettersRequest(
        tenant=tenant_for(request),
        destination=destination,
        after_id=_int_param(request, "after", 0, 2**62),
        limit=_int_param(request, "limit", 100, MAX_LIMIT) or 100,
    )
    resp = await run_in_threadpool(_client(request).list_dead_letters, req)
    return JSONResponse(
        {
            "dead_letters": [
                {
                    "id": d.id,
                    "destination": d.destination,
                    "study": d.ref.study_instance_uid,
                    "series": d.ref.series_instance_uid,
                    "instance": d.ref.sop_instance_uid,
                    "origin": d.origin,
                    "attempts": d.attempts,
                    "error": d.error,
                    "queued": _time(d.queued),
                    "failed": _time(d.failed),
                }
                for d in resp.dead_letters
            ],
            "truncated": resp.truncated,
        }
    )


async def replay_dead_letters(request: Request) -> Response:
    _require_admin(request)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise ApiError(413, f"the request body is larger than {MAX_BODY} bytes")
    try:
        doc = json.loads(body) if body.strip() else {}
    except ValueError:
        raise bad_request("the body must be JSON") from None
    if not isinstance(doc, dict) or set(doc) - {"ids", "destination"}:
        raise bad_request('the body is {"ids": [...]}, {"destination": "..."} or {}')
    ids = doc.get("ids", [])
    destination = doc.get("destination", "")
    if (
        not isinstance(ids, list)
        or not all(isinstance(i, int) and not isinstance(i, bool) and 0 < i < 2**62 for i in ids)
        or len(ids) > MAX_LIMIT
    ):
        raise bad_request(f"ids must be a list of at most {MAX_LIMIT} dead letter ids")
    if not isinstance(destination, str) or len(destination) > 64:
        raise bad_request("destination must be a destination name")
    req = pb.ReplayDeadLettersRequest(tenant=tenant_for(request), ids=ids, destination=destination)
    replayed = await run_in_threadpool(_client(request).replay_dead_letters, req)
    return JSONResponse({"replayed": replayed})
