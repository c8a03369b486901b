"""Query text to the typed filter model: the one place where DICOM matching
values (PS3.4 C.2.2.2) are parsed. QIDO-RS and C-FIND both call parse()."""

from __future__ import annotations

import re

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from common.validation import InvalidValue, is_uid

_STRING_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"}
_RANGE_VRS = {"DA", "TM", "DT"}
_DATE = re.compile(r"[0-9]{8}")
_TIME = re.compile(r"[0-9]{2}([0-9]{2}([0-9]{2}(\.[0-9]{1,6})?)?)?")
_DATETIME = re.compile(r"[0-9]{4,14}(\.[0-9]{1,6})?([+-][0-9]{4})?")
MAX_VALUE_LENGTH = 1024
MAX_LIST = 1000
# '*' and '?' in one wildcard value; runs of '*' count once (they mean the same).
MAX_WILDCARDS = 64
# C0 controls and DEL: no query value has them (values arrive decoded).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_STARS = re.compile(r"\*{2,}")


def tag_hex(tag: int) -> str:
    return f"{tag:08X}"


def resolve_tag(name: str) -> int:
    """A tag from a keyword (PatientName) or eight hex digits (00100010)."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        return int(name, 16)
    tag = tag_for_keyword(name)
    if tag is None:
        raise InvalidValue(f"unknown attribute '{name[:64]}'")
    return int(tag)


def vr_of(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _name(tag: int) -> str:
    return keyword_for_tag(tag) or tag_hex(tag)


def _check_bound(vr: str, value: str, tag: int) -> str:
    pattern = {"DA": _DATE, "TM": _TIME, "DT": _DATETIME}[vr]
    if value and pattern.fullmatch(value) is None:
        raise InvalidValue(f"{_name(tag)}: '{value[:32]}' is not a valid {vr} value")
    return value


def parse(
    tag: int,
    raw: str,
    fuzzy: bool = False,
    *,
    max_length: int = MAX_VALUE_LENGTH,
    max_wildcards: int = MAX_WILDCARDS,
) -> md_pb.Filter:
    """One matching key's text into a Filter. Raises InvalidValue naming the key."""
    vr = vr_of(tag)
    key = tag_hex(tag)
    if len(raw) > max_length:
        raise InvalidValue(f"{_name(tag)}: value longer than {max_length} characters")
    if _CONTROL.search(raw):
        raise InvalidValue(f"{_name(tag)}: value contains control characters")
    if raw == "":
        return md_pb.Filter(tag=key, universal=True)
    if vr == "UI":
        uids = [u for u in re.split(r"[\\,]", raw)]
        if len(uids) > MAX_LIST or not all(is_uid(u) for u in uids):
            raise InvalidValue(f"{_name(tag)}: expected a UID or a list of UIDs")
        if len(uids) == 1:
            return md_pb.Filter(tag=key, equal=uids[0])
        return md_pb.Filter(tag=key, uid_list=md_pb.ValueList(values=uids))
    if vr in _RANGE_VRS:
        if raw.count("-") == 1 and not (vr == "DT" and re.search(r"[0-9]{8,}[+-][0-9]{4}$", raw)):
            lower, upper = raw.split("-")
            if not lower and not upper:
                raise InvalidValue(f"{_name(tag)}: a range needs at least one bound")
            return md_pb.Filter(
                tag=key,
                range=md_pb.Range(lower=_check_bound(vr, lower, tag), upper=_check_bound(vr, upper, tag)),
            )
        return md_pb.Filter(tag=key, equal=_check_bound(vr, raw, tag))
    if vr == "PN" and fuzzy:
        return md_pb.Filter(tag=key, fuzzy=raw)
    if vr in _STRING_VRS and ("*" in raw or "?" in raw):
        pattern = _STARS.sub("*", raw)
        if pattern.count("*") + pattern.count("?") > max_wildcards:
            raise InvalidValue(f"{_name(tag)}: more than {max_wildcards} wildcard characters")
        return md_pb.Filter(tag=key, wildcard=pattern)
    return md_pb.Filter(tag=key, equal=raw)
