"""An in-process DIMSE server for the storage acceptor's tests: the real
DimseServer and handlers, with auth_svc and the ingest pipeline replaced
by small fakes."""

from __future__ import annotations

import os
import socket
import struct
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext

from common import errors
from common.blobs import StagedObject
from common.gen.dicomserver.v1 import auth_service_pb2 as auth_pb
from common.gen.dicomserver.v1 import ingest_service_pb2 as ingest_pb
from ingest_svc.scp import DimseServer, start_scp
from ingest_svc.settings import IngestSettings
from testbed.processes import free_port
from tests.support import split_part10


@dataclass
class FakeAuth:
    """Every calling AE in `known` (or any, when None) is a principal of
    tenant 'default' that may do everything; `down` makes auth_svc unavailable."""

    known: set[str] | None = None
    down: bool = False
    calls: int = 0

    def authenticate(self, request: auth_pb.AuthenticateRequest) -> auth_pb.Principal:
        self.calls += 1
        if self.down:
            raise errors.Unavailable("auth_svc is down")
        calling = request.dimse_peer.calling_ae_title
        if self.known is not None and calling not in self.known:
            raise errors.Unauthenticated(f"unknown calling AE title {calling}")
        return auth_pb.Principal(subject=f"ae:{calling}", tenants=["default"])

    def authorize(self, principal: auth_pb.Principal, action: int, tenant: str) -> auth_pb.AuthorizeResponse:
        return auth_pb.AuthorizeResponse(allowed=True)


@dataclass
class Stored:
    data: bytes
    tenant: str
    sop_class: str
    sop_instance: str
    calling_ae_title: str = ""


@dataclass
class FakePipeline:
    """Stages into files of `folder`; store() keeps the bytes and answers success."""

    folder: Path
    stored: list[Stored] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def stage(self) -> StagedObject:
        fd, path = tempfile.mkstemp(suffix=".part", dir=self.folder)
        return StagedObject(os.fdopen(fd, "w+b"), path, "", None)  # type: ignore[arg-type]

    def store(
        self,
        staged: StagedObject,
        tenant: str,
        expected_study: str = "",
        policy: int = 0,
        expected_sop_class: str = "",
        expected_sop_instance: str = "",
        calling_ae_title: str = "",
    ) -> ingest_pb.InstanceOutcome:
        try:
            staged.file.flush()
            staged.file.seek(0)
            with self.lock:
                self.stored.append(
                    Stored(staged.file.read(), tenant, expected_sop_class, expected_sop_instance, calling_ae_title)
                )
        finally:
            staged.discard()
        return ingest_pb.InstanceOutcome(status=ingest_pb.STORE_STATUS_STORED, dicom_status=0)


@dataclass
class AuditSink:
    records: list[Any] = field(default_factory=list)

    def record(self, record: Any) -> None:
        self.records.append(record)


@dataclass
class Scp:
    server: DimseServer
    port: int
    settings: IngestSettings
    auth: FakeAuth
    pipeline: FakePipeline
    audit: AuditSink
    stopped: bool = False


@contextmanager
def running_scp(folder: Path, auth: FakeAuth | None = None, **settings: Any) -> Iterator[Scp]:
    """A DimseServer on a free port with the fakes;
    DICOMSERVER_* settings by keyword."""
    port = free_port()
    values = {"dimse_port": port, "ae_title": "DICOMSERVER", **settings}
    ingest_settings = IngestSettings(**values)
    folder.mkdir(parents=True, exist_ok=True)
    scp = Scp(None, port, ingest_settings, auth or FakeAuth(), FakePipeline(folder), AuditSink())  # type: ignore[arg-type]
    scp.server = start_scp(ingest_settings, scp.pipeline, scp.auth, None, None, scp.audit)  # type: ignore[arg-type]
    try:
        yield scp
    finally:
        if not scp.stopped:
            scp.server.stop(0.5)


# -- raw PDUs ------------------------------------------------------------------


def read_pdu(sock: socket.socket) -> bytes:
    """One whole PDU (header included); b'' when the peer closed first."""
    head = _read(sock, 6)
    if len(head) < 6:
        return b""
    (length,) = struct.unpack(">I", head[2:6])
    return head + _read(sock, length)


def _read(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        try:
            chunk = sock.recv(n - len(out))
        except ConnectionResetError:
            break
        if not chunk:
            break
        out += chunk
    return bytes(out)


def p_data(context_id: int, header: int, data: bytes) -> bytes:
    """A P-DATA-TF with one PDV."""
    return struct.pack(">BxIIBB", 0x04, len(data) + 6, len(data) + 2, context_id, header) + data


RELEASE_RQ = struct.pack(">BxI", 0x05, 4) + bytes(4)
ABORT_RQ = struct.pack(">BxI", 0x07, 4) + bytes(4)


def element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0, tag, len(value)) + value


def store_rq(sop_class: bytes, sop_instance: bytes, message_id: int = 7) -> bytes:
    """A C-STORE-RQ command set with the UI values exactly as given."""
    body = b"".join(
        (
            element(0x0002, sop_class),
            element(0x0100, struct.pack("<H", 0x0001)),
            element(0x0110, struct.pack("<H", message_id)),
            element(0x0700, struct.pack("<H", 0)),
            element(0x0800, struct.pack("<H", 0x0000)),
            element(0x1000, sop_instance),
        )
    )
    return element(0x0000, struct.pack("<I", len(body))) + body


Contexts = list[tuple[int, str, list[str]]]


def request(
    contexts: Contexts,
    calling: str = "STORESCU",
    called: str = "DICOMSERVER",
    max_pdu: int = 16384,
    extra: list[Any] | None = None,
) -> bytes:
    """An A-ASSOCIATE-RQ PDU, encoded by pynetdicom."""
    rq = A_ASSOCIATE()
    rq.application_context_name = "1.2.840.10008.3.1.1.1"
    rq.calling_ae_title, rq.called_ae_title = calling, called
    proposed = []
    for context_id, abstract, syntaxes in contexts:
        cx = PresentationContext()
        cx.context_id, cx.abstract_syntax, cx.transfer_syntax = context_id, abstract, syntaxes
        proposed.append(cx)
    rq.presentation_context_definition_list = proposed
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = max_pdu
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.826.0.1.3680043.2.1143.107.104.103.115.2.8.4"
    rq.user_information = [max_length, implementation, *(extra or [])]
    return A_ASSOCIATE_RQ(rq).encode()


def role(uid: str, scu: bool | None, scp: bool | None) -> SCP_SCU_RoleSelectionNegotiation:
    item = SCP_SCU_RoleSelectionNegotiation()
    item.sop_class_uid = uid
    if scu is not None:
        item.scu_role = scu
    if scp is not None:
        item.scp_role = scp
    return item


def store_messages(path: Path, context_id: int = 1, fragment: int = 1000, message_id: int = 5) -> bytes:
    """A C-STORE-RQ of a file's data set, in fragments of `fragment` bytes."""
    ds = pydicom.dcmread(path)
    _, data_set = split_part10(path.read_bytes())
    out = [p_data(context_id, 0x03, store_rq(ds.SOPClassUID.encode(), ds.SOPInstanceUID.encode(), message_id))]
    for start in range(0, len(data_set), fragment):
        last = start + fragment >= len(data_set)
        out.append(p_data(context_id, 0x02 if last else 0x00, data_set[start : start + fragment]))
    return b"".join(out)
