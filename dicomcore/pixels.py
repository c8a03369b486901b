"""Where each frame's bytes lie in a stored object (dicomserver.v1.PixelLayout),
found from the header and, for encapsulated pixel data, a scan of the item
headers (8 bytes read per fragment, never a fragment's body)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dicomcore.part10 import ITEM, SEQUENCE_DELIMITER, UNDEFINED, malformed
from dicomcore.status import CANNOT_UNDERSTAND, Rejected

_ITEM_HEADER = struct.Struct("<HHL").unpack_from


@dataclass(frozen=True)
class PixelLayout:
    """Fields as in proto/dicomserver/v1/dicom.proto PixelLayout."""

    value_offset: int  # the Pixel Data value, after its element header
    value_length: int  # native: the value's length; encapsulated: up to the sequence delimiter
    encapsulated: bool
    frame_bits: int = 0  # native: Rows x Columns x Samples per Pixel x Bits Allocated
    bits_allocated: int = 0
    big_endian: bool = False
    # Encapsulated: each fragment's value (offset, length), the Basic Offset
    # Table not included, and each frame's first fragment; a frame runs up to
    # the next frame's first fragment.
    fragment_offsets: tuple[int, ...] = ()
    fragment_lengths: tuple[int, ...] = ()
    frame_first_fragment: tuple[int, ...] = ()

    def frame_ranges(self, index: int, frames: int) -> list[tuple[int, int]]:
        """(offset, length) in the object of the bytes of frame `index` (0-based)
        of `frames`; for native data whose frames are not whole bytes, the
        bytes that hold the frame's bits."""
        if not self.encapsulated:
            first_bit = index * self.frame_bits
            start, end = first_bit // 8, -(-(first_bit + self.frame_bits) // 8)
            return [(self.value_offset + start, end - start)]
        first = self.frame_first_fragment[index]
        last = (
            self.frame_first_fragment[index + 1]
            if index + 1 < len(self.frame_first_fragment)
            else len(self.fragment_offsets)
        )
        return [(self.fragment_offsets[i], self.fragment_lengths[i]) for i in range(first, last)]

    def to_proto(self) -> Any:
        from common.gen.dicomserver.v1 import dicom_pb2

        return dicom_pb2.PixelLayout(
            value_offset=self.value_offset,
            value_length=self.value_length,
            encapsulated=self.encapsulated,
            frame_bits=self.frame_bits,
            bits_allocated=self.bits_allocated,
            big_endian=self.big_endian,
            fragment_offsets=self.fragment_offsets,
            fragment_lengths=self.fragment_lengths,
            frame_first_fragment=self.frame_first_fragment,
        )


@dataclass(frozen=True)
class Items:
    """The items of encapsulated pixel data."""

    headers: list[int]  # offset of each item's header
    lengths: list[int]
    delimiter: int  # offset of the sequence delimiter


def scan_items(read: Callable[[int, int], bytes], start: int, end: int) -> Items:
    """The item headers of encapsulated pixel data whose value starts at
    `start`, in an object of `end` bytes; `read(offset, n)` gives n bytes."""
    headers: list[int] = []
    lengths: list[int] = []
    pos = start
    while True:
        head = read(pos, 8)
        if len(head) < 8:
            raise Rejected(
                CANNOT_UNDERSTAND, "object is truncated: encapsulated pixel data ends without its sequence delimiter"
            )
        group, elem, length = _ITEM_HEADER(head)
        tag = group << 16 | elem
        if tag == SEQUENCE_DELIMITER:
            return Items(headers, lengths, pos)
        if tag != ITEM:
            raise malformed(f"encapsulated pixel data holds ({group:04X},{elem:04X}) where an item belongs")
        if length == UNDEFINED:
            raise malformed("an item of encapsulated pixel data has an undefined length")
        if pos + 8 + length > end:
            raise Rejected(CANNOT_UNDERSTAND, "object is truncated: pixel data ends before its stated length")
        headers.append(pos)
        lengths.append(length)
        pos += 8 + length


def _first_fragments(offsets: list[int], fragment_headers: list[int], base: int) -> list[int] | None:
    """Indexes of the fragments whose item headers lie at base + each offset,
    or None unless every offset names one, in increasing order."""
    where = {h: i for i, h in enumerate(fragment_headers)}
    out: list[int] = []
    for off in offsets:
        i = where.get(base + off)
        if i is None or (out and i <= out[-1]):
            return None
        out.append(i)
    return out if out and out[0] == 0 else None


def frame_first_fragments(
    items: Items, frames: int, read: Callable[[int, int], bytes], eot: bytes | None
) -> list[int] | None:
    """Each frame's first fragment (PS3.5 A.4): from the Extended Offset Table,
    else the Basic Offset Table with one entry per frame, else one fragment
    per frame when the counts agree, else all fragments in the one frame;
    None when the frames cannot be told apart."""
    if frames < 1 or len(items.headers) < 2:
        return None
    bot_header, bot_length = items.headers[0], items.lengths[0]
    fragments = items.headers[1:]
    base = fragments[0]  # offsets count from the first fragment's item header
    if eot is not None and len(eot) == 8 * frames:
        found = _first_fragments(list(struct.unpack(f"<{frames}Q", eot)), fragments, base)
        if found is not None:
            return found
    if bot_length == 4 * frames:
        found = _first_fragments(list(struct.unpack(f"<{frames}L", read(bot_header + 8, bot_length))), fragments, base)
        if found is not None:
            return found
    if len(fragments) == frames:
        return list(range(frames))
    if frames == 1:
        return [0]
    return None


def encapsulated_layout(
    items: Items, value_offset: int, frames: int, read: Callable[[int, int], bytes], eot: bytes | None
) -> PixelLayout | None:
    firsts = frame_first_fragments(items, frames, read, eot)
    if firsts is None:
        return None
    return PixelLayout(
        value_offset=value_offset,
        value_length=items.delimiter - value_offset,
        encapsulated=True,
        fragment_offsets=tuple(h + 8 for h in items.headers[1:]),
        fragment_lengths=tuple(items.lengths[1:]),
        frame_first_fragment=tuple(firsts),
    )
