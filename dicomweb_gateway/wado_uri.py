"""WADO-URI (PS3.18 9): GET {base}/wado?requestType=WADO&studyUID=..&seriesUID=..
&objectUID=..[&contentType=..][&transferSyntax=..][&frameNumber=..]
[&rows=..&columns=..][&windowCenter=..&windowWidth=..][&imageQuality=..]

application/dicom returns the object (as stored, or transcoded when
transferSyntax names another syntax); image/jpeg and image/png render a frame."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from common.validation import InvalidValue, check_uid
from dicomweb_gateway import objects, transcode
from dicomweb_gateway.context import Gateway, gateway, tenant_for
from dicomweb_gateway.errors import ApiError, bad_request, not_acceptable, not_found
from dicomweb_gateway.imaging import (
    JPEG,
    PNG,
    RenderOptions,
    parse_quality,
    parse_window,
    render_frame,
)
from dicomweb_gateway.media import DICOM
from dicomweb_gateway.reading import open_instance

_KNOWN = {
    "requestType",
    "studyUID",
    "seriesUID",
    "objectUID",
    "contentType",
    "transferSyntax",
    "frameNumber",
    "rows",
    "columns",
    "windowCenter",
    "windowWidth",
    "imageQuality",
    "anonymize",
    "annotation",
    "region",
    "charset",
    "presentationUID",
    "presentationSeriesUID",
}
_UNSUPPORTED = {"anonymize", "annotation", "region", "presentationUID", "presentationSeriesUID"}


def _uid(params: dict[str, str], name: str) -> str:
    raw = params.get(name)
    if not raw:
        raise bad_request(f"query parameter '{name}' is required")
    try:
        return check_uid(raw, name)
    except InvalidValue as exc:
        raise bad_request(str(exc)) from None


def _positive(params: dict[str, str], name: str) -> int | None:
    raw = params.get(name)
    if raw is None:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise bad_request(f"query parameter '{name}' must be an integer from 1 to 65535")
    return int(raw)


def _content_type(raw: str | None) -> str:
    """The first listed type we can produce (contentType may list several)."""
    if raw is None:
        return JPEG
    for item in raw.split(","):
        essence = item.split(";")[0].strip().lower()
        if essence in (DICOM, JPEG, PNG):
            return essence
        if essence in ("image/*", "*/*"):
            return JPEG
    raise not_acceptable(f"contentType '{raw[:60]}' is not available; use {DICOM}, {JPEG} or {PNG}")


def _params(request: Request) -> dict[str, str]:
    """The query parameters, each given at most once (400 otherwise)."""
    params: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name not in _KNOWN:
            raise bad_request(f"unknown query parameter '{name[:64]}'")
        if name in params:
            raise bad_request(f"query parameter '{name}' is given more than once")
        params[name] = value
    return params


def _transfer_syntax(params: dict[str, str]) -> str:
    target = params.get("transferSyntax", "*").strip() or "*"
    if target != "*":
        try:
            check_uid(target, "transferSyntax")
        except InvalidValue as exc:
            raise bad_request(str(exc)) from None
    return target


def _handle(gw: Gateway, request: Request) -> Response:
    params = _params(request)
    if params.get("requestType") != "WADO":
        raise bad_request("query parameter 'requestType' must be WADO")
    unsupported = [k for k in params if k in _UNSUPPORTED and k != "annotation"]
    if unsupported:
        raise bad_request(f"query parameter '{unsupported[0]}' is not supported")
    study, series, sop = _uid(params, "studyUID"), _uid(params, "seriesUID"), _uid(params, "objectUID")
    content_type = _content_type(params.get("contentType"))
    target = _transfer_syntax(params)
    locations = gw.metadata.locate(tenant_for(request), study, series, sop)
    if not locations:
        raise not_found("no such object")
    loc = locations[0]
    if content_type == DICOM:
        if target != "*" and not transcode.can_transcode(loc.transfer_syntax_uid, target):
            raise not_acceptable(f"the object cannot be sent in transfer syntax {target[:64]}")
        try:
            chunks = open_instance(gw.reader, loc, target)
        except transcode.CannotTranscode as exc:
            raise not_acceptable(str(exc)) from None
        if chunks is None:
            raise not_found("no such object")
        return StreamingResponse(chunks, media_type=DICOM)
    rows, columns = _positive(params, "rows"), _positive(params, "columns")
    window = None
    if "windowCenter" in params or "windowWidth" in params:
        if "windowCenter" not in params or "windowWidth" not in params:
            raise bad_request("windowCenter and windowWidth go together")
        if "," in params["windowCenter"] + params["windowWidth"]:
            raise bad_request("windowCenter and windowWidth are one number each")
        window = parse_window(f"{params['windowCenter']},{params['windowWidth']}", "windowCenter/windowWidth")
    viewport = None
    if rows or columns:
        viewport = (columns or 65535, rows or 65535)
    options = RenderOptions(
        media_type=content_type,
        window=window,
        viewport=viewport,
        quality=parse_quality(params["imageQuality"]) if "imageQuality" in params else 90,
    )
    try:
        layout = gw.layouts.get(loc)
    except objects.UnreadableObject as exc:
        raise ApiError(500, f"the stored object cannot be read: {exc}") from None
    frame = _positive(params, "frameNumber") or 1
    if frame > max(layout.frames, 1):
        raise not_found(f"frame {frame} does not exist")
    return Response(render_frame(gw, loc, layout, frame, options), media_type=content_type)


async def wado_uri(request: Request) -> Response:
    return await run_in_threadpool(_handle, gateway(request), request)
