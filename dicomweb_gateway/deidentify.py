"""POST /deidentify: a de-identified copy of studies (named, or a QIDO-style
study query's matches) into a target tenant (JSON summary), or, with
Accept: application/zip, streamed as a zip. The request needs write access
in the tenant it reads (it is a POST) and, for a copy, in the target tenant.

Body (JSON): {"studies": [uid, ...] | "query": {"PatientID": "..."},
"target_tenant": "...", "project_key": "...", "options":
["retain_patient_characteristics", "retain_longitudinal_modified_dates",
"clean_descriptors"], "allow_burned_in_annotation": false,
"safe_private": [{"creator": "...", "group": "0029", "element": "10"}]}"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from common import errors
from common.gen.dicomserver.v1 import auth_service_pb2 as auth_pb
from common.gen.dicomserver.v1 import deidentify_service_pb2 as pb
from common.validation import InvalidValue, check_tenant
from deidentify import service
from deidentify.copy import Report, deidentified_objects, studies_of, zip_stream
from deidentify.dataset import Request as DeidRequest
from deidentify.dataset import SafePrivate, parse_options
from dicomcore import matching
from dicomweb_gateway.auth import credential
from dicomweb_gateway.context import access, gateway, tenant_for
from dicomweb_gateway.errors import ApiError, bad_request
from dicomweb_gateway.media import parse_accept

ZIP = "application/zip"
MAX_BODY = 64 * 1024


def _wants_zip(accept: str | None) -> bool:
    for r in parse_accept(accept):
        if r.essence == ZIP:
            return True
        if r.essence in ("application/json", "*/*", "application/*"):
            return False
    return False


def _parse(body: dict[str, Any], tenant: str) -> tuple[DeidRequest, list[str], list[Any], str, bool]:
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    studies = body.get("studies") or []
    query = body.get("query") or {}
    if not isinstance(studies, list) or not all(isinstance(s, str) for s in studies) or not isinstance(query, dict):
        raise bad_request("'studies' must be a list of UIDs and 'query' an object")
    filters = []
    for name, raw in query.items():
        try:
            filters.append(matching.parse(matching.resolve_tag(str(name)), str(raw)))
        except InvalidValue as exc:
            raise bad_request(f"query '{str(name)[:64]}': {exc}") from None
    try:
        options = parse_options(body.get("options") or [])
        safe = tuple(
            SafePrivate(str(s["creator"]), int(str(s["group"]), 16), int(str(s["element"]), 16) & 0xFF)
            for s in body.get("safe_private") or []
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise bad_request(f"options: {exc}") from None
    key = body.get("project_key")
    if not isinstance(key, str) or not key:
        raise bad_request("'project_key' is required")
    target = body.get("target_tenant") or ""
    if not isinstance(target, str):
        raise bad_request("'target_tenant' must be a tenant name")
    return DeidRequest(key, options, safe), studies, filters, target, bool(body.get("allow_burned_in_annotation"))


async def deidentify(request: Request) -> Response:
    gw = gateway(request)
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise ApiError(413, "the request body is too large")
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise bad_request("the body must be JSON") from None
    tenant = tenant_for(request)
    deid, study_uids, filters, target, allow = _parse(body, tenant)
    try:
        studies = await run_in_threadpool(studies_of, gw.metadata, tenant, study_uids, filters)
    except (ValueError, InvalidValue) as exc:
        raise bad_request(str(exc)) from None
    subject = access(request).principal.subject
    peer = f"{request.client.host}:{request.client.port}" if request.client else ""
    report = Report()
    if _wants_zip(request.headers.get("accept")):
        objects = deidentified_objects(gw.metadata, gw.reader, tenant, studies, deid, allow, report)

        def body_() -> Iterator[bytes]:
            yield from zip_stream(objects, report)
            service.audit(
                gw.metadata,
                tenant,
                "",
                subject,
                "dicomweb",
                peer,
                report,
                f"de-identified zip: {report.copied} instances, "
                f"{len(report.refused_burned_in)} refused (burned-in annotation)",
            )

        return StreamingResponse(
            body_(), media_type=ZIP, headers={"Content-Disposition": 'attachment; filename="deidentified.zip"'}
        )
    try:
        check_tenant(target)
    except InvalidValue:
        raise bad_request("'target_tenant' is required for a copy (or ask for application/zip)") from None
    try:
        await run_in_threadpool(request.app.state.auth.check, credential(request.headers), auth_pb.ACTION_WRITE, target)
    except errors.ServiceError:
        raise ApiError(403, "no write access to the target tenant") from None
    req = pb.DeidentifyRequest(
        tenant=tenant,
        study_instance_uids=studies,
        target_tenant=target,
        project_key=deid.project_key,
        allow_burned_in_annotation=allow,
        options=[k for k, v in service.OPTIONS.items() if v in deid.options],
        safe_private_tags=[
            pb.SafePrivateTag(creator=s.creator, group=s.group, element_offset=s.offset) for s in deid.safe_private
        ],
    )
    try:
        resp = await run_in_threadpool(service.run, gw.pipeline, gw.metadata, gw.reader, req)
    except (ValueError, InvalidValue) as exc:
        raise bad_request(str(exc)) from None
    report = Report(copied=resp.copied, failed=resp.failed, refused_burned_in=list(resp.refused_burned_in))
    await run_in_threadpool(service.audit, gw.metadata, tenant, target, subject, "dicomweb", peer, report)
    return JSONResponse(
        {
            "studies": {s.study_instance_uid: s.copy_study_instance_uid for s in resp.studies},
            "copied": resp.copied,
            "failed": resp.failed,
            "refused_burned_in_annotation": list(resp.refused_burned_in),
            "flagged_burned_in_annotation": list(resp.flagged_burned_in),
        }
    )
