"""Rendered resources (PS3.18 10.4.1.1.3, 10.4.1.1.6 thumbnails): frames as
JPEG, PNG or GIF for display, with windowing, viewport scaling and quality.
A multi-frame instance renders as all its frames: an animated GIF (the
default for multi-frame images, PS3.18 Table 8.7.4-1), or one part per
frame when multipart/related is asked for; an explicit single-image type
(JPEG, PNG) gets its first frame. Thumbnails are one image. The images are
made by dicomweb_gateway.imaging."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from common.gen.dicomserver.v1 import dicom_pb2
from dicomweb_gateway import objects
from dicomweb_gateway.context import Gateway, gateway, path_uid, tenant_for
from dicomweb_gateway.errors import ApiError, not_found
from dicomweb_gateway.imaging import (
    GIF,
    MAX_ANIMATED_FRAMES,
    RenderOptions,
    animated_gif,
    frame_image,
    frame_time_ms,
    options_from_query,
    render_frame,
)
from dicomweb_gateway.media import MULTIPART_RELATED
from dicomweb_gateway.reading import load, parse_frame_list

# ---- answers ---------------------------------------------------------------


def _multipart_images(images: Iterator[bytes], media_type: str) -> StreamingResponse:
    boundary = secrets.token_hex(16)

    def body() -> Iterator[bytes]:
        for data in images:
            yield f"--{boundary}\r\nContent-Type: {media_type}\r\n\r\n".encode("ascii") + data + b"\r\n"
        yield f"--{boundary}--\r\n".encode("ascii")

    return StreamingResponse(body(), media_type=f'{MULTIPART_RELATED}; type="{media_type}"; boundary={boundary}')


# ---- routes ---------------------------------------------------------------


def _options(request: Request, thumbnail: bool) -> RenderOptions:
    return options_from_query(dict(request.query_params), request.headers.get("accept"), thumbnail)


def _instance(gw: Gateway, request: Request, options: RenderOptions, thumbnail: bool = False) -> Response:
    loc, layout = load(gw, request)
    raw = request.path_params.get("frames")
    if layout.frames == 0:
        raise not_found("the instance has no pixel data to render")
    if raw is not None:
        numbers = parse_frame_list(raw, layout.frames)
    elif thumbnail or not (options.animate or options.multipart):
        numbers = [1]  # one image: the first frame represents the instance
    else:
        numbers = list(range(1, min(layout.frames, MAX_ANIMATED_FRAMES) + 1))
    if len(numbers) > 1 and options.animate and not options.multipart:
        images = [frame_image(gw, loc, layout, n, options) for n in numbers[:MAX_ANIMATED_FRAMES]]
        return Response(animated_gif(images, frame_time_ms(layout.header)), media_type=GIF)
    if len(numbers) == 1 and not options.multipart:
        return Response(render_frame(gw, loc, layout, numbers[0], options), media_type=options.media_type)
    first = render_frame(gw, loc, layout, numbers[0], options)
    rest = (render_frame(gw, loc, layout, n, options) for n in numbers[1:])
    return _multipart_images(itertools.chain([first], rest), options.media_type)


async def rendered_instance(request: Request) -> Response:
    return await run_in_threadpool(_instance, gateway(request), request, _options(request, False))


async def thumbnail_instance(request: Request) -> Response:
    return await run_in_threadpool(_instance, gateway(request), request, _options(request, True), True)


def _images_in(gw: Gateway, request: Request) -> list[dicom_pb2.InstanceLocation]:
    study = path_uid(request, "study", "Study Instance UID")
    series = path_uid(request, "series", "Series Instance UID") if "series" in request.path_params else ""
    locations = gw.metadata.locate(tenant_for(request), study, series)
    if not locations:
        raise not_found("no such " + ("series" if series else "study"))
    images = [loc for loc in locations if loc.number_of_frames > 0]
    if not images:
        raise not_found("there are no images to render")
    return images


def _thumbnail_of_many(gw: Gateway, request: Request, options: RenderOptions) -> Response:
    images = _images_in(gw, request)
    loc = images[len(images) // 2]  # a representative image: the middle one
    try:
        layout = gw.layouts.get(loc)
    except objects.UnreadableObject as exc:
        raise ApiError(500, f"the stored object cannot be read: {exc}") from None
    return Response(render_frame(gw, loc, layout, 1, options), media_type=options.media_type)


def _rendered_many(gw: Gateway, request: Request, options: RenderOptions) -> Response:
    images = _images_in(gw, request)

    def one(loc: dicom_pb2.InstanceLocation) -> bytes:
        return render_frame(gw, loc, gw.layouts.get(loc), 1, options)

    first = one(images[0])
    return _multipart_images(itertools.chain([first], (one(loc) for loc in images[1:])), options.media_type)


async def thumbnail_many(request: Request) -> Response:
    return await run_in_threadpool(_thumbnail_of_many, gateway(request), request, _options(request, True))


async def rendered_many(request: Request) -> Response:
    return await run_in_threadpool(_rendered_many, gateway(request), request, _options(request, False))
