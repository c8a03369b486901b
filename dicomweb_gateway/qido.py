"""QIDO-RS (PS3.18 10.6): GET {base}/studies, /series, /instances and their
study/series-scoped forms. Query text becomes Filters in common.matching only;
the query itself runs in metadata_svc."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from common import matching
from common.gen.dicomserver.v1 import dicom_pb2, metadata_service_pb2 as md_pb
from common.validation import InvalidValue
from dicomweb_gateway.context import gateway, path_uid, tenant_for
from dicomweb_gateway.errors import bad_request
from dicomweb_gateway.responses import json_array_response, require_json, warn_agent

INCLUDE_FIELD = "includefield"
LIMIT = "limit"
OFFSET = "offset"
FUZZY = "fuzzymatching"
_RESERVED = {INCLUDE_FIELD, LIMIT, OFFSET, FUZZY}
INT32_MAX = 2**31 - 1
TRUNCATED_WARNING = "There are additional results that can be requested"


def _int_param(name: str, raw: str, minimum: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"query parameter '{name}' must be an integer") from None
    if not minimum <= value <= INT32_MAX:
        raise bad_request(f"query parameter '{name}' must be between {minimum} and {INT32_MAX}")
    return value


def _bool_param(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered not in ("true", "false"):
        raise bad_request(f"query parameter '{name}' must be 'true' or 'false'")
    return lowered == "true"


def _single(params: list[tuple[str, str]], name: str) -> str | None:
    values = [v for k, v in params if k == name]
    if len(values) > 1:
        raise bad_request(f"query parameter '{name}' is given more than once")
    return values[0] if values else None


def _include_fields(values: Iterable[str]) -> tuple[list[str], bool]:
    fields: list[str] = []
    include_all = False
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if not name:
                continue
            if name.lower() == "all":
                include_all = True
                continue
            try:
                fields.append(matching.tag_hex(matching.resolve_tag(name)))
            except InvalidValue as exc:
                raise bad_request(f"query parameter '{INCLUDE_FIELD}': {exc}") from None
    return list(dict.fromkeys(fields)), include_all


def build_query(
    params: list[tuple[str, str]], level: int, tenant: str, study: str = "", series: str = ""
) -> md_pb.QueryRequest:
    """The QueryRequest for a QIDO-RS query string (400 on anything invalid)."""
    fuzzy_raw = _single(params, FUZZY)
    fuzzy = _bool_param(FUZZY, fuzzy_raw) if fuzzy_raw is not None else False
    limit_raw = _single(params, LIMIT)
    offset_raw = _single(params, OFFSET)
    fields, include_all = _include_fields(v for k, v in params if k == INCLUDE_FIELD)
    filters: list[md_pb.Filter] = []
    seen: dict[int, str] = {}
    for name, raw in params:
        if name in _RESERVED:
            continue
        try:
            tag = matching.resolve_tag(name)
        except InvalidValue:
            raise bad_request(f"unknown query parameter '{name[:64]}'") from None
        if tag in seen:
            raise bad_request(f"attribute '{name[:64]}' is given more than once (as '{seen[tag][:64]}' too)")
        seen[tag] = name
        try:
            filters.append(matching.parse(tag, raw, fuzzy))
        except InvalidValue as exc:
            raise bad_request(f"query parameter '{name[:64]}': {exc}") from None
    return md_pb.QueryRequest(
        tenant=tenant,
        level=level,
        filters=filters,
        include_fields=fields,
        include_all_fields=include_all,
        limit=_int_param(LIMIT, limit_raw, 1) if limit_raw is not None else 0,
        offset=_int_param(OFFSET, offset_raw, 0) if offset_raw is not None else 0,
        study_instance_uid=study,
        series_instance_uid=series,
    )


async def _search(request: Request, level: int) -> Response:
    require_json(request)
    study = path_uid(request, "study", "Study Instance UID") if "study" in request.path_params else ""
    series = path_uid(request, "series", "Series Instance UID") if "series" in request.path_params else ""
    query = build_query(request.query_params.multi_items(), level, tenant_for(request), study, series)
    result = await run_in_threadpool(gateway(request).metadata.query, query)
    headers = {}
    if result.truncated:
        headers["Warning"] = f'299 {warn_agent(request)}: "{TRUNCATED_WARNING}"'
    gzip_min = gateway(request).settings.gzip_min_bytes
    return json_array_response(result.matches, headers=headers, request=request, gzip_min_bytes=gzip_min)


async def search_studies(request: Request) -> Response:
    return await _search(request, dicom_pb2.QUERY_LEVEL_STUDY)


async def search_series(request: Request) -> Response:
    return await _search(request, dicom_pb2.QUERY_LEVEL_SERIES)


async def search_instances(request: Request) -> Response:
    return await _search(request, dicom_pb2.QUERY_LEVEL_INSTANCE)
