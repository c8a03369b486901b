"""The OpenAPI 3.1 document of the gateway, built from its route table so it
cannot drift from what is served: GET {base}/openapi.json."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from dicomweb_gateway.context import gateway

_SUMMARIES = {
    "store_instances": 'STOW-RS: store instances (multipart/related; type="application/dicom" or application/dicom)',
    "deidentify": "De-identified copy of studies (PS3.15 Annex E) into a target tenant, or as a zip (Accept: application/zip)",
    "search_studies": "QIDO-RS: search for studies",
    "search_series": "QIDO-RS: search for series",
    "search_instances": "QIDO-RS: search for instances",
    "retrieve": 'WADO-RS: retrieve instances (multipart/related; type="application/dicom"), transcoded on request; '
    "or, with Accept: application/zip or ?accept=application/zip, a zip of the stored objects in folders "
    "Patient name (ID)/Study date description/Series number modality description/instance number.dcm",
    "retrieve_metadata": "WADO-RS: metadata as DICOM JSON (gzip when accepted)",
    "retrieve_frames": "WADO-RS: frames (as stored, or decoded to native)",
    "retrieve_bulkdata": "WADO-RS: bulk data named by a BulkDataURI",
    "rendered_instance": "WADO-RS: rendered frame(s) as image/jpeg, image/png or image/gif (animated for several)",
    "thumbnail_instance": "WADO-RS: thumbnail of an instance or frame",
    "rendered_many": "WADO-RS: rendered images of a study or series (multipart)",
    "thumbnail_many": "WADO-RS: thumbnail of a study or series",
    "delete_resource": "Delete a study, series or instance (index first, then storage)",
    "wado_uri": "WADO-URI: requestType=WADO with studyUID, seriesUID, objectUID",
    "list_destinations": "Routing: the tenant's destinations and their queues",
    "send": "Routing: send a study, series or instance to a destination (202 and the send's progress)",
    "get_send": "Routing: a send's progress",
    "list_dead_letters": "Routing: deliveries given up (admin scope)",
    "replay_dead_letters": "Routing: queue dead letters again (admin scope)",
    "openapi": "This document",
}
_QIDO_PARAMS = [
    ("includefield", "attribute keyword or tag, or 'all'; repeatable"),
    ("limit", "maximum number of results"),
    ("offset", "results to skip"),
    ("fuzzymatching", "true for fuzzy person name matching"),
]
_RETRIEVE_PARAMS = [
    (
        "accept",
        "media type(s) as in the Accept header, which it overrides (PS3.18 8.3.3.1), for links that cannot "
        "set headers: accept=application/zip downloads a zip",
    ),
]
_RENDER_PARAMS = [
    ("window", "center,width[,linear|linear_exact|sigmoid]"),
    ("viewport", "width,height to fit the image into"),
    ("quality", "JPEG quality 1..100"),
]


def _parameters(path: str, endpoint: str) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{(\w+)(?::\w+)?}", path)
    ]
    extra = (
        _QIDO_PARAMS
        if endpoint.startswith("search_")
        else _RENDER_PARAMS
        if ("rendered" in endpoint or "thumbnail" in endpoint)
        else _RETRIEVE_PARAMS
        if endpoint == "retrieve"
        else []
    )
    params += [
        {"name": n, "in": "query", "required": False, "description": d, "schema": {"type": "string"}} for n, d in extra
    ]
    return params


_RESPONSES = {
    "200": {"description": "OK"},
    "400": {"description": "Bad request: the body names the parameter or value"},
    "404": {"description": "No such resource"},
    "406": {"description": "No acceptable representation (Accept)"},
    "415": {"description": "Unsupported request body type"},
}


def build(routes: list[BaseRoute], base_path: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not isinstance(route, Route):
            continue
        name = route.endpoint.__name__
        path = re.sub(r"{(\w+):\w+}", r"{\1}", route.path)
        for method in sorted((route.methods or set()) - {"HEAD"}):
            responses = dict(_RESPONSES)
            if name == "store_instances":
                responses["202"] = {"description": "Some instances failed (FailedSOPSequence)"}
                responses["409"] = {"description": "Every instance failed"}
                responses["503"] = {"description": "Storage is not available; nothing was stored"}
                responses["507"] = {"description": "Storage is full; nothing was stored"}
            if name == "delete_resource":
                responses = {k: v for k, v in responses.items() if k in ("400", "404")}
                responses["204"] = {"description": "Deleted"}
            paths.setdefault(path, {})[method.lower()] = {
                "summary": _SUMMARIES.get(name, name.replace("_", " ")),
                "operationId": f"{name}_{method.lower()}_{len(paths)}",
                "parameters": _parameters(route.path, name),
                "responses": responses,
            }
    return {
        "openapi": "3.1.0",
        "info": {"title": "dicomserver DICOMweb", "version": "1", "description": "DICOM PS3.18 services"},
        "servers": [{"url": base_path or "/"}],
        "paths": paths,
    }


def endpoint(table: Callable[[], list[BaseRoute]]) -> Callable[[Request], Awaitable[Response]]:
    """The GET endpoint of the document of `table`, the app's route table
    (handed over by the app, so this module needs nothing of it)."""

    async def openapi(request: Request) -> Response:
        return JSONResponse(build(table(), gateway(request).settings.base_path))

    return openapi
