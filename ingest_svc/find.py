"""C-FIND (PS3.4 C.4.1): an identifier becomes one metadata_svc Query, parsed
by common.matching like QIDO-RS; each match comes back with every requested
key, empty when the archive has no value, in UTF-8."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pynetdicom import evt

from common import errors, matching
from common.clients import MetadataClient
from common.gen.dicomserver.v1 import auth_service_pb2 as auth_pb, dicom_pb2, metadata_service_pb2 as md_pb
from common.validation import InvalidValue

if TYPE_CHECKING:
    from ingest_svc.scp import Principals

log = logging.getLogger(__name__)

PENDING, CANCEL, SUCCESS = 0xFF00, 0xFE00, 0x0000
NOT_AUTHORIZED, OUT_OF_RESOURCES, IDENTIFIER_MISMATCH, UNABLE_TO_PROCESS = 0x0124, 0xA700, 0xA900, 0xC000
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
        raise BadIdentifier(IDENTIFIER_MISMATCH, f"Query/Retrieve Level '{level[:16]}' is not valid for this model")
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
            raise BadIdentifier(UNABLE_TO_PROCESS, str(exc)) from None
        query.request.filters.append(flt)
    return query


def _from_json(match: bytes) -> Dataset:
    attrs: dict[str, Any] = json.loads(match)
    for value in attrs.values():
        value.pop("BulkDataURI", None)
    return Dataset.from_json(attrs)


def response(query: Query, match: bytes) -> Dataset:
    """A pending response's identifier: each requested key, valued or empty."""
    found = _from_json(match)
    ds = Dataset()
    ds.SpecificCharacterSet = UTF8
    ds.QueryRetrieveLevel = query.level
    for key in query.keys:
        if key.tag in found and key.VR != "SQ":
            ds.add(found[key.tag])
        elif key.VR == "SQ":
            ds.add(DataElement(key.tag, "SQ", found[key.tag].value if key.tag in found else Sequence()))
        else:
            ds.add(DataElement(key.tag, key.VR, None))
    return ds


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


def handle_find(
    event: evt.Event, metadata: MetadataClient, principals: Principals, page_size: int
) -> Iterator[tuple[int, Dataset | None]]:
    try:
        tenant = principals.tenant(event.assoc, auth_pb.ACTION_READ)
        if tenant is None:
            yield NOT_AUTHORIZED, None
            return
        try:
            identifier = event.identifier
            query = build_query(identifier, tenant, str(event.request.AffectedSOPClassUID))
        except BadIdentifier as exc:
            log.info("C-FIND refused with 0x%04X", exc.status)
            log.debug("C-FIND refused: %s", exc)  # may quote the query's values
            yield exc.status, None
            return
        except Exception as exc:  # an identifier pydicom cannot decode
            log.info("C-FIND identifier cannot be decoded: %s", type(exc).__name__)
            yield UNABLE_TO_PROCESS, None
            return
        query.request.limit = page_size
        while True:
            try:
                page = run_query(metadata, query.request)
            except errors.InvalidArgument as exc:
                log.info("C-FIND refused: the index cannot answer the query")
                log.debug("C-FIND refused: %s", exc)  # may quote the query's values
                yield UNABLE_TO_PROCESS, None
                return
            for match in page.matches:
                if event.is_cancelled:
                    yield CANCEL, None
                    return
                yield PENDING, response(query, match)
            if not page.truncated:
                break
            query.request.offset += len(page.matches)
    except errors.ServiceError as exc:
        log.warning("C-FIND failed, a service is unavailable: %s", exc)
        yield OUT_OF_RESOURCES, None
        return
    yield SUCCESS, None
