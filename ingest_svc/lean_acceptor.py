"""The lean acceptor: a DICOM upper layer (PS3.8) beside pynetdicom for
associations that store, echo, query or retrieve (storescu, dcmsend,
modalities; findscu, getscu, movescu, viewers and PACS asking for studies).

pynetdicom costs ~2.5 ms of CPU per C-STORE before our pipeline runs (its
DUL and association reactors poll with 1 ms sleeps, PDUs are read with many
small recv() calls and decoded by copying, each response is encoded by
pydicom), and ~3 ms per C-STORE sub-operation it sends. Here the
connection's own thread speaks the upper layer (ingest_svc.upper_layer):
received data set fragments go into the staged object as they arrive,
command sets are read and written by hand (ingest_svc.command_set), and
query/retrieve requests go to ingest_svc.query_retrieve. Association
negotiation reuses pynetdicom's public PDU classes and presentation context
negotiation, so the answers are pynetdicom's; the association policy
(ingest_svc.principals), the C-STORE steps (ingest_svc.store), the query
and retrieve steps (ingest_svc.queries, ingest_svc.retrieval) and the audit
records are the ones the pynetdicom path uses.

DimseServer.finish_request peeks at the A-ASSOCIATE-RQ (MSG_PEEK, so that
pynetdicom gets the socket untouched when the request is not for us) and
hands over requests that propose nothing but storage, Verification and the
patient and study root query/retrieve models; storage commitment and
anything else stay on pynetdicom."""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydicom.uid import UID
from pynetdicom import AE, sop_class
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import (
    AllStoragePresentationContexts,
    PresentationContext,
    negotiate_as_acceptor,
    negotiate_unrestricted,
)
from pynetdicom.service_class import ServiceClass
from pynetdicom.sop_class import Verification, uid_to_service_class  # type: ignore[attr-defined]  # generated at import time

from common.blobs import StagedObject
from common.gen.dicomserver.v1 import events_pb2
from common.ingest import IngestPipeline
from dicomcore.status import OUT_OF_RESOURCES, STORE_HANDLER_FAILED
from ingest_svc import command_set, store
from ingest_svc.principals import Principals
from ingest_svc.query_retrieve import QUERY_RETRIEVE, QueryRetrieve
from ingest_svc.settings import IngestSettings
from ingest_svc.upper_layer import (
    A_ASSOCIATE_RQ as A_ASSOCIATE_RQ_PDU,
)
from ingest_svc.upper_layer import (
    HEADER,
    RELEASE_RP_PDU,
    SERVICE_USER,
    Connection,
    Dropped,
    Message,
    ReleaseRequested,
)

if TYPE_CHECKING:
    from ingest_svc.audit_trail import DimseAudit

log = logging.getLogger(__name__)

APPLICATION_CONTEXT_NAME = UID("1.2.840.10008.3.1.1.1")
# Largest A-ASSOCIATE-RQ served here: it is peeked at whole in the socket's
# receive buffer. Larger ones (every storage class in every syntax is ~100 KB)
# go to pynetdicom, which reads up to scp.MAX_CONTROL_PDU.
MAX_PEEKED_REQUEST = 256 * 1024
# Negotiation outcomes kept (getscu's request is 17 KB), and the largest request kept.
MAX_REMEMBERED = 64
MAX_REMEMBERED_REQUEST = 64 * 1024

_STORAGE = frozenset(cx.abstract_syntax for cx in AllStoragePresentationContexts)
_WRITE = events_pb2.AuditRecord.ACTION_WRITE
_WITH_DATA_SET = frozenset((command_set.C_STORE_RQ, command_set.C_FIND_RQ, command_set.C_GET_RQ, command_set.C_MOVE_RQ))


def is_storage(uid: UID) -> bool:
    """Storage SOP classes, and private and unknown ones: pynetdicom accepts
    those as storage with DICOMSERVER_ACCEPT_UNKNOWN_SOP_CLASSES and refuses
    them without, and so does the negotiation here. A class pynetdicom
    serves otherwise (modality worklists, say, which its unrestricted
    negotiation also takes for storage) is not."""
    return uid in _STORAGE or (
        (uid.is_private or not hasattr(sop_class, uid.keyword)) and uid_to_service_class(uid) is ServiceClass
    )


def served_here(rq: A_ASSOCIATE, query_retrieve: bool = True) -> bool:
    """Whether a request proposes nothing but storage SOP classes,
    Verification and (with `query_retrieve`) the query/retrieve models
    served here."""
    contexts = rq.presentation_context_definition_list
    for cx in contexts:
        # None for a proposed context without an Abstract Syntax sub-item:
        # UID(None) then raises TypeError out of peek_request, which drops the
        # connection unanswered (a known gap, left as it is).
        uid = UID(cx.abstract_syntax)  # type: ignore[arg-type]
        if uid == Verification or is_storage(uid) or (query_retrieve and uid in QUERY_RETRIEVE):
            continue
        return False
    return bool(contexts)


class LeanAcceptor:
    """What the lean associations of one server share."""

    def __init__(
        self,
        settings: IngestSettings,
        ae: AE,
        contexts: list[PresentationContext],
        principals: Principals,
        audit: DimseAudit,
        pipeline: IngestPipeline,
        query_retrieve: QueryRetrieve | None = None,
    ) -> None:
        self.settings = settings
        self.ae = ae
        self.contexts = contexts
        self.principals = principals
        self.audit = audit
        self.pipeline = pipeline
        self.query_retrieve = query_retrieve
        # One receive buffer per association: enough for a P-DATA-TF of the
        # size we offer, within reason (fragments larger than it are streamed).
        self.buffer_size = min(max(settings.max_pdu_size, 64 * 1024), 1024 * 1024) + 64
        self._lock = threading.Lock()
        self._negotiated: dict[bytes, Negotiated | None] = {}

    def request(self, data: bytes) -> Request | None:
        """The A-ASSOCIATE-RQ PDU `data` when it is one to serve here (None:
        pynetdicom's, or not one at all, which pynetdicom answers).

        Decoding a request and negotiating it with pynetdicom's classes took
        ~30 ms of CPU for getscu's 120 storage contexts with role selection
        (more than a whole C-GET of a series should), and a peer sends the
        same proposal every time: the outcome is kept by the request's bytes
        after the AE titles, which are all it depends on."""
        key = bytes(data[6:8]) + bytes(data[74:])
        with self._lock:
            known = key in self._negotiated
            negotiated = self._negotiated.get(key)
        if not known:
            negotiated = self._negotiate_pdu(data)
            if len(key) <= MAX_REMEMBERED_REQUEST:
                with self._lock:
                    if len(self._negotiated) >= MAX_REMEMBERED:
                        self._negotiated.clear()
                    self._negotiated[key] = negotiated
        if negotiated is None:
            return None
        titles = A_ASSOCIATE_RQ()
        try:  # as pynetdicom reads them: ASCII, leading and trailing spaces stripped
            titles.called_ae_title = bytes(data[10:26])
            titles.calling_ae_title = bytes(data[26:42])
        except ValueError:
            return None
        return Request(titles.called_ae_title, titles.calling_ae_title, negotiated)

    def _negotiate_pdu(self, data: bytes) -> Negotiated | None:
        pdu = A_ASSOCIATE_RQ()
        try:
            pdu.decode(data)
            rq = pdu.to_primitive()
        except Exception:  # malformed: pynetdicom refuses it as it always did
            return None
        if pdu.protocol_version != 0x0001 or not served_here(rq, self.query_retrieve is not None):
            return None
        ac, accepted = self.negotiate(rq)
        peer_max = 0
        for item in rq.user_information:
            if isinstance(item, MaximumLengthNotification):
                peer_max = int(item.maximum_length_received or 0)
        return Negotiated(ac, accepted, peer_max)

    def negotiate(self, rq: A_ASSOCIATE) -> tuple[bytes, dict[int, PresentationContext]]:
        """The A-ASSOCIATE-AC pynetdicom would send for `rq`, and the accepted
        contexts by ID (with the roles negotiated for them)."""
        roles = {
            item.sop_class_uid: (item.scu_role, item.scp_role)
            for item in rq.user_information
            if isinstance(item, SCP_SCU_RoleSelectionNegotiation)
        }
        negotiate = negotiate_unrestricted if self.settings.accept_unknown_sop_classes else negotiate_as_acceptor
        # pynetdicom types a role item's SOP Class UID Optional; a decoded item has one.
        result, role_items = negotiate(rq.presentation_context_definition_list, self.contexts, roles)  # type: ignore[arg-type]
        accepted = {int(cx.context_id): cx for cx in result if cx.result == 0x00}  # type: ignore[arg-type]
        ac = A_ASSOCIATE()
        ac.application_context_name = APPLICATION_CONTEXT_NAME
        ac.calling_ae_title = rq.calling_ae_title
        ac.called_ae_title = rq.called_ae_title
        ac.result = 0x00
        ac.result_source = 0x01
        ac.presentation_context_definition_results_list = (
            sorted(accepted.values(), key=lambda cx: int(cx.context_id))  # type: ignore[arg-type]
            + [cx for cx in result if cx.result != 0x00]
        )
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = self.settings.max_pdu_size
        implementation = ImplementationClassUIDNotification()
        implementation.implementation_class_uid = self.ae.implementation_class_uid
        items: list[Any] = [max_length, implementation]
        if self.ae.implementation_version_name:
            version = ImplementationVersionNameNotification()
            version.implementation_version_name = self.ae.implementation_version_name
            items.append(version)
        ac.user_information = items + list(role_items)
        return A_ASSOCIATE_AC(ac).encode(), accepted


@dataclass(frozen=True)
class Negotiated:
    """What an association request comes to, whoever sends it: the
    A-ASSOCIATE-AC (its AE title fields to be filled in), the accepted
    contexts by ID and the peer's maximum PDU length."""

    ac: bytes
    accepted: dict[int, PresentationContext]
    peer_max: int

    def answer(self, called: str, calling: str) -> bytes:
        return self.ac[:10] + called.ljust(16).encode("ascii") + calling.ljust(16).encode("ascii") + self.ac[42:]


@dataclass(frozen=True)
class Request:
    """An A-ASSOCIATE-RQ served here."""

    called: str
    calling: str
    negotiated: Negotiated


def reject_pdu(result: int, source: int, reason: int) -> bytes:
    rj = A_ASSOCIATE()
    rj.result, rj.result_source, rj.diagnostic = result, source, reason
    return A_ASSOCIATE_RJ(rj).encode()


@dataclass(eq=False, slots=True)
class _Store:
    """A C-STORE-RQ's data set on its way into `staged`."""

    staged: StagedObject | None = None
    tenant: str = ""
    status: int = 0x0000  # the answer when nothing is staged

    def write(self, data: memoryview) -> None:
        if self.staged is not None and not store.write(self.staged, data):
            self.staged, self.status = None, OUT_OF_RESOURCES


class LeanAssociation(Connection):
    """One connection served by the lean acceptor, on its own thread.

    Principals and the audit trail key their records by this object."""

    def __init__(self, acceptor: LeanAcceptor, sock: socket.socket, address: tuple[str, int]) -> None:
        super().__init__(sock, acceptor.buffer_size, acceptor.settings.max_pdu_size, f"{address[0]}:{address[1]}")
        self.acceptor = acceptor
        self.address, self.port = address[0], address[1]
        self.calling_ae = ""
        self.accepted: dict[int, PresentationContext] = {}
        self._rq_length = 0
        # Called by abort() too: the C-MOVE destination association in use.
        self.on_abort: list[Any] = []
        # While a query/retrieve request is served: the Message IDs C-CANCEL-RQs named.
        self.busy = False
        self.cancelled: set[int] = set()

    # -- the request, looked at before anyone reads it

    def peek_request(self, timeout: float) -> Request | Literal[False] | None:
        """The A-ASSOCIATE-RQ when it is one to serve here, False when it is
        for pynetdicom (or not one at all: pynetdicom answers that as it
        always did), None when the peer sent nothing complete within
        `timeout` (the ACSE timeout) or left."""
        deadline = time.monotonic() + timeout
        head = self._peek(6, deadline)
        if head is None:
            return None
        pdu_type, length = HEADER.unpack(head)
        if pdu_type != A_ASSOCIATE_RQ_PDU or length > MAX_PEEKED_REQUEST:
            return False
        data = self._peek(6 + length, deadline)
        if data is None:
            return None
        request = self.acceptor.request(data)
        if request is None:
            return False
        self._rq_length = 6 + length
        return request

    def _peek(self, n: int, deadline: float) -> bytes | None:
        """The first `n` bytes the peer sent, left unread; None when they do
        not come by `deadline` or the peer leaves before."""
        sock = self.sock
        seen = -1
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closing:
                    return None
                sock.settimeout(remaining)
                data = sock.recv(n, socket.MSG_PEEK)
                if len(data) >= n:
                    return data
                if not data:
                    return None
                if len(data) == seen:  # woken with nothing new: the peer has closed
                    return None
                seen = len(data)
                # Poll wakes the reader only once all of it is there (Linux
                # honours SO_RCVLOWAT in poll), or the peer closes.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, n)
        except OSError:  # timed out, reset, or shut down by stop()
            return None
        finally:
            if seen >= 0:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
                except OSError:
                    pass

    # -- the association

    def run(self, rq: Request) -> None:
        """Answers the request peeked at and serves the association until it
        is released or aborted, or the connection ends."""
        acceptor = self.acceptor
        self.sock.settimeout(acceptor.settings.network_timeout)
        try:
            self._skip(self._rq_length)
            self.calling_ae = rq.calling.strip()
            rejection = acceptor.principals.admit(self, rq.calling, rq.called, self.address, self.source)
            if rejection is not None:  # auth_svc's refusals are logged (and audited) by admit
                log.debug("association from %s (calling AE '%s') rejected: %s", self.source, self.calling_ae, rejection)
                self.send(reject_pdu(*rejection))
                return
            negotiated = rq.negotiated
            self.accepted, self.peer_max = negotiated.accepted, negotiated.peer_max
            self.send(negotiated.answer(rq.called, rq.calling))
            self.established = True
            self._serve()
        except Dropped:
            pass
        except TimeoutError:
            log.warning("no data from %s for %s s: association aborted", self.source, acceptor.settings.network_timeout)
            self.send_abort(SERVICE_USER)
        except OSError as exc:
            if not self._closing:
                log.info("connection from %s ended: %s", self.source, exc)
        except Exception:
            log.exception("association from %s failed", self.source)
            self.send_abort(SERVICE_USER)
        finally:
            self.established = False
            message = self.take_partial()
            if message is not None and isinstance(message.state, _Store) and message.state.staged is not None:
                message.state.staged.discard()  # a peer that left mid-object leaves nothing

    def abort(self) -> None:
        """From another thread (DimseServer.stop): aborts the association
        (and a C-MOVE's destination association) and wakes its thread,
        which then cleans up."""
        self.close_from_elsewhere()  # first: nothing more goes to the requestor
        for hook in list(self.on_abort):
            hook()

    def _serve(self) -> None:
        try:
            while True:
                self._dispatch(self.receive())
        except ReleaseRequested:
            self.send(RELEASE_RP_PDU)

    def accepts_context(self, context_id: int) -> bool:
        return context_id in self.accepted

    # -- while a query/retrieve request is served

    def begin_operation(self) -> None:
        self.busy = True
        self.cancelled.clear()

    def end_operation(self) -> None:
        self.busy = False

    def is_cancelled(self, message_id: int) -> bool:
        """Whether a C-CANCEL-RQ for `message_id` came (what has come is read
        without waiting)."""
        while self.readable():
            self.interim(self.receive())
        if message_id in self.cancelled:
            self.cancelled.discard(message_id)
            return True
        return False

    def interim(self, message: Message) -> None:
        """A message while a request is served: only C-CANCEL-RQ is expected
        (no asynchronous operations are negotiated); C-STORE-RSPs are awaited
        by the C-GET itself."""
        command = message.command
        assert command is not None
        if command.field == command_set.C_CANCEL_RQ:
            self.cancelled.add(command.responded_to)
            return
        self.invalid(f"command 0x{command.field:04X} while another request is served")

    def command_received(self, message: Message) -> None:
        command = message.command
        assert command is not None
        if self.busy:
            self.invalid(f"command 0x{command.field:04X} while another request is served")
        if command.field == command_set.C_STORE_RQ:
            if command.sop_instance is None:
                self.invalid("a C-STORE-RQ without its Affected SOP Instance UID")
            abstract_syntax = self.accepted[message.context_id].abstract_syntax
            assert abstract_syntax is not None  # served_here() let no context without one through
            if UID(abstract_syntax) in QUERY_RETRIEVE:
                self.invalid("a C-STORE-RQ on a query/retrieve presentation context")
            message.state = self._begin_store(message, command)
            message.sink = message.state.write
        elif command.field not in (command_set.C_FIND_RQ, command_set.C_GET_RQ, command_set.C_MOVE_RQ):
            self.invalid(f"command 0x{command.field:04X} with a data set")

    def _dispatch(self, message: Message) -> None:
        command = message.command
        assert command is not None
        field = command.field
        if field in _WITH_DATA_SET and not command.has_data_set:
            self.invalid(f"command 0x{field:04X} without its data set")
        if field == command_set.C_STORE_RQ:
            self._stored(message)
        elif field == command_set.C_ECHO_RQ:
            self.send_message(
                message.context_id,
                command_set.response(command_set.C_ECHO_RSP, command.message_id, 0x0000, command.sop_class),
            )
        elif (
            field in (command_set.C_FIND_RQ, command_set.C_GET_RQ, command_set.C_MOVE_RQ)
            and self.acceptor.query_retrieve is not None
        ):
            self.acceptor.query_retrieve.serve(self, message)
        elif field != command_set.C_CANCEL_RQ:  # nothing under way to cancel
            log.warning("%s sent command 0x%04X, which is not served here; aborting", self.source, field)
            self.send_abort(SERVICE_USER)
            raise Dropped

    # -- C-STORE

    def _begin_store(self, message: Message, command: command_set.Command) -> _Store:
        state = _Store()
        tenant, state.status = store.write_access(self.acceptor.principals, self)
        if tenant is None:
            return state
        state.tenant = tenant
        transfer_syntax = str(self.accepted[message.context_id].transfer_syntax[0])
        try:
            head = store.file_meta(command.sop_class, command.sop_instance or "", transfer_syntax)
        except ValueError as exc:
            log.warning("C-STORE: no file meta information for the request: %s", exc)
            state.status = STORE_HANDLER_FAILED
            return state
        state.staged = store.begin(self.acceptor.pipeline, head)
        if state.staged is None:
            state.status = OUT_OF_RESOURCES
        return state

    def _stored(self, message: Message) -> None:
        command, state = message.command, message.state
        assert command is not None and isinstance(state, _Store)
        sop_instance = command.sop_instance or ""
        status = state.status
        if state.staged is not None:
            staged, state.staged = state.staged, None
            try:
                status = store.finish(
                    self.acceptor.pipeline, staged, state.tenant, command.sop_class, sop_instance, self.calling_ae
                )
            except Exception:
                log.exception("C-STORE of %s failed", sop_instance)
                staged.discard()
                status = STORE_HANDLER_FAILED
        self.acceptor.audit.record(self, self.source, "C-STORE", _WRITE, status, sop=sop_instance)
        self.send_message(
            message.context_id,
            command_set.response(
                command_set.C_STORE_RSP, command.message_id, status, command.sop_class, command.sop_instance
            ),
        )
