"""WADO-RS (PS3.18 10.4): instances of a study, series or single instance as
multipart/related; type="application/dicom", and their metadata as DICOM JSON.

Object bytes are read where storage grants (the object's file, or a
presigned URL) in large blocks, the next while the current one is sent;
an object larger than a block is never read whole."""

from __future__ import annotations

import json
import logging
import secrets
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from common import errors
from common.blobs import BlobReader
from common.clients import MetadataClient
from common.gen.dicomserver.v1 import dicom_pb2
from dicomcore import dataset_json
from dicomweb_gateway import transcode, zip_download
from dicomweb_gateway.context import Urls, gateway, tenant_for
from dicomweb_gateway.errors import not_acceptable, not_found
from dicomweb_gateway.media import DICOM, MULTIPART_RELATED, parse_accept
from dicomweb_gateway.reading import (
    JOIN_BELOW,
    needs_transcode,
    open_instance,
    path_ids,
    prefetched,
)
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
    # The targets are many (docs/compression-and-deidentification.md lists
    # them): naming every one made an unreadably long error.
    syntaxes = ", ".join(sorted(stored)[:3]) + (", ..." if len(stored) > 3 else "")
    raise not_acceptable(
        f'instances are available as {MULTIPART_RELATED}; type="{DICOM}" in their stored transfer syntax '
        f"({syntaxes}) or by transcoding to one of the {len(transcode.TARGETS)} syntaxes whose encoders are installed"
    )


# ---- streaming -----------------------------------------------------------


def _part_head(boundary: bytes, loc: dicom_pb2.InstanceLocation, urls: Urls, first: bool, ts: str) -> bytes:
    ref = loc.ref
    lines = [
        f"Content-Type: {DICOM}; transfer-syntax={ts}",
        f"Content-Location: {urls.instance(ref.study_instance_uid, ref.series_instance_uid, ref.sop_instance_uid)}",
    ]
    prefix = b"" if first else b"\r\n"
    return prefix + b"--" + boundary + b"\r\n" + "\r\n".join(lines).encode("ascii") + b"\r\n\r\n"


# Objects in a bucket: the first block of the next few is fetched while the
# current one is sent (each presigned GET waits on the store's latency).
READ_AHEAD = 8
_READ_AHEAD_POOL = ThreadPoolExecutor(16, thread_name_prefix="wado-read-ahead")


def _opened(
    reader: BlobReader,
    locations: Sequence[dicom_pb2.InstanceLocation],
    start: int,
    opened: Iterator[bytes],
    target: str,
) -> Iterator[tuple[dicom_pb2.InstanceLocation, Iterator[bytes] | None]]:
    """Each location from `start` with its blocks (None: gone from storage).
    Storage has one backend: if the first object is in a bucket, all are,
    and READ_AHEAD of them are opened in the pool ahead of their turn."""
    rest = locations[start + 1 :]
    remote = reader.remote(locations[start].object_key)
    ahead: deque[Future[Iterator[bytes] | None]] = deque()
    queued = 0

    def fill() -> None:
        nonlocal queued
        while remote and queued < len(rest) and len(ahead) < READ_AHEAD:
            ahead.append(_READ_AHEAD_POOL.submit(open_instance, reader, rest[queued], target))
            queued += 1

    try:
        fill()
        yield locations[start], opened
        for loc in rest:
            blocks = ahead.popleft().result() if remote else open_instance(reader, loc, target)
            fill()
            yield loc, blocks
    finally:
        for pending in ahead:
            pending.cancel()


def _pieces(
    reader: BlobReader,
    locations: Sequence[dicom_pb2.InstanceLocation],
    start: int,
    opened: Iterator[bytes],
    boundary: bytes,
    urls: Urls,
    target: str,
) -> Iterator[bytes]:
    """The response body as large pieces. Blocking reads: the caller steps it
    in a worker thread."""
    first = True
    # An error opening an object aborts the response: the client sees no closing delimiter.
    for loc, blocks in _opened(reader, locations, start, opened, target):
        if blocks is None:
            continue
        head = _part_head(
            boundary, loc, urls, first, target if needs_transcode(loc, target) else loc.transfer_syntax_uid
        )
        first = False
        for block in blocks:
            if head:
                if len(block) < JOIN_BELOW:
                    block = head + block
                else:
                    yield head
                head = b""
            yield block
        if head:
            yield head
    yield b"\r\n--" + boundary + b"--\r\n"


def _first_available(
    reader: BlobReader, locations: Sequence[dicom_pb2.InstanceLocation], target: str
) -> tuple[int, Iterator[bytes]]:
    reader.prepare([loc.object_key for loc in locations])  # one grant call for the whole answer
    for i, loc in enumerate(locations):
        opened = open_instance(reader, loc, target)
        if opened is not None:
            return i, opened
    raise errors.NotFound("the requested instances are not in storage")


async def _retrieve(request: Request, study: str, series: str = "", sop: str = "") -> Response:
    gw = gateway(request)
    locations = await run_in_threadpool(gw.metadata.locate, tenant_for(request), study, series, sop)
    if not locations:
        raise not_found("no such " + ("instance" if sop else "series" if series else "study"))
    accept = zip_download.accept_value(request)
    stored = {loc.transfer_syntax_uid for loc in locations}
    zip_target = zip_download.zip_target(accept, stored)
    if zip_target is not None:
        return await zip_download.respond(request, locations, zip_target, study, series, sop)
    target = negotiate(accept, stored)
    try:
        start, opened = await run_in_threadpool(_first_available, gw.reader, locations, target)
    except transcode.CannotTranscode as exc:
        raise not_acceptable(f"transcoding to {target} failed: {exc}") from None
    boundary = secrets.token_hex(16)
    urls = Urls.for_request(request)
    pieces = _pieces(gw.reader, locations, start, opened, boundary.encode("ascii"), urls, target)
    media_type = f'{MULTIPART_RELATED}; type="{DICOM}"; boundary={boundary}'
    return StreamingResponse(prefetched(pieces), media_type=media_type)


# ---- metadata ------------------------------------------------------------


_INSTANCE_RELATIVE = b'"BulkDataURI":"bulkdata/'


def _absolutize(attrs: dict[str, Any], base: str) -> None:
    for attr in attrs.values():
        uri = attr.get("BulkDataURI")
        if isinstance(uri, str) and not urlsplit(uri).scheme and not uri.startswith("/"):
            attr["BulkDataURI"] = f"{base}/{uri}"
        if attr.get("vr") == "SQ":
            for item in attr.get("Value") or []:
                if isinstance(item, dict):
                    _absolutize(item, base)


def _instance_relative(blob: bytes, urls: Urls) -> bytes:
    """BulkDataURIs of an instance indexed before they were stored relative
    to the root ("bulkdata/7FE00010"): rewritten through the JSON."""
    obj = json.loads(blob)
    ids = [dataset_json.first_value(obj, tag) for tag in (_STUDY_UID, _SERIES_UID, _SOP_UID)]
    if not all(isinstance(v, str) for v in ids):
        return blob  # cannot name the instance; leave the URIs as stored
    _absolutize(obj, urls.instance(*ids))
    return dataset_json.dumps(obj)


def rewrite_bulkdata_uris(blob: bytes, urls: Urls) -> bytes:
    """One instance's header with absolute BulkDataURIs, whichever way they were stored."""
    blob = urls.absolute_bulkdata_uris(blob)
    return _instance_relative(blob, urls) if _INSTANCE_RELATIVE in blob else blob


def _load_metadata(metadata: MetadataClient, urls: Urls, tenant: str, study: str, series: str, sop: str) -> list[bytes]:
    headers = metadata.get_metadata(tenant, study, series, sop)
    if not headers:
        return []
    if any(_INSTANCE_RELATIVE in h for h in headers):  # indexed before root-relative URIs
        return [rewrite_bulkdata_uris(h, urls) for h in headers]
    return [urls.absolute_bulkdata_uris(b",".join(headers))]


async def _metadata(request: Request, study: str, series: str = "", sop: str = "") -> Response:
    require_json(request)
    gw = gateway(request)
    urls = Urls.for_request(request)
    blobs = await run_in_threadpool(_load_metadata, gw.metadata, urls, tenant_for(request), study, series, sop)
    if not blobs:
        raise not_found("no such " + ("instance" if sop else "series" if series else "study"))
    return json_array_response(blobs, request=request, gzip_min_bytes=gw.settings.gzip_min_bytes)


# ---- routes --------------------------------------------------------------


async def retrieve(request: Request) -> Response:
    return await _retrieve(request, *path_ids(request))


async def retrieve_metadata(request: Request) -> Response:
    return await _metadata(request, *path_ids(request))
