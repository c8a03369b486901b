"""The Part 10 layer: a DICOM file's bytes walked once, without pydicom.

`parse(buf, total)` reads the preamble, the file meta information and the
dataset in its transfer syntax (implicit VR LE, explicit VR LE or BE, deflated
explicit VR LE, any encapsulated syntax) into `RawDataset`s: per element its
tag, its VR, where its value lies in the buffer, and for a sequence its items.
Values are not converted here (dicom_json does that). The walk stops at the
top-level Pixel Data (or Float / Double Float Pixel Data) and records where
its value starts; it never reads pixel values.

Lengths are never trusted: an element whose value runs past the end of the
data is refused, and so is anything that is not DICOM; no IndexError or
struct.error escapes. What pydicom reads leniently is read the same way here
(a VR that switches to implicit inside an explicit dataset, items in implicit
VR inside an explicit sequence, UN of undefined length read as a sequence), so
that the elements found are the elements pydicom finds.

`parse` works on a prefix of the file: when it needs bytes beyond the buffer
it raises `NeedMore` with the offset it needs, and the caller reads on and
parses again (header.read_header does this)."""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

from pydicom.charset import convert_encodings
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32
from pydicom.valuerep import VR as _VR

from dicomcore import dictionary
from dicomcore.status import CANNOT_UNDERSTAND, TRUNCATED, Rejected

ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
CHARSET = 0x00080005
UNDEFINED = 0xFFFFFFFF

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"

# Deeper nesting than this is refused rather than recursed into.
MAX_DEPTH = 64

# Two-byte VR codes pydicom knows: (VR, whether a 4-byte length follows).
_KNOWN_VRS: dict[bytes, tuple[str, bool]] = {
    str(vr).encode(): (str(vr), vr in EXPLICIT_VR_LENGTH_32) for vr in _VR if len(str(vr)) == 2
}
# The same, split: VRs with a 2-byte length, VRs with a 4-byte length.
_SHORT_VRS = {code: vr for code, (vr, long) in _KNOWN_VRS.items() if not long}
_LONG_VRS = {code: vr for code, (vr, long) in _KNOWN_VRS.items() if long}
_DEFAULT_ENCODINGS = ["iso8859"]


class NeedMore(Exception):
    """The parse needs the file's bytes up to `end` (it had fewer)."""

    def __init__(self, end: int) -> None:
        super().__init__(end)
        self.end = end


class RawElement(NamedTuple):
    tag: int
    vr: str  # as in the object, or as pydicom's dictionaries give it; may be ambiguous ("US or SS")
    start: int  # the value's offset in the buffer
    length: int  # the value's length (measured, for an undefined length)
    items: list[RawDataset] | None  # a sequence's items, else None
    undefined: bool  # the length was undefined (FFFFFFFF)


class RawDataset:
    """One dataset (the top level or a sequence item), its elements in the
    order of the object."""

    __slots__ = ("elements", "implicit", "encodings")

    def __init__(self, elements: list[RawElement], implicit: bool, encodings: list[str]) -> None:
        self.elements = elements
        self.implicit = implicit  # its elements carry no VR
        self.encodings = encodings  # Python codecs of its Specific Character Set (inherited if absent)


class PixelElement(NamedTuple):
    tag: int  # 7FE00010, 7FE00008 or 7FE00009
    vr: str | None  # None when the dataset is implicit VR
    start: int  # the value's offset in the dataset stream
    length: int  # FFFFFFFF when encapsulated


class Parsed(NamedTuple):
    transfer_syntax: str
    dataset: RawDataset
    buf: bytes  # the dataset stream: the file, or the inflated dataset of a deflated one
    little_endian: bool
    deflated: bool
    pixel: PixelElement | None
    end: int  # where the dataset stream ends (the file size, or the inflated length)


def malformed(what: str) -> Rejected:
    return Rejected(CANNOT_UNDERSTAND, f"not a readable DICOM object: {what}")


_encodings_cache: dict[bytes, list[str]] = {}


def encodings_of(raw: bytes) -> list[str]:
    """Python codecs for a Specific Character Set value, as pydicom converts it."""
    try:
        return _encodings_cache[raw]
    except KeyError:
        pass
    values = raw.decode("latin-1").rstrip(" \x00").split("\\")
    try:
        found = convert_encodings(values[0] if len(values) == 1 else values)
    except (LookupError, ValueError):  # strict mode only; or a NUL in the name
        found = list(_DEFAULT_ENCODINGS)
    if len(_encodings_cache) < 1000:
        _encodings_cache[raw] = found
    return found


def decode_text(raw: bytes, encodings: list[str]) -> str:
    """Text of SH, LO, ST, LT, UT, PN, UC as pydicom.charset.decode_bytes gives
    it in lenient mode (replacement characters where bytes do not decode)."""
    if raw.isascii() and b"\x1b" not in raw:
        return raw.decode("ascii")
    from pydicom.charset import decode_bytes
    from pydicom.valuerep import TEXT_VR_DELIMS

    try:
        return decode_bytes(raw, encodings, TEXT_VR_DELIMS)
    except (UnicodeError, LookupError):  # only when pydicom is set to strict reading
        try:
            return raw.decode(encodings[0], errors="replace")
        except LookupError:
            return raw.decode("latin-1")


_STRUCTS = {
    little: (
        struct.Struct(e + "HHL").unpack_from,
        struct.Struct(e + "HH2sH").unpack_from,
        struct.Struct(e + "L").unpack_from,
        struct.pack(e + "HH", 0xFFFE, 0xE0DD),
    )
    for little, e in ((True, "<"), (False, ">"))
}
_new_tuple = tuple.__new__


class _Walker:
    def __init__(self, buf: bytes, total: int, little: bool) -> None:
        self.buf = buf
        self.n = len(buf)
        self.total = total  # the stream's full length; buf may hold only a prefix
        self.little = little
        self.tag_length, self.explicit, self.u32, self.delimiter_bytes = _STRUCTS[little]
        self.pixel: PixelElement | None = None

    def need(self, end: int) -> None:
        """Called when bytes up to `end` are not in the buffer."""
        if self.n < self.total:
            raise NeedMore(end)
        raise Rejected(CANNOT_UNDERSTAND, TRUNCATED)

    def looks_implicit(self, pos: int, assumed: bool) -> bool:
        """pydicom's test (filereader._is_implicit_vr): the first element's VR
        bytes are not two capital letters."""
        if pos + 6 > self.n:
            if self.n < self.total:
                raise NeedMore(pos + 6)
            return assumed
        a, b = self.buf[pos + 4], self.buf[pos + 5]
        return not (0x40 < a < 0x5B and 0x40 < b < 0x5B)

    def creator(self, creators: dict[int, tuple[int, int]] | None, tag: int, encodings: list[str]) -> str | None:
        """The private creator of a private data element, as text."""
        if not creators:
            return None
        where = creators.get((tag & 0xFFFF0000) | ((tag >> 8) & 0xFF))
        if where is None:
            return None
        start, length = where
        values = decode_text(self.buf[start : start + length], encodings).split("\\")
        if len(values) != 1:
            return None  # pydicom cannot look a multi-valued creator up either
        return values[0].rstrip("\x00 ")

    def dataset(
        self, pos: int, end: int | None, implicit: bool, encodings: list[str], depth: int, top: bool
    ) -> tuple[RawDataset, int]:
        """The elements from `pos` up to `end` (None: up to an item delimiter)."""
        buf, n = self.buf, self.n
        tag_length, explicit, u32 = self.tag_length, self.explicit, self.u32
        short_vrs, long_vrs = _SHORT_VRS, _LONG_VRS
        new, element = _new_tuple, RawElement
        elements: list[RawElement] = []
        append = elements.append
        ds = RawDataset(elements, implicit, encodings)
        creators: dict[int, tuple[int, int]] | None = None
        stop = self.total if end is None else end
        while pos < stop:
            if pos + 8 > n:
                self.need(pos + 8)
            if implicit:
                group, elem, length = tag_length(buf, pos)
                vr = None
                start = pos + 8
            else:
                group, elem, code, length = explicit(buf, pos)
                vr = short_vrs.get(code)
                if vr is not None:
                    start = pos + 8
                elif code in long_vrs:
                    vr = long_vrs[code]
                    if pos + 12 > n:
                        self.need(pos + 12)
                    length = u32(buf, pos + 8)[0]
                    start = pos + 12
                elif b"AA" <= code <= b"ZZ":
                    vr = code.decode("latin-1")  # a VR pydicom does not know: 2-byte length
                    start = pos + 8
                else:  # no VR here: this element is implicit VR (pydicom reads it so too)
                    vr = None
                    length = u32(buf, pos + 4)[0]
                    start = pos + 8
            if group >= 0x7FE0:
                tag = group << 16 | elem
                if tag == 0xFFFEE00D:  # item delimiter
                    if top:
                        raise malformed("an item delimiter outside any sequence")
                    return ds, pos + 8
                if top and tag in PIXEL_TAGS:
                    self.pixel = PixelElement(tag, vr, start, length)
                    return ds, pos
            if length == 0xFFFFFFFF:
                pos = self.undefined_element(ds, group << 16 | elem, vr, start, implicit, encodings, depth, creators)
                if end is not None and pos > end:
                    raise malformed("an element runs past the end of its item")
                continue
            value_end = start + length
            if value_end > n:
                self.need(value_end)
            if value_end > stop:
                if top:
                    raise Rejected(CANNOT_UNDERSTAND, TRUNCATED)
                raise malformed("an element runs past the end of its item")
            if vr is None:
                tag = group << 16 | elem
                vr = dictionary.implicit_vr(tag, self.creator(creators, tag, encodings) if group & 1 else None)
            elif vr == "UN":
                tag = group << 16 | elem
                if group & 1:
                    vr = dictionary.private_vr(tag, self.creator(creators, tag, encodings))
                elif length < 0xFFFF:
                    vr = dictionary.public_vr(tag) or "UN"
            if vr == "SQ":
                items = self.sequence(start, value_end, implicit, encodings, depth)[0] if length else []
                append(new(element, (group << 16 | elem, vr, start, length, items, False)))
            else:
                append(new(element, (group << 16 | elem, vr, start, length, None, False)))
                if group & 1:
                    if 0x10 <= elem <= 0xFF:
                        if creators is None:
                            creators = {}
                        creators[group << 16 | elem] = (start, length)
                elif group == 8 and elem == 5:
                    encodings = ds.encodings = encodings_of(buf[start:value_end])
            pos = value_end
        if end is None and pos >= stop:  # an item of undefined length with no delimiter
            self.need(pos + 8)
        return ds, pos

    def undefined_element(
        self,
        ds: RawDataset,
        tag: int,
        vr: str | None,
        start: int,
        implicit: bool,
        encodings: list[str],
        depth: int,
        creators: dict[int, tuple[int, int]] | None,
    ) -> int:
        """Adds an element of undefined length to `ds`; returns where the next one starts."""
        if vr == "UN":
            vr = "SQ"  # PS3.5 6.2.2: UN of undefined length is a sequence in implicit VR
        elif vr is None:
            vr = dictionary.public_vr(tag)
            if vr is None:  # unknown: a sequence if an item follows
                if start + 4 > self.n:
                    self.need(start + 4)
                g, e = struct.unpack_from("<HH" if self.little else ">HH", self.buf, start)
                if (g << 16 | e) == ITEM:
                    vr = "SQ"
        if vr == "SQ":
            items, pos = self.sequence(start, None, implicit, encodings, depth)
            ds.elements.append(RawElement(tag, "SQ", start, pos - start, items, True))
            return pos
        length, pos = self.undefined_value(start)
        if vr is None:
            vr = dictionary.implicit_vr(tag, self.creator(creators, tag, encodings))
        ds.elements.append(RawElement(tag, vr, start, length, None, True))
        return pos

    def sequence(
        self, pos: int, end: int | None, implicit: bool, encodings: list[str], depth: int
    ) -> tuple[list[RawDataset], int]:
        """The items from `pos` up to `end` (None: up to a sequence delimiter)."""
        if depth >= MAX_DEPTH:
            raise malformed("sequences nested too deeply")
        items: list[RawDataset] = []
        tag_length = self.tag_length
        while end is None or pos < end:
            if pos + 8 > self.n:
                self.need(pos + 8)
            group, elem, length = tag_length(self.buf, pos)
            tag = group << 16 | elem
            pos += 8
            if tag == SEQUENCE_DELIMITER:
                return items, (pos if end is None else end)
            if tag != ITEM:
                raise malformed(f"a sequence holds ({group:04X},{elem:04X}) where an item belongs")
            item_end = None if length == UNDEFINED else pos + length
            if item_end is not None:
                if end is not None and item_end > end:
                    raise malformed("an item runs past the end of its sequence")
                if item_end > self.n:
                    self.need(item_end)
            # Items of an explicit VR sequence may be implicit VR (pydicom checks each).
            item_implicit = implicit or self.looks_implicit(pos, False)
            item, pos = self.dataset(pos, item_end, item_implicit, encodings, depth + 1, False)
            items.append(item)
        if end is not None and pos != end:
            raise malformed("an item runs past the end of its sequence")
        return items, pos

    def undefined_value(self, start: int) -> tuple[int, int]:
        """An element of undefined length that is not a sequence (say,
        encapsulated pixel data inside an icon): its length and where the next
        element starts. Walks its items; when it has none, looks for the
        sequence delimiter as pydicom does."""
        pos = start
        tag_length = self.tag_length
        while pos + 8 <= self.n:
            group, elem, length = tag_length(self.buf, pos)
            tag = group << 16 | elem
            if tag == SEQUENCE_DELIMITER:
                return pos - start, pos + 8
            if tag != ITEM or length == UNDEFINED:
                break
            pos += 8 + length
        else:
            if self.n < self.total:
                raise NeedMore(max(pos + 8, self.n + 1))
        found = self.buf.find(self.delimiter_bytes, start)
        if found < 0 or found + 8 > self.n:
            self.need(self.n + 1)
            raise Rejected(CANNOT_UNDERSTAND, TRUNCATED)  # need() raised already
        return found - start, found + 8


def _transfer_syntax_of(buf: bytes, total: int) -> tuple[str, int]:
    """The Transfer Syntax UID from the file meta information, and where the
    dataset starts (after group 0002)."""
    n = len(buf)
    if total < 132 or buf[128:132] != b"DICM":
        if n < 132 and n < total:
            raise NeedMore(132)
        raise Rejected(CANNOT_UNDERSTAND, "not a DICOM Part 10 object: no 'DICM' prefix after the 128-byte preamble")
    walker = _Walker(buf, total, little=True)
    pos = 132
    implicit = walker.looks_implicit(pos, False)  # pydicom reads implicit file meta too
    ts: str | None = None
    while pos < total:
        if pos + 8 > n:
            walker.need(pos + 8)
        group, elem, code, length = walker.explicit(buf, pos)
        if group != 2:
            break
        found = _KNOWN_VRS.get(code)
        if implicit or (found is None and not b"AA" <= code <= b"ZZ"):
            length = walker.u32(buf, pos + 4)[0]
            start = pos + 8
        elif found is not None and found[1]:
            if pos + 12 > n:
                walker.need(pos + 12)
            length = walker.u32(buf, pos + 8)[0]
            start = pos + 12
        else:
            start = pos + 8
        if length == UNDEFINED:
            raise malformed("an element of undefined length in the file meta information")
        if start + length > n:
            walker.need(start + length)
        if elem == 0x0010:
            ts = buf[start : start + length].decode("latin-1").rstrip("\x00 ")
        pos = start + length
    if not ts:
        raise Rejected(CANNOT_UNDERSTAND, "file meta information has no Transfer Syntax UID")
    return ts, pos


# A deflated data set is inflated in memory: a few kilobytes can inflate to
# gigabytes (a zip bomb), so the inflated size is capped.
MAX_INFLATED = 256 * 1024 * 1024


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, MAX_INFLATED + 1)
    except zlib.error:
        out = b""  # and inflater.eof stays False
    if len(out) > MAX_INFLATED:
        raise Rejected(CANNOT_UNDERSTAND, f"the deflated dataset inflates to more than {MAX_INFLATED >> 20} MiB")
    if not inflater.eof:
        raise Rejected(CANNOT_UNDERSTAND, "the deflated dataset cannot be inflated (truncated or corrupt)")
    return out


def parse(buf: bytes, total: int) -> Parsed:
    """Walks the object whose first len(buf) bytes are `buf` (of `total`).

    Raises NeedMore when it needs more of the file, Rejected when the object
    is not one it can read."""
    ts, start = _transfer_syntax_of(buf, total)
    little, implicit, deflated = True, False, False
    if ts == IMPLICIT_VR_LITTLE_ENDIAN:
        implicit = True
    elif ts == EXPLICIT_VR_BIG_ENDIAN:
        little = False
    elif ts == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        deflated = True
        if len(buf) < total:
            raise NeedMore(total)
        buf = _inflate(buf[start:total])
        total, start = len(buf), 0
    walker = _Walker(buf, total, little)
    if start < total:
        implicit = walker.looks_implicit(start, implicit)  # pydicom trusts the first element over the syntax
    ds, _ = walker.dataset(start, total, implicit, _DEFAULT_ENCODINGS, 0, True)
    return Parsed(ts, ds, buf, little, deflated, walker.pixel, total)
