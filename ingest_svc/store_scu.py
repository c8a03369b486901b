"""The lean C-STORE SCU: C-GET and C-MOVE sub-operations send stored
objects as they were stored, from where storage grants them (a file of the
objects folder, or a spool file of a bucket object), on the requestor's
association (C-GET) or on an association of their own to the C-MOVE
destination, opened here without pynetdicom (DestinationAssociation).

Each object's data set goes out in the stored transfer syntax when the peer
accepted a context for it (ingest_svc.upper_layer reads it from the file
straight into P-DATA-TF PDUs); only when the peer accepted nothing but
another uncompressed syntax is it decoded and re-encoded by pydicom, as
pynetdicom does; a compressed object without a context for its syntax is a
failed sub-operation. Contexts are picked as pynetdicom's send_c_store picks
them."""

from __future__ import annotations

import logging
import os
import socket
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydicom import dcmread
from pydicom.uid import UID
from pynetdicom import AE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import A_ASSOCIATE_AC as AssociateAcPdu
from pynetdicom.pdu import A_ASSOCIATE_RQ as AssociateRqPdu
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_requestor

from ingest_svc import command_set
from ingest_svc.upper_layer import (
    A_ABORT,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    A_RELEASE_RP,
    A_RELEASE_RQ,
    HEADER,
    MAX_CONTROL_PDU,
    RELEASE_RP_PDU,
    RELEASE_RQ_PDU,
    Connection,
    Dropped,
    FileMessage,
)

if TYPE_CHECKING:
    from ingest_svc.retrieval import Stored

log = logging.getLogger(__name__)

APPLICATION_CONTEXT_NAME = "1.2.840.10008.3.1.1.1"
# The Maximum Length we offer a C-MOVE destination: what pynetdicom's
# AE.associate offers by default (its max_pdu).
PROPOSED_MAX_PDU = 16382
PREAMBLE = 128
_LONG_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"))
_META_READ = 4096


def dataset_offset(fd: int) -> int:
    """Where the data set of a Part 10 file begins: after the preamble,
    'DICM' and the File Meta Information (group 0002, Explicit VR Little
    Endian), as pynetdicom's split_dataset finds it. Raises OSError when the
    file does not start so."""
    head = os.pread(fd, _META_READ, 0)
    if len(head) < PREAMBLE + 4 or head[PREAMBLE : PREAMBLE + 4] != b"DICM":
        raise OSError("the stored object is not a DICOM file")
    pos = PREAMBLE + 4
    while True:
        if pos + 8 > len(head):
            more = os.pread(fd, _META_READ, len(head))
            if not more:
                return pos  # a file that ends with its meta information
            head += more
            continue
        (group,) = struct.unpack_from("<H", head, pos)
        if group != 0x0002:
            return pos
        vr = head[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > len(head):
                head += os.pread(fd, _META_READ, len(head))
                if pos + 12 > len(head):
                    raise OSError("the stored object's meta information is cut short")
            (length,) = struct.unpack_from("<I", head, pos + 8)
            pos += 12 + length
        else:
            (length,) = struct.unpack_from("<H", head, pos + 6)
            pos += 8 + length


class StoreSender:
    """Sends stored objects as C-STORE-RQs on one association and reads each
    response. `contexts` are the accepted presentation contexts by ID;
    `originator` the Move Originator AE title and Message ID (C-MOVE)."""

    def __init__(
        self,
        conn: Connection,
        contexts: dict[int, PresentationContext],
        timeout: float,
        originator: tuple[str, int] | None = None,
    ) -> None:
        self.conn = conn
        self.contexts = [contexts[k] for k in sorted(contexts) if contexts[k].as_scu]
        self.timeout = timeout
        self.originator = originator or (None, None)
        self._chosen: dict[tuple[str, str], tuple[PresentationContext | None, bool]] = {}

    def _context(self, sop_class: str, syntax: UID) -> tuple[PresentationContext | None, bool]:
        """The context to send in, and whether it is in the stored syntax:
        as pynetdicom's _get_valid_context picks one (the first exact match,
        else the first uncompressed one of the same endianness)."""
        key = (sop_class, str(syntax))
        chosen = self._chosen.get(key)
        if chosen is None:
            chosen = self._chosen[key] = self._choose(sop_class, syntax)
        return chosen

    def _choose(self, sop_class: str, syntax: UID) -> tuple[PresentationContext | None, bool]:
        convertible = None
        for cx in self.contexts:
            if cx.abstract_syntax != sop_class:
                continue
            cx_syntax = UID(cx.transfer_syntax[0])
            if cx_syntax == syntax:
                return cx, True
            if (
                convertible is None
                and not syntax.is_compressed
                and not cx_syntax.is_compressed
                and syntax.is_little_endian == cx_syntax.is_little_endian
            ):
                convertible = cx
        return convertible, False

    def prepare(self, obj: Stored, message_id: int) -> Prepared | None:
        """The C-STORE-RQ of `obj`, ready to send (its first MiB read), or
        None when the sub-operation fails before anything is sent."""
        sop_class, sop_instance = str(obj.SOPClassUID), str(obj.SOPInstanceUID)
        if obj.path is None:
            return None  # storage could not give it (logged where it was asked for)
        syntax = obj.stored_syntax
        cx, as_stored = self._context(sop_class, syntax)
        if cx is None:
            log.warning(
                "retrieve: the peer accepted no presentation context for a %s object in %s",
                UID(sop_class).name,
                syntax.name,
            )
            return None
        command = command_set.store_request(message_id, sop_class, sop_instance, *self.originator)
        context_id = int(cx.context_id)  # type: ignore[arg-type]
        if not as_stored:
            transfer = UID(cx.transfer_syntax[0])
            try:
                data = encode(
                    dcmread(obj.path), transfer.is_implicit_VR, transfer.is_little_endian, transfer.is_deflated
                )
            except Exception as exc:
                log.warning("retrieve: a stored object cannot be re-encoded: %s", type(exc).__name__)
                return None
            return Prepared(message_id, self.conn.message_pdus(context_id, command, data)) if data else None
        fd = -1
        try:
            fd = obj.fd if obj.fd >= 0 else os.open(obj.path, os.O_RDONLY)
            offset = dataset_offset(fd)
            length = os.fstat(fd).st_size - offset
            message = self.conn.prepare_file_message(context_id, command, fd, offset, length)
        except OSError as exc:  # NotSent too
            log.warning("retrieve: a stored object cannot be read: %s", exc.strerror or exc)
            if fd >= 0 and fd != obj.fd:
                os.close(fd)
            return None
        return Prepared(message_id, message, fd if fd != obj.fd else -1)

    def send(self, prepared: Prepared, prefix: bytes = b"") -> None:
        """Sends a prepared C-STORE-RQ after `prefix` (in one write with its
        first MiB). Errors of the association (OSError, CutShort after an
        abort) are raised."""
        try:
            if isinstance(prepared.message, FileMessage):
                self.conn.send_prepared(prepared.message, prefix)
            else:
                self.conn.send(prefix + prepared.message)
        finally:
            prepared.close()

    def response(self, prepared: Prepared) -> int | None:
        """The peer's status for a sent C-STORE-RQ (Dropped, ReleaseRequested,
        TimeoutError and OSError are the association's)."""
        return self.conn.await_response(command_set.C_STORE_RSP, prepared.message_id, self.timeout).status


@dataclass(eq=False)
class Prepared:
    """A C-STORE-RQ ready to send: the PDUs of a re-encoded object, or a
    stored file's message (and the file, when it was opened for it)."""

    message_id: int
    message: FileMessage | bytes
    fd: int = -1

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class DestinationAssociation(Connection):
    """An association we request to a C-MOVE destination, only to send
    C-STORE sub-operations on it."""

    def __init__(self, sock: socket.socket, max_pdu: int, source: str, acse_timeout: float) -> None:
        super().__init__(sock, 64 * 1024, max_pdu, source)
        self.acse_timeout = acse_timeout
        self.accepted: dict[int, PresentationContext] = {}

    def request(self, rq: bytes, proposed: list[PresentationContext]) -> bool:
        """Sends the A-ASSOCIATE-RQ and reads the answer; whether it was accepted."""
        self.sock.settimeout(self.acse_timeout)
        self.send(rq)
        self._fill(6)
        pdu_type, length = HEADER.unpack_from(self._buf, self._pos)
        self._pos += 6
        if length > MAX_CONTROL_PDU:
            raise Dropped
        body = bytearray(HEADER.pack(pdu_type, length))
        self._stream(length, body.extend)
        if pdu_type == A_ASSOCIATE_RJ:
            log.warning(
                "C-MOVE destination %s rejected the association (result %d, source %d, reason %d)",
                self.source,
                body[7],
                body[8],
                body[9],
            )
            return False
        if pdu_type != A_ASSOCIATE_AC:
            log.warning(
                "C-MOVE destination %s answered the association request with PDU type 0x%02X", self.source, pdu_type
            )
            return False
        pdu = AssociateAcPdu()
        pdu.decode(bytes(body))
        ac = pdu.to_primitive()
        results = negotiate_as_requestor(proposed, ac.presentation_context_definition_results_list)
        self.accepted = {int(cx.context_id): cx for cx in results if cx.result == 0x00}  # type: ignore[arg-type]
        for item in ac.user_information:
            if isinstance(item, MaximumLengthNotification):
                self.peer_max = int(item.maximum_length_received or 0)
        self.established = True
        return True

    def release(self) -> None:
        """A-RELEASE-RQ, and the reply awaited for the ACSE timeout; then the
        connection is closed (aborted if the peer does not answer)."""
        if not self.established:
            self.close()
            return
        try:
            self.sock.settimeout(self.acse_timeout)
            self.send(RELEASE_RQ_PDU)
            if self._pdu_left:
                self._skip(self._pdu_left)
                self._pdu_left = 0
            while True:
                self._fill(6)
                pdu_type, length = HEADER.unpack_from(self._buf, self._pos)
                self._pos += 6
                if length > MAX_CONTROL_PDU:
                    break
                self._skip(length)
                if pdu_type in (A_RELEASE_RP, A_ABORT):
                    break
                if pdu_type == A_RELEASE_RQ:  # both released at once (PS3.8 7.2.2)
                    self.send(RELEASE_RP_PDU)
                    break
        except (OSError, Dropped):
            self.send_abort()
        self.established = False
        self.close()

    def close(self) -> None:
        if self.established:
            self.send_abort()
        self.established = False
        try:
            self.sock.close()
        except OSError:
            pass


def associate(
    ae: AE,
    host: str,
    port: int,
    called: str,
    contexts: list[PresentationContext],
    acse_timeout: float,
    network_timeout: float,
) -> DestinationAssociation | None:
    """An association to a C-MOVE destination proposing `contexts`, as
    pynetdicom's AE.associate requests it; None when it cannot be had."""
    proposed = []
    for i, context in enumerate(contexts):
        cx = PresentationContext()
        cx.context_id = 2 * i + 1
        cx.abstract_syntax = context.abstract_syntax
        cx.transfer_syntax = list(context.transfer_syntax)
        proposed.append(cx)
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT_NAME
    primitive.calling_ae_title = ae.ae_title
    primitive.called_ae_title = called
    primitive.presentation_context_definition_list = proposed
    max_length = MaximumLengthNotification()
    # Only C-STORE responses come back on this association.
    max_length.maximum_length_received = PROPOSED_MAX_PDU
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = ae.implementation_class_uid
    items: list[Any] = [max_length, implementation]
    if ae.implementation_version_name:
        version = ImplementationVersionNameNotification()
        version.implementation_version_name = ae.implementation_version_name
        items.append(version)
    primitive.user_information = items
    rq = AssociateRqPdu(primitive).encode()
    source = f"{host}:{port}"
    try:
        sock = socket.create_connection((host, port), timeout=acse_timeout)
    except OSError as exc:
        log.warning("C-MOVE destination %s cannot be reached: %s", source, exc.strerror or exc)
        return None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = DestinationAssociation(sock, PROPOSED_MAX_PDU, source, acse_timeout)
    try:
        if conn.request(rq, proposed):
            sock.settimeout(network_timeout)
            return conn
    except (OSError, Dropped) as exc:
        log.warning("C-MOVE destination %s did not answer the association request: %s", source, type(exc).__name__)
    conn.close()
    return None
