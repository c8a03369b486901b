"""QIDO-RS (PS3.18 10.6): GET {base}/studies, /series, /instances and their
study/series-scoped forms. Query text becomes Filters in dicomcore.matching only;
the query itself runs in metadata_svc."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from common.gen.dicomserver.v1 import dicom_pb2
from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from common.validation import InvalidValue
from dicomcore import matching
from dicomweb_gateway.context import Urls, gateway, path_uid, tenant_for
from dicomweb_gateway.errors import bad_request
from dicomweb_gateway.responses import json_array_response, require_json, warn_agent
from dicomweb_gateway.settings import GatewaySettings

INCLUDE_FIELD = "includefield"
LIMIT = "limit"
OFFSET = "offset"
FUZZY = "fuzzymatching"
_RESERVED = {INCLUDE_FIELD, LIMIT, OFFSET, FUZZY}
INT32_MAX = 2**31 - 1
TRUNCATED_WARNING = "There are additional results that can be requested"


@dataclass(frozen=True)
class QueryLimits:
    """What one query string may ask for (GatewaySettings.qido_*)."""

    max_limit: int = 1000
    max_params: int = 64
    max_includefields: int = 256
    max_value_length: int = matching.MAX_VALUE_LENGTH
    max_wildcards: int = matching.MAX_WILDCARDS

    @classmethod
    def of(cls, settings: GatewaySettings) -> QueryLimits:
        return cls(
            max_limit=settings.qido_max_limit,
            max_params=settings.qido_max_params,
            max_includefields=settings.qido_max_includefields,
            max_value_length=settings.qido_max_value_length,
            max_wildcards=settings.qido_max_wildcards,
        )


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


def _include_fields(values: Iterable[str], max_fields: int) -> tuple[list[str], bool]:
    fields: list[str] = []
    include_all = False
    count = 0
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if not name:
                continue
            count += 1
            if count > max_fields:
                raise bad_request(f"query parameter '{INCLUDE_FIELD}' names more than {max_fields} attributes")
            if name.lower() == "all":
                include_all = True
                continue
            try:
                fields.append(matching.tag_hex(matching.resolve_tag(name)))
            except InvalidValue as exc:
                raise bad_request(f"query parameter '{INCLUDE_FIELD}': {exc}") from None
    return list(dict.fromkeys(fields)), include_all


def build_query(
    params: list[tuple[str, str]],
    level: dicom_pb2.QueryLevel.ValueType,
    tenant: str,
    study: str = "",
    series: str = "",
    limits: QueryLimits = QueryLimits(),
) -> md_pb.QueryRequest:
    """The QueryRequest for a QIDO-RS query string (400 on anything invalid).

    A `limit` above limits.max_limit is lowered to it (PS3.18 lets
    the server return fewer); the caller warns about it. Without `limit` the
    query carries 0, and metadata_svc applies its own cap."""
    if len(params) > limits.max_params:
        raise bad_request(f"the query has {len(params)} parameters; at most {limits.max_params} are accepted")
    fuzzy_raw = _single(params, FUZZY)
    fuzzy = _bool_param(FUZZY, fuzzy_raw) if fuzzy_raw is not None else False
    limit_raw = _single(params, LIMIT)
    offset_raw = _single(params, OFFSET)
    fields, include_all = _include_fields((v for k, v in params if k == INCLUDE_FIELD), limits.max_includefields)
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
            filters.append(
                matching.parse(tag, raw, fuzzy, max_length=limits.max_value_length, max_wildcards=limits.max_wildcards)
            )
        except InvalidValue as exc:
            raise bad_request(f"query parameter '{name[:64]}': {exc}") from None
    return md_pb.QueryRequest(
        tenant=tenant,
        level=level,
        filters=filters,
        include_fields=fields,
        include_all_fields=include_all,
        limit=min(_int_param(LIMIT, limit_raw, 1), limits.max_limit) if limit_raw is not None else 0,
        offset=_int_param(OFFSET, offset_raw, 0) if offset_raw is not None else 0,
        study_instance_uid=study,
        series_instance_uid=series,
    )


async def _search(request: Request, level: dicom_pb2.QueryLevel.ValueType) -> Response:
    settings = gateway(request).settings
    require_json(request)
    study = path_uid(request, "study", "Study Instance UID") if "study" in request.path_params else ""
    series = path_uid(request, "series", "Series Instance UID") if "series" in request.path_params else ""
    params = request.query_params.multi_items()
    query = build_query(params, level, tenant_for(request), study, series, QueryLimits.of(settings))
    result = await run_in_threadpool(gateway(request).metadata.query, query)
    warnings = []
    asked = _single(params, LIMIT)
    if asked is not None and int(asked) > query.limit:
        warnings.append(f'299 {warn_agent(request)}: "The limit was lowered to {query.limit}"')
    if result.truncated:
        warnings.append(f'299 {warn_agent(request)}: "{TRUNCATED_WARNING}"')
    headers = {"Warning": ", ".join(warnings)} if warnings else {}
    gzip_min = settings.gzip_min_bytes
    matches = [Urls.for_request(request).absolute_bulkdata_uris(b",".join(result.matches))] if result.matches else []
    return json_array_response(matches, headers=headers, request=request, gzip_min_bytes=gzip_min)


async def search_studies(request: Request) -> Response:
    return await _search(request, dicom_pb2.QUERY_LEVEL_STUDY)


async def search_series(request: Request) -> Response:
    return await _search(request, dicom_pb2.QUERY_LEVEL_SERIES)


async def search_instances(request: Request) -> Response:
    return await _search(request, dicom_pb2.QUERY_LEVEL_INSTANCE)
