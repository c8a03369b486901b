"""C-FIND, C-GET and C-MOVE on the lean acceptor against pynetdicom, on the
same archive (auth_svc, metadata_svc and storage_svc launched): for the same
bytes on the wire both paths answer the same bytes (association
negotiation with role selection, every response's command set and
identifier, every C-STORE sub-operation's command set and data set), the
objects go out as stored (re-encoded only for a peer that takes no other
syntax), in PDUs no longer than the peer takes; the lean path's own edges:
C-CANCEL, refusals, a destination that goes away, a peer that does not
answer, shutdown."""

from __future__ import annotations

import io
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    MRImageStorage,
)
from pynetdicom import AE, _config, evt
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StorageCommitmentPushModel,
    Verification,
)
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind as FIND,
)
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelGet as GET,
)
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelMove as MOVE,
)

from ingest_svc import command_set
from tests.ingest_svc.dimse_support import read_pdu, request, role
from tests.ingest_svc.lean_qr_support import OTHER_AE, SCU, Scp, World, served, world
from tests.ingest_svc.retrieve_support import DCMTK_ENV, by_uid
from tests.ingest_svc.wire_support import Peer, Received, cancel_rq, find_rq, get_rq, move_rq
from tests.support import split_part10

UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian]


@pytest.fixture(scope="module")
def qr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with world(tmp_path_factory.mktemp("lean-qr")) as w:
        yield w


@pytest.fixture(autouse=True)
def restore_pynetdicom_config() -> Iterator[None]:
    before = _config.UNRESTRICTED_STORAGE_SERVICE
    yield
    _config.UNRESTRICTED_STORAGE_SERVICE = before


@contextmanager
def both(qr: World, **settings: Any) -> Iterator[tuple[Scp, Scp]]:
    with ExitStack() as stack:
        yield stack.enter_context(qr.scp(True, **settings)), stack.enter_context(qr.scp(False, **settings))


def identifier(level: str, **keys: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def series_id(qr: World, name: str, **keys: Any) -> Dataset:
    return identifier("SERIES", StudyInstanceUID=qr.study, SeriesInstanceUID=qr.series_uids[name], **keys)


def exchange(
    scp: Scp,
    contexts: list[tuple[int, str, list[str]]],
    requests: list[tuple[int, Any]],
    calling: str = SCU,
    max_pdu: int = 16384,
    extra: list[Any] | None = None,
    store_status: int = 0x0000,
) -> tuple[bytes, list[list[Received]], Peer]:
    """Associates, sends each (context ID, request) and reads its messages
    to the final response (answering C-STOREs), releases."""
    peer, ac = Peer.associate(scp.port, request(contexts, calling=calling, max_pdu=max_pdu, extra=extra))
    assert ac[:1] == b"\x02", ac
    peer.store_status = store_status
    answers = []
    for context_id, (primitive, message_class) in requests:
        peer.send(context_id, primitive, message_class)
        answers.append(peer.responses())
    assert peer.release()[:1] == b"\x06"
    return ac, answers, peer


def same_exchange(lean: Scp, plain: Scp, *args: Any, **kwargs: Any) -> tuple[list[list[Received]], Peer]:
    """Both paths' answers, asserted equal message for message (and the
    C-STORE sub-operations the peer received); the lean path served it."""
    before = served("lean")
    ac, answers, peer = exchange(lean, *args, **kwargs)
    assert served("lean") == before + 1
    plain_ac, plain_answers, plain_peer = exchange(plain, *args, **kwargs)
    assert ac == plain_ac
    assert answers == plain_answers
    assert peer.messages == plain_peer.messages
    return answers, peer


# ---- negotiation ---------------------------------------------------------------------

NEGOTIATIONS: dict[str, tuple[list[tuple[int, str, list[str]]], list[Any]]] = {
    "find": (
        [(1, FIND, [ImplicitVRLittleEndian]), (3, PatientRootQueryRetrieveInformationModelFind, UNCOMPRESSED)],
        [],
    ),
    "find in a compressed syntax": ([(1, FIND, [JPEGLSLossless]), (3, FIND, [ExplicitVRLittleEndian])], []),
    "get with storage roles": (
        [
            (1, GET, [ExplicitVRLittleEndian]),
            (3, CTImageStorage, [ExplicitVRLittleEndian]),
            (5, MRImageStorage, [JPEGLSLossless, ExplicitVRLittleEndian]),
        ],
        [role(CTImageStorage, False, True), role(MRImageStorage, True, True)],
    ),
    "get, a role for a class not proposed": ([(1, GET, [ExplicitVRLittleEndian])], [role(CTImageStorage, False, True)]),
    "move, echo and patient root get": (
        [
            (1, MOVE, [ImplicitVRLittleEndian]),
            (3, Verification, UNCOMPRESSED),
            (5, PatientRootQueryRetrieveInformationModelGet, [ExplicitVRBigEndian]),
            (7, PatientRootQueryRetrieveInformationModelMove, [ExplicitVRLittleEndian]),
        ],
        [role(PatientRootQueryRetrieveInformationModelGet, True, False)],
    ),
    "everything at once": (
        [
            (1, FIND, UNCOMPRESSED),
            (3, GET, UNCOMPRESSED),
            (5, MOVE, UNCOMPRESSED),
            (7, CTImageStorage, UNCOMPRESSED),
            (9, "1.3.6.1.4.1.99999.1", [ExplicitVRLittleEndian]),
        ],
        [role(CTImageStorage, True, True), role("1.3.6.1.4.1.99999.1", False, True)],
    ),
}


@pytest.mark.parametrize("accept_unknown", [True, False])
def test_negotiation_answers_are_pynetdicoms(qr: World, accept_unknown: bool) -> None:
    """Each request twice, from AE titles of different lengths and padding:
    the second answer comes from the negotiation the first one kept."""
    with both(qr, accept_unknown_sop_classes=accept_unknown) as (lean, plain):
        for name, (contexts, extra) in NEGOTIATIONS.items():
            for calling, called in ((SCU, "DICOMSERVER"), ("A", " DICOMSERVER "), ("SIXTEEN_CHARS_AE", "DICOMSERVER")):
                rq = request(contexts, calling=calling, called=called, extra=extra)
                before = served("lean")
                replies = []
                for scp in (lean, plain):
                    peer, reply = Peer.associate(scp.port, rq)
                    replies.append(reply)
                    assert peer.release()[:1] == b"\x06"
                assert served("lean") == before + 1, name
                assert replies[0] == replies[1], name
                assert replies[0][:1] == b"\x02", name


def test_storage_commitment_and_worklists_stay_on_pynetdicom(qr: World) -> None:
    with qr.scp() as scp:
        for uid in (StorageCommitmentPushModel, "1.2.840.10008.5.1.4.31"):
            before = served("pynetdicom")
            peer, reply = Peer.associate(
                scp.port, request([(1, FIND, [ExplicitVRLittleEndian]), (3, uid, [ExplicitVRLittleEndian])])
            )
            assert reply[:1] == b"\x02"
            peer.release()
            assert served("pynetdicom") == before + 1


def test_query_retrieve_on_pynetdicom_when_switched_off(qr: World) -> None:
    with qr.scp(False) as scp:
        before = served("pynetdicom"), served("lean")
        peer, reply = Peer.associate(scp.port, request([(1, FIND, [ExplicitVRLittleEndian])]))
        peer.release()
        storage, _ = Peer.associate(scp.port, request([(1, CTImageStorage, [ExplicitVRLittleEndian])]))
        storage.release()
        assert (served("pynetdicom"), served("lean")) == (before[0] + 1, before[1] + 1)


# ---- C-FIND ----------------------------------------------------------------------------


@pytest.mark.parametrize("syntax", UNCOMPRESSED)
def test_find_responses_are_pynetdicoms(qr: World, syntax: str) -> None:
    queries = [
        (
            FIND,
            identifier(
                "STUDY",
                StudyInstanceUID="",
                PatientName="",
                PatientID=qr.patient_id,
                StudyDate="",
                ModalitiesInStudy="",
                NumberOfStudyRelatedInstances="",
            ),
        ),
        (
            FIND,
            identifier(
                "SERIES",
                StudyInstanceUID=qr.study,
                SeriesInstanceUID="",
                Modality="",
                SeriesNumber="",
                NumberOfSeriesRelatedInstances="",
            ),
        ),
        (
            FIND,
            identifier(
                "IMAGE",
                StudyInstanceUID=qr.study,
                SeriesInstanceUID=qr.series_uids["mixed"],
                SOPInstanceUID="",
                InstanceNumber="",
                SOPClassUID="",
                ReferencedImageSequence=[],
            ),
        ),
        (FIND, identifier("PATIENT", PatientID="")),  # not in the study root model: 0xA900
        (FIND, identifier("STUDY", StudyDate="2020-01-01-x")),  # 0xC000
        (
            PatientRootQueryRetrieveInformationModelFind,
            identifier("PATIENT", PatientID=qr.patient_id, PatientName="", PatientSex=""),
        ),
    ]
    contexts = [(1, FIND, [syntax]), (3, PatientRootQueryRetrieveInformationModelFind, [syntax])]
    requests = [
        (1 if model == FIND else 3, find_rq(n, model, ds, UID(syntax))) for n, (model, ds) in enumerate(queries, 1)
    ]
    with both(qr, find_page_size=2) as (lean, plain):  # pages of two: the mixed series is three pages
        answers, _ = same_exchange(lean, plain, contexts, requests)
        records = [
            [(r.operation, r.status, r.outcome, r.study_instance_uid, r.tenant) for r in scp.audit.records]
            for scp in (lean, plain)
        ]
    finals = [answer[-1].parsed.status for answer in answers]
    assert finals == [0x0000, 0x0000, 0x0000, 0xA900, 0xC000, 0x0000]
    assert [len(answer) - 1 for answer in answers] == [1, 3, 5, 0, 0, 1]
    assert records[0] == records[1]
    assert len(records[0]) == len(queries)


def test_find_is_cancelled_between_matches(qr: World) -> None:
    """C-CANCEL-RQ after the first pending response: a page of one match at a time."""
    with qr.scp(find_page_size=1) as scp:
        peer, ac = Peer.associate(scp.port, request([(1, FIND, [ExplicitVRLittleEndian])]))
        assert ac[:1] == b"\x02"
        peer.send(
            1,
            *find_rq(
                9, FIND, identifier("IMAGE", StudyInstanceUID=qr.study, SOPInstanceUID=""), UID(ExplicitVRLittleEndian)
            ),
        )
        first = peer.read_message()
        assert first.parsed.status == 0xFF00
        peer.send(1, *cancel_rq(9))
        rest = peer.responses()
        assert rest[-1].parsed.status == 0xFE00
        assert len(rest) - 1 < sum(len(s) for s in qr.series.values()) - 1
        assert peer.release()[:1] == b"\x06"
        assert scp.audit.records[-1].status == 0xFE00


def test_other_tenants_find_nothing(qr: World) -> None:
    with qr.scp() as scp:
        _, answers, _ = exchange(
            scp,
            [(1, FIND, [ExplicitVRLittleEndian])],
            [
                (
                    1,
                    find_rq(
                        1,
                        FIND,
                        identifier("STUDY", StudyInstanceUID=qr.study, PatientID=""),
                        UID(ExplicitVRLittleEndian),
                    ),
                )
            ],
            calling=OTHER_AE,
        )
    assert [m.parsed.status for m in answers[0]] == [0x0000]


# ---- C-GET ---------------------------------------------------------------------------------


def get_contexts(syntaxes: list[str], roles: bool = True) -> tuple[list[tuple[int, str, list[str]]], list[Any]]:
    contexts = [(1, GET, [ExplicitVRLittleEndian]), (3, CTImageStorage, syntaxes), (5, MRImageStorage, syntaxes)]
    return contexts, [role(CTImageStorage, False, True), role(MRImageStorage, False, True)] if roles else []


def stored_data_set(qr: World, sop_instance: str) -> bytes:
    (path,) = [p for p in (qr.archive.data_dir / "objects").rglob(f"*{sop_instance}*") if p.is_file()]
    return split_part10(path.read_bytes())[1]


def stores(peer: Peer) -> list[Received]:
    return [m for m in peer.messages if m.parsed.field == command_set.C_STORE_RQ]


def accepted_syntaxes(ac: bytes) -> dict[int, str]:
    pdu = A_ASSOCIATE_AC()
    pdu.decode(ac)
    return {
        int(cx.context_id): str(cx.transfer_syntax[0])
        for cx in pdu.to_primitive().presentation_context_definition_results_list
        if cx.result == 0
    }


GET_CASES = {
    # One context per stored syntax: everything goes as stored.
    "each syntax alone": (
        [
            [ExplicitVRLittleEndian],
            [ImplicitVRLittleEndian],
            [DeflatedExplicitVRLittleEndian],
            [ExplicitVRBigEndian],
            [JPEGLSLossless],
        ],
        0,
    ),
    # Implicit only: explicit and deflated re-encoded; big endian and JPEG-LS fail.
    "implicit only": ([[ImplicitVRLittleEndian]], 2),
    # One context of several syntaxes: Explicit accepted, the same again.
    "explicit first": ([[ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, JPEGLSLossless]], 2),
}


@pytest.mark.parametrize("case", list(GET_CASES))
def test_get_sends_what_pynetdicom_sends(qr: World, case: str) -> None:
    offers, failures = GET_CASES[case]
    contexts = [(1, GET, [ExplicitVRLittleEndian])]
    for sop_class in (CTImageStorage, MRImageStorage):
        for syntaxes in offers:
            contexts.append((2 * len(contexts) + 1, sop_class, syntaxes))
    roles = [role(CTImageStorage, False, True), role(MRImageStorage, False, True)]
    requests = [
        (1, get_rq(7, GET, series_id(qr, "mixed"), UID(ExplicitVRLittleEndian))),
        (1, get_rq(65533, GET, series_id(qr, "explicit"), UID(ExplicitVRLittleEndian))),
    ]
    with both(qr) as (lean, plain):
        answers, peer = same_exchange(lean, plain, contexts, requests, extra=roles)
        records = [[(r.operation, r.status, r.outcome) for r in scp.audit.records] for scp in (lean, plain)]
        probe, ac = Peer.associate(lean.port, request(contexts, extra=roles))
        probe.release()
    syntax_of = accepted_syntaxes(ac)
    mixed = qr.series["mixed"]
    sent = {m.parsed.sop_instance: m for m in stores(peer) if m.parsed.sop_instance in mixed}
    assert len(sent) == len(mixed) - failures
    for uid, message in sent.items():
        original = pydicom.dcmread(mixed[uid])
        if syntax_of[message.context_id] == original.file_meta.TransferSyntaxUID:
            assert message.data == stored_data_set(qr, uid)  # as stored, byte for byte
        else:
            assert not original.file_meta.TransferSyntaxUID.is_compressed
            ds = pydicom.dcmread(io.BytesIO(file_meta_for(syntax_of[message.context_id], uid) + message.data))
            assert ds.PixelData == original.PixelData and ds.SOPInstanceUID == uid
    final = answers[0][-1].parsed
    assert (final.status, len(sent)) == ((0xB000 if failures else 0x0000), len(mixed) - failures)
    assert answers[1][-1].parsed.status == 0x0000  # message IDs past 65535 wrap as pynetdicom's do
    # The pynetdicom path audits its handler's status, 0x0000, when sub-operations failed.
    assert records[0][1:] == records[1][1:]
    assert records[0][0][1] == (0xB000 if failures else 0x0000)


def file_meta_for(syntax: str, sop_instance: str) -> bytes:
    from ingest_svc.store import file_meta

    return file_meta(CTImageStorage, sop_instance, syntax)


@pytest.mark.parametrize("max_pdu", [4096, 64])  # 64: more fragments per object than one preadv takes
def test_get_respects_a_small_maximum_pdu(qr: World, max_pdu: int) -> None:
    contexts, roles = get_contexts([ExplicitVRLittleEndian])
    with both(qr) as (lean, plain):
        answers, peer = same_exchange(
            lean,
            plain,
            contexts,
            [(1, get_rq(1, GET, series_id(qr, "explicit"), UID(ExplicitVRLittleEndian)))],
            max_pdu=max_pdu,
            extra=roles,
        )
    assert answers[0][-1].parsed.status == 0x0000
    assert max(len(pdu) - 6 for pdu in peer.pdus) == max_pdu
    for message in stores(peer):
        assert message.data == stored_data_set(qr, message.parsed.sop_instance or "")


def test_get_failures_and_refusals_are_pynetdicoms(qr: World) -> None:
    contexts, roles = get_contexts([ExplicitVRLittleEndian])
    requests = [
        (1, get_rq(1, GET, identifier("SERIES", StudyInstanceUID=qr.study), UID(ExplicitVRLittleEndian))),  # 0xA900
        (1, get_rq(2, GET, identifier("FRAME"), UID(ExplicitVRLittleEndian))),  # 0xA900
        (1, get_rq(3, GET, series_id(qr, "long"), UID(ExplicitVRLittleEndian))),  # over the limit: 0xA700
        (1, get_rq(4, GET, identifier("STUDY", StudyInstanceUID="1.2.3.4"), UID(ExplicitVRLittleEndian))),  # none
    ]
    with both(qr, max_retrieve_instances=10) as (lean, plain):
        answers, _ = same_exchange(lean, plain, contexts, requests, extra=roles)
        # Every sub-operation refused by the peer: 0xA702.
        refused, _ = same_exchange(
            lean,
            plain,
            contexts,
            [(1, get_rq(5, GET, series_id(qr, "explicit"), UID(ExplicitVRLittleEndian)))],
            extra=roles,
            store_status=0xA700,
        )
    assert [a[-1].parsed.status for a in answers] == [0xA900, 0xA900, 0xA700, 0x0000]
    assert refused[0][-1].parsed.status == 0xA702


def test_another_tenant_gets_nothing(qr: World) -> None:
    contexts, roles = get_contexts([ExplicitVRLittleEndian])
    with qr.scp() as scp:
        _, answers, peer = exchange(
            scp,
            contexts,
            [(1, get_rq(1, GET, series_id(qr, "explicit"), UID(ExplicitVRLittleEndian)))],
            calling=OTHER_AE,
            extra=roles,
        )
    assert answers[0][-1].parsed.status == 0x0000 and stores(peer) == []


def test_get_is_cancelled_between_sub_operations(qr: World) -> None:
    contexts, roles = get_contexts([ExplicitVRLittleEndian])
    with qr.scp() as scp:
        peer, ac = Peer.associate(scp.port, request(contexts, extra=roles))
        assert ac[:1] == b"\x02"
        sent = []

        def cancel_once(message: Received) -> None:
            if not sent:
                sent.append(message)
                peer.send(1, *cancel_rq(11))

        peer.on_store = cancel_once
        peer.send(1, *get_rq(11, GET, series_id(qr, "long"), UID(ExplicitVRLittleEndian)))
        answers = peer.responses()
        assert peer.release()[:1] == b"\x06"
    final = answers[-1].parsed
    assert final.status == 0xFE00
    received = len(stores(peer))
    assert 1 <= received < len(qr.series["long"])
    assert scp.audit.records[-1].status == 0xFE00


# ---- C-MOVE --------------------------------------------------------------------------------


def received_by(qr: World, aet: str, uids: set[str], timeout: float = 30) -> dict[str, Path]:
    return qr.peers[aet].received(uids, timeout)


@pytest.mark.parametrize("destination", ["ALL", "XI"])
def test_move_answers_as_pynetdicom_and_the_destination_gets_what_it_got(qr: World, destination: str) -> None:
    objects = qr.series["mixed"]
    results = []
    with both(qr) as (lean, plain):
        for scp in (lean, plain):
            qr.peers[destination].clear()
            before = served("lean")
            _, answers, _ = exchange(
                scp,
                [(1, MOVE, [ExplicitVRLittleEndian])],
                [(1, move_rq(3, MOVE, series_id(qr, "mixed"), UID(ExplicitVRLittleEndian), destination))],
            )
            assert served("lean") == before + (scp is lean)
            final = answers[0][-1].parsed
            expected = (
                set(objects)
                if destination == "ALL"
                else {
                    uid
                    for uid, p in objects.items()
                    if not pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID.is_compressed
                    and pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID != ExplicitVRBigEndian
                }
            )
            got = received_by(qr, destination, expected)
            time.sleep(0.5)  # anything more would have arrived by now
            results.append(
                (
                    answers,
                    {uid: split_part10(p.read_bytes())[1] for uid, p in got.items()},
                    sorted(p.name for p in qr.peers[destination].folder.iterdir()),
                )
            )
            assert final.status == (0x0000 if destination == "ALL" else 0xB000)
    assert results[0][0] == results[1][0]
    assert results[0][1] == results[1][1]
    if destination == "ALL":
        assert all(data == stored_data_set(qr, uid) for uid, data in results[0][1].items())


def test_move_refusals(qr: World) -> None:
    requests = [
        (1, move_rq(1, MOVE, series_id(qr, "explicit"), UID(ExplicitVRLittleEndian), "NOSUCHAE")),  # 0xA801
        (1, move_rq(2, MOVE, identifier("SERIES"), UID(ExplicitVRLittleEndian), "ALL")),  # 0xA900
        (1, move_rq(3, MOVE, series_id(qr, "long"), UID(ExplicitVRLittleEndian), "ALL")),  # 0xA700
    ]
    with both(qr, max_retrieve_instances=10) as (lean, plain):
        answers, _ = same_exchange(lean, plain, [(1, MOVE, [ExplicitVRLittleEndian])], requests)
    assert [a[-1].parsed.status for a in answers] == [0xA801, 0xA900, 0xA700]


def test_move_to_a_destination_that_is_not_there(qr: World) -> None:
    with qr.scp(dimse_peers={"GONE": {"host": "127.0.0.1", "port": free_port_closed()}}) as scp:
        _, answers, _ = exchange(
            scp,
            [(1, MOVE, [ExplicitVRLittleEndian])],
            [(1, move_rq(1, MOVE, series_id(qr, "explicit"), UID(ExplicitVRLittleEndian), "GONE"))],
        )
    assert answers[0][-1].parsed.status == 0xA801


def free_port_closed() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- dcmtk's tools -------------------------------------------------------------------------


def dcmtk(args: list[str], ok: tuple[int, ...] = (0,)) -> str:
    proc = subprocess.run(args, env=DCMTK_ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode in ok, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_findscu_getscu_and_movescu_are_served_by_the_lean_path(qr: World, tmp_path: Path) -> None:
    with qr.scp(find_page_size=2) as scp:
        before = served("lean")
        where = ["-aet", SCU, "-aec", "DICOMSERVER", "127.0.0.1", str(scp.port)]
        found = tmp_path / "found"
        found.mkdir()
        dcmtk(
            [
                "findscu",
                "-S",
                "-X",
                "-od",
                str(found),
                "-k",
                "QueryRetrieveLevel=SERIES",
                "-k",
                f"StudyInstanceUID={qr.study}",
                "-k",
                "SeriesInstanceUID",
                "-k",
                "NumberOfSeriesRelatedInstances",
                *where,
            ]
        )
        counts = {
            str(ds.SeriesInstanceUID): int(ds.NumberOfSeriesRelatedInstances)
            for ds in (pydicom.dcmread(p) for p in found.iterdir())
        }
        assert counts == {qr.series_uids[name]: len(objects) for name, objects in qr.series.items()}

        # getscu with the smallest maximum PDU it takes, writing what it receives as received
        got = tmp_path / "got"
        got.mkdir()
        dcmtk(
            [
                "getscu",
                "+B",
                "-pdu",
                "4096",
                "-S",
                "-od",
                str(got),
                "-k",
                "QueryRetrieveLevel=SERIES",
                "-k",
                f"StudyInstanceUID={qr.study}",
                "-k",
                f"SeriesInstanceUID={qr.series_uids['explicit']}",
                *where,
            ]
        )
        received = by_uid(got)
        assert set(received) == set(qr.series["explicit"])
        for uid, path in received.items():
            assert split_part10(path.read_bytes())[1] == stored_data_set(qr, uid)

        # movescu to a storescp taking every syntax: each object as stored
        qr.peers["ALL"].clear()
        dcmtk(
            [
                "movescu",
                "-S",
                "-aem",
                "ALL",
                "-k",
                "QueryRetrieveLevel=SERIES",
                "-k",
                f"StudyInstanceUID={qr.study}",
                "-k",
                f"SeriesInstanceUID={qr.series_uids['mixed']}",
                *where,
            ]
        )
        moved = received_by(qr, "ALL", set(qr.series["mixed"]))
        assert set(moved) == set(qr.series["mixed"])
        for uid, path in moved.items():
            assert split_part10(path.read_bytes())[1] == stored_data_set(qr, uid)

        # findscu and movescu cancel after the first response
        out = dcmtk(
            [
                "findscu",
                "-v",
                "-S",
                "--cancel",
                "1",
                "-k",
                "QueryRetrieveLevel=IMAGE",
                "-k",
                f"StudyInstanceUID={qr.study}",
                "-k",
                "SOPInstanceUID",
                *where,
            ]
        )
        assert "Received Final Find Response (Cancel" in out, out
        qr.peers["UNCOMPR"].clear()
        out = dcmtk(
            [
                "movescu",
                "-v",
                "-S",
                "--cancel",
                "1",
                "-aem",
                "UNCOMPR",
                "-k",
                "QueryRetrieveLevel=SERIES",
                "-k",
                f"StudyInstanceUID={qr.study}",
                "-k",
                f"SeriesInstanceUID={qr.series_uids['long']}",
                *where,
            ],
            ok=(0, 68),
        )
        assert "Received Final Move Response (Cancel" in out, out
        assert served("lean") == before + 5


# ---- the lean path's own edges ---------------------------------------------------------------


class Listener:
    """Keeps each A-ASSOCIATE-RQ it is sent and rejects it (permanent,
    calling AE title not recognised)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self.requests.append(read_pdu(conn))
                conn.sendall(b"\x03\x00\x00\x00\x00\x04\x00\x01\x01\x03")

    def close(self) -> None:
        self.sock.close()


def test_the_destination_association_is_requested_as_pynetdicom_requests_it(qr: World) -> None:
    listener = Listener()
    try:
        with both(qr, dimse_peers={"RAW": {"host": "127.0.0.1", "port": listener.port}}) as (lean, plain):
            answers, _ = same_exchange(
                lean,
                plain,
                [(1, MOVE, [ExplicitVRLittleEndian])],
                [(1, move_rq(1, MOVE, series_id(qr, "mixed"), UID(ExplicitVRLittleEndian), "RAW"))],
            )
    finally:
        listener.close()
    assert answers[0][-1].parsed.status == 0xA801
    lean_rq, plain_rq = listener.requests
    assert lean_rq == plain_rq
    rq = A_ASSOCIATE_RQ()
    rq.decode(lean_rq)
    proposed = [
        (cx.abstract_syntax, list(cx.transfer_syntax)) for cx in rq.to_primitive().presentation_context_definition_list
    ]
    assert (CTImageStorage, [ExplicitVRBigEndian]) in proposed and (MRImageStorage, [JPEGLSLossless]) in proposed


def test_a_peer_that_does_not_answer_a_sub_operation_is_aborted_after_the_dimse_timeout(qr: World) -> None:
    contexts, roles = get_contexts([ExplicitVRLittleEndian])
    with qr.scp(dimse_timeout=1) as scp:
        peer, ac = Peer.associate(scp.port, request(contexts, extra=roles))
        assert ac[:1] == b"\x02"
        peer.send(1, *get_rq(1, GET, series_id(qr, "explicit"), UID(ExplicitVRLittleEndian)))
        assert peer.read_message().parsed.field == command_set.C_STORE_RQ
        start = time.monotonic()
        assert read_pdu(peer.sock)[:1] == b"\x07"  # A-ABORT, unanswered
        assert 0.8 < time.monotonic() - start < 10
        peer.sock.close()
        assert wait_for(lambda: not scp.server.active_associations)
        assert [r.operation for r in scp.audit.records] == ["C-GET"]


class Destination:
    """A pynetdicom storage SCP that aborts the association on its
    `abort_at`-th C-STORE (0: never), or holds each C-STORE `hold` seconds."""

    def __init__(self, abort_at: int = 0, hold: float = 0.0) -> None:
        self.received: list[str] = []
        self.ended: list[str] = []
        self.abort_at, self.hold = abort_at, hold
        ae = AE(ae_title="PYDEST")
        for sop_class in (CTImageStorage, MRImageStorage):
            ae.add_supported_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.port = free_port_closed()
        self.server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[
                (evt.EVT_C_STORE, self._store),
                (evt.EVT_ABORTED, lambda e: self.ended.append("aborted")),
                (evt.EVT_RELEASED, lambda e: self.ended.append("released")),
            ],
        )

    def _store(self, event: evt.Event) -> int:
        self.received.append(str(event.request.AffectedSOPInstanceUID))
        if len(self.received) == self.abort_at:
            event.assoc.abort()
            return 0x0000
        time.sleep(self.hold)
        return 0x0000


def test_a_destination_that_aborts_fails_the_remaining_sub_operations(qr: World) -> None:
    dest = Destination(abort_at=2)
    try:
        with qr.scp(dimse_peers={"PYDEST": {"host": "127.0.0.1", "port": dest.port}}) as scp:
            _, answers, _ = exchange(
                scp,
                [(1, MOVE, [ExplicitVRLittleEndian])],
                [(1, move_rq(1, MOVE, series_id(qr, "long"), UID(ExplicitVRLittleEndian), "PYDEST"))],
            )
    finally:
        dest.server.shutdown()
    final = answers[0][-1]
    command = final.parsed
    assert command.status == 0xB000
    counts = pynetdicom_counts(final.command)
    assert counts == (1, len(qr.series["long"]) - 1, 0)  # completed, failed, warning
    failed = decode_identifier(final.data).FailedSOPInstanceUIDList
    assert len(failed) == len(qr.series["long"]) - 1 and dest.received[0] not in failed
    assert dest.ended == ["aborted"]


def test_stop_aborts_a_move_in_progress_and_its_destination_association(qr: World) -> None:
    dest = Destination(hold=3.0)
    try:
        with qr.scp(dimse_peers={"PYDEST": {"host": "127.0.0.1", "port": dest.port}}) as scp:
            peer, ac = Peer.associate(scp.port, request([(1, MOVE, [ExplicitVRLittleEndian])]))
            assert ac[:1] == b"\x02"
            peer.send(1, *move_rq(1, MOVE, series_id(qr, "long"), UID(ExplicitVRLittleEndian), "PYDEST"))
            assert wait_for(lambda: len(dest.received) == 1)
            start = time.monotonic()
            scp.server.stop(0.2)
            scp.stopped = True
            assert time.monotonic() - start < 3
            assert read_pdu(peer.sock)[:1] == b"\x07"
            peer.sock.close()
            assert wait_for(lambda: dest.ended == ["aborted"])
            assert scp.server.active_associations == []
    finally:
        dest.server.shutdown()


def test_a_requestor_that_leaves_in_the_middle_of_a_get_ends_it(qr: World) -> None:
    contexts, roles = get_contexts([ExplicitVRLittleEndian])
    with qr.scp() as scp:
        peer, ac = Peer.associate(scp.port, request(contexts, extra=roles))
        peer.send(1, *get_rq(1, GET, series_id(qr, "long"), UID(ExplicitVRLittleEndian)))
        assert peer.read_message().parsed.field == command_set.C_STORE_RQ
        peer.sock.close()
        assert wait_for(lambda: not scp.server.active_associations)
        assert [r.operation for r in scp.audit.records] == ["C-GET"]


def wait_for(condition: Any, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def pynetdicom_counts(command: bytes) -> tuple[int, int, int]:
    ds = decode_identifier(command, implicit=True)
    return ds.NumberOfCompletedSuboperations, ds.NumberOfFailedSuboperations, ds.NumberOfWarningSuboperations


def decode_identifier(data: bytes | None, implicit: bool = False) -> Dataset:
    from pynetdicom.dsutils import decode

    assert data is not None
    return decode(io.BytesIO(data), implicit, True)


class CountingAuth:
    """auth_svc's client, counting the calls that go through it."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls: list[str] = []

    def authenticate(self, request: Any) -> Any:
        self.calls.append("authenticate")
        return self.real.authenticate(request)

    def authorize(self, principal: Any, action: int, tenant: str) -> Any:
        self.calls.append("authorize")
        return self.real.authorize(principal, action, tenant)


@pytest.mark.parametrize("ttl,expected", [(2.0, 2), (0.0, 6)])
def test_auth_svc_grants_are_reused_for_a_short_time(qr: World, ttl: float, expected: int) -> None:
    """Three C-FIND associations from one peer: auth_svc asked once for the
    principal and once for its read grant, or for each association (TTL 0)."""
    auth = CountingAuth(qr.clients[0])
    with qr.scp(auth=auth, auth_cache_seconds=ttl) as scp:
        for n in range(3):
            _, answers, _ = exchange(
                scp,
                [(1, FIND, [ExplicitVRLittleEndian])],
                [
                    (
                        1,
                        find_rq(
                            n + 1, FIND, identifier("STUDY", StudyInstanceUID=qr.study), UID(ExplicitVRLittleEndian)
                        ),
                    )
                ],
            )
            assert [m.parsed.status for m in answers[0]] == [0xFF00, 0x0000]
        assert len(auth.calls) == expected
        if ttl:
            time.sleep(ttl + 0.1)  # then asked again
            exchange(
                scp,
                [(1, FIND, [ExplicitVRLittleEndian])],
                [(1, find_rq(9, FIND, identifier("STUDY", StudyInstanceUID=qr.study), UID(ExplicitVRLittleEndian)))],
            )
            assert auth.calls[expected:] == ["authenticate", "authorize"]
