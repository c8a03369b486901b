"""STOW-RS (PS3.18 10.5): POST {base}/studies[/{study}].

Each part streams straight into a staged object of the blob store (a
staging file granted by storage_svc) and is stored as soon as it has
streamed in, through the shared ingest pipeline in this process: the bytes
are written once, and nothing holds the whole request in memory."""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from common import errors
from common.blobs import StagedObject
from common.gen.dicomserver.v1 import ingest_service_pb2 as ingest_pb
from dicomcore.status import CANNOT_UNDERSTAND, OUT_OF_RESOURCES
from dicomweb_gateway import stow_result
from dicomweb_gateway.context import Gateway, Urls, gateway, path_uid, tenant_for
from dicomweb_gateway.errors import ApiError, bad_request, unsupported_media_type
from dicomweb_gateway.media import (
    DICOM,
    MULTIPART_RELATED,
    MediaType,
    MediaTypeError,
    RepeatedParameter,
    parse_media_type,
)
from dicomweb_gateway.multipart import Limits, MultipartError, Part, check_boundary, iter_parts
from dicomweb_gateway.responses import DicomJSONResponse, require_json, warn_agent
from dicomweb_gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

_ACCEPTED = f'{MULTIPART_RELATED}; type="{DICOM}" or {DICOM}'


def _request_media_type(request: Request) -> MediaType:
    value = request.headers.get("content-type")
    if not value:
        raise unsupported_media_type(f"the request has no Content-Type; expected {_ACCEPTED}")
    try:
        media = parse_media_type(value)
    except RepeatedParameter as exc:
        raise bad_request(f"Content-Type: {exc}") from None
    except MediaTypeError as exc:
        raise unsupported_media_type(f"{exc}; expected {_ACCEPTED}") from None
    if media.essence == MULTIPART_RELATED:
        declared = media.params.get("type")
        # Without a type parameter each part's own Content-Type decides.
        if declared is not None and declared.strip().lower() != DICOM:
            raise unsupported_media_type(
                f"multipart/related with type '{declared[:60]}' is not supported; expected {_ACCEPTED}"
            )
    elif media.essence != DICOM:
        raise unsupported_media_type(f"'{media.essence}' is not supported; expected {_ACCEPTED}")
    return media


def part_is_dicom(part: Part, declared_type: str | None) -> bool:
    value = part.content_type
    if value is None:
        # RFC 2387: the type parameter names the parts' type when they omit it.
        return declared_type is not None and declared_type.strip().lower() == DICOM
    try:
        return parse_media_type(value).essence == DICOM
    except MediaTypeError:
        return False


# Parts of one request being stored at once: the next part streams in while
# earlier ones are committed and indexed (their index writes share a group commit).
MAX_PARTS_IN_FLIGHT = 4


class _Store:
    """Stores the parts of one request off the event loop, several at once;
    outcomes keep the order of the parts."""

    def __init__(self, gw: Gateway, tenant: str, study: str) -> None:
        self._gw, self._tenant, self._study = gw, tenant, study
        self._slots: list[ingest_pb.InstanceOutcome | asyncio.Future[ingest_pb.InstanceOutcome]] = []

    async def part(self, part: Part) -> None:
        staged = part.detach()  # the store owns the staged object now
        assert isinstance(staged, StagedObject)
        self._slots.append(
            asyncio.ensure_future(
                run_in_threadpool(
                    self._gw.pipeline.store,
                    staged,
                    self._tenant,
                    self._study,
                    self._gw.settings.duplicate_policy_value,
                )
            )
        )
        pending = [s for s in self._slots if isinstance(s, asyncio.Future) and not s.done()]
        if len(pending) >= MAX_PARTS_IN_FLIGHT:
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)

    async def outcomes(self) -> list[ingest_pb.InstanceOutcome]:
        """Every part's outcome, once the ones in flight are done."""
        return [s if isinstance(s, ingest_pb.InstanceOutcome) else await s for s in self._slots]

    async def any_stored(self) -> bool:
        return any(o.status != ingest_pb.STORE_STATUS_FAILED for o in await self.outcomes())

    def count(self) -> int:
        return len(self._slots)

    def refuse(self, reason: str, status: int = CANNOT_UNDERSTAND) -> None:
        self._slots.append(stow_result.failure(status, reason))


def _limits(settings: GatewaySettings) -> Limits:
    return Limits(settings.max_part_bytes, settings.max_parts, settings.max_part_header_bytes)


def _unavailable(exc: Exception) -> ApiError:
    """Storage could not take a part: 507 when its disk is full (nothing of
    the request was stored; the client may retry once space returns), 503
    when it is away."""
    if isinstance(exc, OSError) and exc.errno in _FULL:
        log.warning("STOW-RS: storage is full: %s", exc.strerror)
        return ApiError(507, "storage is full: the object could not be written")
    log.warning("STOW-RS: no staged object for a part: %s", exc)
    return ApiError(503, "storage is not available")


_FULL = (errno.ENOSPC, errno.EDQUOT)


async def _single(chunks: AsyncIterator[bytes], store: _Store, gw: Gateway, max_bytes: int) -> None:
    try:
        staged = await run_in_threadpool(gw.pipeline.stage)
    except (errors.ServiceError, OSError) as exc:
        raise _unavailable(exc) from None
    with Part({"content-type": DICOM}, staged) as part:
        async for chunk in chunks:
            if part.size + len(chunk) > max_bytes:
                raise ApiError(413, f"the object is larger than {max_bytes} bytes")
            try:
                part.file.write(chunk)
            except OSError as exc:  # the staged part is discarded as the block ends
                raise _unavailable(exc) from None
            part.size += len(chunk)
        if part.size == 0:
            raise bad_request("the request body is empty")
        await store.part(part)


async def _multipart(chunks: AsyncIterator[bytes], media: MediaType, store: _Store, gw: Gateway) -> None:
    settings = gw.settings
    boundary = check_boundary(media.params.get("boundary"))
    declared = media.params.get("type")
    try:
        async with aclosing(
            iter_parts(chunks, boundary, settings.spool_max_memory, _limits(settings), new_file=gw.pipeline.stage)
        ) as parts:
            async for part in parts:
                with part:
                    if part_is_dicom(part, declared):
                        await store.part(part)
                    else:
                        store.refuse(f"part Content-Type '{(part.content_type or 'none')[:60]}' is not {DICOM}")
    except (errors.ServiceError, OSError) as exc:  # storage granted no staged object, or the disk is full
        if not await store.any_stored():
            raise _unavailable(exc) from None
        why = "full" if isinstance(exc, OSError) and exc.errno in _FULL else "not available"
        store.refuse(f"the rest of the body could not be stored: storage is {why}", OUT_OF_RESOURCES)
    except MultipartError as exc:
        if not await store.any_stored():
            # Nothing to report but this: answer it, with the earlier parts' count.
            prefix = "malformed multipart body: " if exc.status == 400 else ""
            after = f" (after {store.count()} part(s), none stored)" if store.count() else ""
            raise ApiError(exc.status, f"{prefix}{exc}{after}") from None
        # Earlier parts are stored already; report them, and this as a failure.
        what = "malformed" if exc.status == 400 else "refused"
        store.refuse(f"the rest of the body is {what}: {exc}")


async def store_instances(request: Request) -> Response:
    gw = gateway(request)
    study = path_uid(request, "study", "Study Instance UID") if "study" in request.path_params else ""
    require_json(request)
    media = _request_media_type(request)
    store = _Store(gw, tenant_for(request), study)
    settings = gw.settings
    try:
        if media.essence == DICOM:
            await _single(request.stream(), store, gw, settings.max_part_bytes)
        else:
            await _multipart(request.stream(), media, store, gw)
    except ClientDisconnect:
        await store.outcomes()  # the parts that streamed in whole are stored all the same
        log.info("client disconnected during STOW-RS after %d part(s)", store.count())
        return Response(status_code=400)
    except HTTPException as exc:  # Starlette's max_body_size, while streaming
        if exc.status_code != 413:
            raise
        too_large = f"the request body is larger than {settings.max_request_bytes} bytes"
        if not await store.any_stored():
            raise ApiError(413, too_large) from None
        store.refuse(f"the rest of the body is refused: {too_large}")
    outcomes = await store.outcomes()
    if not outcomes:
        raise bad_request("the request contains no parts")
    result = stow_result.build(outcomes, Urls.for_request(request), study)
    headers = {"Warning": stow_result.warning_header(result.reasons, warn_agent(request))} if result.reasons else {}
    log.info(
        "STOW-RS: %d part(s), %d failed, status %d",
        len(outcomes),
        sum(o.status == ingest_pb.STORE_STATUS_FAILED for o in outcomes),
        result.status_code,
    )
    return DicomJSONResponse(result.dataset, status_code=result.status_code, headers=headers)
