"""The console's pages: studies (search, sort, pages), a study (series,
thumbnails, actions), delete with confirmation, send to a DIMSE peer,
upload, system, API keys. Queries go through the same parser and engine as
QIDO-RS (dicomweb_gateway.qido.build_query); every call acts in the tenant
auth_svc granted the request."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date
from typing import Any
from urllib.parse import parse_qsl, urlencode

from google.protobuf.json_format import MessageToDict
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from common import errors
from common.clients import channel
from common.gen.dicomserver.v1 import auth_service_pb2 as auth_pb
from common.gen.dicomserver.v1 import dicom_pb2
from common.gen.dicomserver.v1 import ingest_service_pb2 as ingest_pb
from common.validation import InvalidValue, check_uid
from common.version import VERSION
from dicomweb_gateway.console.context import (
    access_of,
    all_values,
    caller,
    console,
    dicom_date,
    error_page,
    first,
    has_scope,
    loads,
    redirect,
    render,
    session_of,
)
from dicomweb_gateway.console.session import CSRF_FIELD
from dicomweb_gateway.delete import reclaim
from dicomweb_gateway.errors import ApiError
from dicomweb_gateway.qido import QueryLimits, build_query

log = logging.getLogger(__name__)

PAGE_SIZE = 25
MAX_FORM_BYTES = 64 * 1024
SORTS = {
    "name": lambda s: (s["patient_name"].lower(), s["date"]),
    "id": lambda s: (s["patient_id"], s["date"]),
    "date": lambda s: (s["date"], s["time"]),
    "modality": lambda s: (s["modalities"], s["date"]),
    "accession": lambda s: (s["accession"], s["date"]),
    "description": lambda s: (s["description"].lower(), s["date"]),
    "series": lambda s: (s["series"], s["date"]),
    "instances": lambda s: (s["instances"], s["date"]),
}
STUDY_FIELDS = ["00081030", "00080090", "00100030", "00100040", "00200010"]
SERIES_FIELDS = ["0008103E", "00080021", "00180015"]


async def read_form(request: Request) -> dict[str, list[str]]:
    """An application/x-www-form-urlencoded body (the console's forms), with
    its CSRF token checked; ApiError otherwise."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        raise ApiError(415, "send the form as application/x-www-form-urlencoded")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise ApiError(413, "the form is too large")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise ApiError(400, "the form is not UTF-8") from None
    form: dict[str, list[str]] = {}
    for key, value in pairs:
        form.setdefault(key, []).append(value)
    if not session_of(request).csrf_ok((form.get(CSRF_FIELD) or [""])[0]):
        raise ApiError(403, "the form has expired or did not come from this console: reload the page and try again")
    return form


def _one(form: dict[str, list[str]], name: str) -> str:
    return (form.get(name) or [""])[0].strip()


# -- studies ------------------------------------------------------------------------


@dataclass
class Search:
    name: str = ""
    patient_id: str = ""
    date_from: str = ""
    date_to: str = ""
    modality: str = ""
    accession: str = ""
    description: str = ""

    @classmethod
    def of(cls, request: Request) -> Search:
        q = request.query_params
        return cls(**{f: (q.get(f) or "").strip()[:200] for f in cls.__dataclass_fields__})

    def params(self) -> list[tuple[str, str]]:
        """QIDO-RS matching keys: names and IDs match by prefix unless they
        carry their own wildcards, descriptions anywhere."""

        def prefix(value: str) -> str:
            return value if ("*" in value or "?" in value) else value + "*"

        dates = []
        for label, value in (("From", self.date_from), ("To", self.date_to)):
            try:
                dates.append(date.fromisoformat(value) if value else None)
            except ValueError:
                raise ApiError(400, f"'{label}' is not a date: write it as YYYY-MM-DD") from None
        if dates[0] and dates[1] and dates[0] > dates[1]:
            raise ApiError(400, "'From' is after 'To'")
        out: list[tuple[str, str]] = [("includefield", "00081030")]
        if self.name:
            out.append(("PatientName", prefix(self.name)))
        if self.patient_id:
            out.append(("PatientID", prefix(self.patient_id)))
        if self.date_from or self.date_to:
            out.append(("StudyDate", f"{self.date_from.replace('-', '')}-{self.date_to.replace('-', '')}"))
        if self.modality:
            out.append(("ModalitiesInStudy", self.modality.upper()))
        if self.accession:
            out.append(("AccessionNumber", prefix(self.accession)))
        if self.description:
            out.append(("StudyDescription", f"*{self.description.strip('*')}*"))
        return out

    @property
    def any(self) -> bool:
        return any(getattr(self, f) for f in self.__dataclass_fields__)


def _study_row(obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "uid": first(obj, "0020000D"),
        "patient_name": str(first(obj, "00100010")),
        "patient_id": str(first(obj, "00100020")),
        "date": str(first(obj, "00080020")),
        "date_text": dicom_date(str(first(obj, "00080020"))),
        "time": str(first(obj, "00080030")),
        "modalities": "\\".join(str(m) for m in all_values(obj, "00080061")),
        "accession": str(first(obj, "00080050")),
        "description": str(first(obj, "00081030")),
        "series": int(first(obj, "00201206") or 0),
        "instances": int(first(obj, "00201208") or 0),
    }


async def studies(request: Request) -> Response:
    c = console(request)
    search = Search.of(request)
    sort = request.query_params.get("sort", "date")
    if sort not in SORTS:
        sort = "date"
    descending = request.query_params.get("order", "desc" if sort == "date" else "asc") == "desc"
    try:
        page = max(1, int(request.query_params.get("page", "1")))
    except ValueError:
        page = 1
    tenant = access_of(request).tenant
    error = ""
    rows: list[dict[str, Any]] = []
    truncated = False
    limits = QueryLimits.of(c.settings)
    try:
        params = search.params() + [("limit", str(limits.max_limit))]
        query = build_query(params, dicom_pb2.QUERY_LEVEL_STUDY, tenant, limits=limits)
        result = await run_in_threadpool(c.metadata.query, query)
        rows = [_study_row(loads(m)) for m in result.matches]
        truncated = result.truncated
    except ApiError as exc:
        error = exc.message
    except errors.ServiceError as exc:
        log.warning("console study search failed: %s", type(exc).__name__)
        error = "The index is not answering right now; try again in a moment."
    rows.sort(key=SORTS[sort], reverse=descending)
    pages = max(1, -(-len(rows) // PAGE_SIZE))
    page = min(page, pages)
    shown = rows[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    base = {k: v for k, v in vars(search).items() if v}

    def link(**changes: Any) -> str:
        return "/?" + urlencode(
            {**base, "sort": sort, "order": "desc" if descending else "asc", "page": page, **changes}
        )

    def sort_link(column: str) -> str:
        order = "asc" if column != sort else ("asc" if descending else "desc")
        return link(sort=column, order=order, page=1)

    notice = {"deleted": "The study was deleted."}.get(request.query_params.get("notice", ""), "")
    return render(
        request,
        "studies.html",
        search=search,
        rows=shown,
        total=len(rows),
        truncated=truncated,
        page=page,
        pages=pages,
        sort=sort,
        descending=descending,
        link=link,
        sort_link=sort_link,
        error=error,
        notice=notice,
        max_limit=limits.max_limit,
        status_code=400 if error and "index" not in error else 200,
    )


# -- one study -----------------------------------------------------------------------


async def _study(request: Request, uid: str) -> dict[str, Any] | None:
    c = console(request)
    tenant = access_of(request).tenant
    params = [("StudyInstanceUID", uid)] + [("includefield", f) for f in STUDY_FIELDS]
    query = build_query(params, dicom_pb2.QUERY_LEVEL_STUDY, tenant)
    result = await run_in_threadpool(c.metadata.query, query)
    if not result.matches:
        return None
    obj = loads(result.matches[0])
    row = _study_row(obj)
    row.update(
        referring=str(first(obj, "00080090")),
        birth_date=dicom_date(str(first(obj, "00100030"))),
        sex=str(first(obj, "00100040")),
        study_id=str(first(obj, "00200010")),
    )
    return row


def _uid(request: Request) -> str:
    try:
        return check_uid(request.path_params["study"], "Study Instance UID")
    except InvalidValue as exc:
        raise ApiError(400, str(exc)) from None


async def study(request: Request) -> Response:
    c = console(request)
    uid = _uid(request)
    tenant = access_of(request).tenant
    study_row = await _study(request, uid)
    if study_row is None:
        return error_page(request, 404, "No such study", "This study is not in the archive (or not in your tenant).")
    params = [("includefield", f) for f in SERIES_FIELDS]
    query = build_query(params, dicom_pb2.QUERY_LEVEL_SERIES, tenant, study=uid)
    result = await run_in_threadpool(c.metadata.query, query)
    series = []
    for match in result.matches:
        obj = loads(match)
        series.append(
            {
                "uid": first(obj, "0020000E"),
                "number": first(obj, "00200011"),
                "modality": first(obj, "00080060"),
                "description": first(obj, "0008103E"),
                "instances": int(first(obj, "00201209") or 0),
                "body_part": first(obj, "00180015"),
                "date": dicom_date(str(first(obj, "00080021"))),
            }
        )
    try:
        peers = await run_in_threadpool(c.ingest.list_peers, tenant)
    except errors.ServiceError as exc:
        log.warning("console: DIMSE peers not listed: %s", type(exc).__name__)
        peers = None
    return render(
        request,
        "study.html",
        study=study_row,
        series=series,
        peers=peers,
        can_delete=has_scope(request, "delete"),
        can_send=has_scope(request, "write"),
    )


# -- delete ----------------------------------------------------------------------------


async def delete_confirm(request: Request) -> Response:
    uid = _uid(request)
    if not has_scope(request, "delete"):
        return error_page(request, 403, "Not allowed", "Deleting studies needs the 'delete' scope.")
    study_row = await _study(request, uid)
    if study_row is None:
        return error_page(request, 404, "No such study", "This study is not in the archive (or not in your tenant).")
    return render(request, "delete.html", study=study_row)


async def delete_study(request: Request) -> Response:
    c = console(request)
    uid = _uid(request)
    await read_form(request)
    if not has_scope(request, "delete"):
        return error_page(request, 403, "Not allowed", "Deleting studies needs the 'delete' scope.")
    tenant = access_of(request).tenant
    try:
        removed = await run_in_threadpool(c.metadata.delete, tenant, uid)
    except errors.NotFound:
        return error_page(request, 404, "No such study", "This study is not in the archive any more.")
    failed = await run_in_threadpool(reclaim, c.storage, removed)
    log.info(
        "console DELETE study in tenant %s: %d instance(s) removed, %d object(s) left for the sweeper",
        tenant,
        len(removed),
        failed,
    )
    return redirect("/?notice=deleted")


# -- send --------------------------------------------------------------------------------


async def send_study(request: Request) -> Response:
    """Streams the progress as JSON lines to scripts that ask for
    application/x-ndjson; a plain form post gets a page when it is done."""
    c = console(request)
    uid = _uid(request)
    form = await read_form(request)
    if not has_scope(request, "write"):
        return error_page(request, 403, "Not allowed", "Sending studies needs the 'write' scope.")
    peer = _one(form, "peer")
    if not peer:
        return error_page(request, 400, "Choose a peer", "Choose the DIMSE peer to send the study to.")
    req = ingest_pb.SendToPeerRequest(tenant=access_of(request).tenant, ae_title=peer, study_instance_uid=uid)
    progress = c.ingest.send_to_peer(req)
    try:
        head = await run_in_threadpool(next, progress, None)
    except errors.NotFound as exc:
        return error_page(request, 404, "Not sent", f"Not sent: {exc}.")
    except errors.InvalidArgument as exc:
        return error_page(request, 400, "Not sent", f"Not sent: {exc}.")
    except errors.ServiceError as exc:
        log.warning("console send failed: %s", type(exc).__name__)
        return error_page(request, 503, "Not sent", "The ingest service is not answering; try again in a moment.")
    if head is None:
        return error_page(request, 502, "Not sent", "The ingest service ended the send without an answer.")

    def as_dict(msg: ingest_pb.SendToPeerResponse) -> dict[str, Any]:
        return {
            "total": msg.total,
            "completed": msg.completed,
            "failed": msg.failed,
            "warning": msg.warning,
            "done": msg.done,
            "error": msg.error,
        }

    if "application/x-ndjson" in request.headers.get("accept", ""):

        async def lines() -> AsyncIterator[bytes]:
            yield json.dumps(as_dict(head)).encode() + b"\n"
            try:
                async for msg in iterate_in_threadpool(progress):
                    yield json.dumps(as_dict(msg)).encode() + b"\n"
            except errors.ServiceError as exc:
                yield json.dumps({"done": True, "error": f"the send was interrupted ({type(exc).__name__})"}).encode()

        return StreamingResponse(lines(), media_type="application/x-ndjson")
    last = head
    try:
        for msg in await run_in_threadpool(list, progress):
            last = msg
    except errors.ServiceError as exc:
        last.error = f"the send was interrupted ({type(exc).__name__})"
    return render(request, "sent.html", uid=uid, peer=peer, outcome=as_dict(last))


# -- upload ------------------------------------------------------------------------------


async def upload(request: Request) -> Response:
    return render(request, "upload.html", can_write=has_scope(request, "write"))


# -- system -------------------------------------------------------------------------------


def _health(addresses: dict[str, str]) -> dict[str, bool]:
    def serving(address: str) -> bool:
        with channel(address) as ch:
            try:
                resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
            except Exception:
                return False
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

    return {name: serving(address) for name, address in addresses.items()}


def _stat_tenants(request: Request) -> list[str]:
    granted = access_of(request)
    if "admin" in granted.principal.scopes:
        return list(dict.fromkeys([granted.tenant, *granted.principal.tenants]))
    return [granted.tenant]


async def _statistics(request: Request, days: int) -> dict[str, Any]:
    c = console(request)
    tenants = _stat_tenants(request)
    out: dict[str, Any] = {"version": VERSION, "tenants": tenants, "days": days}

    async def call(fn: Any, *args: Any) -> Any:
        try:
            return await run_in_threadpool(fn, *args)
        except errors.ServiceError as exc:
            log.info("console statistics: %s unavailable (%s)", getattr(fn, "__name__", "a call"), type(exc).__name__)
            return None

    index, status, audit = await asyncio.gather(
        call(c.metadata.statistics, tenants, days),
        call(c.eventbus.status),
        call(c.eventbus.audit_statistics, tenants, days) if has_scope(request, "admin") else asyncio.sleep(0),
    )
    keep: dict[str, Any] = {"preserving_proto_field_name": True, "always_print_fields_with_no_presence": True}
    out["index"] = MessageToDict(index, **keep) if index is not None else None
    out["eventbus"] = MessageToDict(status, **keep) if status is not None else None
    out["audit"] = MessageToDict(audit, **keep) if audit is not None else None
    return out


def _days(request: Request) -> int:
    try:
        days = int(request.query_params.get("days", "30"))
    except ValueError:
        raise ApiError(400, "days must be a whole number between 1 and 366") from None
    if not 1 <= days <= 366:
        raise ApiError(400, "days must be a whole number between 1 and 366")
    return days


async def statistics_api(request: Request) -> Response:
    """GET /api/statistics?days=N: the System page's numbers as JSON."""
    return JSONResponse(await _statistics(request, _days(request)))


async def system(request: Request) -> Response:
    c = console(request)
    days = _days(request)
    s = c.settings
    addresses = {
        "storage": s.storage_addr,
        "metadata": s.metadata_addr,
        "auth": s.auth_addr,
        "ingest": s.ingest_addr,
        "eventbus": s.eventbus_addr,
    }
    stats, health = await asyncio.gather(_statistics(request, days), run_in_threadpool(_health, addresses))
    health = {"gateway": True, **health}
    index = stats["index"] or {}
    bars = {
        "instances": [
            (d["date"][5:], int(d["instances"]), f"{d['date']}: {d['instances']} instances")
            for d in index.get("days", [])
        ],
        "studies": [
            (d["date"][5:], int(d["studies"]), f"{d['date']}: {d['studies']} studies") for d in index.get("days", [])
        ],
        "modalities": [
            (
                m["modality"] or "(none)",
                int(m["instances"]),
                f"{m['modality'] or '(none)'}: {m['instances']} instances in {m['studies']} studies",
            )
            for m in index.get("modalities", [])[:12]
        ],
    }
    return render(request, "system.html", stats=stats, health=health, days=days, bars=bars)


# -- API keys --------------------------------------------------------------------------------


def _key_row(info: auth_pb.ApiKeyInfo) -> dict[str, Any]:
    return {
        "key_id": info.key_id,
        "subject": info.subject,
        "tenant": info.tenant,
        "scopes": list(info.scopes),
        "created": info.created.ToDatetime().strftime("%Y-%m-%d %H:%M UTC") if info.HasField("created") else "",
        "revoked": info.revoked.ToDatetime().strftime("%Y-%m-%d %H:%M UTC") if info.HasField("revoked") else "",
    }


async def _keys_page(request: Request, status_code: int = 200, **values: Any) -> Response:
    c = console(request)
    if not has_scope(request, "admin"):
        return error_page(request, 403, "Not allowed", "API keys are managed by principals with the 'admin' scope.")
    try:
        keys = await run_in_threadpool(c.auth.list_api_keys, auth_pb.ListApiKeysRequest(caller=caller(request)))
        rows = [_key_row(k) for k in keys]
        error = values.pop("error", "")
    except errors.ServiceError as exc:
        rows, error = [], values.pop("error", "") or f"The keys cannot be listed: {exc}"
    rows.sort(key=lambda r: (bool(r["revoked"]), r["created"]), reverse=False)
    return render(
        request,
        "keys.html",
        status_code=status_code,
        keys=rows,
        error=error,
        tenants=list(access_of(request).principal.tenants),
        **values,
    )


async def keys(request: Request) -> Response:
    return await _keys_page(request)


async def create_key(request: Request) -> Response:
    c = console(request)
    form = await read_form(request)
    if not has_scope(request, "admin"):
        return error_page(request, 403, "Not allowed", "API keys are managed by principals with the 'admin' scope.")
    subject = _one(form, "subject")
    tenant = _one(form, "tenant") or access_of(request).tenant
    scopes = [s for s in form.get("scope", []) if s]
    if not subject:
        return await _keys_page(request, 400, error="Name who the key is for (its subject).")
    if not scopes:
        return await _keys_page(request, 400, error="Choose at least one scope.")
    req = auth_pb.CreateApiKeyRequest(caller=caller(request), subject=subject, tenant=tenant, scopes=scopes)
    try:
        created = await run_in_threadpool(c.auth.create_api_key, req)
    except (errors.InvalidArgument, errors.PermissionDenied, errors.NotFound) as exc:
        return await _keys_page(request, 400, error=f"The key was not created: {exc}")
    log.info("console: API key %s created", created.info.key_id)
    return await _keys_page(request, 201, created=_key_row(created.info), created_key=created.api_key)


async def revoke_key(request: Request) -> Response:
    c = console(request)
    await read_form(request)
    if not has_scope(request, "admin"):
        return error_page(request, 403, "Not allowed", "API keys are managed by principals with the 'admin' scope.")
    key_id = request.path_params["key_id"][:100]
    try:
        await run_in_threadpool(
            c.auth.revoke_api_key, auth_pb.RevokeApiKeyRequest(caller=caller(request), key_id=key_id)
        )
    except (errors.InvalidArgument, errors.NotFound, errors.PermissionDenied) as exc:
        return await _keys_page(
            request, 400 if isinstance(exc, errors.InvalidArgument) else 404, error=f"The key was not revoked: {exc}"
        )
    log.info("console: API key %s revoked", key_id)
    return await _keys_page(request, revoked=key_id)
