"""WADO-RS retrieve as a zip (PS3.18 10.4: application/zip for a study,
series or instance): the stored objects in a readable folder layout
(dicomweb_gateway.zip_layout), without a DICOMDIR.

Asked for with `Accept: application/zip`, or, where a link cannot set
headers (a plain browser link), with the query parameter
`accept=application/zip` (PS3.18 8.3.3.1), which then wins over the header.

The zip is streamed at constant memory: each object is read where storage
grants in large blocks, the next while the current one is sent (the same
reader and prefetch as multipart WADO-RS), through zipstream-ng's streaming
writer. Members are stored, not deflated: DICOM pixel data barely shrinks
(deflate level 1 made the bench CT series 0.56 of its size at 42 MB/s of one
core, well under what the gateway sends stored), and compressed transfer
syntaxes not at all. ZIP64 records are written where a member or the archive
passes 4 GiB. When the stored bytes are sent as they are, every member's size
is known beforehand and so is the zip's: the answer has a Content-Length, so
browsers show progress.

Tenant walls and audit are those of any retrieve: the objects are located in
the caller's tenant only, and the authentication middleware records the
request like any other."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from zipstream import ZIP_STORED, ZipStream

from common import errors
from common.blobs import BlobReader
from common.clients import MetadataClient
from common.gen.dicomserver.v1 import dicom_pb2
from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from dicomweb_gateway import reading, transcode, zip_layout
from dicomweb_gateway.context import gateway, tenant_for
from dicomweb_gateway.errors import not_acceptable
from dicomweb_gateway.media import MULTIPART_RELATED, parse_accept

log = logging.getLogger(__name__)

ZIP = "application/zip"
ACCEPT_PARAM = "accept"
# Small pieces (member headers, data descriptors, small objects) are sent
# together once this many bytes are at hand: one send per few objects, not
# three per object.
SEND_AT_LEAST = 256 * 1024


def accept_value(request: Request) -> str | None:
    """What the client accepts: the `accept` query parameter when given
    (PS3.18 8.3.3.1, for links that cannot set headers), else the header."""
    param = request.query_params.get(ACCEPT_PARAM)
    return param if param is not None else request.headers.get("accept")


def zip_target(accept: str | None, stored: set[str]) -> str | None:
    """None unless the client prefers a zip; else the transfer syntax of the
    members ("*": as stored), or 406 when it names one we cannot make."""
    for r in parse_accept(accept):
        if r.essence == ZIP:
            wanted = r.params.get("transfer-syntax", "*").strip()
            if wanted == "*" or stored == {wanted}:
                return "*"
            if all(transcode.can_transcode(ts, wanted) for ts in stored):
                return wanted
            raise not_acceptable(
                f"{ZIP} is available in the stored transfer syntax, or transcoded to one of "
                f"{', '.join(sorted(transcode.TARGETS))}"
            )
        if r.essence in ("*/*", "multipart/*", MULTIPART_RELATED):
            return None  # multipart comes first
    return None


def _names(metadata: MetadataClient, tenant: str, study: str, series: str, sop: str) -> dict[str, str]:
    """SOP Instance UID -> path in the zip, from instance-level queries."""
    filters = [md_pb.Filter(tag=zip_layout.SOP_UID, equal=sop)] if sop else []
    matches: list[bytes] = []
    while True:
        resp = metadata.query(
            md_pb.QueryRequest(
                tenant=tenant,
                level=dicom_pb2.QUERY_LEVEL_INSTANCE,
                filters=filters,
                include_fields=zip_layout.TAGS,
                study_instance_uid=study,
                series_instance_uid=series,
                offset=len(matches),
            )
        )
        matches.extend(resp.matches)
        if not resp.truncated or not resp.matches:
            break
    return {e.sop_instance_uid: e.path for e in zip_layout.layout(json.loads(m) for m in matches)}


def plan(
    metadata: MetadataClient,
    tenant: str,
    study: str,
    series: str,
    sop: str,
    locations: Sequence[dicom_pb2.InstanceLocation],
) -> list[tuple[str, dicom_pb2.InstanceLocation]]:
    """(path in the zip, location) of every located instance, in folder order.
    An instance the query did not return (stored meanwhile) goes under its UIDs."""
    names = _names(metadata, tenant, study, series, sop)
    order = {path: i for i, path in enumerate(names.values())}
    taken = set(names.values())
    out = []
    for loc in locations:
        ref = loc.ref
        path = names.get(ref.sop_instance_uid)
        if path is None:
            path = f"{ref.study_instance_uid}/{ref.series_instance_uid}/{ref.sop_instance_uid}.dcm"
            if path in taken:
                continue
            taken.add(path)
        out.append((path, loc))
    out.sort(key=lambda item: order.get(item[0], len(order)))
    return out


def _member(reader: BlobReader, loc: dicom_pb2.InstanceLocation, target: str) -> Iterator[bytes]:
    try:
        yield from reading.instance_blocks(reader, loc, target)
    except errors.NotFound:
        # The zip (and its Content-Length) already counts this member: the
        # response is cut short, so the client sees a failed download.
        log.warning("an indexed object went missing from storage while it was zipped")
        raise


def build(reader: BlobReader, members: Iterable[tuple[str, dicom_pb2.InstanceLocation]], target: str) -> ZipStream:
    """The zip of `members`; sized (len() is its byte count) when the stored
    bytes are sent as they are."""
    sized = target == "*"
    zs = ZipStream(compress_type=ZIP_STORED, sized=sized)
    for path, loc in members:
        zs.add(_member(reader, loc, target), path, size=loc.size if sized else None)
    return zs


def coalesce(
    chunks: Iterable[bytes], at_least: int = SEND_AT_LEAST, join_below: int = reading.JOIN_BELOW
) -> Iterator[bytes]:
    """Joins small chunks into pieces of at least `at_least` bytes. A large
    chunk is sent with what was gathered before it when it is smaller than
    `join_below` (a member's header and its object in one write), else on
    its own."""
    pending: list[bytes] = []
    size = 0
    for chunk in chunks:
        if len(chunk) >= at_least:
            if pending and len(chunk) < join_below:
                pending.append(chunk)
                yield b"".join(pending)
            else:
                if pending:
                    yield b"".join(pending)
                yield chunk
            pending, size = [], 0
            continue
        pending.append(chunk)
        size += len(chunk)
        if size >= at_least:
            yield b"".join(pending)
            pending, size = [], 0
    if pending:
        yield b"".join(pending)


def _filename(study: str, series: str, sop: str) -> str:
    if sop:
        return f"instance-{sop}.zip"
    return f"series-{series}.zip" if series else f"study-{study}.zip"


async def respond(
    request: Request,
    locations: Sequence[dicom_pb2.InstanceLocation],
    target: str,
    study: str,
    series: str,
    sop: str,
) -> Response:
    gw = gateway(request)
    members = await run_in_threadpool(plan, gw.metadata, tenant_for(request), study, series, sop, locations)
    await run_in_threadpool(gw.reader.prepare, [loc.object_key for _, loc in members])  # one grant call
    zs = build(gw.reader, members, target)
    headers = {"Content-Disposition": f'attachment; filename="{_filename(study, series, sop)}"'}
    if zs.sized:
        headers["Content-Length"] = str(len(zs))
    return StreamingResponse(reading.prefetched(coalesce(zs)), media_type=ZIP, headers=headers)
