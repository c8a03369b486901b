"""C-MOVE and C-GET (PS3.4 C.4.2, C.4.3): what to send and where, for both
paths (pynetdicom's handlers are ingest_svc.retrieve). Stored objects go out as they were stored,
from where storage grants them (ARCHITECTURE.md, "Bytes take the shortest
path"): each from its file in the objects folder, or, on a bucket, from a
spool file downloaded from its presigned URL while the previous object is
being sent; grants come in one GrantRead call per batch of objects. The lean
path sends them itself (ingest_svc.query_retrieve, ingest_svc.store_scu);
how pynetdicom is made to send files (TLS associations, or with
DICOMSERVER_DIMSE_LEAN_QUERY_RETRIEVE=false) is ingest_svc.send_stored."""

from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom.presentation import PresentationContext, build_context

from common import errors
from common.blobs import BlobReader
from common.clients import MetadataClient, StorageClient
from common.gen.dicomserver.v1 import auth_service_pb2 as auth_pb
from common.gen.dicomserver.v1 import dicom_pb2
from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from common.validation import InvalidValue, is_uid
from dicomcore import matching
from dicomcore.contexts import proposals
from dicomcore.status import CANCEL, DATASET_MISMATCH, NOT_AUTHORIZED, OUT_OF_RESOURCES, PENDING
from ingest_svc.queries import LEVELS, BadIdentifier, levels_of
from ingest_svc.send_stored import StoredObject
from ingest_svc.settings import IngestSettings, Peer

if TYPE_CHECKING:
    from ingest_svc.principals import Principals

log = logging.getLogger(__name__)

# Read grants asked for in one GrantRead call (storage_svc takes up to 10,000).
GRANT_BATCH = 500
_UNIQUE_KEY = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}


def contexts_for(locations: list[dicom_pb2.InstanceLocation]) -> list[PresentationContext]:
    """Presentation contexts to propose to a C-MOVE destination
    (dicomcore.contexts); any uncompressed object can be re-encoded to the
    fallback syntaxes."""
    stored = ((loc.sop_class_uid, loc.transfer_syntax_uid) for loc in locations)
    return [build_context(c, syntaxes) for c, syntaxes in proposals(stored, lambda ts: not UID(ts).is_compressed)]


@functools.lru_cache(maxsize=64)
def _syntax(uid: str) -> UID:
    return UID(uid)


@dataclass(slots=True, eq=False)
class Stored:
    """A stored object on its way out: its UIDs (named as the DICOM keywords
    pynetdicom's StoredObject has), its stored transfer syntax, the file to
    send (None when storage could not give it) and, when not -1, that file
    open. The lean path sends it as it is; pynetdicom's gets a StoredObject."""

    SOPClassUID: str
    SOPInstanceUID: str
    stored_syntax: UID
    path: str | None = None
    fd: int = -1

    def dataset(self) -> StoredObject:
        """For pynetdicom, which takes pydicom Datasets only."""
        return StoredObject(self.SOPClassUID, self.SOPInstanceUID, self.stored_syntax, self.path)


class StoredReader(BlobReader):
    def file_path(self, key: str) -> str | None:
        """The object's file when storage grants one (the objects folder), else None (a URL)."""
        grant = self._grant(key)
        return grant.file_path if grant.WhichOneof("location") == "file_path" else None


class _Ready:
    """One object ready to send, and what to release once it is sent."""

    def __init__(self, obj: Stored, fd: int = -1, spool: str = "") -> None:
        self.obj = obj
        self._fd = fd
        self._spool = spool

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._spool:
            try:
                os.unlink(self._spool)
            except FileNotFoundError:
                pass
            self._spool = ""


# An open file is sent through its /proc entry: a delete between the
# C-STORE request and its last fragment cannot cut the message short.
_FD_PATH = "/proc/self/fd/{}" if os.path.isdir("/proc/self/fd") else ""
_WILLNEED = getattr(os, "POSIX_FADV_WILLNEED", None)


class Outgoing:
    """The objects of one retrieve, in order, each readied while the one
    before it is being sent: a granted file is opened and the kernel asked
    to read it in, a bucket object is downloaded to a spool file."""

    def __init__(
        self, reader: StoredReader, locations: list[dicom_pb2.InstanceLocation], spool_dir: str | None
    ) -> None:
        self._reader = reader
        self._locations = locations
        self._spool_dir = spool_dir
        self._granted = 0  # locations[:_granted] have their grants asked for
        self._pool: ThreadPoolExecutor | None = None

    def objects(self) -> Generator[Stored, None, None]:
        current: _Ready | None = None
        ahead: Future[_Ready] | None = None
        try:
            for i, location in enumerate(self._locations):
                if ahead is not None:
                    current = ahead.result()
                else:
                    self._grant_through(i)
                    current = self._ready(location)
                ahead = self._ahead(i + 1)
                yield current.obj
                current.release()
                current = None
        finally:
            if current is not None:
                current.release()
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
            if ahead is not None:
                ahead.add_done_callback(_release)

    def _grant_through(self, i: int) -> None:
        """Asks for the grants of the batch holding locations[i], if not yet."""
        if i < self._granted:
            return
        keys = [loc.object_key for loc in self._locations[self._granted : self._granted + GRANT_BATCH]]
        self._granted += len(keys)
        try:
            self._reader.prepare(keys)
        except errors.ServiceError as exc:  # each object asks again on its own
            log.warning("storage granted no reads for a retrieve: %s", exc)

    def _ahead(self, i: int) -> Future[_Ready] | None:
        """Readies locations[i] while the one before it is sent: a granted
        file is opened and the kernel asked to read it in, a bucket object
        is downloaded in a thread."""
        if i >= len(self._locations):
            return None
        location = self._locations[i]
        self._grant_through(i)
        try:
            in_file = self._reader.file_path(location.object_key) is not None
        except errors.ServiceError:
            return None  # asked again, and reported, when its turn comes
        if in_file:
            ready: Future[_Ready] = Future()
            ready.set_result(self._ready(location))
            return ready
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="retrieve-download")
        return self._pool.submit(self._ready, location)

    def _ready(self, location: dicom_pb2.InstanceLocation) -> _Ready:
        obj = Stored(location.sop_class_uid, location.ref.sop_instance_uid, _syntax(location.transfer_syntax_uid))
        spool = ""
        try:
            path = self._reader.file_path(location.object_key)
            if path is not None:
                fd = os.open(path, os.O_RDONLY)
                if _WILLNEED is not None:
                    os.posix_fadvise(fd, 0, 0, _WILLNEED)
                obj.path = _FD_PATH.format(fd) if _FD_PATH else path
                obj.fd = fd
                return _Ready(obj, fd=fd)
            fd, spool = tempfile.mkstemp(suffix=".dcm", dir=self._spool_dir)
            with os.fdopen(fd, "wb") as f:
                for chunk in self._reader.get(location.object_key):
                    f.write(chunk)
            obj.path = spool
            return _Ready(obj, spool=spool)
        except (errors.ServiceError, OSError) as exc:
            # A failed sub-operation (ingest_svc.send_stored): the object is
            # indexed, but storage does not have it or cannot give it now.
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            log.warning("a stored object cannot be read for retrieve (%s): %s", type(exc).__name__, reason)
            if spool:
                _Ready(obj, spool=spool).release()
            return _Ready(obj)


def _release(ready: Future[_Ready]) -> None:
    if not ready.cancelled() and ready.exception() is None:
        ready.result().release()


class Retriever:
    def __init__(
        self, settings: IngestSettings, storage: StorageClient, metadata: MetadataClient, principals: Principals
    ) -> None:
        self._settings = settings
        self._reader = StoredReader(storage)
        self._metadata = metadata
        self._principals = principals

    # -- what to send

    def _uids(self, identifier: Dataset, keyword: str) -> list[str]:
        value = identifier.get(keyword)
        if value is None or value == "":
            return []
        values = list(value) if isinstance(value, (list, MultiValue)) else [value]
        return [str(v).strip() for v in values if str(v).strip()]

    def _query_uids(
        self, tenant: str, level: dicom_pb2.QueryLevel.ValueType, flt: md_pb.Filter
    ) -> list[tuple[str, str]]:
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
            raise BadIdentifier(DATASET_MISMATCH, f"Query/Retrieve Level '{level[:16]}' is not valid for this model")
        keyword = _UNIQUE_KEY[level]
        values = self._uids(identifier, keyword)
        if not values:
            raise BadIdentifier(DATASET_MISMATCH, f"{keyword} is required to retrieve at the {level} level")
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
                studies = self._uids(identifier, "StudyInstanceUID")
                if len(studies) == 1 and is_uid(studies[0]):
                    return self._series_of_study(tenant, studies[0], values)
                pairs = self._query_uids(tenant, dicom_pb2.QUERY_LEVEL_SERIES, flt)
        except InvalidValue as exc:
            raise BadIdentifier(DATASET_MISMATCH, str(exc)) from None
        return self._locate_pairs(tenant, pairs)

    def _locate_pairs(self, tenant: str, pairs: list[tuple[str, str]]) -> list[dicom_pb2.InstanceLocation]:
        out: list[dicom_pb2.InstanceLocation] = []
        for study, series in dict.fromkeys(pairs):
            try:
                out += self._metadata.locate(tenant, study, series)
            except errors.NotFound:
                continue
        return list({loc.ref.sop_instance_uid: loc for loc in out}.values())

    def _series_of_study(self, tenant: str, study: str, series: list[str]) -> list[dicom_pb2.InstanceLocation]:
        """Series the identifier names with their study, as the hierarchical
        model has it: one LocateInstances call each. (A series query first,
        ~10 ms, then the locate took 32-49 ms for a 50-instance series of the
        bench index; 2.5 ms now, with metadata_svc's lookup by index.) One
        that is not in that study is looked for as before, by a series query
        and then in the study it is in."""
        pairs = [(study, uid) for uid in dict.fromkeys(series)]
        out: list[dicom_pb2.InstanceLocation] = []
        elsewhere = []
        for pair in pairs:
            try:
                out += self._metadata.locate(tenant, *pair)
            except errors.NotFound:
                elsewhere.append(pair[1])
        if elsewhere:
            flt = matching.parse(0x0020000E, "\\".join(elsewhere))
            out += self._locate_pairs(tenant, self._query_uids(tenant, dicom_pb2.QUERY_LEVEL_SERIES, flt))
        return list({loc.ref.sop_instance_uid: loc for loc in out}.values())

    # -- sending

    def outgoing(self, locations: list[dicom_pb2.InstanceLocation]) -> Generator[Stored, None, None]:
        """The objects to send, each ready when its turn comes (Outgoing)."""
        spool = str(self._settings.retrieve_spool_dir) if self._settings.retrieve_spool_dir else None
        return Outgoing(self._reader, locations, spool).objects()

    def sub_operations(
        self, event: evt.Event, locations: list[dicom_pb2.InstanceLocation]
    ) -> Iterator[tuple[int, Dataset | None]]:
        objects = self.outgoing(locations)
        try:
            for obj in objects:
                if event.is_cancelled:
                    yield CANCEL, None
                    return
                yield PENDING, obj.dataset()
        finally:
            objects.close()  # releases files and spool files now, not when collected

    def request(self, event: Any) -> tuple[int, list[dicom_pb2.InstanceLocation]]:
        """(0, locations) or (failure status, []) for a C-GET or C-MOVE
        request: pynetdicom's Event or the lean path's request."""
        try:
            tenant = self._principals.tenant(event.assoc, auth_pb.ACTION_READ)
            if tenant is None:
                return NOT_AUTHORIZED, []
            try:
                identifier = event.identifier
            except Exception:
                return DATASET_MISMATCH, []
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

    def destination(self, event: Any) -> Peer | None:
        """The C-MOVE destination, if it exists for the caller's tenant: one
        kept for other tenants is answered as unknown (no existence oracle)."""
        peer = self._settings.dimse_peers.get(str(event.move_destination).strip())
        if peer is None or not peer.tenants:
            return peer
        principal = self._principals.principal(event.assoc)
        held = set(principal.tenants) if principal is not None else set()
        return peer if held & set(peer.tenants) else None
