"""C-FIND, C-GET and C-MOVE on the lean path (PS3.4 C.4), for the patient
and study root models: the requests the lean acceptor
(ingest_svc.lean_acceptor) receives, answered with the steps the pynetdicom
path uses (ingest_svc.queries builds and pages the query, ingest_svc.retrieval
decides what to send and where), and the responses pynetdicom's
Query/Retrieve service class sends, byte for byte: the same statuses,
sub-operation counts and Failed SOP Instance UID Lists.

C-FIND matches are encoded straight from the index's DICOM JSON and written
a page at a time. C-GET sends its C-STORE sub-operations on the requestor's
association, C-MOVE on an association of its own to the destination
(ingest_svc.store_scu). A C-CANCEL-RQ is looked for before each match and
each sub-operation, and read while a sub-operation's response is awaited.

Where the lean path differs from pynetdicom's, on purpose: a C-MOVE refused
for its identifier, its tenant or the retrieve limit is answered without
first opening an association to the destination (pynetdicom opened and
released one, and answered 0xA801 when it could not); the audit record of
a C-GET or C-MOVE carries the final status sent (0xB000 when
sub-operations failed), where the pynetdicom path records its handler's."""

from __future__ import annotations

import io
import logging
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE
from pynetdicom.dsutils import decode, encode
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # generated at import time
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from pynetdicom.status import (
    QR_GET_SERVICE_CLASS_STATUS,
    QR_MOVE_SERVICE_CLASS_STATUS,
    STATUS_FAILURE,
    STATUS_SUCCESS,
    STATUS_WARNING,
    STORAGE_SERVICE_CLASS_STATUS,
)

from common.clients import MetadataClient
from common.gen.dicomserver.v1 import events_pb2
from dicomcore.status import (
    CANCEL,
    FIND_FAILED,
    FIND_UNENCODABLE,
    GET_FAILED,
    GET_TOO_MANY,
    MOVE_DESTINATION_UNKNOWN,
    MOVE_FAILED,
    MOVE_TOO_MANY,
    PENDING,
    SUB_OPERATIONS_FAILED,
    SUCCESS,
    WARNING,
)
from ingest_svc import command_set, queries, store_scu
from ingest_svc.command_set import C_FIND_RQ, C_FIND_RSP, C_GET_RQ, C_GET_RSP, C_MOVE_RQ, C_MOVE_RSP
from ingest_svc.principals import Principals
from ingest_svc.retrieval import Retriever, contexts_for
from ingest_svc.settings import IngestSettings
from ingest_svc.store_scu import Prepared, StoreSender
from ingest_svc.upper_layer import Dropped, Message, ReleaseRequested

if TYPE_CHECKING:
    from ingest_svc.audit_trail import DimseAudit
    from ingest_svc.lean_acceptor import LeanAssociation

log = logging.getLogger(__name__)

# The models served here, by the request each takes.
QUERY_RETRIEVE: dict[UID, int] = {
    PatientRootQueryRetrieveInformationModelFind: C_FIND_RQ,
    StudyRootQueryRetrieveInformationModelFind: C_FIND_RQ,
    PatientRootQueryRetrieveInformationModelGet: C_GET_RQ,
    StudyRootQueryRetrieveInformationModelGet: C_GET_RQ,
    PatientRootQueryRetrieveInformationModelMove: C_MOVE_RQ,
    StudyRootQueryRetrieveInformationModelMove: C_MOVE_RQ,
}
MAX_SUB_OPERATIONS = 65535
_READ = events_pb2.AuditRecord.ACTION_READ
# Connection-level ends of an operation: they propagate to the association.
_ASSOCIATION_ENDS = (Dropped, ReleaseRequested, OSError)


class Request:
    """A C-FIND, C-GET or C-MOVE request on the lean path, with what
    ingest_svc.queries and ingest_svc.retrieval read of pynetdicom's Event:
    assoc, request.AffectedSOPClassUID, context.transfer_syntax, identifier,
    is_cancelled, move_destination."""

    def __init__(self, assoc: LeanAssociation, message: Message, context: PresentationContext) -> None:
        command = message.command
        assert command is not None
        self.assoc = assoc
        self.command = command
        self.context_id = message.context_id
        self.context = context.as_tuple
        self.request = SimpleNamespace(AffectedSOPClassUID=command.sop_class, MessageID=command.message_id)
        self.move_destination = command.move_destination
        self._data = bytes(message.data or b"")
        self._identifier: Dataset | None = None

    @property
    def identifier(self) -> Dataset:
        """Decoded as pynetdicom decodes it (lazily: an element may raise when read)."""
        if self._identifier is None:
            syntax = UID(self.context.transfer_syntax)
            if self._data:
                ds = decode(io.BytesIO(self._data), syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
                ds.set_original_encoding(syntax.is_implicit_VR, syntax.is_little_endian)
            else:
                ds = Dataset()
            self._identifier = ds
        return self._identifier

    @property
    def is_cancelled(self) -> bool:
        return self.assoc.is_cancelled(self.command.message_id)

    def encode(self, ds: Dataset) -> bytes:
        syntax = UID(self.context.transfer_syntax)
        return encode(ds, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated) or b""


def study_of(request: Request) -> str:
    """The Study Instance UID the identifier names, if one (audit records)."""
    try:
        value = request.identifier.get("StudyInstanceUID", "")
    except Exception:  # an undecodable identifier was answered with a failure status
        return ""
    return str(value)[:64] if isinstance(value, str) else ""


def _failed_list(uids: list[str]) -> Dataset:
    ds = Dataset()
    ds.FailedSOPInstanceUIDList = uids
    return ds


class _SubOperations:
    """The counts pynetdicom keeps: remaining, failed, warning, completed."""

    def __init__(self, total: int) -> None:
        self.total = self.remaining = total
        self.failed = self.warning = self.completed = 0
        self.failed_uids: list[str] = []

    def add(self, status: int | None, sop_instance: str) -> None:
        category = (
            STORAGE_SERVICE_CLASS_STATUS[status][0]
            if status is not None and status in STORAGE_SERVICE_CLASS_STATUS
            else STATUS_FAILURE
        )
        if category == STATUS_FAILURE:
            self.failed += 1
            self.failed_uids.append(sop_instance)
        elif category == STATUS_WARNING:
            self.warning += 1
        elif category == STATUS_SUCCESS:
            self.completed += 1
        self.remaining -= 1
        if status is not None and category != STATUS_SUCCESS:
            log.info("retrieve: a C-STORE sub-operation answered 0x%04X", status)

    def pending(self) -> tuple[int, int, int, int]:
        return self.remaining, self.completed, self.failed, self.warning

    def final(self) -> tuple[int, tuple[int | None, int, int, int], bool]:
        """(status, counts, whether the Failed SOP Instance UID List goes with it)."""
        counts = (0, self.completed, self.failed, self.warning)
        if not self.failed and not self.warning:
            return SUCCESS, counts, False
        return (SUB_OPERATIONS_FAILED if self.failed == self.total else WARNING), counts, True


def _sub_message_id(message_id: int, index: int) -> int:
    """The Message ID of the index-th sub-operation, as pynetdicom numbers them."""
    msg_id = message_id + index + 1
    return msg_id - 65535 if msg_id > 65535 else msg_id


class QueryRetrieve:
    def __init__(
        self,
        settings: IngestSettings,
        ae: AE,
        metadata: MetadataClient,
        principals: Principals,
        audit: DimseAudit,
        retriever: Retriever,
    ) -> None:
        self.settings = settings
        self.ae = ae
        self.metadata = metadata
        self.principals = principals
        self.audit = audit
        self.retriever = retriever

    def serve(self, assoc: LeanAssociation, message: Message) -> None:
        """One C-FIND, C-GET or C-MOVE request, answered in full before the
        association reads its next request."""
        command = message.command
        assert command is not None
        context = assoc.accepted[message.context_id]
        assert context.abstract_syntax is not None  # served_here() let no context without one through
        if QUERY_RETRIEVE.get(UID(context.abstract_syntax)) != command.field:
            assoc.invalid(f"command 0x{command.field:04X} on a presentation context for another service")
        if not command.has_data_set:
            assoc.invalid(f"command 0x{command.field:04X} without its identifier")
        request = Request(assoc, message, context)
        assoc.begin_operation()
        try:
            if command.field == C_FIND_RQ:
                self._find(request)
            elif command.field == C_GET_RQ:
                self._get(request)
            else:
                self._move(request)
        finally:
            assoc.end_operation()

    def _respond(
        self,
        request: Request,
        field: int,
        status: int,
        counts: tuple[int | None, int | None, int | None, int | None] = (None, None, None, None),
        identifier: Dataset | None = None,
    ) -> None:
        request.assoc.send(self._response(request, field, status, counts, identifier))

    def _response(
        self,
        request: Request,
        field: int,
        status: int,
        counts: tuple[int | None, int | None, int | None, int | None] = (None, None, None, None),
        identifier: Dataset | None = None,
    ) -> bytes:
        """A response's PDUs: `counts` are the Numbers of Remaining,
        Completed, Failed and Warning Sub-operations (None: left out)."""
        command = request.command
        data = request.encode(identifier) if identifier is not None else None
        return request.assoc.message_pdus(
            request.context_id,
            command_set.qr_response(field, command.message_id, status, command.sop_class, data is not None, counts),
            data,
        )

    def _record(self, request: Request, operation: str, status: int) -> None:
        assoc = request.assoc
        self.audit.record(assoc, assoc.source, operation, _READ, status, study=study_of(request))

    # -- C-FIND

    def _find(self, request: Request) -> None:
        assoc, command = request.assoc, request.command
        syntax = UID(request.context.transfer_syntax)
        pending = command_set.qr_response(C_FIND_RSP, command.message_id, PENDING, command.sop_class, True)
        status = SUCCESS
        try:
            for status, query, matches in queries.pages(
                request, self.metadata, self.principals, self.settings.find_page_size
            ):
                if status != PENDING:
                    break
                assert query is not None
                out = []
                for match in matches:
                    if request.is_cancelled:
                        status = CANCEL
                        break
                    data = queries.response_bytes(query, match, syntax)
                    if data is None:
                        log.error("C-FIND: a response identifier cannot be encoded")
                        status = FIND_UNENCODABLE
                        break
                    out.append(assoc.message_pdus(request.context_id, pending, data))
                if out:
                    assoc.send(b"".join(out))
                if status != PENDING:
                    break
        except _ASSOCIATION_ENDS:
            raise
        except Exception:
            log.exception("C-FIND failed")
            status = FIND_FAILED
        finally:
            self._record(request, "C-FIND", status)
        self._respond(request, C_FIND_RSP, status)

    # -- C-GET and C-MOVE

    def _refused(self, request: Request, field: int, status: int) -> None:
        """A retrieve refused before any sub-operation: pynetdicom counts the
        one sub-operation its handler announced as failed, and sends a
        status its service class does not know (0xA700) without counts."""
        known = QR_GET_SERVICE_CLASS_STATUS if field == C_GET_RSP else QR_MOVE_SERVICE_CLASS_STATUS
        if status in known:
            self._respond(request, field, status, (None, 0, 1, 0), _failed_list([]))
        else:
            self._respond(request, field, status)

    def _located(self, request: Request, field: int) -> tuple[int, list[Any] | None]:
        """(0, the instances to send), or (status, None) once the request is answered."""
        status, locations = self.retriever.request(request)
        if status:
            self._refused(request, field, status)
            return status, None
        if not locations:
            self._respond(request, field, SUCCESS, (None, 0, 0, 0))
            return SUCCESS, None
        if len(locations) > MAX_SUB_OPERATIONS:
            log.error("retrieve: more than %d instances to send", MAX_SUB_OPERATIONS)
            status = GET_TOO_MANY if field == C_GET_RSP else MOVE_TOO_MANY
            self._respond(request, field, status)
            return status, None
        return 0, locations

    def _send_all(
        self,
        request: Request,
        field: int,
        sender: StoreSender,
        locations: list[Any],
        on_requestor: bool,
    ) -> int:
        """The sub-operations, each followed by a pending response, then the
        final response; returns the final status.

        Each object is read while the response to the one before it is
        awaited. On the requestor's association (C-GET) a pending response
        goes out in one write with the next C-STORE-RQ (or the final
        response), and an error of the association ends everything; on the
        destination's (C-MOVE) it fails the sub-operation, and each one after."""
        subs = _SubOperations(len(locations))
        objects = self.retriever.outgoing(locations)
        message_id = request.command.message_id
        deferred = b""  # pending responses not yet sent (C-GET)
        upcoming: Prepared | None = None
        try:
            obj = next(objects, None)
            upcoming = self._prepare(sender, obj, _sub_message_id(message_id, 0))
            index = 0
            while obj is not None:
                if request.is_cancelled:
                    if not on_requestor:
                        sender.conn.release()  # type: ignore[attr-defined]
                    request.assoc.send(
                        deferred
                        + self._response(request, field, CANCEL, subs.pending(), _failed_list(subs.failed_uids))
                    )
                    return CANCEL
                prepared, upcoming = upcoming, None
                result: int | None = None
                following = None
                if prepared is not None:
                    try:
                        sender.send(prepared, deferred if on_requestor else b"")
                        deferred = b""
                        following = next(objects, None)
                        upcoming = self._prepare(sender, following, _sub_message_id(message_id, index + 1))
                        result = sender.response(prepared)
                    except TimeoutError:
                        log.warning(
                            "retrieve: no C-STORE response from %s within %s s; aborting",
                            sender.conn.source,
                            sender.timeout,
                        )
                        sender.conn.send_abort()  # as pynetdicom does
                        if on_requestor:
                            raise Dropped from None
                    except (Dropped, ReleaseRequested, OSError) as exc:
                        if on_requestor:
                            raise
                        if not isinstance(exc, Dropped):
                            log.warning(
                                "retrieve: the association to %s ended: %s", sender.conn.source, type(exc).__name__
                            )
                        sender.conn.send_abort()
                if following is None and upcoming is None:
                    following = next(objects, None)
                    upcoming = self._prepare(sender, following, _sub_message_id(message_id, index + 1))
                subs.add(result, str(obj.SOPInstanceUID))
                pending = self._response(request, field, PENDING, subs.pending())
                if on_requestor:
                    deferred += pending
                else:
                    request.assoc.send(pending)
                obj, index = following, index + 1
        finally:
            if upcoming is not None:
                upcoming.close()
            objects.close()  # releases files and spool files now, not when collected
        if not on_requestor:
            sender.conn.release()  # type: ignore[attr-defined]
        status, counts, with_list = subs.final()
        request.assoc.send(
            deferred
            + self._response(request, field, status, counts, _failed_list(subs.failed_uids) if with_list else None)
        )
        return status

    @staticmethod
    def _prepare(sender: StoreSender, obj: Any, message_id: int) -> Prepared | None:
        """The next sub-operation's C-STORE-RQ, read ahead; None when there is
        none, or it fails before anything is sent, or the association has gone."""
        if obj is None or not sender.conn.established:
            return None
        return sender.prepare(obj, message_id)

    def _get(self, request: Request) -> None:
        assoc = request.assoc
        status = SUCCESS
        try:
            status, locations = self._located(request, C_GET_RSP)
            if locations is None:
                return
            sender = StoreSender(assoc, assoc.accepted, self.settings.dimse_timeout)
            status = self._send_all(request, C_GET_RSP, sender, locations, on_requestor=True)
        except _ASSOCIATION_ENDS:
            raise
        except Exception:
            log.exception("C-GET failed")
            status = GET_FAILED
            self._respond(request, C_GET_RSP, status)
        finally:
            self._record(request, "C-GET", status)

    def _move(self, request: Request) -> None:
        assoc = request.assoc
        status = SUCCESS
        destination: store_scu.DestinationAssociation | None = None
        try:
            peer = self.retriever.destination(request)
            if peer is None:
                log.info("C-MOVE to an unknown destination refused")
                status = MOVE_DESTINATION_UNKNOWN
                self._respond(request, C_MOVE_RSP, status)
                return
            status, locations = self._located(request, C_MOVE_RSP)
            if locations is None:
                return
            settings = self.settings
            destination = store_scu.associate(
                self.ae,
                peer.host,
                peer.port,
                request.move_destination.strip(),
                contexts_for(locations),
                settings.acse_timeout,
                settings.network_timeout,
            )
            if destination is None:
                status = MOVE_DESTINATION_UNKNOWN
                self._respond(request, C_MOVE_RSP, status)
                return
            assoc.on_abort.append(destination.close_from_elsewhere)
            sender = StoreSender(
                destination,
                destination.accepted,
                settings.dimse_timeout,
                (self.ae.ae_title, request.command.message_id),
            )
            status = self._send_all(request, C_MOVE_RSP, sender, locations, on_requestor=False)
        except _ASSOCIATION_ENDS:
            raise
        except Exception:
            log.exception("C-MOVE failed")
            status = MOVE_FAILED
            self._respond(request, C_MOVE_RSP, status)
        finally:
            if destination is not None:
                if destination.close_from_elsewhere in assoc.on_abort:
                    assoc.on_abort.remove(destination.close_from_elsewhere)
                destination.close()
            self._record(request, "C-MOVE", status)
