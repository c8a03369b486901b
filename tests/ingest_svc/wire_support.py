"""A DICOM upper-layer peer for the tests, on a raw socket: it sends
requests encoded by pynetdicom's message classes and reads back every PDU
(kept, with its length) and every message (command set and data set bytes
as sent), answering C-STORE sub-operations. What two servers send for the
same requests can then be compared byte for byte."""

from __future__ import annotations

import io
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.dimse_messages import C_CANCEL_RQ, C_FIND_RQ, C_GET_RQ, C_MOVE_RQ
from pynetdicom.dimse_primitives import C_CANCEL, C_FIND, C_GET, C_MOVE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF

from ingest_svc import command_set
from tests.ingest_svc.dimse_support import RELEASE_RQ, read_pdu

PENDING = (0xFF00, 0xFF01)


@dataclass
class Received:
    context_id: int
    command: bytes
    data: bytes | None

    @property
    def parsed(self) -> command_set.Command:
        return command_set.parse(self.command)


@dataclass
class Peer:
    """One association, as its requestor. `store_status` answers each
    C-STORE-RQ (C-GET sub-operations); `on_store` is called first."""

    sock: socket.socket
    pdus: list[bytes] = field(default_factory=list)
    messages: list[Received] = field(default_factory=list)
    store_status: int = 0x0000
    on_store: Any = None
    _partial: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def associate(cls, port: int, rq: bytes) -> tuple[Peer, bytes]:
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(rq)
        return cls(sock), read_pdu(sock)

    def send(self, context_id: int, primitive: Any, message_class: Any, max_pdu: int = 16384) -> None:
        message = message_class()
        message.primitive_to_message(primitive)
        for pdata in message.encode_msg(context_id, max_pdu):
            self.sock.sendall(P_DATA_TF(pdata).encode())

    def read_message(self) -> Received:
        while True:
            pdu = read_pdu(self.sock)
            if not pdu:
                raise ConnectionError("the server closed the connection")
            self.pdus.append(pdu)
            if pdu[0] != 0x04:
                raise ConnectionError(f"PDU type 0x{pdu[0]:02X}: {pdu.hex()}")
            pos = 6
            done = None
            while pos < len(pdu):
                length, context_id, header = struct.unpack_from(">IBB", pdu, pos)
                fragment = pdu[pos + 6 : pos + 4 + length]
                pos += 4 + length
                key = "command" if header & 0x01 else "data"
                self._partial.setdefault(key, bytearray()).extend(fragment)
                self._partial["context_id"] = context_id
                if header & 0x02:
                    if key == "command" and command_set.parse(self._partial["command"]).has_data_set:
                        continue
                    done = Received(
                        context_id,
                        bytes(self._partial.get("command", b"")),
                        bytes(self._partial["data"]) if "data" in self._partial else None,
                    )
                    self._partial = {}
            if done is not None:
                self.messages.append(done)
                return done

    def responses(self) -> list[Received]:
        """Messages up to the final response, answering C-STORE-RQs."""
        out = []
        while True:
            message = self.read_message()
            command = message.parsed
            if command.field == command_set.C_STORE_RQ:
                if self.on_store is not None:
                    self.on_store(message)
                self.sock.sendall(
                    pdata(
                        message.context_id,
                        command_set.response(
                            command_set.C_STORE_RSP,
                            command.message_id,
                            self.store_status,
                            command.sop_class,
                            command.sop_instance,
                        ),
                    )
                )
                continue
            out.append(message)
            if command.status not in PENDING:
                return out

    def release(self) -> bytes:
        self.sock.sendall(RELEASE_RQ)
        try:
            return read_pdu(self.sock)
        finally:
            self.sock.close()


def pdata(context_id: int, command: bytes, data: bytes | None = None) -> bytes:
    out = [struct.pack(">BxIIBB", 0x04, len(command) + 6, len(command) + 2, context_id, 0x03) + command]
    if data is not None:
        out.append(struct.pack(">BxIIBB", 0x04, len(data) + 6, len(data) + 2, context_id, 0x02) + data)
    return b"".join(out)


def identifier_bytes(ds: Dataset, syntax: Any) -> io.BytesIO:
    return io.BytesIO(encode(ds, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated))


def find_rq(message_id: int, sop_class: str, ds: Dataset, syntax: Any) -> tuple[C_FIND, type]:
    rq = C_FIND()
    rq.MessageID, rq.AffectedSOPClassUID, rq.Priority = message_id, sop_class, 2
    rq.Identifier = identifier_bytes(ds, syntax)
    return rq, C_FIND_RQ


def get_rq(message_id: int, sop_class: str, ds: Dataset, syntax: Any) -> tuple[C_GET, type]:
    rq = C_GET()
    rq.MessageID, rq.AffectedSOPClassUID, rq.Priority = message_id, sop_class, 2
    rq.Identifier = identifier_bytes(ds, syntax)
    return rq, C_GET_RQ


def move_rq(message_id: int, sop_class: str, ds: Dataset, syntax: Any, destination: str) -> tuple[C_MOVE, type]:
    rq = C_MOVE()
    rq.MessageID, rq.AffectedSOPClassUID, rq.Priority = message_id, sop_class, 2
    rq.MoveDestination = destination
    rq.Identifier = identifier_bytes(ds, syntax)
    return rq, C_MOVE_RQ


def cancel_rq(message_id: int) -> tuple[C_CANCEL, type]:
    rq = C_CANCEL()
    rq.MessageIDBeingRespondedTo = message_id
    return rq, C_CANCEL_RQ
