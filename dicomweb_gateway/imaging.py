"""Frames as images for display (rendered resources and WADO-URI): JPEG, PNG
or GIF, with windowing, viewport scaling and quality.

The pipeline follows PS3.4 N.2 for grey images: modality LUT, VOI LUT (the
window the request names, else the object's first, else the full range),
presentation (MONOCHROME1 inverted), 8 bits out. Colour images are converted
to RGB (palette colour through its LUTs)."""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut

from common.gen.dicomserver.v1 import dicom_pb2
from dicomweb_gateway import objects, transcode
from dicomweb_gateway.context import Gateway
from dicomweb_gateway.errors import ApiError, bad_request, not_acceptable, not_found
from dicomweb_gateway.media import MULTIPART_RELATED, parse_accept

_RENDER_PARAMS = {"window", "viewport", "quality", "annotation", "charset", "iccprofile"}
JPEG, PNG, GIF = "image/jpeg", "image/png", "image/gif"


SINGLE_IMAGE_TYPES = (JPEG, PNG, GIF)


# Frames of one animated answer, at most (a long cine would be a video).
MAX_ANIMATED_FRAMES = 2000


THUMBNAIL_SIZE = 128


MAX_VIEWPORT = 8192


@dataclass(frozen=True)
class RenderOptions:
    media_type: str = JPEG
    window: tuple[float, float, str] | None = None  # center, width, function
    viewport: tuple[int, int] | None = None
    quality: int = 90
    # multipart/related of single images was asked for.
    multipart: bool = False
    # A multi-frame answer may be an animated GIF (the Accept allows it
    # without naming a single-image type first).
    animate: bool = False


def choose_media_type(accept: str | None) -> tuple[str, bool, bool]:
    """(media type, multipart, animate) for the Accept header."""
    for r in parse_accept(accept):
        if r.essence == MULTIPART_RELATED:
            part = r.params.get("type", JPEG).strip().lower()
            if part in SINGLE_IMAGE_TYPES:
                return part, True, False
            continue
        for media_type in SINGLE_IMAGE_TYPES:
            if r.matches(media_type):
                # "*/*" or "image/*": JPEG for one frame, an animated GIF for several.
                return media_type, False, r.matches(GIF)
    raise not_acceptable(
        f"rendered images are available as {JPEG}, {PNG} or {GIF} (animated for several "
        f"frames), or as {MULTIPART_RELATED} of those"
    )


def _number(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise bad_request(f"query parameter '{name}': '{raw[:32]}' is not a number") from None
    if not np.isfinite(value):
        raise bad_request(f"query parameter '{name}' must be finite")
    return value


def parse_window(raw: str, name: str = "window") -> tuple[float, float, str]:
    parts = raw.split(",")
    if len(parts) not in (2, 3):
        raise bad_request(f"query parameter '{name}' must be center,width[,function]")
    center, width = _number(name, parts[0]), _number(name, parts[1])
    function = parts[2].strip().lower() if len(parts) == 3 else "linear"
    if function not in ("linear", "linear_exact", "sigmoid"):
        raise bad_request(f"query parameter '{name}': function must be linear, linear_exact or sigmoid")
    if width <= 0 or (function == "linear" and width < 1):
        raise bad_request(f"query parameter '{name}': width must be positive (at least 1 for linear)")
    return center, width, function


def parse_viewport(raw: str) -> tuple[int, int]:
    if not re.fullmatch(r"[0-9]{1,5},[0-9]{1,5}(,.*)?", raw):
        raise bad_request("query parameter 'viewport' must be width,height")
    w, h = (int(v) for v in raw.split(",")[:2])
    if not (1 <= w <= MAX_VIEWPORT and 1 <= h <= MAX_VIEWPORT):
        raise bad_request(f"query parameter 'viewport': width and height must be 1..{MAX_VIEWPORT}")
    return w, h


def parse_quality(raw: str) -> int:
    if not re.fullmatch(r"[0-9]{1,3}", raw) or not 1 <= int(raw) <= 100:
        raise bad_request("query parameter 'quality' must be an integer from 1 to 100")
    return int(raw)


def options_from_query(params: Mapping[str, str], accept: str | None, thumbnail: bool) -> RenderOptions:
    unknown = [k for k in params if k not in _RENDER_PARAMS]
    if unknown:
        raise bad_request(f"unknown query parameter '{unknown[0][:64]}'")
    media_type, multipart, animate = choose_media_type(accept)
    return RenderOptions(
        media_type=media_type,
        multipart=multipart,
        animate=animate and not thumbnail,
        window=parse_window(params["window"]) if "window" in params else None,
        viewport=parse_viewport(params["viewport"])
        if "viewport" in params
        else (THUMBNAIL_SIZE, THUMBNAIL_SIZE)
        if thumbnail
        else None,
        quality=parse_quality(params["quality"]) if "quality" in params else (75 if thumbnail else 90),
    )


def _first_float(ds: Dataset, keyword: str) -> float | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        return float(value[0] if hasattr(value, "__len__") and not isinstance(value, str) else value)
    except (TypeError, ValueError, IndexError):
        return None


def _voi(arr: np.ndarray, window: tuple[float, float, str] | None, ds: Dataset) -> np.ndarray:
    """Grey values to 0..1."""
    if window is None:
        center, width = _first_float(ds, "WindowCenter"), _first_float(ds, "WindowWidth")
        if center is not None and width is not None and width > 0:
            window = (center, width, str(ds.get("VOILUTFunction", "LINEAR")).lower())
    if window is None:
        lo, hi = float(arr.min()), float(arr.max())
        return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    c, w, function = window
    if function == "sigmoid":
        return 1.0 / (1.0 + np.exp(-4.0 * (arr - c) / w))
    if function == "linear_exact":
        return np.clip((arr - (c - w / 2)) / w, 0.0, 1.0)
    return np.clip((arr - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0)


def to_image(arr: np.ndarray, ds: Dataset, options: RenderOptions) -> Image.Image:
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples == 1 and photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        samples = 3
    if samples == 1:
        grey = apply_modality_lut(arr, ds).astype(np.float64)
        scaled = _voi(grey, options.window, ds)
        if photometric == "MONOCHROME1":
            scaled = 1.0 - scaled
        image = Image.fromarray(np.round(scaled * 255).astype(np.uint8), mode="L")
    else:
        rgb = arr.astype(np.float64)
        if options.window is not None:
            rgb = _voi(rgb, options.window, ds)
        else:
            top = float(2 ** int(ds.get("BitsStored", 8) or 8) - 1)
            rgb = rgb / top if top > 0 else rgb
        image = Image.fromarray(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)[..., :3], mode="RGB")
    if options.viewport is not None:
        # Fit inside the viewport, keeping the aspect ratio.
        vw, vh = options.viewport
        scale = min(vw / image.width, vh / image.height)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        if size != image.size:
            image = image.resize(size, Image.Resampling.LANCZOS)
    return image


def encode(image: Image.Image, options: RenderOptions) -> bytes:
    out = io.BytesIO()
    if options.media_type == PNG:
        image.save(out, format="PNG")
    elif options.media_type == GIF:
        image.save(out, format="GIF")
    else:
        image.save(out, format="JPEG", quality=options.quality)
    return out.getvalue()


def animated_gif(images: list[Image.Image], frame_ms: int) -> bytes:
    out = io.BytesIO()
    images[0].save(out, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms, loop=0)
    return out.getvalue()


def frame_time_ms(header: Dataset) -> int:
    """Frame Time (0018,1063) in ms, for the animation; 100 ms without one."""
    try:
        value = float(header.get("FrameTime", 0) or 0)
    except (TypeError, ValueError):
        value = 0.0
    return max(20, min(int(round(value)), 10000)) if value > 0 else 100


def frame_image(
    gw: Gateway, loc: dicom_pb2.InstanceLocation, layout: objects.Layout, number: int, options: RenderOptions
) -> Image.Image:
    if layout.frames == 0:
        raise not_found("the instance has no pixel data to render")
    try:
        stored = None if layout.whole_object else objects.frame_bytes(gw.reader, loc, layout, number)
        arr = transcode.decode_frame(layout, stored, number)
        if arr.ndim == 3 and int(layout.header.get("SamplesPerPixel", 1) or 1) == 1:
            arr = arr[0]
        return to_image(arr, layout.header, options)
    except objects.UnreadableObject as exc:
        raise ApiError(500, f"the stored object cannot be read: {exc}") from None
    except transcode.CannotTranscode as exc:
        raise ApiError(422, f"the instance cannot be rendered: {exc}") from None
    except (ValueError, KeyError, AttributeError, TypeError) as exc:
        raise ApiError(422, f"the instance cannot be rendered ({type(exc).__name__})") from None


def render_frame(
    gw: Gateway, loc: dicom_pb2.InstanceLocation, layout: objects.Layout, number: int, options: RenderOptions
) -> bytes:
    return encode(frame_image(gw, loc, layout, number, options), options)
