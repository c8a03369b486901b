"""Stored objects read in place, where storage grants (common.blobs.BlobReader):
a frame through the pixel layout the index recorded at ingest, with one
ranged read; otherwise (objects indexed before layouts were recorded, or
frames to decode) the header through ranged reads, and where each frame's
bytes lie, so frames and bulk data are served without reading (or decoding)
the whole object.

Layouts are cached by object key: a stored object never changes under its key
(storage gives every put a fresh key)."""

from __future__ import annotations

import io
import struct
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from common.blobs import BlobReader
from common.gen.dicomserver.v1 import dicom_pb2

_PIXEL_DATA = 0x7FE00010
PIXEL_DATA_TAG = "7FE00010"
_ITEM = 0xFFFEE000
_SEQ_DELIM = 0xFFFEE0DD
_BLOCK = 64 * 1024


class UnreadableObject(ValueError):
    """The stored object cannot be read as the index says it is."""


class RangedReader(io.RawIOBase):
    """A seekable read-only file over one stored object, read by ranged gets."""

    def __init__(self, reader: BlobReader, key: str, size: int) -> None:
        self._reader, self._key, self._size = reader, key, size
        self._pos = 0
        self.name = "<stored object>"  # pydicom records a file name

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self._size - self._pos)
        if n <= 0:
            return 0
        data = fetch(self._reader, self._key, self._pos, n)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


def fetch(reader: BlobReader, key: str, offset: int, length: int) -> bytes:
    """`length` bytes of an object from `offset` (fewer at its end)."""
    if length <= 0:
        return b""
    return reader.read(key, offset, length)


def open_reader(reader: BlobReader, loc: dicom_pb2.InstanceLocation) -> io.BufferedReader:
    return io.BufferedReader(RangedReader(reader, loc.object_key, loc.size), buffer_size=_BLOCK)


@dataclass(frozen=True)
class Fragment:
    offset: int
    length: int


@dataclass
class Layout:
    """Where the pixel data of one stored object is."""

    header: Dataset  # without pixel data, file meta included
    transfer_syntax: UID
    frames: int
    encapsulated: bool = False
    # Native: the pixel data value.
    value_offset: int = 0
    value_length: int = 0
    # Encapsulated: the fragments of each frame, in order.
    frame_fragments: list[list[Fragment]] = field(default_factory=list)
    # Deflated or otherwise not addressable: frames need the whole object.
    whole_object: bool = False

    @property
    def big_endian(self) -> bool:
        return not self.transfer_syntax.is_little_endian

    def native_frame_bits(self) -> int:
        h = self.header
        return int(h.Rows) * int(h.Columns) * int(h.get("SamplesPerPixel", 1) or 1) * int(h.BitsAllocated)


def _element_header(data: bytes, little: bool, implicit: bool) -> tuple[int, int, int] | None:
    """(tag, value length, header length) of the element at the start of data."""
    if len(data) < 8:
        return None
    e = "<" if little else ">"
    group, elem = struct.unpack(e + "HH", data[:4])
    tag = group << 16 | elem
    if implicit:
        (length,) = struct.unpack(e + "L", data[4:8])
        return tag, length, 8
    vr = data[4:6]
    if vr in (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UN", b"UR", b"UT"):
        if len(data) < 12:
            return None
        (length,) = struct.unpack(e + "L", data[8:12])
        return tag, length, 12
    (length,) = struct.unpack(e + "H", data[6:8])
    return tag, length, 8


def _items(data: bytes, base: int) -> list[Fragment]:
    """The items of encapsulated pixel data in `data` (which starts at object
    offset `base`), up to the sequence delimiter or the end of data."""
    out: list[Fragment] = []
    pos = 0
    while pos + 8 <= len(data):
        tag, length = struct.unpack("<2H", data[pos : pos + 4]), struct.unpack("<L", data[pos + 4 : pos + 8])[0]
        t = tag[0] << 16 | tag[1]
        if t == _SEQ_DELIM:
            break
        if t != _ITEM:
            raise UnreadableObject("encapsulated pixel data has an unexpected element")
        out.append(Fragment(base + pos + 8, length))
        pos += 8 + length
    return out


def read_layout(reader: BlobReader, loc: dicom_pb2.InstanceLocation) -> Layout:
    if loc.transfer_syntax_uid == DeflatedExplicitVRLittleEndian:
        return _whole_object_layout(reader, loc)
    f = open_reader(reader, loc)
    try:
        header = dcmread(f, stop_before_pixels=True)
    except Exception as exc:
        raise UnreadableObject(f"the stored object cannot be parsed ({type(exc).__name__})") from None
    header_end = f.tell()
    ts = UID(loc.transfer_syntax_uid)
    frames = int(header.get("NumberOfFrames", 1) or 1)
    layout = Layout(header, ts, frames)
    head = fetch(reader, loc.object_key, header_end, 12)
    little = ts.is_little_endian if ts.is_transfer_syntax else True
    implicit = ts.is_implicit_VR if ts.is_transfer_syntax else False
    elem = _element_header(head, little, implicit)
    if elem is None or elem[0] != _PIXEL_DATA:
        layout.frames = 0
        return layout
    _tag, length, hlen = elem
    value_offset = header_end + hlen
    if length != 0xFFFFFFFF:
        layout.value_offset, layout.value_length = value_offset, length
        return layout
    layout.encapsulated = True
    layout.frame_fragments = _frame_fragments(reader, loc, header, value_offset, frames)
    return layout


def _frame_fragments(
    reader: BlobReader, loc: dicom_pb2.InstanceLocation, header: Dataset, value_offset: int, frames: int
) -> list[list[Fragment]]:
    key = loc.object_key
    bot_head = fetch(reader, key, value_offset, 8)
    tag = struct.unpack("<2H", bot_head[:4])
    if len(bot_head) < 8 or (tag[0] << 16 | tag[1]) != _ITEM:
        raise UnreadableObject("encapsulated pixel data has no basic offset table item")
    (bot_len,) = struct.unpack("<L", bot_head[4:8])
    first = value_offset + 8 + bot_len
    eot = header.get("ExtendedOffsetTable")
    eot_lengths = header.get("ExtendedOffsetTableLengths")
    if eot is not None and eot_lengths is not None:
        eot_offsets = struct.unpack(f"<{len(eot) // 8}Q", eot)
        lengths = struct.unpack(f"<{len(eot_lengths) // 8}Q", eot_lengths)
        return [[Fragment(first + o + 8, int(n))] for o, n in zip(eot_offsets, lengths, strict=False)]
    if frames == 1:
        # Every fragment belongs to the one frame: read them all at once.
        return [_items(fetch(reader, key, first, loc.size - first), first)]
    if bot_len:
        offsets = list(struct.unpack(f"<{bot_len // 4}L", fetch(reader, key, value_offset + 8, bot_len)))
        if len(offsets) == frames:
            out: list[list[Fragment]] = []
            for i, start in enumerate(offsets):
                end = offsets[i + 1] if i + 1 < frames else loc.size - first
                chunk = fetch(reader, key, first + start, end - start)
                out.append(_items(chunk, first + start))
            return out
    # No usable offset table: walk the item headers; one fragment per frame
    # when their counts agree (PS3.5 A.4 leaves nothing else decidable).
    fragments: list[Fragment] = []
    pos = first
    while pos + 8 <= loc.size:
        item = fetch(reader, key, pos, 8)
        t = struct.unpack("<2H", item[:4])
        if (t[0] << 16 | t[1]) != _ITEM:
            break
        (n,) = struct.unpack("<L", item[4:8])
        fragments.append(Fragment(pos + 8, n))
        pos += 8 + n
    if len(fragments) != frames:
        raise UnreadableObject(
            f"{len(fragments)} fragments for {frames} frames and no offset table: frames cannot be told apart"
        )
    return [[frag] for frag in fragments]


def _whole_object_layout(reader: BlobReader, loc: dicom_pb2.InstanceLocation) -> Layout:
    data = reader.read(loc.object_key)
    try:
        ds = dcmread(io.BytesIO(data), defer_size=None)
    except (Exception, zlib.error) as exc:
        raise UnreadableObject(f"the stored object cannot be parsed ({type(exc).__name__})") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1) if "PixelData" in ds else 0
    layout = Layout(ds, UID(loc.transfer_syntax_uid), frames, whole_object=True)
    return layout


class LayoutCache:
    def __init__(self, reader: BlobReader, size: int = 512) -> None:
        self._reader = reader
        self._size = size
        self._items: OrderedDict[str, Layout] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, loc: dicom_pb2.InstanceLocation) -> Layout:
        with self._lock:
            hit = self._items.get(loc.object_key)
            if hit is not None:
                self._items.move_to_end(loc.object_key)
                return hit
        layout = read_layout(self._reader, loc)
        if layout.whole_object:
            return layout  # holds the whole object: not worth keeping
        with self._lock:
            self._items[loc.object_key] = layout
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return layout


def frame_bytes(reader: BlobReader, loc: dicom_pb2.InstanceLocation, layout: Layout, number: int) -> bytes:
    """Frame `number` (1-based) as stored: native bytes in little endian, or the
    concatenated fragments of a compressed frame."""
    if layout.whole_object:
        raise UnreadableObject("frames of this object are only available decoded")
    if layout.encapsulated:
        frags = layout.frame_fragments[number - 1]
        if len(frags) == 1:
            return fetch(reader, loc.object_key, frags[0].offset, frags[0].length)
        start, end = frags[0].offset, frags[-1].offset + frags[-1].length
        blob = fetch(reader, loc.object_key, start, end - start)
        return b"".join(blob[f.offset - start : f.offset - start + f.length] for f in frags)
    bits = layout.native_frame_bits()
    if bits % 8 == 0:
        size = bits // 8
        data = fetch(reader, loc.object_key, layout.value_offset + (number - 1) * size, size)
        if len(data) < size:
            raise UnreadableObject("pixel data is shorter than its frames")
        return little_endian(data, layout)
    # Packed single-bit frames that do not start on a byte boundary.
    import numpy as np

    first_bit = (number - 1) * bits
    start = first_bit // 8
    raw = fetch(reader, loc.object_key, layout.value_offset + start, (first_bit + bits + 7) // 8 - start)
    unpacked = np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little")
    skip = first_bit - start * 8
    return bytes(np.packbits(unpacked[skip : skip + bits], bitorder="little").tobytes())


def little_endian(data: bytes, layout: Layout) -> bytes:
    if not layout.big_endian:
        return data
    return _swapped(data, int(layout.header.BitsAllocated))


def _swapped(data: bytes, bits_allocated: int) -> bytes:
    width = bits_allocated // 8
    if width <= 1:
        return data
    import numpy as np

    return np.frombuffer(data, dtype=f">u{width}").astype(f"<u{width}").tobytes()


def has_recorded_layout(loc: dicom_pb2.InstanceLocation) -> bool:
    """Whether the index recorded where this object's frames lie."""
    pl = loc.pixel_layout
    return loc.HasField("pixel_layout") and (bool(pl.frame_first_fragment) if pl.encapsulated else pl.frame_bits > 0)


def recorded_frame(reader: BlobReader, loc: dicom_pb2.InstanceLocation, number: int) -> bytes:
    """Frame `number` (1-based) as stored, by the layout recorded at ingest:
    one ranged read. Native frames come in little endian."""
    pl, key = loc.pixel_layout, loc.object_key
    if pl.encapsulated:
        first = pl.frame_first_fragment
        a = first[number - 1]
        b = first[number] if number < len(first) else len(pl.fragment_offsets)
        start = pl.fragment_offsets[a]
        end = pl.fragment_offsets[b - 1] + pl.fragment_lengths[b - 1]
        blob = reader.read(key, start, end - start)
        if len(blob) < end - start:
            raise UnreadableObject("pixel data is shorter than its frames")
        if b - a == 1:
            return blob
        return b"".join(
            blob[o - start : o - start + n]
            for o, n in zip(pl.fragment_offsets[a:b], pl.fragment_lengths[a:b], strict=False)
        )
    bits = pl.frame_bits
    if bits % 8 == 0:
        size = bits // 8
        data = reader.read(key, pl.value_offset + (number - 1) * size, size)
        if len(data) < size:
            raise UnreadableObject("pixel data is shorter than its frames")
        return _swapped(data, pl.bits_allocated) if pl.big_endian else data
    import numpy as np

    first_bit = (number - 1) * bits
    start = first_bit // 8
    raw = reader.read(key, pl.value_offset + start, (first_bit + bits + 7) // 8 - start)
    unpacked = np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little")
    skip = first_bit - start * 8
    return bytes(np.packbits(unpacked[skip : skip + bits], bitorder="little").tobytes())
