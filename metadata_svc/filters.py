"""Filter protos to SQL conditions (PS3.4 C.2.2.2). User text only ever
travels as bound parameters; LIKE specials in it are escaped."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, aliased

from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from common.validation import InvalidValue
from metadata_svc.attributes import Attr, name_of
from metadata_svc.schema import Series, Study

_ESCAPE = "\\"
_DATE_TIME_VRS = {"DA", "TM", "DT"}


def like_literal(text: str) -> str:
    """Text matched literally inside a LIKE pattern."""
    return text.replace(_ESCAPE, _ESCAPE * 2).replace("%", _ESCAPE + "%").replace("_", _ESCAPE + "_")


def wildcard_pattern(value: str) -> str:
    """DICOM * and ? to LIKE % and _, everything else literal."""
    return "".join("%" if c == "*" else "_" if c == "?" else like_literal(c) for c in value)


def _is_universal_wildcard(value: str) -> bool:
    return value != "" and set(value) == {"*"}


def _fuzzy(column: InstrumentedAttribute[Any], query: str) -> ColumnElement[bool] | None:
    # Each query word must start some name component: components are split by
    # ^ (and = between groups); words inside a component by spaces.
    words = [w for w in re.split(r"[\s^=]+", query.lower()) if w]
    if not words:
        return None
    conditions = []
    for word in words:
        lit = like_literal(word)
        conditions.append(or_(*(column.like(p + lit + "%", escape=_ESCAPE) for p in ("", "%^", "% ", "%="))))
    return and_(*conditions)


def _numeric(attr: Attr, f: md_pb.Filter, kind: str) -> ColumnElement[bool]:
    if kind == "equal":
        try:
            return attr.match == int(f.equal.strip())
        except ValueError:
            raise InvalidValue(f"{name_of(attr.tag)}: '{f.equal[:32]}' is not an integer") from None
    raise InvalidValue(f"{name_of(attr.tag)}: only single value matching is supported")


def condition(attr: Attr, f: md_pb.Filter) -> ColumnElement[bool] | None:
    """The SQL condition for one filter, or None when it does not filter."""
    kind = f.WhichOneof("constraint")
    if kind is None or kind == "universal":
        return None
    if attr.numeric:
        return _numeric(attr, f, kind)
    column = attr.match
    is_pn = attr.vr == "PN"
    if kind == "equal":
        return column == (f.equal.lower() if is_pn else f.equal)
    if kind == "wildcard":
        if _is_universal_wildcard(f.wildcard):
            return None
        return column.like(wildcard_pattern(f.wildcard.lower() if is_pn else f.wildcard), escape=_ESCAPE)
    if kind == "range":
        return _range(attr, f.range)
    if kind == "uid_list":
        if not f.uid_list.values:
            raise InvalidValue(f"{name_of(attr.tag)}: empty list of values")
        return column.in_(list(f.uid_list.values))
    if kind == "fuzzy":
        if not is_pn:
            raise InvalidValue(f"{name_of(attr.tag)}: fuzzy matching applies to person names only")
        return _fuzzy(column, f.fuzzy)
    raise InvalidValue(f"{name_of(attr.tag)}: unsupported matching")


def _range(attr: Attr, rng: md_pb.Range) -> ColumnElement[bool]:
    if not rng.lower and not rng.upper:
        raise InvalidValue(f"{name_of(attr.tag)}: a range needs at least one bound")
    column = attr.match
    parts: list[ColumnElement[bool]] = [column != ""]  # empty values never match a range
    if rng.lower:
        parts.append(column >= rng.lower)
    if rng.upper:
        if attr.vr in {"TM", "DT"}:
            # "-1000" includes 100000.5: compare the stored value's prefix of the bound's length.
            parts.append(func.substr(column, 1, len(rng.upper)) <= rng.upper)
        else:
            parts.append(column <= rng.upper)
    return and_(*parts)


def modalities_in_study(f: md_pb.Filter) -> ColumnElement[bool] | None:
    """ModalitiesInStudy matches a study when any of its series matches."""
    kind = f.WhichOneof("constraint")
    if kind is None or kind == "universal":
        return None
    other = aliased(Series)  # the outer query may already select from series
    if kind == "equal":
        cond: ColumnElement[bool] = other.modality.in_([m for m in f.equal.split("\\") if m])
    elif kind == "uid_list":
        cond = other.modality.in_(list(f.uid_list.values))
    elif kind == "wildcard":
        if _is_universal_wildcard(f.wildcard):
            return None
        cond = other.modality.like(wildcard_pattern(f.wildcard), escape=_ESCAPE)
    else:
        raise InvalidValue("ModalitiesInStudy: only single value, list or wildcard matching is supported")
    return select(other.id).where(other.study_pk == Study.id, cond).exists()
