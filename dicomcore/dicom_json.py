"""DICOM JSON (PS3.18 F.2) from the elements part10 found, in one pass.

The result equals what dicomcore.dataset_json.dataset_to_json makes of the
pydicom dataset of the same object, value for value: the same VRs (for
implicit VR from pydicom's dictionaries, ambiguous ones resolved by its rules
in pydicom.filewriter.correct_ambiguous_vr_element), the same text (decoded
with the dataset's Specific Character Set, stripped as pydicom strips it),
the same numbers, InlineBinary up to 768 bytes and BulkDataURIs beyond, with
nested paths ("bulkdata/00880200/0/7FE00010").

Where it differs, it keeps what pydicom in strict mode refuses: the reference
leaves out a whole top-level element when any value in it does not validate
(a UID with a leading-zero component, a bad date, an over-long value, a
character outside the character set); here values are written as they were
sent. Three cases have no faithful JSON form and are written as follows:

- IS or DS text that is not a number (as PS3.5 defines IS and DS) is written
  as a JSON string of its text, spaces stripped; an empty value among several
  is null (PS3.18 F.2.5). JSON numbers are never invented from text.
- A binary number value (FL, FD, SL, SS, SV, UL, US, UV) whose length is not
  a multiple of its size is written as UN with its bytes, as pydicom does
  with config.convert_wrong_length_to_UN.
- An ambiguous VR pydicom leaves unresolved ("OB or OW" for curve or audio
  data, "US or SS or OW") is written as OW, the only form implicit VR allows,
  and "US or SS" of tags pydicom has no rule for is resolved by Pixel
  Representation like the others.

Bytes: `dumps` writes strict UTF-8 JSON with orjson (lone surrogates, which
orjson refuses, become '?', as dicomcore.dataset_json.dumps makes them)."""

from __future__ import annotations

import base64
import json
import math
import re
import struct
from typing import Any

import orjson

from dicomcore.part10 import RawDataset, RawElement, decode_text

BULK_THRESHOLD = 1024
# pydicom compares the base64 size with the threshold: (1024 // 4) * 3 raw bytes.
_INLINE_MAX = (BULK_THRESHOLD // 4) * 3

PIXEL_DATA = 0x7FE00010
_PIXEL_REPRESENTATION = 0x00280103
_BITS_ALLOCATED = 0x00280100
_WAVEFORM_BITS_ALLOCATED = 0x5400100C
_LUT_DESCRIPTOR = 0x00283002
_LUT_DATA = 0x00283006

# pydicom.filewriter's tables of ambiguous VRs it resolves.
_US_SS_TAGS = frozenset(
    {
        0x00189810,
        0x00221452,
        0x00280104,
        0x00280105,
        0x00280106,
        0x00280107,
        0x00280108,
        0x00280109,
        0x00280110,
        0x00280111,
        0x00280120,
        0x00280121,
        0x00281101,
        0x00281102,
        0x00281103,
        0x00283002,
        0x00409211,
        0x00409216,
        0x00603004,
        0x00603006,
    }
)
_WAVEFORM_OB_OW_TAGS = frozenset({0x54000110, 0x54000112, 0x5400100A, 0x54001010})
_OVERLAY_DATA_TAGS = frozenset(g << 16 | 0x3000 for g in range(0x6000, 0x601F, 2))
_LUT_DESCRIPTOR_TAGS = frozenset({0x00281101, 0x00281102, 0x00281103, 0x00283002})

# PS3.5 Table 6.2-1, as pydicom checks them (valuerep.VR_REGEXES), less the length limits.
_IS_TEXT = re.compile(r" *[+\-]?[0-9]+ *\Z")
_DS_TEXT = re.compile(r" *[+\-]?([0-9]+|[0-9]+\.[0-9]*|\.[0-9]+)([eE][+\-]?[0-9]+)? *\Z")
_IS_VALUES = re.compile(r" *[+\-]?[0-9]+ *(\\ *[+\-]?[0-9]+ *)*\Z")
_DS_NUMBER = r" *[+\-]?([0-9]+|[0-9]+\.[0-9]*|\.[0-9]+)([eE][+\-]?[0-9]+)? *"
_DS_VALUES = re.compile(f"{_DS_NUMBER}(\\\\{_DS_NUMBER})*\\Z")
_NON_FINITE = {"nan": "NaN", "inf": "inf", "-inf": "-inf"}
_INFINITIES = (math.inf, -math.inf)
_INT64 = 1 << 63

# How each VR's value becomes JSON.
(_STR, _UI, _TEXT, _TEXT1, _PN, _IS, _DS, _NUM, _BIN, _AT, _AE, _UR, _AMBIGUOUS) = range(13)
_KIND = {
    "AS": _STR,
    "CS": _STR,
    "DA": _STR,
    "DT": _STR,
    "TM": _STR,
    "UI": _UI,
    "LO": _TEXT,
    "SH": _TEXT,
    "UC": _TEXT,
    "LT": _TEXT1,
    "ST": _TEXT1,
    "UT": _TEXT1,
    "PN": _PN,
    "IS": _IS,
    "DS": _DS,
    "FL": _NUM,
    "FD": _NUM,
    "SL": _NUM,
    "SS": _NUM,
    "SV": _NUM,
    "UL": _NUM,
    "US": _NUM,
    "UV": _NUM,
    "OB": _BIN,
    "OD": _BIN,
    "OF": _BIN,
    "OL": _BIN,
    "OV": _BIN,
    "OW": _BIN,
    "UN": _BIN,
    "AT": _AT,
    "AE": _AE,
    "UR": _UR,
    "US or SS": _AMBIGUOUS,
    "OB or OW": _AMBIGUOUS,
    "US or OW": _AMBIGUOUS,
    "US or SS or OW": _AMBIGUOUS,
}
NUMBER_FORMATS = {"FL": "f", "FD": "d", "SL": "l", "SS": "h", "SV": "q", "UL": "L", "US": "H", "UV": "Q"}
_NUMBER_SIZE = {vr: struct.calcsize("<" + f) for vr, f in NUMBER_FORMATS.items()}
_FLOAT_VRS = frozenset({"FL", "FD"})
# unpack_from by endianness, VR and value length (None: the length does not fit).
_unpackers: dict[bool, dict[str, dict[int, Any]]] = {
    True: {vr: {} for vr in NUMBER_FORMATS},
    False: {vr: {} for vr in NUMBER_FORMATS},
}

_keys: dict[int, str] = {}


def _key(tag: int) -> str:
    key = _keys.get(tag)
    if key is None:
        key = f"{tag:08X}"
        if len(_keys) < 100_000:
            _keys[tag] = key
    return key


def _unpacker(vr: str, length: int, little: bool) -> Any:
    """struct's unpack_from for `length` bytes of a number VR, None when the length does not fit."""
    table = _unpackers[little][vr]
    u = table.get(length, False)
    if u is False:
        count, rest = divmod(length, _NUMBER_SIZE[vr])
        u = None if rest else struct.Struct(f"{'<' if little else '>'}{count}{NUMBER_FORMATS[vr]}").unpack_from
        if len(table) < 512:
            table[length] = u
    return u


def number_values(vr: str, buf: bytes, start: int, length: int, little: bool) -> list[Any] | None:
    """The values of a binary number VR, or None when the length does not fit."""
    u = _unpacker(vr, length, little)
    if u is None:
        return None
    values = list(u(buf, start))
    if vr in _FLOAT_VRS and not all(map(math.isfinite, values)):
        values = [v if math.isfinite(v) else _NON_FINITE[repr(v)] for v in values]
    return values


def _binary(vr: str, raw: bytes, uri: str) -> dict[str, Any]:
    if len(raw) > _INLINE_MAX:
        return {"vr": vr, "BulkDataURI": uri}
    return {"vr": vr, "InlineBinary": base64.b64encode(raw).decode("ascii")}


def _is_value(text: str) -> Any:
    if _IS_TEXT.match(text):
        v = int(text)
        return v if -_INT64 <= v < _INT64 else text.strip(" ")
    if not text.strip(" "):
        return None
    # Not an integer string: kept as its text (a JSON number would be invented).
    return text.strip(" ")


def _ds_value(text: str) -> Any:
    if _DS_TEXT.match(text):
        v = float(text)
        return v if math.isfinite(v) else _NON_FINITE[repr(v)]
    if not text.strip(" "):
        return None
    # Not a decimal string: kept as its text (a JSON number would be invented).
    return text.strip(" ")


def _person_names(text: str) -> list[Any] | None:
    values = text.split("\\")
    out: list[Any] = []
    for v in values:
        groups = v.split("=")
        while groups and not groups[-1]:
            groups.pop()
        out.append(dict(zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False)) if groups else None)
    if len(out) == 1 and out[0] is None:
        return None
    return out


class _Context:
    """What the ambiguous VRs of one dataset are resolved with (looked up only
    when the dataset has one)."""

    def __init__(self, ds: RawDataset, buf: bytes, little: bool, inherited_rep: Any) -> None:
        self.ds, self.buf, self.little, self.inherited_rep = ds, buf, little, inherited_rep

    def element(self, tag: int) -> RawElement | None:
        found = None
        for e in self.ds.elements:
            if e.tag == tag:
                found = e  # the last one, as pydicom keeps it
        return found

    def value(self, tag: int) -> Any:
        """The element's value as pydicom converts it (a number, a list of numbers), or None."""
        e = self.element(tag)
        if e is None or not e.length:
            return None
        vr = e.vr
        if vr == "US or SS":
            vr = "US" if self.pixel_rep() == 0 else "SS"
        if vr in NUMBER_FORMATS:
            values = number_values(vr, self.buf, e.start, e.length, self.little)
            if values is None:
                return None
            return values[0] if len(values) == 1 else values
        if vr == "IS":
            text = self.buf[e.start : e.start + e.length].decode("latin-1").rstrip(" \x00")
            return int(text) if _IS_TEXT.match(text) else None
        return None

    def pixel_rep(self) -> int:
        """Pixel Representation as _correct_ambiguous_vr_element finds it."""
        own = self.value(_PIXEL_REPRESENTATION)
        if own is not None:
            return 0 if own == 0 else 1
        if self.inherited_rep is not None:
            return 0 if self.inherited_rep == 0 else 1
        if self.element(_PIXEL_REPRESENTATION) is None and self.element(PIXEL_DATA) is None:
            return 0
        return 1

    def rep_for_items(self) -> Any:
        """What items of a defined-length sequence inherit (Dataset._set_pixel_representation)."""
        own = self.value(_PIXEL_REPRESENTATION)
        return own if own is not None else self.inherited_rep


def _ambiguous(e: RawElement, ctx: _Context, uri: str) -> dict[str, Any]:
    tag, vr = e.tag, e.vr
    raw = ctx.buf[e.start : e.start + e.length]
    if vr == "US or OW":  # LUT Data: US when LUT Descriptor says one entry
        descriptor = ctx.value(_LUT_DESCRIPTOR)
        if isinstance(descriptor, list) and descriptor and descriptor[0] == 1:
            vr = "US"
        else:
            vr = "OW"
    elif vr == "US or SS":
        vr = "US" if ctx.pixel_rep() == 0 else "SS"
    elif vr == "OB or OW":
        if tag == PIXEL_DATA:
            if e.undefined:
                vr = "OB"
            elif ctx.ds.implicit:
                vr = "OW"
            else:
                bits = ctx.value(_BITS_ALLOCATED)
                vr = "OW" if isinstance(bits, int) and bits > 8 else "OB"
        elif tag in _WAVEFORM_OB_OW_TAGS and not ctx.ds.implicit:
            bits = ctx.value(_WAVEFORM_BITS_ALLOCATED)
            vr = "OW" if isinstance(bits, int) and bits > 8 else "OB"
        else:  # waveform in implicit VR, overlay data, and what pydicom leaves ambiguous
            vr = "OW"
    else:  # "US or SS or OW"
        vr = "OW"
    if not raw:
        return {"vr": vr}
    if vr in ("US", "SS"):
        values = number_values(vr, ctx.buf, e.start, e.length, ctx.little)
        if values is None:
            return _binary("UN", raw, uri)
        return {"vr": vr, "Value": values}
    return _binary(vr, raw, uri)


def dataset_json(ds: RawDataset, buf: bytes, little: bool, path: str = "", inherited_rep: Any = None) -> dict[str, Any]:
    """The DICOM JSON object of one dataset; `path` prefixes nested bulk data URIs."""
    out: dict[str, Any] = {}
    encodings = ds.encodings
    ctx: _Context | None = None
    deferred: list[tuple[str, RawElement]] | None = None
    kinds, keys = _KIND, _keys
    unpackers, float_vrs, isfinite = _unpackers[little], _FLOAT_VRS, math.isfinite
    # The kinds below are _STR, _UI, ... spelled as numbers: a constant compares faster than a global.
    for e in ds.elements:
        tag, vr, start, length, items, undefined = e
        key = keys.get(tag) or _key(tag)
        if items is not None:
            rep = None
            if not undefined:  # only items of a defined-length sequence inherit it in pydicom
                if ctx is None:
                    ctx = _Context(ds, buf, little, inherited_rep)
                rep = ctx.rep_for_items()
            prefix = f"{path}{key}/"
            out[key] = {
                "vr": "SQ",
                "Value": [dataset_json(item, buf, little, f"{prefix}{i}/", rep) for i, item in enumerate(items)],
            }
            continue
        kind = kinds.get(vr)
        if not length:
            if kind == 12:  # _AMBIGUOUS
                out[key] = None
                if deferred is None:
                    deferred = []
                deferred.append((key, e))
            else:
                out[key] = {"vr": vr if kind is not None else "UN"}
            continue
        if kind == 0 or kind == 1:  # _STR, _UI
            text = buf[start : start + length].decode("latin-1").rstrip(" \x00")
            if "\\" in text:
                out[key] = {"vr": vr, "Value": text.split("\\")}
            elif text:
                out[key] = {"vr": vr, "Value": [text]}
            else:
                out[key] = {"vr": vr}
        elif kind == 7:  # _NUM
            u = unpackers[vr].get(length)
            if u is None:
                u = _unpacker(vr, length, little)
            if u is None:
                out[key] = _binary("UN", buf[start : start + length], "bulkdata/" + path + key)
                continue
            values = list(u(buf, start))
            if vr in float_vrs and not all(map(isfinite, values)):
                values = [v if isfinite(v) else _NON_FINITE[repr(v)] for v in values]
            elif tag in _LUT_DESCRIPTOR_TAGS and len(values) > 1 and values[0] < 0:
                values[0] += 65536  # pydicom's hooks.raw_element_value does this
            out[key] = {"vr": vr, "Value": values}
        elif kind == 6:  # _DS
            text = buf[start : start + length].decode("latin-1").strip().rstrip(" \x00")
            if _DS_VALUES.match(text):
                values = [float(t) for t in text.split("\\")]
                if math.inf in values or -math.inf in values:
                    values = [_NON_FINITE[repr(v)] if v in _INFINITIES else v for v in values]
                out[key] = {"vr": vr, "Value": values}
            elif not text:
                out[key] = {"vr": vr}
            else:
                out[key] = {"vr": vr, "Value": [_ds_value(t) for t in text.split("\\")]}
        elif kind == 2:  # _TEXT
            raw = buf[start : start + length]
            text = raw.decode("ascii") if raw.isascii() and b"\x1b" not in raw else decode_text(raw, encodings)
            if "\\" in text:
                out[key] = {"vr": vr, "Value": [v.rstrip("\x00 ") for v in text.split("\\")]}
            else:
                text = text.rstrip("\x00 ")
                out[key] = {"vr": vr, "Value": [text]} if text else {"vr": vr}
        elif kind == 5:  # _IS
            text = buf[start : start + length].decode("latin-1").rstrip(" \x00")
            if _IS_VALUES.match(text):
                values = [int(t) for t in text.split("\\")]
                if len(text) > 18 and any(not -_INT64 <= v < _INT64 for v in values):
                    values = [_is_value(t) for t in text.split("\\")]
                out[key] = {"vr": vr, "Value": values}
            elif not text.strip():
                out[key] = {"vr": vr}
            else:
                out[key] = {"vr": vr, "Value": [_is_value(t) for t in text.split("\\")]}
        elif kind == 4:  # _PN
            raw = buf[start : start + length].rstrip(b"\x00 ")
            text = raw.decode("ascii") if raw.isascii() and b"\x1b" not in raw else decode_text(raw, encodings)
            names = _person_names(text)
            out[key] = {"vr": vr, "Value": names} if names else {"vr": vr}
        elif kind == 3:  # _TEXT1
            text = decode_text(buf[start : start + length], encodings).rstrip("\x00 ")
            out[key] = {"vr": vr, "Value": [text]} if text else {"vr": vr}
        elif kind == 8:  # _BIN
            out[key] = _binary(vr, buf[start : start + length], "bulkdata/" + path + key)
        elif kind == 9:  # _AT
            count = length // 4  # pydicom drops a partial tag at the end
            if count:
                pairs = struct.unpack_from(("<" if little else ">") + "HH" * count, buf, start)
                out[key] = {"vr": vr, "Value": [f"{pairs[i]:04X}{pairs[i + 1]:04X}" for i in range(0, 2 * count, 2)]}
            else:
                out[key] = {"vr": vr}
        elif kind == 10:  # _AE
            values = [v.strip() for v in buf[start : start + length].decode("latin-1").split("\\")]
            if len(values) == 1 and not values[0]:
                out[key] = {"vr": vr}
            else:
                out[key] = {"vr": vr, "Value": values}
        elif kind == 11:  # _UR
            text = buf[start : start + length].decode("latin-1").rstrip()
            out[key] = {"vr": vr, "Value": [text]} if text else {"vr": vr}
        elif kind == 12:  # _AMBIGUOUS: resolved once the whole dataset is known
            out[key] = None  # keeps the order
            if deferred is None:
                deferred = []
            deferred.append((key, e))
        else:  # a VR pydicom does not know: its bytes, as UN
            out[key] = _binary("UN", buf[start : start + length], "bulkdata/" + path + key)
    if deferred:
        if ctx is None:
            ctx = _Context(ds, buf, little, inherited_rep)
        for key, e in deferred:
            out[key] = _ambiguous(e, ctx, "bulkdata/" + path + key)
    return out


def dumps(attrs: dict[str, Any]) -> bytes:
    """Strict JSON in UTF-8, as dicomcore.dataset_json.dumps writes it (orjson is
    several times faster than json for large documents)."""
    try:
        return orjson.dumps(attrs)
    except TypeError:
        # orjson refuses lone surrogates (and integers beyond 64 bits, which
        # dataset_json never writes); json writes them and UTF-8 replaces them.
        text = json.dumps(attrs, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        return text.encode("utf-8", errors="replace")
