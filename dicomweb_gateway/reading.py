"""What the retrieve handlers share: the UIDs in the request's path, one
instance located with its pixel layout, frame lists, and stored objects read
in large blocks, the next read while the current one is sent."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from collections.abc import AsyncIterator, Iterator

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from common import errors
from common.blobs import BlobReader
from common.gen.dicomserver.v1 import dicom_pb2
from dicomweb_gateway import objects, transcode
from dicomweb_gateway.context import Gateway, path_uid, tenant_for
from dicomweb_gateway.errors import ApiError, bad_request, not_found

log = logging.getLogger(__name__)


# Objects are read in blocks of this size (most in one read); the next block
# is read while the current one is being sent.
READ_BLOCK = 4 * 1024 * 1024
JOIN_BELOW = 1024 * 1024  # a part head is joined to a block this small (one write)


def needs_transcode(loc: dicom_pb2.InstanceLocation, target: str) -> bool:
    return target != "*" and loc.transfer_syntax_uid != target


def instance_blocks(reader: BlobReader, loc: dicom_pb2.InstanceLocation, target: str) -> Iterator[bytes]:
    """The object's bytes in blocks, transcoded to `target` if need be.
    Raises common.errors.NotFound on the first block if the object is gone."""
    if needs_transcode(loc, target):
        yield transcode.transcode(reader.read(loc.object_key), target)
        return
    offset = 0
    while True:
        block = reader.read(loc.object_key, offset, READ_BLOCK)
        if block:
            yield block
        if len(block) < READ_BLOCK:
            return
        offset += len(block)


def open_instance(reader: BlobReader, loc: dicom_pb2.InstanceLocation, target: str) -> Iterator[bytes] | None:
    """The object's blocks with the first one read already, so a missing
    object shows up here rather than mid-response; None if it is gone."""
    blocks = instance_blocks(reader, loc, target)
    try:
        first = next(blocks, b"")
    except errors.NotFound:
        # Deleted between locate and read: it is simply no longer part of the answer.
        log.warning("indexed object is missing from storage; skipping it")
        return None
    return itertools.chain([first], blocks)


async def prefetched(pieces: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Steps a blocking iterator in worker threads, one piece ahead: the next
    piece is read while the current one is being sent."""
    done = object()
    pending = asyncio.ensure_future(run_in_threadpool(next, pieces, done))
    try:
        while True:
            piece = await pending
            if piece is done:
                return
            pending = asyncio.ensure_future(run_in_threadpool(next, pieces, done))
            yield piece  # type: ignore[misc]
    finally:
        if not pending.done():
            pending.cancel()


def path_ids(request: Request) -> tuple[str, str, str]:
    p = request.path_params
    study = path_uid(request, "study", "Study Instance UID")
    series = path_uid(request, "series", "Series Instance UID") if "series" in p else ""
    sop = path_uid(request, "sop", "SOP Instance UID") if "sop" in p else ""
    return study, series, sop


_MAX_FRAMES_IN_LIST = 10000


_FRAME_LIST = re.compile(r"[0-9]{1,9}(,[0-9]{1,9})*")


def check_frame_list(raw: str) -> None:
    if not _FRAME_LIST.fullmatch(raw):
        raise bad_request("frame list must be comma-separated frame numbers, e.g. 1,3,5")


def parse_frame_list(raw: str, frames: int) -> list[int]:
    check_frame_list(raw)
    numbers = [int(n) for n in raw.split(",")]
    if len(numbers) > _MAX_FRAMES_IN_LIST:
        raise bad_request(f"at most {_MAX_FRAMES_IN_LIST} frames per request")
    if frames == 0:
        raise not_found("the instance has no pixel data")
    bad = [n for n in numbers if not 1 <= n <= frames]
    if bad:
        raise not_found(f"frame {bad[0]} does not exist; the instance has {frames} frame(s)")
    return numbers


def locate_one(gw: Gateway, request: Request) -> dicom_pb2.InstanceLocation:
    study = path_uid(request, "study", "Study Instance UID")
    series = path_uid(request, "series", "Series Instance UID")
    sop = path_uid(request, "sop", "SOP Instance UID")
    locations = gw.metadata.locate(tenant_for(request), study, series, sop)
    if not locations:
        raise not_found("no such instance")
    return locations[0]


def load(gw: Gateway, request: Request) -> tuple[dicom_pb2.InstanceLocation, objects.Layout]:
    loc = locate_one(gw, request)
    return loc, layout_of(gw, loc)


def layout_of(gw: Gateway, loc: dicom_pb2.InstanceLocation) -> objects.Layout:
    try:
        return gw.layouts.get(loc)
    except objects.UnreadableObject as exc:
        raise ApiError(500, f"the stored object cannot be read: {exc}") from None
