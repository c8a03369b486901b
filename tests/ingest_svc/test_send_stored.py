"""ingest_svc.send_stored against the pinned pynetdicom: what it relies on in
pynetdicom's Query/Retrieve service class (these fail when pynetdicom
changes under it), and what it does between in-process AEs: C-GET and
C-MOVE send the stored bytes in the peer's PDU size, re-encode only what
the peer takes in no other way, and report what they cannot send."""

from __future__ import annotations

import inspect
import io
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pynetdicom
import pynetdicom.acse
import pynetdicom.dul
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import (
    AllTransferSyntaxes,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    MRImageStorage,
    generate_uid,
)
from pynetdicom import AE, _config, build_role, evt
from pynetdicom.association import Association
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.service_class import QueryRetrieveServiceClass
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MOVE

from common.gen.dicomserver.v1 import dicom_pb2
from ingest_svc import send_stored
from ingest_svc.retrieval import contexts_for
from ingest_svc.send_stored import StoredObject
from testbed.processes import free_port
from tests.support import split_part10

DEST = "DEST"


# ---- the pin ---------------------------------------------------------------------


def test_pynetdicom_is_the_series_the_adapter_was_written_for() -> None:
    assert pynetdicom.__version__.startswith(send_stored.PYNETDICOM_SERIES), (
        f"pynetdicom {pynetdicom.__version__}: re-check ingest_svc.send_stored against it, then update the pin"
    )


def test_the_service_class_sends_handler_datasets_through_the_association() -> None:
    get = inspect.getsource(QueryRetrieveServiceClass._get_scp)
    move = inspect.getsource(QueryRetrieveServiceClass._move_scp)
    # What a handler yields goes to the association's send_c_store, looked up on the instance...
    assert "self.assoc.send_c_store(dataset, msg_id=msg_id)" in get
    assert "status_ds = store_assoc.send_c_store(" in move
    # ...and only Datasets are taken (a path would be counted as a failure).
    assert get.count("if not isinstance(dataset, Dataset):") == 1
    assert move.count("if not isinstance(dataset, Dataset):") == 1
    # An exception from send_c_store is a failed sub-operation with the dataset's SOP Instance UID listed.
    for src in (get, move):
        assert "except Exception as exc:" in src and "_add_failed_instance(dataset)" in src
    # The destination yield's third item is passed to AE.associate.
    assert "kwargs.update(destination[2])" in move and "self.ae.associate(" in move


def test_the_reactor_pauses_at_the_checkpoint_send_c_store_clears_and_sets() -> None:
    reactor = inspect.getsource(Association._run_reactor)
    wait, poll = reactor.index("self._reactor_checkpoint.wait()"), reactor.index("self.dimse.get_msg(block=False)")
    assert reactor.index("self._is_paused = True") < wait < poll
    send = inspect.getsource(Association.send_c_store)
    clear, sent, unpause = (
        send.index("self._reactor_checkpoint.clear()"),
        send.index("self.dimse.send_msg(req"),
        send.index("self._reactor_checkpoint.set()"),
    )
    assert clear < send.index("while not self._is_paused:") < sent < unpause
    assert "self._reactor_checkpoint.set()" in inspect.getsource(Association.kill)
    assert "def is_aborted(self" in inspect.getsource(pynetdicom.acse.ACSE)


def test_the_dul_sleeps_its_loop_delay_when_idle() -> None:
    assert "self._run_loop_delay = 0.001" in inspect.getsource(pynetdicom.dul.DULServiceProvider.__init__)
    assert "time.sleep(self._run_loop_delay)" in inspect.getsource(pynetdicom.dul.DULServiceProvider.run_reactor)


def test_a_path_is_sent_from_its_file_as_encoded() -> None:
    src = inspect.getsource(Association.send_c_store)
    assert "if not _config.STORE_SEND_CHUNKED_DATASET:" in src
    assert "req._dataset_path = (fpath, offset)" in src
    assert "allow_conversion = False" in src


# ---- behaviour between in-process AEs ------------------------------------------


@dataclass
class Peer:
    """A C-GET requester, or a C-MOVE destination, that keeps what it receives."""

    received: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # SOP instance -> (syntax, dataset)
    largest_pdata: int = 0
    sender_nodelay: list[int] = field(default_factory=list)
    reactor_unpaused: list[bool] = field(default_factory=list)
    sender_poll: list[float] = field(default_factory=list)
    abort_at: int = 0  # the destination aborts the association on this C-STORE (1-based)

    def on_store(self, event: evt.Event) -> int:
        cx = event.context
        self.received[str(event.request.AffectedSOPInstanceUID)] = (
            str(cx.transfer_syntax),
            event.encoded_dataset(include_meta=False),
        )
        return 0x0000

    def on_pdu(self, event: evt.Event) -> None:
        if isinstance(event.pdu, P_DATA_TF):
            self.largest_pdata = max(self.largest_pdata, event.pdu.pdu_length)


@dataclass
class Archive:
    """An in-process SCP whose handlers yield StoredObjects the test sets."""

    ae: AE
    port: int
    objects: list[StoredObject] = field(default_factory=list)
    destination_port: int = 0
    contexts: list[Any] = field(default_factory=list)
    unpaused_between: list[bool] = field(default_factory=list)

    def handle_get(self, event: evt.Event) -> Iterator[Any]:
        send_stored.send_from_files(event.assoc)
        yield len(self.objects)
        for obj in self.objects:
            yield 0xFF00, obj

    def handle_move(self, event: evt.Event) -> Iterator[Any]:
        yield send_stored.destination("127.0.0.1", self.destination_port, self.contexts)
        yield len(self.objects)
        for i, obj in enumerate(self.objects):
            if i:  # between two C-STOREs: is the destination association's reactor let loose?
                self.unpaused_between.extend(
                    a._reactor_checkpoint.is_set() for a in self.ae.active_associations if a.is_requestor
                )
            yield 0xFF00, obj


@pytest.fixture
def archive(monkeypatch: pytest.MonkeyPatch) -> Iterator[Archive]:
    # Peers accept only the syntaxes they list (ingest_svc.scp.build_ae sets this process-wide).
    monkeypatch.setattr(_config, "UNRESTRICTED_STORAGE_SERVICE", False)
    ae = AE(ae_title="ARCHIVE")
    ae.maximum_pdu_size = 0
    for sop_class in (CTImageStorage, MRImageStorage):
        ae.add_supported_context(sop_class, AllTransferSyntaxes, scu_role=True, scp_role=True)
    ae.add_supported_context(GET)
    ae.add_supported_context(MOVE)
    port = free_port()
    arch = Archive(ae, port)
    server = ae.start_server(
        ("127.0.0.1", port),
        block=False,
        evt_handlers=[(evt.EVT_C_GET, arch.handle_get), (evt.EVT_C_MOVE, arch.handle_move)],
    )
    yield arch
    server.shutdown()


def stored(tmp_path: Path, name: str, syntax: str | None = None) -> StoredObject:
    """A test file with fresh UIDs, saved in `syntax` (default: as it is)."""
    ds = pydicom.dcmread(get_testdata_file(name, download=False))
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    if syntax is not None:
        ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(path, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=True, enforce_file_format=True)
    else:
        ds.save_as(path, enforce_file_format=True)
    ts = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    return StoredObject(str(ds.SOPClassUID), str(ds.SOPInstanceUID), ts, str(path))


def location(obj: StoredObject) -> dicom_pb2.InstanceLocation:
    return dicom_pb2.InstanceLocation(
        sop_class_uid=obj.SOPClassUID,
        transfer_syntax_uid=str(obj.stored_syntax),
        ref=dicom_pb2.InstanceRef(sop_instance_uid=obj.SOPInstanceUID),
    )


def query(objects: list[StoredObject]) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.SOPInstanceUID = [o.SOPInstanceUID for o in objects]
    return ds


def c_get(archive: Archive, peer: Peer, syntaxes: list[str], max_pdu: int = 16382) -> list[Dataset]:
    """A C-GET proposing each of `syntaxes` in a context of its own."""
    ae = AE(ae_title="GETSCU")
    ae.add_requested_context(GET)
    for sop_class in (CTImageStorage, MRImageStorage):
        for syntax in syntaxes:
            ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate(
        "127.0.0.1",
        archive.port,
        ae_title="ARCHIVE",
        max_pdu=max_pdu,
        ext_neg=[build_role(c, scp_role=True) for c in (CTImageStorage, MRImageStorage)],
        evt_handlers=[(evt.EVT_C_STORE, peer.on_store), (evt.EVT_PDU_RECV, peer.on_pdu)],
    )
    assert assoc.is_established
    try:
        return [status for status, _ in assoc.send_c_get(query(archive.objects), GET)]
    finally:
        assoc.release()


def c_move(archive: Archive, peer: Peer, syntaxes: list[str]) -> list[tuple[Dataset, Dataset | None]]:
    """A C-MOVE to a destination supporting `syntaxes`, in that order of preference."""
    dest = AE(ae_title=DEST)
    for sop_class in (CTImageStorage, MRImageStorage):
        dest.add_supported_context(sop_class, syntaxes)

    def on_store(event: evt.Event) -> int:
        # The archive's side of this association: its socket sends without
        # Nagle's delay, and its reactor stays paused.
        for assoc in archive.ae.active_associations:
            if assoc.is_requestor:
                peer.sender_nodelay.append(assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                peer.reactor_unpaused.append(assoc._reactor_checkpoint.is_set())
                peer.sender_poll.append(assoc.dul._run_loop_delay)
        if len(peer.received) + 1 == peer.abort_at:
            event.assoc.abort()
            return 0xA700
        return peer.on_store(event)

    archive.destination_port = free_port()
    archive.contexts = contexts_for([location(o) for o in archive.objects])
    server = dest.start_server(
        ("127.0.0.1", archive.destination_port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        scu = AE(ae_title="MOVESCU")
        scu.add_requested_context(MOVE)
        assoc = scu.associate("127.0.0.1", archive.port, ae_title="ARCHIVE")
        assert assoc.is_established
        try:
            return list(assoc.send_c_move(query(archive.objects), DEST, MOVE))
        finally:
            assoc.release()
    finally:
        server.shutdown()


def dataset_bytes(obj: StoredObject) -> bytes:
    assert obj.path is not None
    return split_part10(Path(obj.path).read_bytes())[1]


def test_c_get_sends_the_stored_bytes_in_the_peers_pdu_size(archive: Archive, tmp_path: Path) -> None:
    archive.objects = [stored(tmp_path, "CT_small.dcm"), stored(tmp_path, "CT_small.dcm", ImplicitVRLittleEndian)]
    peer = Peer()
    statuses = c_get(archive, peer, [ExplicitVRLittleEndian, ImplicitVRLittleEndian], max_pdu=4096)
    assert statuses[-1].Status == 0x0000
    assert peer.received == {o.SOPInstanceUID: (str(o.stored_syntax), dataset_bytes(o)) for o in archive.objects}
    assert 0 < peer.largest_pdata <= 4096


def test_c_get_to_a_peer_that_takes_another_uncompressed_syntax_re_encodes(archive: Archive, tmp_path: Path) -> None:
    archive.objects = [stored(tmp_path, "CT_small.dcm")]
    peer = Peer()
    statuses = c_get(archive, peer, [ImplicitVRLittleEndian])
    assert statuses[-1].Status == 0x0000
    ((syntax, data),) = peer.received.values()
    assert syntax == ImplicitVRLittleEndian
    sent = pydicom.dcmread(archive.objects[0].path)
    got = read_dataset(io.BytesIO(data), is_implicit_VR=True, is_little_endian=True)
    assert got.PixelData == sent.PixelData and got.SOPInstanceUID == sent.SOPInstanceUID


def test_c_move_to_a_destination_preferring_implicit_gets_explicit_objects_as_stored(
    archive: Archive, tmp_path: Path
) -> None:
    archive.objects = [
        stored(tmp_path, "CT_small.dcm"),
        stored(tmp_path, "CT_small.dcm", ImplicitVRLittleEndian),
        stored(tmp_path, "MR_small_jpeg_ls_lossless.dcm"),
    ]
    peer = Peer()
    responses = c_move(archive, peer, [ImplicitVRLittleEndian, ExplicitVRLittleEndian, JPEGLSLossless])
    assert responses[-1][0].Status == 0x0000
    assert peer.received == {o.SOPInstanceUID: (str(o.stored_syntax), dataset_bytes(o)) for o in archive.objects}
    assert peer.sender_nodelay and all(peer.sender_nodelay)
    assert set(peer.sender_poll) == {send_stored.DESTINATION_POLL}
    assert peer.reactor_unpaused == [False] * len(archive.objects)
    assert archive.unpaused_between == [False] * (len(archive.objects) - 1)
    deadline = time.monotonic() + 10
    while any(a.is_requestor for a in archive.ae.active_associations) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(a.is_requestor for a in archive.ae.active_associations)  # its threads ended


def test_a_destination_that_aborts_ends_the_move_without_waiting(archive: Archive, tmp_path: Path) -> None:
    archive.objects = [stored(tmp_path, "CT_small.dcm") for _ in range(4)]
    archive.ae.dimse_timeout = 20
    peer = Peer(abort_at=2)
    t0 = time.monotonic()
    final, failed = c_move(archive, peer, [ExplicitVRLittleEndian])[-1]
    assert time.monotonic() - t0 < 15  # not the DIMSE timeout
    assert final.Status == 0xB000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (1, 3)
    assert failed is not None and list(failed.FailedSOPInstanceUIDList) == [
        o.SOPInstanceUID for o in archive.objects[1:]
    ]


def test_c_move_re_encodes_uncompressed_objects_and_refuses_compressed_ones(archive: Archive, tmp_path: Path) -> None:
    explicit, jpeg_ls = stored(tmp_path, "CT_small.dcm"), stored(tmp_path, "MR_small_jpeg_ls_lossless.dcm")
    archive.objects = [explicit, jpeg_ls]
    peer = Peer()
    responses = c_move(archive, peer, [ImplicitVRLittleEndian])
    final, failed = responses[-1]
    assert final.Status == 0xB000  # some sub-operations failed
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (1, 1)
    assert failed is not None and failed.FailedSOPInstanceUIDList == jpeg_ls.SOPInstanceUID
    assert [syntax for syntax, _ in peer.received.values()] == [ImplicitVRLittleEndian]


def test_an_object_storage_cannot_give_is_a_failed_sub_operation(archive: Archive, tmp_path: Path) -> None:
    gone = stored(tmp_path, "CT_small.dcm")
    gone.path = None
    kept = stored(tmp_path, "CT_small.dcm")
    archive.objects = [gone, kept]
    peer = Peer()
    responses = c_move(archive, peer, [ExplicitVRLittleEndian])
    final, failed = responses[-1]
    assert final.Status == 0xB000
    assert failed is not None and failed.FailedSOPInstanceUIDList == gone.SOPInstanceUID
    assert list(peer.received) == [kept.SOPInstanceUID]


def test_only_the_retrieve_associations_send_from_files(archive: Archive, tmp_path: Path) -> None:
    archive.objects = [stored(tmp_path, "CT_small.dcm")]
    c_get(archive, Peer(), [ExplicitVRLittleEndian])
    assert Association.send_c_store.__module__ == "pynetdicom.association"
    assert Association.send_c_store.__qualname__ == "Association.send_c_store"


# ---- what C-MOVE proposes ----------------------------------------------------------


def loc(sop_class: str, syntax: str) -> dicom_pb2.InstanceLocation:
    return dicom_pb2.InstanceLocation(sop_class_uid=sop_class, transfer_syntax_uid=syntax)


def proposed(locations: list[dicom_pb2.InstanceLocation]) -> list[tuple[str, list[str]]]:
    return [(cx.abstract_syntax, [str(ts) for ts in cx.transfer_syntax]) for cx in contexts_for(locations)]


def test_each_stored_syntax_alone_then_an_uncompressed_fallback() -> None:
    assert proposed(
        [
            loc(CTImageStorage, ExplicitVRLittleEndian),
            loc(CTImageStorage, ExplicitVRLittleEndian),
            loc(MRImageStorage, JPEGLSLossless),
            loc(MRImageStorage, ImplicitVRLittleEndian),
        ]
    ) == [
        (CTImageStorage, [ExplicitVRLittleEndian]),
        (MRImageStorage, [JPEGLSLossless]),
        (MRImageStorage, [ImplicitVRLittleEndian]),
        (CTImageStorage, [ImplicitVRLittleEndian]),
        (MRImageStorage, [ExplicitVRLittleEndian]),
    ]


def test_compressed_only_classes_get_no_fallback_and_contexts_stop_at_128() -> None:
    assert proposed([loc(MRImageStorage, JPEGLSLossless)]) == [(MRImageStorage, [JPEGLSLossless])]
    many = [loc(f"1.2.3.{i}", ExplicitVRLittleEndian) for i in range(100)]
    contexts = contexts_for(many)
    assert len(contexts) == 128
    assert [cx.transfer_syntax for cx in contexts[:100]] == [[ExplicitVRLittleEndian]] * 100
