"""The lean storage acceptor against pynetdicom, in process: for the same
bytes on the wire both paths answer the same bytes (association accepted or
rejected, C-STORE and C-ECHO responses) and store the same objects; the
storage acceptor's own edges (aborts, vanishing peers, oversized PDUs,
silent peers, release, shutdown); which path serves which association."""

from __future__ import annotations

import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pydicom
import pytest
from prometheus_client import REGISTRY
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    MRImageStorage,
)
from pynetdicom import AE, _config
from pynetdicom.pdu import A_ASSOCIATE_AC
from pynetdicom.pdu_primitives import (
    AsynchronousOperationsWindowNegotiation,
    UserIdentityNegotiation,
)
from pynetdicom.sop_class import (
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from testbed.processes import dcmtk_env
from tests.ingest_svc.dimse_support import (
    ABORT_RQ,
    RELEASE_RQ,
    Contexts,
    FakeAuth,
    Scp,
    p_data,
    read_pdu,
    request,
    role,
    running_scp,
    store_messages,
)
from tests.support import corpus_paths, split_part10

CT, MR = CTImageStorage, MRImageStorage
PRIVATE = "1.3.6.1.4.1.99999.1.2.3"  # a private SOP class: storage when unknown SOP classes are accepted


@pytest.fixture(autouse=True)
def restore_pynetdicom_config() -> Iterator[None]:
    """build_ae sets pynetdicom's process-wide unrestricted storage flag."""
    before = _config.UNRESTRICTED_STORAGE_SERVICE
    yield
    _config.UNRESTRICTED_STORAGE_SERVICE = before


def served(path: str) -> float:
    return REGISTRY.get_sample_value("dicomserver_dimse_association_requests_total", {"path": path}) or 0.0


@contextmanager
def both_paths(tmp_path: Path, auth: FakeAuth | None = None, **settings: Any) -> Iterator[tuple[Scp, Scp]]:
    """Two servers with the same settings: the storage acceptor's, and one
    with it switched off (pynetdicom serves everything)."""
    with ExitStack() as stack:
        lean = stack.enter_context(running_scp(tmp_path / "lean", auth, **settings))
        plain = stack.enter_context(running_scp(tmp_path / "plain", auth, dimse_lean_storage=False, **settings))
        yield lean, plain


def connect(scp: Scp) -> socket.socket:
    return socket.create_connection(("127.0.0.1", scp.port), timeout=10)


def associate(scp: Scp, rq: bytes) -> tuple[socket.socket, bytes]:
    sock = connect(scp)
    sock.sendall(rq)
    return sock, read_pdu(sock)


def release(sock: socket.socket) -> bytes:
    sock.sendall(RELEASE_RQ)
    try:
        return read_pdu(sock)
    finally:
        sock.close()


def answer(scp: Scp, rq: bytes) -> bytes:
    """The answer to `rq`; an accepted association is released."""
    sock, reply = associate(scp, rq)
    if reply[:1] == b"\x02":
        assert release(sock) == b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"
    else:
        sock.close()
    return reply


def same_answer(lean: Scp, plain: Scp, rq: bytes) -> bytes:
    """Both servers' answer to `rq` (asserted equal); the lean one served it."""
    before = served("lean")
    reply = answer(lean, rq)
    assert served("lean") == before + 1
    assert answer(plain, rq) == reply
    return reply


STORAGE_CASES: dict[str, tuple[Contexts, list[Any]]] = {
    "storage only": (
        [
            (1, CT, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
            (3, MR, [JPEGBaseline8Bit]),
            (5, CT, ["1.2.3.4.5.6"]),
        ],
        [],
    ),
    "with verification": (
        [
            (1, Verification, [ImplicitVRLittleEndian]),
            (3, CT, [ExplicitVRBigEndian]),
            (5, MR, [DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian]),
        ],
        [],
    ),
    "verification only": ([(1, Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])], []),
    "private class": ([(1, PRIVATE, [ExplicitVRLittleEndian]), (3, CT, [ImplicitVRLittleEndian])], []),
    "role selection": (
        [(1, CT, [ExplicitVRLittleEndian]), (3, MR, [ImplicitVRLittleEndian]), (5, PRIVATE, [ImplicitVRLittleEndian])],
        [role(CT, True, True), role(MR, False, True), role(PRIVATE, True, None)],
    ),
    "identity and async ops ignored": (
        [(1, CT, [ExplicitVRLittleEndian])],
        [UserIdentityNegotiation(), AsynchronousOperationsWindowNegotiation()],
    ),
}


@pytest.mark.parametrize("accept_unknown", [True, False])
def test_negotiation_answers_are_pynetdicoms(tmp_path: Path, accept_unknown: bool) -> None:
    identity = STORAGE_CASES["identity and async ops ignored"][1][0]
    identity.user_identity_type, identity.primary_field = 1, b"someone"
    window = STORAGE_CASES["identity and async ops ignored"][1][1]
    window.maximum_number_operations_invoked = window.maximum_number_operations_performed = 0
    replies = {}
    with both_paths(tmp_path, accept_unknown_sop_classes=accept_unknown) as (lean, plain):
        for name, (contexts, extra) in STORAGE_CASES.items():
            replies[name] = same_answer(lean, plain, request(contexts, extra=extra))
    assert all(reply[:1] == b"\x02" for reply in replies.values())  # A-ASSOCIATE-AC
    # The private class is accepted only when unknown classes are.
    ac = A_ASSOCIATE_AC()
    ac.decode(replies["private class"])
    results = {cx.context_id: cx.result for cx in ac.to_primitive().presentation_context_definition_results_list}
    assert results == {1: 0x00 if accept_unknown else 0x03, 3: 0x00}


@pytest.mark.parametrize(
    "calling,called,down,expected",
    [
        ("STRANGER", "DICOMSERVER", False, (1, 1, 3)),  # calling AE title not recognised
        ("STORESCU", "OTHER", False, (1, 1, 7)),  # called AE title not recognised
        ("STORESCU", "DICOMSERVER", True, (2, 3, 1)),  # auth_svc away: temporary congestion
        ("STORESCU", " DICOMSERVER", False, None),  # pynetdicom strips AE titles: accepted
    ],
)
def test_rejections_are_pynetdicoms(
    tmp_path: Path, calling: str, called: str, down: bool, expected: tuple[int, int, int] | None
) -> None:
    auth = FakeAuth(known={"STORESCU"}, down=down)
    with both_paths(tmp_path, auth) as (lean, plain):
        reply = same_answer(lean, plain, request([(1, CT, [ExplicitVRLittleEndian])], calling, called))
        records = lean.audit.records + plain.audit.records
    if expected is None:
        assert reply[:1] == b"\x02"
        return
    assert reply[:1] == b"\x03" and tuple(reply[7:10]) == expected
    # Refusals by auth_svc are audited, on both paths alike.
    refused = [(r.operation, r.subject, r.outcome, r.detail) for r in records]
    assert len(refused) == (2 if expected != (1, 1, 7) else 0)
    assert refused[:1] == refused[1:]


def test_the_association_limit_counts_both_paths_and_answers_as_pynetdicom(tmp_path: Path) -> None:
    rq = request([(1, CT, [ExplicitVRLittleEndian])])
    with both_paths(tmp_path, max_associations=1) as (lean, plain):
        replies = []
        for scp in (lean, plain):
            held, accepted = associate(scp, rq)
            assert accepted[:1] == b"\x02"
            replies.append(answer(scp, rq))
            release(held)
        # A C-FIND association while a storage one is open.
        held, _ = associate(lean, rq)
        find = answer(lean, request([(1, StudyRootQueryRetrieveInformationModelFind, [ImplicitVRLittleEndian])]))
        release(held)
    assert replies[0] == replies[1] == find
    assert replies[0][:1] == b"\x03" and tuple(replies[0][7:10]) == (2, 3, 2)


def dimse_exchange(scp: Scp, messages: list[bytes], max_pdu: int = 16384) -> list[bytes]:
    """Associates (CT and Verification), sends each message and reads one
    PDU back for each, releases."""
    sock, accepted = associate(
        scp, request([(1, CT, [ExplicitVRLittleEndian]), (3, Verification, [ImplicitVRLittleEndian])], max_pdu=max_pdu)
    )
    assert accepted[:1] == b"\x02"
    replies = []
    for message in messages:
        sock.sendall(message)
        replies.append(read_pdu(sock))
    assert release(sock)[:1] == b"\x06"
    return replies


def echo_rq(message_id: int) -> bytes:
    body = b"".join(
        struct.pack("<HHI", 0, tag, len(v)) + v
        for tag, v in (
            (0x0002, b"1.2.840.10008.1.1\x00"),
            (0x0100, b"\x30\x00"),
            (0x0110, struct.pack("<H", message_id)),
            (0x0800, b"\x01\x01"),
        )
    )
    return p_data(3, 0x03, struct.pack("<HHII", 0, 0, 4, len(body)) + body)


def test_c_echo_and_c_store_responses_are_pynetdicoms(tmp_path: Path) -> None:
    ct = Path(corpus_paths()[0])
    assert ct.name == "CT_small.dcm"
    messages = [
        echo_rq(1),
        store_messages(ct, message_id=2),
        echo_rq(65535),
        store_messages(ct, fragment=7, message_id=3),
    ]
    with both_paths(tmp_path) as (lean, plain):
        lean_replies, plain_replies = dimse_exchange(lean, messages), dimse_exchange(plain, messages)
        lean_stored, plain_stored = lean.pipeline.stored, plain.pipeline.stored
        records = [
            [(r.operation, r.status, r.sop_instance_uid, r.subject, r.tenant) for r in scp.audit.records]
            for scp in (lean, plain)
        ]
    assert lean_replies == plain_replies
    assert [s.data for s in lean_stored] == [s.data for s in plain_stored] != []
    assert split_part10(lean_stored[0].data)[1] == split_part10(ct.read_bytes())[1]
    assert (
        records[0] == records[1] == [("C-STORE", 0, pydicom.dcmread(ct).SOPInstanceUID, "ae:STORESCU", "default")] * 2
    )


def test_objects_sent_by_pynetdicom_are_stored_as_pynetdicom_stores_them(tmp_path: Path) -> None:
    """Every transfer syntax of the corpus, fragmented by a 16 KiB PDU
    (fragments of an object span PDUs and reads)."""
    paths = corpus_paths()
    results = []
    with both_paths(tmp_path, max_pdu_size=16384) as (lean, plain):
        for scp in (lean, plain):
            ae = AE(ae_title="PYSCU")
            for path in paths:
                meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
                ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
            chunked = _config.STORE_SEND_CHUNKED_DATASET
            _config.STORE_SEND_CHUNKED_DATASET = True
            assoc = ae.associate("127.0.0.1", scp.port, ae_title="DICOMSERVER")
            try:
                statuses = [assoc.send_c_store(path).Status for path in paths]
            finally:
                _config.STORE_SEND_CHUNKED_DATASET = chunked
                assoc.release()
            results.append(
                (
                    statuses,
                    [(s.data, s.sop_class, s.sop_instance, s.tenant, s.calling_ae_title) for s in scp.pipeline.stored],
                )
            )
    assert results[0] == results[1]
    assert results[0][0] == [0] * len(paths)
    # Both paths tell the pipeline who sent the object (routing rules match on it).
    assert {s[4] for s in results[0][1]} == {"PYSCU"}


def test_storescu_and_findscu_are_served_by_the_lean_acceptor_and_storage_commitment_by_pynetdicom(
    tmp_path: Path,
) -> None:
    """(Until query/retrieve went lean too, findscu was pynetdicom's.)"""
    env = dcmtk_env()
    with running_scp(tmp_path) as scp:
        lean, plain = served("lean"), served("pynetdicom")
        files = [str(p) for p in corpus_paths()[:3]]
        proc = subprocess.run(
            ["storescu", "-aec", "DICOMSERVER", "127.0.0.1", str(scp.port), *files],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        assert (served("lean"), served("pynetdicom")) == (lean + 1, plain)
        assert len(scp.pipeline.stored) == 3
        subprocess.run(
            ["findscu", "-S", "-aec", "DICOMSERVER", "-k", "QueryRetrieveLevel=STUDY", "127.0.0.1", str(scp.port)],
            env=env,
            capture_output=True,
            timeout=60,
        )
        assert (served("lean"), served("pynetdicom")) == (lean + 2, plain)
        answer(
            scp, request([(1, StorageCommitmentPushModel, [ImplicitVRLittleEndian]), (3, CT, [ExplicitVRLittleEndian])])
        )
        assert (served("lean"), served("pynetdicom")) == (lean + 2, plain + 1)


def staged_files(scp: Scp) -> list[Path]:
    return list(scp.pipeline.folder.iterdir())


def wait_for(condition: Any, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("how", ["abort", "vanish"])
def test_a_peer_leaving_mid_object_leaves_nothing_staged(tmp_path: Path, how: str) -> None:
    ct = Path(corpus_paths()[0])
    with running_scp(tmp_path) as scp:
        sock, accepted = associate(scp, request([(1, CT, [ExplicitVRLittleEndian])]))
        assert accepted[:1] == b"\x02"
        whole = store_messages(ct, fragment=2000)
        sock.sendall(whole[: len(whole) // 2])
        assert wait_for(lambda: len(staged_files(scp)) == 1), "the object is written as it arrives"
        if how == "abort":
            sock.sendall(ABORT_RQ)
        sock.close()
        assert wait_for(lambda: not staged_files(scp) and not scp.server.active_associations)
        assert scp.pipeline.stored == [] and scp.audit.records == []


def test_a_pdu_longer_than_offered_is_refused(tmp_path: Path) -> None:
    with running_scp(tmp_path, max_pdu_size=16384) as scp:
        sock, accepted = associate(scp, request([(1, CT, [ExplicitVRLittleEndian])]))
        assert accepted[:1] == b"\x02"
        sock.sendall(struct.pack(">BxI", 0x04, 4 * 16384) + b"\x00" * 1000)
        reply = read_pdu(sock)
        assert reply == b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06"  # A-ABORT, service provider, invalid parameter
        assert read_pdu(sock) == b""  # and closed
        sock.close()
        assert staged_files(scp) == [] and scp.pipeline.stored == []


@pytest.mark.parametrize("opening", [b"", b"\x01\x00" + (1000).to_bytes(4, "big") + b"\x00\x01"])
def test_a_silent_peer_is_dropped_after_the_acse_timeout(tmp_path: Path, opening: bytes) -> None:
    with running_scp(tmp_path, acse_timeout=1, network_timeout=30) as scp:
        sock = connect(scp)
        sock.sendall(opening)
        start = time.monotonic()
        sock.settimeout(10)
        assert sock.recv(100) == b""
        assert 0.8 < time.monotonic() - start < 5
        sock.close()
        assert wait_for(lambda: not scp.server.active_associations)


@pytest.mark.parametrize(
    "message",
    [
        p_data(1, 0x02, b"data before any command"),
        p_data(7, 0x03, b"on a context never proposed"),
        request([(1, CT, [ExplicitVRLittleEndian])]),  # a second A-ASSOCIATE-RQ
        struct.pack(">BxI", 0x09, 4) + bytes(4),  # no such PDU type
        p_data(1, 0x03, b"\x00\x00\x01\x00\x02\x00\x00\x00\x01\x00"),  # a command set that cannot be read
    ],
)
def test_invalid_or_unexpected_pdus_abort_the_association(tmp_path: Path, message: bytes) -> None:
    with running_scp(tmp_path) as scp:
        sock, _ = associate(scp, request([(1, CT, [ExplicitVRLittleEndian])]))
        sock.sendall(message)
        reply = read_pdu(sock)
        assert reply[:1] == b"\x07" and reply[8] == 0x02  # A-ABORT from the service provider
        assert read_pdu(sock) == b""
        sock.close()


def test_stop_aborts_open_storage_associations(tmp_path: Path) -> None:
    with running_scp(tmp_path) as scp:
        sock, _ = associate(scp, request([(1, CT, [ExplicitVRLittleEndian])]))
        assert len(scp.server.active_associations) == 1
        start = time.monotonic()
        scp.server.stop(0.5)
        scp.stopped = True
        assert time.monotonic() - start < 5
        assert read_pdu(sock)[:1] == b"\x07"
        sock.close()
        assert scp.server.active_associations == []
