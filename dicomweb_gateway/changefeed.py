"""The change feed over HTTP, shaped like the change feed of Microsoft's DICOM
service: every create and delete of the tenant, in order, by sequence.

GET {base}/changefeed?offset=N&limit=M   entries with a sequence above N
GET {base}/changefeed/latest             the newest sequence"""

from __future__ import annotations

from typing import Any

from google.protobuf.json_format import MessageToDict
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from common.gen.dicomserver.v1 import events_pb2
from dicomweb_gateway.context import gateway, tenant_for
from dicomweb_gateway.errors import bad_request

DEFAULT_LIMIT = 10
MAX_LIMIT = 1000


def _int_param(request: Request, name: str, default: int, upper: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) > upper:
        raise bad_request(f"{name} must be an integer from 0 to {upper}")
    return int(raw)


def entry(event: events_pb2.Event) -> dict[str, Any]:
    kind = event.WhichOneof("kind")
    # kind is None for an event of a kind this build does not know: TypeError (a 500), as before.
    location = getattr(event, kind).location  # type: ignore[arg-type]
    ref = location.ref
    return {
        "Sequence": event.sequence,
        "StudyInstanceUid": ref.study_instance_uid,
        "SeriesInstanceUid": ref.series_instance_uid,
        "SopInstanceUid": ref.sop_instance_uid,
        # A conversion by the compression policy changes the stored object, not the instance.
        "Action": {"instance_stored": "Create", "instance_converted": "Update"}.get(kind or "", "Delete"),
        "Timestamp": MessageToDict(event)["time"],
    }


async def read(request: Request) -> Response:
    unknown = set(request.query_params) - {"offset", "limit"}
    if unknown:
        raise bad_request(f"unknown parameter '{sorted(unknown)[0][:64]}'")
    offset = _int_param(request, "offset", 0, 2**62)
    limit = _int_param(request, "limit", DEFAULT_LIMIT, MAX_LIMIT)
    if limit == 0:
        raise bad_request(f"limit must be an integer from 1 to {MAX_LIMIT}")
    gw = gateway(request)
    feed = await run_in_threadpool(gw.metadata.read_change_feed, tenant_for(request), offset, limit)
    return JSONResponse([entry(e) for e in feed.events])


async def latest(request: Request) -> Response:
    gw = gateway(request)
    feed = await run_in_threadpool(gw.metadata.read_change_feed, tenant_for(request), 2**62, 1)
    return JSONResponse({"Sequence": feed.latest_sequence})
