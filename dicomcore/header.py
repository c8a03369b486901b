"""One pass over a Part 10 object's header: its DICOM JSON, the attributes the
index needs, and where its frames lie.

    header = read_header(f, size)        # or read_header(data) for bytes
    header.json                          # DICOM JSON, PixelData's BulkDataURI included
    header.json_bytes()                  # the same as strict UTF-8 JSON bytes
    header.text("PatientName")           # text as common.ingest._text gives it
    header.int("Rows")                   # int as common.ingest._int gives it
    header.transfer_syntax, header.frames, header.pixel (a PixelLayout or None)

Objects that cannot be stored as they are raise `Rejected` with a DICOM status
(status.py) and a reason: not DICOM, truncated anywhere (an element, the pixel
data, encapsulated pixel data without its sequence delimiter), or native pixel
data shorter than its frames."""

from __future__ import annotations

import builtins
import functools
import struct
import zlib
from typing import Any, BinaryIO

from dicomcore import dicom_json
from dicomcore.dictionary import tag_for
from dicomcore.part10 import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    PIXEL_DATA,
    UNDEFINED,
    NeedMore,
    Parsed,
    RawElement,
    decode_text,
    parse,
)
from dicomcore.pixels import PixelLayout, encapsulated_layout, scan_items
from dicomcore.status import CANNOT_UNDERSTAND, DATASET_MISMATCH, Rejected

# The first read; a header that does not fit is read on in doubling steps.
FIRST_READ = 64 * 1024
# Encapsulated pixel data ending within this many bytes is read at once
# rather than item header by item header.
_READ_WHOLE_TAIL = 256 * 1024

_ROWS, _COLUMNS, _SAMPLES, _BITS_ALLOCATED, _FRAMES = 0x00280010, 0x00280011, 0x00280002, 0x00280100, 0x00280008
_PHOTOMETRIC = 0x00280004
_EXTENDED_OFFSET_TABLE = 0x7FE00001
_NATIVE = {
    IMPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
}
_FLOAT_PIXEL_VR = {0x7FE00008: "OF", 0x7FE00009: "OD"}


class _Source:
    """The object's bytes: a prefix in memory, the rest read from the file on demand."""

    def __init__(self, buf: bytes, f: BinaryIO | None, size: int) -> None:
        self.buf, self.f, self.size = buf, f, size
        self.tail_start, self.tail = size, b""  # the object's last bytes, once read

    def read(self, offset: int, n: int) -> bytes:
        end = min(offset + n, self.size)
        if end <= len(self.buf) or self.f is None:
            return self.buf[offset:end]
        if offset >= self.tail_start:
            return self.tail[offset - self.tail_start : end - self.tail_start]
        if self.size - offset <= _READ_WHOLE_TAIL:
            self.f.seek(offset)
            self.tail_start, self.tail = offset, _read_fully(self.f, self.size - offset)
            return self.tail[: end - offset]
        self.f.seek(offset)
        return _read_fully(self.f, end - offset)


def _read_fully(f: BinaryIO, n: int) -> bytes:
    parts = []
    while n > 0:
        part = f.read(n)
        if not part:
            break
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


@functools.lru_cache(maxsize=64)
def _is_compressed(ts: str) -> bool:
    """pydicom's UID(ts).is_transfer_syntax and UID(ts).is_compressed."""
    from pydicom.uid import UID

    uid = UID(ts)
    return bool(uid.is_transfer_syntax and uid.is_compressed)


class Header:
    """What one pass over an object's header found."""

    __slots__ = ("json", "transfer_syntax", "frames", "pixel", "size", "_parsed", "_top")

    def __init__(
        self,
        parsed: Parsed,
        attrs: dict[str, Any],
        frames: int,
        pixel: PixelLayout | None,
        size: int,
        top: dict[int, RawElement],
    ) -> None:
        self.json = attrs  # DICOM JSON of the header (PS3.18 F.2)
        self.transfer_syntax = parsed.transfer_syntax
        self.frames = frames  # NumberOfFrames, else 1 with pixel data (or Rows), else 0
        self.pixel = pixel  # where the frames lie; None without pixel data, deflated, or undecidable
        self.size = size
        self._parsed = parsed
        self._top = top  # the top-level elements by tag

    def json_bytes(self) -> bytes:
        return dicom_json.dumps(self.json)

    def _element(self, key: str | builtins.int) -> RawElement | None:
        return self._top.get(tag_for(key))

    def text(self, key: str | builtins.int) -> str:
        """A top-level attribute's text (keyword, 8 hex digits or int tag):
        values joined with a backslash, decoded with the Specific Character
        Set and stripped as pydicom strips them (common.ingest._text); "" when
        absent or empty. KeyError for a keyword DICOM does not have."""
        e = self._element(key)
        if e is None or not e.length or e.items is not None:
            return ""
        return _text(e, self._parsed)

    def int(self, key: str | builtins.int) -> builtins.int:
        """A top-level attribute's single value as an int, 0 when absent,
        empty, multi-valued or not a number."""
        e = self._element(key)
        if e is None:
            return 0
        return _int(e, self._parsed)


def _raw(e: RawElement, parsed: Parsed) -> bytes:
    return parsed.buf[e.start : e.start + e.length]


def _text(e: RawElement, parsed: Parsed) -> str:
    vr, raw = e.vr, _raw(e, parsed)
    if vr in ("LO", "SH", "UC", "LT", "ST", "UT"):
        text = decode_text(raw, parsed.dataset.encodings)
        if vr in ("LT", "ST", "UT"):
            return text.rstrip("\x00 ")
        return "\\".join(v.rstrip("\x00 ") for v in text.split("\\"))
    if vr == "PN":
        text = decode_text(raw.rstrip(b"\x00 "), parsed.dataset.encodings)
        return "\\".join(v.rstrip("=") for v in text.split("\\"))
    if vr in ("IS", "DS"):
        text = raw.decode("latin-1")
        items = (text.strip() if vr == "DS" else text).rstrip(" \x00").split("\\")
        if all(_number(i) is not None or not i.strip() for i in items):
            return "\\".join(i.strip() for i in items)
        return "\\".join(i.rstrip("\x00 ") for i in decode_text(raw, parsed.dataset.encodings).split("\\"))
    if vr == "AE":
        return "\\".join(v.strip() for v in raw.decode("latin-1").split("\\"))
    if vr in dicom_json.NUMBER_FORMATS:
        values = dicom_json.number_values(vr, parsed.buf, e.start, e.length, parsed.little_endian)
        return "\\".join(str(v) for v in values) if values else ""
    if vr in ("AS", "CS", "DA", "DT", "TM", "UI", "UR"):
        return raw.decode("latin-1").rstrip(" \x00") if vr != "UR" else raw.decode("latin-1").rstrip()
    return ""


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _int(e: RawElement, parsed: Parsed) -> int:
    if not e.length:
        return 0
    vr = e.vr
    if vr == "US or SS":
        vr = "US"
    if vr in dicom_json.NUMBER_FORMATS:
        values = dicom_json.number_values(vr, parsed.buf, e.start, e.length, parsed.little_endian)
        if not values or len(values) != 1 or isinstance(values[0], str):
            return 0
        return int(values[0])
    if e.items is not None:
        return 0
    text = _text(e, parsed)
    if "\\" in text:
        return 0
    try:
        return int(text)
    except ValueError:
        number = _number(text) if vr in ("IS", "DS") else None
        if number is None or number != number or number in (float("inf"), float("-inf")):
            return 0
        return int(number)


def _top_int(parsed: Parsed, top: dict[int, RawElement], tag: int) -> int:
    e = top.get(tag)
    return _int(e, parsed) if e is not None else 0


def _pixel_json(parsed: Parsed, top: dict[int, RawElement]) -> tuple[str, dict[str, Any]]:
    """The entry the index lists for pixel data read without its value (as
    common.ingest.build_record adds it)."""
    tag = parsed.pixel.tag if parsed.pixel is not None else PIXEL_DATA
    if tag in _FLOAT_PIXEL_VR:
        return f"{tag:08X}", {"vr": _FLOAT_PIXEL_VR[tag], "BulkDataURI": f"bulkdata/{tag:08X}"}
    if _is_compressed(parsed.transfer_syntax) or _top_int(parsed, top, _BITS_ALLOCATED) <= 8:
        vr = "OB"
    else:
        vr = "OW"
    return "7FE00010", {"vr": vr, "BulkDataURI": "bulkdata/7FE00010"}


def _layout(parsed: Parsed, top: dict[int, RawElement], frames: int, source: _Source) -> PixelLayout | None:
    """Checks the pixel data and says where its frames lie."""
    pixel = parsed.pixel
    if pixel is None:
        return None
    end = parsed.end
    if parsed.deflated:  # positions in the inflated stream are not positions in the object
        source = _Source(parsed.buf, None, end)
    if pixel.length == UNDEFINED:
        items = scan_items(source.read, pixel.start, end)
        if parsed.deflated:
            return None
        eot = top.get(_EXTENDED_OFFSET_TABLE)
        return encapsulated_layout(items, pixel.start, frames, source.read, _raw(eot, parsed) if eot else None)
    if pixel.start + pixel.length > end:
        raise Rejected(CANNOT_UNDERSTAND, "object is truncated: pixel data ends before its stated length")
    if parsed.transfer_syntax not in _NATIVE and _is_compressed(parsed.transfer_syntax):
        return None  # compressed, yet not encapsulated: nothing says where frames lie
    rows, columns = _top_int(parsed, top, _ROWS), _top_int(parsed, top, _COLUMNS)
    samples = _top_int(parsed, top, _SAMPLES) or 1
    bits = _top_int(parsed, top, _BITS_ALLOCATED)
    frame_bits = rows * columns * samples * bits
    photometric = top.get(_PHOTOMETRIC)
    if photometric is not None and _text(photometric, parsed) == "YBR_FULL_422":
        frame_bits = frame_bits // 3 * 2  # PS3.3 C.7.6.3.1.2: two samples a pixel as stored
    if pixel.length < -(-frame_bits * frames // 8):
        raise Rejected(
            DATASET_MISMATCH,
            "pixel data is shorter than Rows x Columns x Samples per Pixel x Bits Allocated x Number of Frames",
        )
    if parsed.deflated or frame_bits == 0:
        return None
    return PixelLayout(
        value_offset=pixel.start,
        value_length=pixel.length,
        encapsulated=False,
        frame_bits=frame_bits,
        bits_allocated=bits,
        big_endian=not parsed.little_endian,
    )


def read_header(source: BinaryIO | bytes | bytearray | memoryview, size: int | None = None) -> Header:
    """Reads one Part 10 object's header from a seekable binary file of `size`
    bytes (the file's end when None), or from its bytes. Reads the header and
    the pixel data's item headers, never pixel values.

    Raises Rejected for an object that cannot be stored as it is."""
    f: BinaryIO | None
    if isinstance(source, bytes | bytearray | memoryview):
        buf, f = bytes(source), None
        size = len(buf)
    else:
        f = source
        if size is None:
            size = f.seek(0, 2)
        f.seek(0)
        buf = _read_fully(f, min(size, FIRST_READ))
        if len(buf) < min(size, FIRST_READ):
            size = len(buf)  # the file is shorter than said
    try:
        while True:
            try:
                parsed = parse(buf, size)
                break
            except NeedMore as more:
                if f is None or len(buf) >= size:  # parse asks only for bytes not yet read
                    raise
                want = min(size, max(more.end, 2 * len(buf)))
                f.seek(len(buf))
                extra = _read_fully(f, want - len(buf))
                buf += extra
                if len(buf) < want:
                    size = len(buf)
        top = {e.tag: e for e in parsed.dataset.elements}
        attrs = dicom_json.dataset_json(parsed.dataset, parsed.buf, parsed.little_endian)
        frames = _top_int(parsed, top, _FRAMES)
        if frames <= 0:
            frames = 1 if parsed.pixel is not None or _ROWS in top else 0
        pixel = _layout(parsed, top, frames, _Source(buf, f, size))
        if frames:
            key, entry = _pixel_json(parsed, top)
            attrs[key] = entry
    except (
        struct.error,
        LookupError,
        ValueError,
        TypeError,
        AttributeError,
        OverflowError,
        RecursionError,
        zlib.error,
    ) as exc:
        # Every check above has its own reason; this is a last line of defence
        # (tests/dicomcore fail on any refusal that reaches it).
        raise Rejected(CANNOT_UNDERSTAND, f"not a readable DICOM object (internal: {type(exc).__name__})") from None
    return Header(parsed, attrs, frames, pixel, size, top)
