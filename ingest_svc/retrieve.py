"""C-MOVE and C-GET (PS3.4 C.4.2, C.4.3): stored objects go out as they were
stored. Each is streamed from storage_svc into a temp file which pynetdicom
sends without decoding when the peer accepted its transfer syntax."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext, build_context

from common import errors, matching
from common.clients import MetadataClient, StorageClient
from common.gen.dicomserver.v1 import auth_service_pb2 as auth_pb, dicom_pb2, metadata_service_pb2 as md_pb
from common.validation import InvalidValue
from ingest_svc.find import IDENTIFIER_MISMATCH, LEVELS, NOT_AUTHORIZED, OUT_OF_RESOURCES, BadIdentifier, levels_of
from ingest_svc.settings import IngestSettings, Peer

if TYPE_CHECKING:
    from ingest_svc.scp import Principals

log = logging.getLogger(__name__)

PENDING, CANCEL = 0xFF00, 0xFE00
MAX_CONTEXTS = 128
_UNIQUE_KEY = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}


class StoredInstance(Dataset):
    """A stored object on its way out: the file pynetdicom sends as it is, and
    the UIDs pynetdicom reports when its sub-operation fails."""

    def __init__(self, location: dicom_pb2.InstanceLocation, path: Path | None) -> None:
        super().__init__()
        self.SOPClassUID = location.sop_class_uid
        self.SOPInstanceUID = location.ref.sop_instance_uid
        self.stored_path = path
        self.stored_syntax = UID(location.transfer_syntax_uid)


_send_c_store = Association.send_c_store


def _send_stored(self: Association, dataset: Any, *args: Any, **kwargs: Any) -> Dataset:
    """Association.send_c_store that sends a StoredInstance from its file, as
    encoded; only when the peer took another uncompressed transfer syntax is
    the object decoded so pynetdicom can re-encode it."""
    if not isinstance(dataset, StoredInstance):
        return _send_c_store(self, dataset, *args, **kwargs)
    if dataset.stored_path is None:
        raise ValueError("the stored object could not be read")
    try:
        return _send_c_store(self, dataset.stored_path, *args, **kwargs)
    except ValueError:  # no presentation context for the stored transfer syntax
        if dataset.stored_syntax.is_compressed:
            raise
        return _send_c_store(self, dcmread(dataset.stored_path), *args, **kwargs)


Association.send_c_store = _send_stored  # type: ignore[method-assign]


def contexts_for(locations: list[dicom_pb2.InstanceLocation]) -> list[PresentationContext]:
    """Presentation contexts to propose to a C-MOVE destination: each stored
    (SOP class, transfer syntax), uncompressed ones with the little endian
    syntaxes as fallbacks."""
    pairs = dict.fromkeys((loc.sop_class_uid, loc.transfer_syntax_uid) for loc in locations)
    out: list[PresentationContext] = []
    for sop_class, ts in list(pairs)[:MAX_CONTEXTS]:
        syntaxes = [ts]
        if not UID(ts).is_compressed:
            syntaxes += [s for s in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) if s != ts]
        out.append(build_context(sop_class, syntaxes))
    return out


class Retriever:
    def __init__(
        self, settings: IngestSettings, storage: StorageClient, metadata: MetadataClient, principals: Principals
    ) -> None:
        self._settings = settings
        self._storage = storage
        self._metadata = metadata
        self._principals = principals

    # -- what to send

    def _uids(self, identifier: Dataset, keyword: str) -> list[str]:
        value = identifier.get(keyword)
        if value is None or value == "":
            return []
        values = list(value) if isinstance(value, (list, MultiValue)) else [value]
        return [str(v).strip() for v in values if str(v).strip()]

    def _query_uids(self, tenant: str, level: int, flt: md_pb.Filter) -> list[tuple[str, str]]:
        """(study, series) of every match of one filter, all pages."""
        request = md_pb.QueryRequest(tenant=tenant, level=level, filters=[flt], limit=self._settings.find_page_size)
        out: list[tuple[str, str]] = []
        while True:
            page = self._metadata.query(request)
            for match in page.matches:
                attrs = json.loads(match)
                study = (attrs.get("0020000D", {}).get("Value") or [""])[0]
                series = (attrs.get("0020000E", {}).get("Value") or [""])[0]
                out.append((study, series))
            if not page.truncated:
                return out
            request.offset += len(page.matches)

    def locate(self, identifier: Dataset, tenant: str, sop_class: str) -> list[dicom_pb2.InstanceLocation]:
        """The instances an identifier asks for. Raises BadIdentifier."""
        level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
        if level not in LEVELS or level not in levels_of(sop_class):
            raise BadIdentifier(IDENTIFIER_MISMATCH, f"Query/Retrieve Level '{level[:16]}' is not valid for this model")
        keyword = _UNIQUE_KEY[level]
        values = self._uids(identifier, keyword)
        if not values:
            raise BadIdentifier(IDENTIFIER_MISMATCH, f"{keyword} is required to retrieve at the {level} level")
        try:
            if level == "IMAGE":
                return self._metadata.locate_each(tenant, [matching.parse(0x00080018, v).equal or v for v in values])
            if level == "PATIENT":
                flt = matching.parse(0x00100020, "\\".join(values))
                pairs = [(study, "") for study, _ in self._query_uids(tenant, dicom_pb2.QUERY_LEVEL_STUDY, flt)]
            elif level == "STUDY":
                for v in values:
                    matching.parse(0x0020000D, v)  # validates
                pairs = [(v, "") for v in values]
            else:
                flt = matching.parse(0x0020000E, "\\".join(values))
                pairs = self._query_uids(tenant, dicom_pb2.QUERY_LEVEL_SERIES, flt)
        except InvalidValue as exc:
            raise BadIdentifier(IDENTIFIER_MISMATCH, str(exc)) from None
        out: list[dicom_pb2.InstanceLocation] = []
        for study, series in dict.fromkeys(pairs):
            try:
                out += self._metadata.locate(tenant, study, series)
            except errors.NotFound:
                continue
        return list({loc.ref.sop_instance_uid: loc for loc in out}.values())

    # -- sending

    def _fetch(self, location: dicom_pb2.InstanceLocation) -> Path | None:
        fd, name = tempfile.mkstemp(suffix=".dcm", dir=self._settings.retrieve_spool_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in self._storage.get(location.object_key):
                    f.write(chunk)
            return Path(name)
        except (errors.ServiceError, OSError) as exc:
            log.warning("could not read a stored object for retrieve: %s", exc)
            os.unlink(name)
            return None

    def _sub_operations(
        self, event: evt.Event, locations: list[dicom_pb2.InstanceLocation]
    ) -> Iterator[tuple[int, Dataset | None]]:
        previous: Path | None = None
        try:
            for location in locations:
                if previous is not None:
                    previous.unlink(missing_ok=True)
                    previous = None
                if event.is_cancelled:
                    yield CANCEL, None
                    return
                previous = self._fetch(location)
                yield PENDING, StoredInstance(location, previous)
        finally:
            if previous is not None:
                previous.unlink(missing_ok=True)

    def _request(self, event: evt.Event) -> tuple[int, list[dicom_pb2.InstanceLocation]]:
        """(0, locations) or (failure status, [])."""
        try:
            tenant = self._principals.tenant(event.assoc, auth_pb.ACTION_READ)
            if tenant is None:
                return NOT_AUTHORIZED, []
            try:
                identifier = event.identifier
            except Exception:
                return IDENTIFIER_MISMATCH, []
            locations = self.locate(identifier, tenant, str(event.request.AffectedSOPClassUID))
        except BadIdentifier as exc:
            log.info("retrieve refused with 0x%04X", exc.status)
            log.debug("retrieve refused: %s", exc)  # may quote the identifier's values
            return exc.status, []
        except errors.ServiceError as exc:
            log.warning("retrieve failed, a service is unavailable: %s", exc)
            return OUT_OF_RESOURCES, []
        if len(locations) > self._settings.max_retrieve_instances:
            log.info("retrieve refused: %d instances, more than the limit", len(locations))
            return OUT_OF_RESOURCES, []
        return 0, locations

    def _destination(self, event: evt.Event) -> Peer | None:
        """The C-MOVE destination, if it exists for the caller's tenant: one
        kept for other tenants is answered as unknown (no existence oracle)."""
        peer = self._settings.dimse_peers.get(str(event.move_destination).strip())
        if peer is None or not peer.tenants:
            return peer
        principal = self._principals.principal(event.assoc)
        held = set(principal.tenants) if principal is not None else set()
        return peer if held & set(peer.tenants) else None

    def handle_move(self, event: evt.Event) -> Iterator[Any]:
        peer = self._destination(event)
        if peer is None:
            log.info("C-MOVE to an unknown destination refused")
            yield None, None  # pynetdicom answers 0xA801, destination unknown
            return
        status, locations = self._request(event)
        if status:
            # pynetdicom reports a failure only after the destination yield.
            yield peer.host, peer.port
            yield 1
            yield status, None
            return
        yield peer.host, peer.port, {"contexts": contexts_for(locations) or None}
        yield len(locations)
        yield from self._sub_operations(event, locations)

    def handle_get(self, event: evt.Event) -> Iterator[Any]:
        status, locations = self._request(event)
        if status:
            yield 1
            yield status, None
            return
        yield len(locations)
        yield from self._sub_operations(event, locations)
