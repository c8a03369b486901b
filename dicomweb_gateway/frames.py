"""WADO-RS frames and bulk data (PS3.18 10.4.1.1.4-5): pixel data of stored
objects, frame by frame, read in place with ranged gets.

Compressed frames go out as stored whenever the Accept header allows it;
"application/octet-stream" without transfer-syntax=* means decoded native
frames (Explicit VR Little Endian), as the standard's default says. A
compressed syntax the stored one is not (image/jphc for HTJ2K, image/jpeg,
image/jp2, image/jls, image/dicom-rle, or octet-stream with its
transfer-syntax) is made frame by frame when its encoder is installed
(dicomweb_gateway.transcode), each frame checked by decoding."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from common.blobs import BlobReader
from common.gen.dicomserver.v1 import dicom_pb2
from dicomweb_gateway import objects, transcode
from dicomweb_gateway.context import Gateway, Urls, gateway
from dicomweb_gateway.errors import ApiError, not_acceptable, not_found
from dicomweb_gateway.media import MULTIPART_RELATED, parse_accept
from dicomweb_gateway.reading import check_frame_list, layout_of, load, locate_one, parse_frame_list

OCTET = "application/octet-stream"
NATIVE = str(ExplicitVRLittleEndian)

# Media types of compressed frames (PS3.18 Table 8.7.3-2) by transfer syntax.
FRAME_MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
_ALIASES = {"image/x-dicom-rle": "image/dicom-rle", "image/x-jls": "image/jls"}
# The syntax a frame media type asked for without a transfer-syntax
# parameter is converted to (PS3.18 Table 8.7.3-2's defaults).
_DEFAULT_TARGETS = {
    "image/jpeg": "1.2.840.10008.1.2.4.50",
    "image/jls": "1.2.840.10008.1.2.4.80",
    "image/jp2": "1.2.840.10008.1.2.4.90",
    "image/jphc": "1.2.840.10008.1.2.4.201",
    "image/dicom-rle": "1.2.840.10008.1.2.5",
}


@dataclass(frozen=True)
class FrameChoice:
    """How frames go out: as stored (compressed), or decoded to native."""

    decode: bool
    part_type: str  # media type of each part, parameters excluded
    single_part: bool = False
    # A compressed transfer syntax the decoded frames are encoded in; "" for none.
    target: str = ""


def _convertible(target: str, stored_ts: str, encapsulated: bool) -> bool:
    """Whether frames can be made in `target` (a compressed syntax) here."""
    return (
        target in transcode.TARGETS
        and target in FRAME_MEDIA_TYPES
        and (not encapsulated or transcode.can_decode(stored_ts))
    )


def negotiate_frames(accept: str | None, stored_ts: str, encapsulated: bool) -> FrameChoice:
    ranges = parse_accept(accept)
    stored_type = FRAME_MEDIA_TYPES.get(stored_ts, OCTET) if encapsulated else OCTET
    for r in ranges:
        if r.essence in ("*/*", "multipart/*"):
            return FrameChoice(False, stored_type if encapsulated else OCTET)
        if r.essence == MULTIPART_RELATED:
            part = r.params.get("type", OCTET).strip().lower()
            wanted = r.params.get("transfer-syntax", "").strip()
        elif r.essence == OCTET:
            part, wanted = OCTET, r.params.get("transfer-syntax", "").strip()
        else:
            continue
        single = r.essence == OCTET
        part = _ALIASES.get(part, part)
        if part == "*/*" or (part == "image/*" and stored_type.startswith("image/")):
            return FrameChoice(False, stored_type)
        if part == OCTET:
            if wanted == "*" and encapsulated:
                return FrameChoice(False, OCTET, single)
            if wanted in ("*", "", NATIVE, "1.2.840.10008.1.2"):
                # Native frames: sliced when stored native, decoded otherwise.
                if encapsulated and not transcode.can_decode(stored_ts):
                    continue
                return FrameChoice(encapsulated, OCTET, single)
            if _convertible(wanted, stored_ts, encapsulated):
                return FrameChoice(True, OCTET, single, wanted)
            continue
        if encapsulated and part == stored_type and wanted in ("", "*", stored_ts):
            return FrameChoice(False, part)
        target = _DEFAULT_TARGETS.get(part, "") if wanted in ("", "*") else wanted
        if FRAME_MEDIA_TYPES.get(target) == part and _convertible(target, stored_ts, encapsulated):
            return FrameChoice(True, part, target=target)
    raise not_acceptable(
        f'frames of this instance are available as {MULTIPART_RELATED}; type="{OCTET}" (native, '
        f"or transfer-syntax=* as stored)"
        + (f" and as {stored_type}" if encapsulated else "")
        + f", or converted to one of {', '.join(sorted(t for t in transcode.TARGETS if t in FRAME_MEDIA_TYPES))}"
    )


def frame_payload(
    reader: BlobReader,
    loc: dicom_pb2.InstanceLocation,
    layout: objects.Layout,
    number: int,
    decode: bool,
    target: str = "",
) -> tuple[bytes, str]:
    """One frame's bytes and the transfer syntax they are in: as stored,
    decoded to native, or (`target`) converted to that syntax."""
    if target:
        stored = None if layout.whole_object else objects.frame_bytes(reader, loc, layout, number)
        arr = transcode.decode_frame(layout, stored, number)
        return transcode.encode_frame(layout, arr, target), target
    if layout.whole_object or (decode and layout.encapsulated):
        stored = None if layout.whole_object else objects.frame_bytes(reader, loc, layout, number)
        arr = transcode.decode_frame(layout, stored, number)
        return transcode.native_bytes(arr), NATIVE
    data = objects.frame_bytes(reader, loc, layout, number)
    return data, (loc.transfer_syntax_uid if layout.encapsulated else NATIVE)


def multipart(parts: Iterator[tuple[bytes, dict[str, str]]], part_type: str, whole: bool = False) -> Response:
    """A multipart/related answer; `whole` builds it at once (one frame: no
    round trips to a worker thread for each piece of the body)."""
    boundary = secrets.token_hex(16)

    def body() -> Iterator[bytes]:
        for data, headers in parts:
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            yield f"--{boundary}\r\n{head}\r\n".encode("ascii") + data + b"\r\n"
        yield f"--{boundary}--\r\n".encode("ascii")

    media_type = f'{MULTIPART_RELATED}; type="{part_type}"; boundary={boundary}'
    if whole:
        return Response(b"".join(body()), media_type=media_type)
    return StreamingResponse(body(), media_type=media_type)


def _frames_response(
    request: Request,
    loc: dicom_pb2.InstanceLocation,
    numbers: Sequence[int],
    choice: FrameChoice,
    payload: Callable[[int], tuple[bytes, str]],
) -> Response:
    instance_url = Urls.for_request(request).instance(
        loc.ref.study_instance_uid, loc.ref.series_instance_uid, loc.ref.sop_instance_uid
    )
    # The first frame is read before answering, so a failure is a proper status.
    try:
        first = payload(numbers[0])
    except transcode.CannotTranscode as exc:
        raise not_acceptable(str(exc)) from None
    if choice.single_part and len(numbers) == 1:
        return Response(first[0], media_type=f"{OCTET}; transfer-syntax={first[1]}")

    def parts() -> Iterator[tuple[bytes, dict[str, str]]]:
        for i, n in enumerate(numbers):
            data, ts = first if i == 0 else payload(n)
            yield (
                data,
                {
                    "Content-Type": f"{choice.part_type}; transfer-syntax={ts}",
                    "Content-Location": f"{instance_url}/frames/{n}",
                },
            )

    return multipart(parts(), choice.part_type, whole=len(numbers) == 1)


def _recorded_frames(
    gw: Gateway, request: Request, loc: dicom_pb2.InstanceLocation, numbers: Sequence[int], choice: FrameChoice
) -> Response:
    """Frames as stored, where the index says they lie: one ranged read each."""
    ts = loc.transfer_syntax_uid if loc.pixel_layout.encapsulated else NATIVE

    def payload(n: int) -> tuple[bytes, str]:
        try:
            return objects.recorded_frame(gw.reader, loc, n), ts
        except objects.UnreadableObject as exc:
            raise ApiError(500, f"the stored object cannot be read: {exc}") from None

    return _frames_response(request, loc, numbers, choice, payload)


def _layout_frames(
    gw: Gateway, request: Request, loc: dicom_pb2.InstanceLocation, layout: objects.Layout, numbers: Sequence[int]
) -> Response:
    choice = negotiate_frames(request.headers.get("accept"), loc.transfer_syntax_uid, layout.encapsulated)
    return _frames_response(
        request, loc, numbers, choice, lambda n: frame_payload(gw.reader, loc, layout, n, choice.decode, choice.target)
    )


def _frames(gw: Gateway, request: Request, raw: str) -> Response:
    """The whole request in one worker thread: locate, then the frames."""
    loc = locate_one(gw, request)
    if objects.has_recorded_layout(loc):
        numbers = parse_frame_list(raw, loc.number_of_frames)
        choice = negotiate_frames(request.headers.get("accept"), loc.transfer_syntax_uid, loc.pixel_layout.encapsulated)
        if not choice.decode:
            return _recorded_frames(gw, request, loc, numbers, choice)
    layout = layout_of(gw, loc)
    numbers = parse_frame_list(raw, layout.frames)
    return _layout_frames(gw, request, loc, layout, numbers)


async def retrieve_frames(request: Request) -> Response:
    raw = request.path_params["frames"]
    check_frame_list(raw)
    return await run_in_threadpool(_frames, gateway(request), request, raw)


# ---- bulk data -----------------------------------------------------------


def parse_bulk_path(raw: str) -> list[int | str]:
    """'7FE00010' or '00880200/0/7FE00010' (sequence, item index, ..., tag)."""
    segments = raw.strip("/").split("/")
    if len(segments) % 2 != 1 or len(segments) > 33:
        raise not_found("no such bulk data")
    out: list[int | str] = []
    for i, seg in enumerate(segments):
        if i % 2 == 0:
            if not re.fullmatch(r"[0-9A-Fa-f]{8}", seg):
                raise not_found("no such bulk data")
            out.append(seg.upper())
        else:
            if not re.fullmatch(r"[0-9]{1,6}", seg):
                raise not_found("no such bulk data")
            out.append(int(seg))
    return out


def _resolve(header: Dataset, path: list[int | str]) -> bytes:
    ds = header
    for i in range(0, len(path) - 1, 2):
        seq = ds.get(int(str(path[i]), 16))
        index = int(path[i + 1])
        if seq is None or seq.VR != "SQ" or index >= len(seq.value):
            raise not_found("no such bulk data")
        ds = seq.value[index]
    elem = ds.get(int(str(path[-1]), 16))
    if elem is None or not isinstance(elem.value, (bytes, bytearray)):
        raise not_found("no such bulk data")
    return bytes(elem.value)


def _check_octet_accept(accept: str | None) -> bool:
    """Whether a single-part application/octet-stream answer was asked for."""
    ranges = parse_accept(accept)
    for r in ranges:
        if r.essence in ("*/*", "multipart/*"):
            return False
        if r.essence == MULTIPART_RELATED and r.params.get("type", OCTET).strip().lower() in (
            OCTET,
            "*/*",
            "application/*",
        ):
            return False
        if r.essence == OCTET:
            return True
    raise not_acceptable(f'bulk data is available as {MULTIPART_RELATED}; type="{OCTET}"')


def _bulk_response(gw: Gateway, request: Request, path: list[int | str]) -> Response:
    loc, layout = load(gw, request)
    single = _check_octet_accept(request.headers.get("accept"))
    url = str(request.url.remove_query_params(list(request.query_params.keys())))
    if path == [objects.PIXEL_DATA_TAG] and not layout.whole_object:
        if layout.frames == 0:
            raise not_found("the instance has no pixel data")
        if layout.encapsulated:
            # One part per frame, compressed as stored.
            ts = loc.transfer_syntax_uid
            frames = (objects.frame_bytes(gw.reader, loc, layout, n) for n in range(1, layout.frames + 1))
            return multipart(((f, {"Content-Type": f"{OCTET}; transfer-syntax={ts}"}) for f in frames), OCTET)
        if layout.big_endian:
            data = objects.little_endian(
                objects.fetch(gw.reader, loc.object_key, layout.value_offset, layout.value_length), layout
            )
            chunks: Iterator[bytes] = iter([data])
        else:
            chunks = gw.reader.get(loc.object_key, layout.value_offset, layout.value_length)
        if single:
            return StreamingResponse(chunks, media_type=f"{OCTET}; transfer-syntax={NATIVE}")
        return _streamed_single_part(chunks, url)
    data = _resolve(layout.header, path)
    if single:
        return Response(data, media_type=OCTET)
    return multipart(iter([(data, {"Content-Type": OCTET, "Content-Location": url})]), OCTET)


def _streamed_single_part(chunks: Iterator[bytes], url: str) -> StreamingResponse:
    boundary = secrets.token_hex(16)

    def body() -> Iterator[bytes]:
        yield (
            f"--{boundary}\r\nContent-Type: {OCTET}; transfer-syntax={NATIVE}\r\nContent-Location: {url}\r\n\r\n"
        ).encode("ascii")
        yield from chunks
        yield f"\r\n--{boundary}--\r\n".encode("ascii")

    return StreamingResponse(body(), media_type=f'{MULTIPART_RELATED}; type="{OCTET}"; boundary={boundary}')


async def retrieve_bulkdata(request: Request) -> Response:
    path = parse_bulk_path(request.path_params["path"])
    return await run_in_threadpool(_bulk_response, gateway(request), request, path)
