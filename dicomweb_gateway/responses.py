"""DICOM JSON responses (PS3.18 F.2): media type application/dicom+json, UTF-8."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dicomweb_gateway.errors import bad_request, not_acceptable
from dicomweb_gateway.media import DICOM_JSON, MediaTypeError, parse_accept


class DicomJSONResponse(JSONResponse):
    media_type = DICOM_JSON

    def render(self, content: Any) -> bytes:
        # Names in DICOM JSON are often non-ASCII; keep them readable.
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def json_array_response(
    objects: Iterable[bytes], status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON array of already-serialized JSON objects, joined without re-parsing."""
    body = b"[" + b",".join(objects) + b"]"
    return Response(body, status_code=status_code, headers=dict(headers or {}), media_type=DICOM_JSON)


def warn_agent(request: Request) -> str:
    """The warn-agent of Warning headers: this server as the client addressed it."""
    return request.url.netloc or "dicomweb"


def require_json(request: Request) -> None:
    """406 unless the Accept header allows a DICOM JSON (or plain JSON) answer."""
    try:
        ranges = parse_accept(request.headers.get("accept"))
    except MediaTypeError as exc:
        raise bad_request(f"Accept: {exc}") from None
    for r in ranges:
        if r.matches(DICOM_JSON) or r.matches("application/json"):
            return
    raise not_acceptable(f"this resource is available as {DICOM_JSON} only")
