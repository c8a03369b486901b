"""C-FIND's query and answers (PS3.4 C.4.1), for both paths (pynetdicom's
handler is ingest_svc.find, the lean one ingest_svc.query_retrieve): an
identifier becomes one metadata_svc Query, parsed by dicomcore.matching like
QIDO-RS; each match comes back with every requested key, empty when the
archive has no value, in UTF-8. Query/retrieve levels are checked here for
C-GET and C-MOVE too."""

from __future__ import annotations

import json
import logging
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import DSfloat
from pynetdicom.dsutils import encode

from common import errors
from common.clients import MetadataClient
from common.gen.dicomserver.v1 import auth_service_pb2 as auth_pb
from common.gen.dicomserver.v1 import dicom_pb2
from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from common.validation import InvalidValue
from dicomcore import matching
from dicomcore.status import (
    CANNOT_UNDERSTAND,
    DATASET_MISMATCH,
    NOT_AUTHORIZED,
    OUT_OF_RESOURCES,
    PENDING,
    SUCCESS,
)

if TYPE_CHECKING:
    from ingest_svc.principals import Principals

log = logging.getLogger(__name__)

UTF8 = "ISO_IR 192"

LEVELS = {
    "PATIENT": dicom_pb2.QUERY_LEVEL_PATIENT,
    "STUDY": dicom_pb2.QUERY_LEVEL_STUDY,
    "SERIES": dicom_pb2.QUERY_LEVEL_SERIES,
    "IMAGE": dicom_pb2.QUERY_LEVEL_INSTANCE,
}
QUERY_RETRIEVE_LEVEL = 0x00080052
SPECIFIC_CHARACTER_SET = 0x00080005
# Not matching keys: they describe the query, not the objects.
_NOT_KEYS = {QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET, 0x00080054, 0x00080056, 0x00081190}
# Patient Root FIND, MOVE and GET are 1.2.840.10008.5.1.4.1.2.1.{1,2,3}.
PATIENT_ROOT = "1.2.840.10008.5.1.4.1.2.1."
_UNINDEXED = re.compile(r"\(([0-9A-F]{8})\): not an indexed attribute")


class BadIdentifier(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass
class Query:
    level: str
    request: md_pb.QueryRequest
    # The requested keys in request order, returned in every response.
    keys: list[DataElement] = field(default_factory=list)


def _text(elem: DataElement) -> str:
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, MultiValue):
        return "\\".join(str(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return str(value)


def levels_of(sop_class: str) -> set[str]:
    """The levels a query model allows (PS3.4 C.6.1, C.6.2)."""
    if sop_class.startswith(PATIENT_ROOT):
        return {"PATIENT", "STUDY", "SERIES", "IMAGE"}
    return {"STUDY", "SERIES", "IMAGE"}


def build_query(identifier: Dataset, tenant: str, sop_class: str) -> Query:
    """The Query for a C-FIND identifier. Raises BadIdentifier."""
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level not in LEVELS or level not in levels_of(sop_class):
        raise BadIdentifier(DATASET_MISMATCH, f"Query/Retrieve Level '{level[:16]}' is not valid for this model")
    query = Query(level, md_pb.QueryRequest(tenant=tenant, level=LEVELS[level]))
    for elem in identifier:
        tag = int(elem.tag)
        if tag in _NOT_KEYS or elem.tag.element == 0 or elem.tag.group in (0x0002, 0xFFFC):
            continue
        query.keys.append(elem)
        hex_tag = matching.tag_hex(tag)
        query.request.include_fields.append(hex_tag)
        if elem.VR == "SQ":
            continue  # sequence matching is not supported: returned empty
        raw = _text(elem).strip()
        try:
            flt = matching.parse(tag, "" if raw == "*" else raw)
        except InvalidValue as exc:
            raise BadIdentifier(CANNOT_UNDERSTAND, str(exc)) from None
        query.request.filters.append(flt)
    return query


# ---- responses -------------------------------------------------------------------
# A response's values are encoded here, straight from the DICOM JSON match
# (PS3.18 F.2), into raw elements in the C-FIND's transfer syntax, which
# pydicom writes as they are. Building them through Dataset.from_json and
# having pydicom convert and encode every value took most of a C-FIND's CPU
# (py-spy: ~60% of the association thread's GIL time; 560 -> 180 us per match,
# build and encode). Sequences and binary VRs other than numbers and tags take
# the pydicom path.

_NUMBERS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "UV": "Q", "SV": "q", "FL": "f", "FD": "d"}
# What pydicom calls ISO_IR 192: the identifier's raw values are written as
# they are only when the dataset's original character set is this.
_UTF8_ENCODINGS = convert_encodings(UTF8)
_CHARSET_TAG, _LEVEL_TAG = BaseTag(SPECIFIC_CHARACTER_SET), BaseTag(QUERY_RETRIEVE_LEVEL)
_STRINGS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}


def _number_text(vr: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if vr == "IS" or isinstance(value, bool):
        return str(int(value))
    return str(DSfloat(value, auto_format=len(repr(value)) > 16))


def _pn_text(value: Any) -> str:
    if not isinstance(value, dict):
        return str(value)
    groups = 3 if "Phonetic" in value else 2 if "Ideographic" in value else 1
    return "=".join([value.get("Alphabetic", ""), value.get("Ideographic", ""), value.get("Phonetic", "")][:groups])


def _value_bytes(vr: str, values: list[Any], little: bool) -> bytes | None:
    """The encoded value of a JSON attribute's values, or None when the
    pydicom path has to encode it."""
    if vr == "PN":
        data = "\\".join("" if v is None else _pn_text(v) for v in values).encode("utf-8")
    elif vr in _STRINGS:
        if vr in ("DS", "IS"):
            try:
                data = "\\".join("" if v is None else _number_text(vr, v) for v in values).encode("ascii")
            except (ValueError, OverflowError, UnicodeEncodeError):
                return None
        else:
            data = "\\".join("" if v is None else str(v) for v in values).encode("utf-8")
    elif vr in _NUMBERS:
        try:
            return struct.pack(("<" if little else ">") + _NUMBERS[vr] * len(values), *values)
        except (struct.error, TypeError):
            return None
    elif vr == "AT":
        try:
            tags = [int(v, 16) for v in values]
            return struct.pack(
                ("<" if little else ">") + "HH" * len(tags), *(half for t in tags for half in (t >> 16, t & 0xFFFF))
            )
        except (struct.error, TypeError, ValueError):
            return None
    else:
        return None
    if len(data) % 2:
        data += b"\0" if vr == "UI" else b" "
    return data


_CHARSET_VALUE = _value_bytes("CS", [UTF8], True) or b""


def _key_vr(key: DataElement) -> str:
    # A VR pydicom could not decide ("US or SS"): the first is as good as any for an empty key.
    return str(key.VR).split(" or ")[0]


def response(query: Query, match: bytes, syntax: UID = ExplicitVRLittleEndian) -> Dataset:
    """A pending response's identifier for a C-FIND in `syntax` (uncompressed):
    each requested key, valued or empty, in UTF-8."""
    attrs: dict[str, Any] = json.loads(match)
    little, implicit = syntax.is_little_endian, syntax.is_implicit_VR
    ds = Dataset()
    ds.set_original_encoding(implicit, little, _UTF8_ENCODINGS)

    def add(tag: BaseTag, vr: str, data: bytes) -> None:
        ds[tag] = RawDataElement(tag, vr, len(data), data, 0, implicit, little)

    add(_CHARSET_TAG, "CS", _CHARSET_VALUE)
    add(_LEVEL_TAG, "CS", _value_bytes("CS", [query.level], little) or b"")
    for key in query.keys:
        hex_tag = matching.tag_hex(int(key.tag))
        attr: dict[str, Any] = attrs.get(hex_tag) or {}
        vr = attr.get("vr") or _key_vr(key)
        if key.VR == "SQ" or vr == "SQ":
            items = attr.get("Value") if vr == "SQ" else None
            value = DataElement.from_json(Dataset, hex_tag, "SQ", items, "Value").value if items else Sequence()
            ds.add(DataElement(key.tag, "SQ", value))
            continue
        values = attr.get("Value")
        data = _value_bytes(vr, values, little) if values else b""
        if data is not None:
            add(key.tag, vr, data)
        elif "InlineBinary" in attr:
            ds.add(DataElement.from_json(Dataset, hex_tag, vr, attr["InlineBinary"], "InlineBinary"))
        else:
            ds.add(DataElement.from_json(Dataset, hex_tag, vr, values, "Value"))
    return ds


_LONG_LENGTH_VRS = frozenset(("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"))
_FAST_SYNTAXES = frozenset((ExplicitVRLittleEndian, ImplicitVRLittleEndian))


def _element(tag: int, vr: str, data: bytes, implicit: bool) -> bytes | None:
    if implicit:
        return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(data)) + data
    if vr in _LONG_LENGTH_VRS:
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr.encode("ascii"), 0, len(data)) + data
    if len(data) > 0xFFFF or len(vr) != 2:
        return None
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode("ascii"), len(data)) + data


def _encoded_little_endian(query: Query, match: bytes, implicit: bool) -> bytes | None:
    """response() as pydicom encodes it in Little Endian, or None when one
    of its values takes the pydicom path (sequences, binary values)."""
    attrs: dict[str, Any] = json.loads(match)
    elements = [
        (SPECIFIC_CHARACTER_SET, _element(SPECIFIC_CHARACTER_SET, "CS", _CHARSET_VALUE, implicit)),
        (
            QUERY_RETRIEVE_LEVEL,
            _element(QUERY_RETRIEVE_LEVEL, "CS", _value_bytes("CS", [query.level], True) or b"", implicit),
        ),
    ]
    for key in query.keys:
        if key.VR == "SQ":
            return None
        tag = int(key.tag)
        attr: dict[str, Any] = attrs.get(matching.tag_hex(tag)) or {}
        vr = attr.get("vr") or _key_vr(key)
        values = attr.get("Value")
        data = _value_bytes(vr, values, True) if values else b""
        if data is None or vr == "SQ":
            return None
        elements.append((tag, _element(tag, vr, data, implicit)))
    elements.sort(key=lambda item: item[0])
    parts = [encoded for _, encoded in elements]
    if None in parts:
        return None
    return b"".join(parts)  # type: ignore[arg-type]


def response_bytes(query: Query, match: bytes, syntax: UID = ExplicitVRLittleEndian) -> bytes | None:
    """A pending response's identifier encoded in `syntax`, byte for byte
    what pynetdicom sends for response(): built straight from the match in
    Little Endian, through pydicom otherwise (Big Endian, Deflated, values
    it must encode). None when it cannot be encoded (pynetdicom answers
    0xC312 then)."""
    if syntax in _FAST_SYNTAXES:
        data = _encoded_little_endian(query, match, syntax.is_implicit_VR)
        if data is not None:
            return data
    return (
        encode(response(query, match, syntax), syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
        or None
    )


def run_query(metadata: MetadataClient, request: md_pb.QueryRequest) -> md_pb.QueryResponse:
    """Runs a query; matching keys the index cannot filter on are treated as
    return keys (PS3.4 C.2.2.1.3: an SCP need not match on optional keys)."""
    for _ in range(len(request.filters) + 1):
        try:
            return metadata.query(request)
        except errors.InvalidArgument as exc:
            m = _UNINDEXED.search(str(exc))
            if m is None:
                raise
            for flt in request.filters:
                if flt.tag == m.group(1):
                    flt.universal = True
    return metadata.query(request)


def pages(
    event: Any, metadata: MetadataClient, principals: Principals, page_size: int
) -> Iterator[tuple[int, Query | None, Iterable[bytes]]]:
    """A C-FIND request's matches, a page (one Query call) at a time:
    (PENDING, query, matches) for each page, then (final status, None, ()).
    `event` is pynetdicom's Event or the lean path's request
    (ingest_svc.query_retrieve): its assoc, identifier and request are read."""
    try:
        tenant = principals.tenant(event.assoc, auth_pb.ACTION_READ)
        if tenant is None:
            yield NOT_AUTHORIZED, None, ()
            return
        try:
            identifier = event.identifier
            query = build_query(identifier, tenant, str(event.request.AffectedSOPClassUID))
        except BadIdentifier as exc:
            log.info("C-FIND refused with 0x%04X", exc.status)
            log.debug("C-FIND refused: %s", exc)  # may quote the query's values
            yield exc.status, None, ()
            return
        except Exception as exc:  # an identifier pydicom cannot decode
            log.info("C-FIND identifier cannot be decoded: %s", type(exc).__name__)
            yield CANNOT_UNDERSTAND, None, ()
            return
        query.request.limit = page_size
        while True:
            try:
                page = run_query(metadata, query.request)
            except errors.InvalidArgument as exc:
                log.info("C-FIND refused: the index cannot answer the query")
                log.debug("C-FIND refused: %s", exc)  # may quote the query's values
                yield CANNOT_UNDERSTAND, None, ()
                return
            if page.matches:
                yield PENDING, query, page.matches
            if not page.truncated:
                break
            query.request.offset += len(page.matches)
    except errors.ServiceError as exc:
        log.warning("C-FIND failed, a service is unavailable: %s", exc)
        yield OUT_OF_RESOURCES, None, ()
        return
    yield SUCCESS, None, ()
