"""WADO-RS (PS3.18 10.4): instances of a study, series or single instance as
multipart/related; type="application/dicom", and their metadata as DICOM JSON.

Object bytes are streamed from storage_svc chunk by chunk into the response;
no object is ever read whole."""

from __future__ import annotations

import itertools
import json
import logging
import secrets
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from common import dicom_json, errors
from common.clients import MetadataClient, StorageClient
from common.gen.dicomserver.v1 import dicom_pb2
from dicomweb_gateway import transcode
from dicomweb_gateway.context import Urls, gateway, path_uid, tenant_for
from dicomweb_gateway.errors import not_acceptable, not_found
from dicomweb_gateway.media import DICOM, MULTIPART_RELATED, parse_accept
from dicomweb_gateway.responses import json_array_response, require_json

log = logging.getLogger(__name__)

_STUDY_UID, _SERIES_UID, _SOP_UID = "0020000D", "0020000E", "00080018"


# ---- content negotiation -------------------------------------------------


def negotiate(accept: str | None, stored: set[str]) -> str:
    """The transfer syntax to send: "*" for the stored bytes as they are, or
    a UID every stored instance can be transcoded to. 406 if none fits."""
    ranges = parse_accept(accept)
    for r in ranges:
        if r.essence in ("*/*", "multipart/*"):
            return "*"
        if r.essence != MULTIPART_RELATED or r.params.get("type", DICOM).strip().lower() != DICOM:
            continue
        # Without a transfer-syntax parameter the stored encoding is served.
        wanted = r.params.get("transfer-syntax", "*").strip()
        if wanted == "*" or stored == {wanted}:
            return "*"
        if all(transcode.can_transcode(ts, wanted) for ts in stored):
            return wanted
    syntaxes = ", ".join(sorted(stored)[:5])
    raise not_acceptable(
        f'instances are available as {MULTIPART_RELATED}; type="{DICOM}" in their stored transfer syntax '
        f"({syntaxes}) or by transcoding to one of {', '.join(sorted(transcode.TARGETS))}"
    )


# ---- streaming -----------------------------------------------------------


def _open(storage: StorageClient, loc: dicom_pb2.InstanceLocation) -> Iterator[bytes] | None:
    """The object's chunks with the first one fetched already, so a missing
    object shows up here rather than mid-response; None if it is gone."""
    chunks = storage.get(loc.object_key)
    try:
        first = next(chunks, b"")
    except errors.NotFound:
        # Deleted between locate and get: it is simply no longer part of the answer.
        log.warning("indexed object is missing from storage; skipping it")
        return None
    return itertools.chain([first], chunks)


def _part_head(boundary: bytes, loc: dicom_pb2.InstanceLocation, urls: Urls, first: bool, ts: str) -> bytes:
    ref = loc.ref
    lines = [
        f"Content-Type: {DICOM}; transfer-syntax={ts}",
        f"Content-Location: {urls.instance(ref.study_instance_uid, ref.series_instance_uid, ref.sop_instance_uid)}",
    ]
    prefix = b"" if first else b"\r\n"
    return prefix + b"--" + boundary + b"\r\n" + "\r\n".join(lines).encode("ascii") + b"\r\n\r\n"


def _transcoded(storage: StorageClient, loc: dicom_pb2.InstanceLocation, target: str) -> Iterator[bytes] | None:
    opened = _open(storage, loc)
    if opened is None:
        return None
    return iter([transcode.transcode(b"".join(opened), target)])


def _needs(loc: dicom_pb2.InstanceLocation, target: str) -> bool:
    return target != "*" and loc.transfer_syntax_uid != target


def open_instance(
    storage: StorageClient, loc: dicom_pb2.InstanceLocation, target: str
) -> Iterator[bytes] | None:
    return _transcoded(storage, loc, target) if _needs(loc, target) else _open(storage, loc)


def _first_available(
    storage: StorageClient, locations: Sequence[dicom_pb2.InstanceLocation], target: str
) -> tuple[int, Iterator[bytes]]:
    for i, loc in enumerate(locations):
        opened = open_instance(storage, loc, target)
        if opened is not None:
            return i, opened
    raise errors.NotFound("the requested instances are not in storage")


def multipart_body(
    storage: StorageClient,
    locations: Sequence[dicom_pb2.InstanceLocation],
    start: int,
    opened: Iterator[bytes],
    boundary: bytes,
    urls: Urls,
    target: str = "*",
) -> Iterator[bytes]:
    """The response body. Runs in a worker thread (Starlette iterates sync
    generators in the threadpool), so blocking gRPC reads are fine here."""
    first = True
    for i in range(start, len(locations)):
        loc = locations[i]
        # An error here aborts the response: the client sees no closing delimiter.
        chunks = opened if i == start else open_instance(storage, loc, target)
        if chunks is None:
            continue
        yield _part_head(boundary, loc, urls, first, target if _needs(loc, target) else loc.transfer_syntax_uid)
        first = False
        yield from chunks
    yield b"\r\n--" + boundary + b"--\r\n"


async def _retrieve(request: Request, study: str, series: str = "", sop: str = "") -> Response:
    gw = gateway(request)
    locations = await run_in_threadpool(gw.metadata.locate, tenant_for(request), study, series, sop)
    if not locations:
        raise not_found("no such " + ("instance" if sop else "series" if series else "study"))
    target = negotiate(request.headers.get("accept"), {loc.transfer_syntax_uid for loc in locations})
    try:
        start, opened = await run_in_threadpool(_first_available, gw.storage, locations, target)
    except transcode.CannotTranscode as exc:
        raise not_acceptable(f"transcoding to {target} failed: {exc}") from None
    boundary = secrets.token_hex(16)
    urls = Urls.for_request(request)
    body = multipart_body(gw.storage, locations, start, opened, boundary.encode("ascii"), urls, target)
    media_type = f'{MULTIPART_RELATED}; type="{DICOM}"; boundary={boundary}'
    return StreamingResponse(body, media_type=media_type)


# ---- metadata ------------------------------------------------------------


def _absolutize(attrs: dict[str, Any], base: str) -> None:
    for attr in attrs.values():
        uri = attr.get("BulkDataURI")
        if isinstance(uri, str) and not urlsplit(uri).scheme and not uri.startswith("/"):
            attr["BulkDataURI"] = f"{base}/{uri}"
        if attr.get("vr") == "SQ":
            for item in attr.get("Value") or []:
                if isinstance(item, dict):
                    _absolutize(item, base)


def rewrite_bulkdata_uris(blob: bytes, urls: Urls) -> bytes:
    """Makes the stored relative BulkDataURIs ("bulkdata/7FE00010") absolute."""
    if b'"BulkDataURI"' not in blob:
        return blob  # the common case for non-image objects: no parse at all
    obj = json.loads(blob)
    ids = [dicom_json.first_value(obj, tag) for tag in (_STUDY_UID, _SERIES_UID, _SOP_UID)]
    if not all(isinstance(v, str) for v in ids):
        return blob  # cannot name the instance; leave the URIs as stored
    _absolutize(obj, urls.instance(*ids))
    return dicom_json.dumps(obj)


def _load_metadata(
    metadata: MetadataClient, urls: Urls, tenant: str, study: str, series: str, sop: str
) -> list[bytes]:
    return [rewrite_bulkdata_uris(b, urls) for b in metadata.get_metadata(tenant, study, series, sop)]


async def _metadata(request: Request, study: str, series: str = "", sop: str = "") -> Response:
    require_json(request)
    gw = gateway(request)
    urls = Urls.for_request(request)
    blobs = await run_in_threadpool(_load_metadata, gw.metadata, urls, tenant_for(request), study, series, sop)
    if not blobs:
        raise not_found("no such " + ("instance" if sop else "series" if series else "study"))
    return json_array_response(blobs, request=request, gzip_min_bytes=gw.settings.gzip_min_bytes)


# ---- routes --------------------------------------------------------------


def path_ids(request: Request) -> tuple[str, str, str]:
    p = request.path_params
    study = path_uid(request, "study", "Study Instance UID")
    series = path_uid(request, "series", "Series Instance UID") if "series" in p else ""
    sop = path_uid(request, "sop", "SOP Instance UID") if "sop" in p else ""
    return study, series, sop


async def retrieve(request: Request) -> Response:
    return await _retrieve(request, *path_ids(request))


async def retrieve_metadata(request: Request) -> Response:
    return await _metadata(request, *path_ids(request))
