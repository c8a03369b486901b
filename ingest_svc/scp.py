"""The DIMSE edge: a pynetdicom AE with thin handlers bound to their clients,
and beside it the lean acceptor (ingest_svc.lean_acceptor) for associations
that only store, echo, query or retrieve (patient and study root).

Association policy (calling/called AE title, tenant, the association limit)
is decided once, when the association is requested (ingest_svc.principals);
each operation then checks the action it needs."""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import threading
import time
from typing import Any, cast

from prometheus_client import Counter, Gauge
from pydicom.uid import (
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # generated at import time
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from common import tls
from common.clients import AuthClient, MetadataClient, StorageClient
from common.ingest import IngestPipeline
from ingest_svc import commitment, find, retrieval, retrieve, store
from ingest_svc.audit_trail import AuditSink, DimseAudit, Record
from ingest_svc.lean_acceptor import LeanAcceptor, LeanAssociation
from ingest_svc.principals import Principals
from ingest_svc.query_retrieve import QueryRetrieve
from ingest_svc.settings import IngestSettings

ASSOCIATIONS = Gauge("dicomserver_dimse_associations", "DIMSE associations open in this process")
SERVED_BY = Counter(
    "dicomserver_dimse_association_requests_total", "Association requests by the path that serves them", ["path"]
)
log = logging.getLogger(__name__)

QUERY_RETRIEVE = [
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelGet,
]
UNCOMPRESSED = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian]


class _SharedContexts(list):  # type: ignore[type-arg]
    """The supported presentation contexts, shared by every association.

    pynetdicom deep-copies the server's contexts for each new association;
    with every storage SOP class in every transfer syntax that copy took
    ~60 ms per association (measured), more than a whole C-FIND. Negotiation
    only reads them, so each association gets a new list of the same objects."""

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return list(self)


# Largest PDU other than P-DATA-TF we read (association negotiation): a
# request proposing every storage class in every transfer syntax is ~100 KB.
MAX_CONTROL_PDU = 1024 * 1024
P_DATA_TF = 0x04


class _BoundedSocket(AssociationSocket):
    """Refuses a PDU longer than the association allows before reading it.

    pynetdicom's reader takes the 6-byte PDU header and then reads whatever
    length it declares (up to 4 GiB) into memory, without checking it against
    the Maximum Length we offered. Raising OSError here is what a broken
    connection does: pynetdicom closes the association (Evt17)."""

    max_pdata = 0
    _pdu_type: int | None = None  # set between a PDU's header and its body

    def recv(self, nr_bytes: int) -> bytearray:
        if self._pdu_type is None:  # the 6-byte header: type, reserved, length
            data = super().recv(nr_bytes)
            self._pdu_type = data[0] if data else None
            return data
        pdu_type, self._pdu_type = self._pdu_type, None
        # P-DATA-TF: the Maximum Length we offered (0: none); others: negotiation.
        limit = (self.max_pdata or None) if pdu_type == P_DATA_TF else MAX_CONTROL_PDU
        if limit is not None and nr_bytes > limit:
            log.warning("a DIMSE peer sent a PDU of %d bytes, more than the %d allowed; closing", nr_bytes, limit)
            raise OSError("PDU longer than the negotiated maximum")
        return super().recv(nr_bytes)


class _RequestHandler(RequestHandler):
    def _create_association(self) -> Association:
        assoc = super()._create_association()
        # The socket pynetdicom just made, given the length check.
        sock = assoc.dul.socket
        sock.__class__ = _BoundedSocket
        cast(_BoundedSocket, sock).max_pdata = self.ae.maximum_pdu_size
        return assoc


class DimseServer(ThreadedAssociationServer):
    """Disables Nagle on every accepted socket (each C-STORE response would
    otherwise wait for a delayed ACK), gives it the network timeout (a peer
    that stops inside a PDU would otherwise hold its thread for ever), caps
    PDU lengths, and shares the port between processes when asked
    (SO_REUSEPORT).

    With `lean` set, the associations it serves (ingest_svc.lean_acceptor)
    are served by it on the connection's thread instead of by pynetdicom."""

    reuse_port = False
    lean: LeanAcceptor | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Before pynetdicom's __init__, which lists the active associations.
        self._lean: set[LeanAssociation] = set()
        self._lean_lock = threading.Lock()
        super().__init__(*args, **kwargs)
        self.contexts = _SharedContexts(self.contexts)
        self.RequestHandlerClass = _RequestHandler

    @property
    def active_associations(self) -> list[Any]:
        """pynetdicom's acceptors and the lean acceptor's connections."""
        with self._lean_lock:
            lean = list(self._lean)
        return super().active_associations + lean

    def server_bind(self) -> None:
        if self.reuse_port:
            # pynetdicom types it Optional; socketserver made it before binding.
            cast(socket.socket, self.socket).setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        # Accept only: pynetdicom would do the TLS handshake here, in the
        # accept loop, where one client that connects and sends nothing
        # stalls every other (finish_request does it on the connection's thread).
        sock, address = cast(socket.socket, self.socket).accept()  # open while serving
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # pynetdicom waits for data with select() and then reads a whole PDU
        # with blocking recv() calls: without a timeout a peer that stops
        # inside a PDU is never dropped (neither ARTIM nor the network
        # timeout can fire while the reader is blocked).
        sock.settimeout(self.ae.network_timeout)
        return sock, address

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.ssl_context is not None:
            # build_ae sets acse_timeout from the settings: a float, never None.
            request = tls.server_handshake(self.ssl_context, request, cast(float, self.ae.acse_timeout))
            if request is None:
                return
            # TLS associations stay on pynetdicom: the lean acceptor
            # decides by peeking at the A-ASSOCIATE-RQ (MSG_PEEK), which a
            # TLS socket cannot do, and pynetdicom must get a socket nobody
            # has read from.
            SERVED_BY.labels("pynetdicom").inc()
            super().finish_request(request, client_address)
            return
        if self.lean is None:
            SERVED_BY.labels("pynetdicom").inc()
            super().finish_request(request, client_address)
            return
        # Counted from here, as pynetdicom counts an association whose
        # request has not come yet.
        assoc = LeanAssociation(self.lean, request, client_address)
        with self._lean_lock:
            self._lean.add(assoc)
        try:
            rq = assoc.peek_request(cast(float, self.ae.acse_timeout))
            if rq is None:  # nothing within the ACSE timeout: dropped, as pynetdicom drops it
                log.debug("DIMSE peer %s sent no association request", assoc.source)
                self.shutdown_request(request)
                return
            if rq is not False:
                log.debug("association from %s: lean path", assoc.source)
                SERVED_BY.labels("lean").inc()
                try:
                    assoc.run(rq)
                finally:
                    self.shutdown_request(request)
                return
        finally:
            with self._lean_lock:
                self._lean.discard(assoc)
        log.debug("association from %s: pynetdicom path", assoc.source)
        SERVED_BY.labels("pynetdicom").inc()
        request.settimeout(self.ae.network_timeout)
        super().finish_request(request, client_address)

    def stop(self, grace: float) -> None:
        """Stops accepting, lets running associations finish for `grace`
        seconds, then aborts the rest: a silent peer (a load balancer's TCP
        check) would otherwise hold the shutdown until its ACSE timeout."""
        socketserver.BaseServer.shutdown(self)
        deadline = time.monotonic() + grace
        while self.active_associations and time.monotonic() < deadline:
            time.sleep(0.1)
        for assoc in self.active_associations:
            assoc.abort()
        self.shutdown()


def tls_context(settings: IngestSettings) -> ssl.SSLContext | None:
    """The server TLS context, when a certificate is configured (a CA without
    one is refused, never served as plain DIMSE)."""
    return tls.optional_server_context(
        settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file, "DICOMSERVER_TLS"
    )


def build_ae(settings: IngestSettings) -> AE:
    _config.UNRESTRICTED_STORAGE_SERVICE = settings.accept_unknown_sop_classes
    # C-MOVE/C-GET send stored files from disk as they are, without decoding.
    _config.STORE_SEND_CHUNKED_DATASET = True
    # pynetdicom logs identifiers (patient names, IDs) and every message at
    # INFO: keep that out of our logs unless asked for with DEBUG.
    _config.LOG_REQUEST_IDENTIFIERS = _config.LOG_RESPONSE_IDENTIFIERS = settings.log_level.upper() == "DEBUG"
    if settings.log_level.upper() != "DEBUG":
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = settings.max_pdu_size
    ae.maximum_associations = settings.max_associations
    ae.network_timeout = settings.network_timeout
    ae.acse_timeout = settings.acse_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.require_called_aet = settings.require_called_ae_title
    # Accept every transfer syntax as proposed: we store what was sent. Both
    # roles, so that a C-GET requester can take the SCP role for storage.
    for cx in AllStoragePresentationContexts:
        assert cx.abstract_syntax is not None  # pynetdicom builds them from SOP class UIDs
        ae.add_supported_context(cx.abstract_syntax, AllTransferSyntaxes, scu_role=True, scp_role=True)
    ae.add_supported_context(Verification, AllTransferSyntaxes)
    for uid in QUERY_RETRIEVE:
        ae.add_supported_context(uid, UNCOMPRESSED)
    ae.add_supported_context(StorageCommitmentPushModel, UNCOMPRESSED)
    return ae


def handlers(
    settings: IngestSettings,
    pipeline: IngestPipeline,
    storage: StorageClient,
    metadata: MetadataClient,
    ae: AE,
    principals: Principals,
    trail: DimseAudit,
    retriever: retrieval.Retriever,
) -> list[Any]:
    commitments = commitment.Commitments(settings, ae, storage, metadata, principals)
    read, write = Record.ACTION_READ, Record.ACTION_WRITE
    return [
        (evt.EVT_REQUESTED, principals.on_requested),
        (evt.EVT_C_STORE, trail.wrap("C-STORE", write, store.handle_store), [pipeline, principals]),
        (evt.EVT_C_FIND, trail.wrap("C-FIND", read, find.handle_find), [metadata, principals, settings.find_page_size]),
        (evt.EVT_C_MOVE, trail.wrap("C-MOVE", read, retrieve.handle_move), [retriever]),
        (evt.EVT_C_GET, trail.wrap("C-GET", read, retrieve.handle_get), [retriever]),
        (evt.EVT_N_ACTION, trail.wrap("N-ACTION storage commitment", read, commitments.handle_n_action)),
    ]


def start_scp(
    settings: IngestSettings,
    pipeline: IngestPipeline,
    auth: AuthClient,
    storage: StorageClient,
    metadata: MetadataClient,
    audit: AuditSink | None = None,
) -> DimseServer:
    """Starts the SCP in its own threads; returns the server to shut down."""
    ae = build_ae(settings)
    principals = Principals(auth, settings)
    trail = principals.audit = DimseAudit(audit, principals)
    server_class = type("Server", (DimseServer,), {"reuse_port": settings.dimse_workers > 1})
    # One retriever for both paths: its read grants are shared.
    retriever = retrieval.Retriever(settings, storage, metadata, principals)
    server = cast(
        DimseServer,
        ae.make_server(  # an instance of server_class
            (settings.dimse_host, settings.dimse_port),
            ssl_context=tls_context(settings),
            evt_handlers=handlers(settings, pipeline, storage, metadata, ae, principals, trail, retriever),
            server_class=server_class,
        ),
    )
    # The association limit counts both paths' associations.
    principals.active = lambda: len(server.active_associations)
    if settings.dimse_lean_storage:
        query_retrieve = (
            QueryRetrieve(settings, ae, metadata, principals, trail, retriever)
            if settings.dimse_lean_query_retrieve
            else None
        )
        server.lean = LeanAcceptor(settings, ae, server.contexts, principals, trail, pipeline, query_retrieve)
    ae._servers.append(server)  # so that ae.shutdown() stops it too
    ASSOCIATIONS.set_function(lambda: len(server.active_associations))
    threading.Thread(target=server.serve_forever, name="dimse-server", daemon=True).start()
    return server
