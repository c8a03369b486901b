"""C-GET and C-MOVE against the launched server send what is stored: getscu
and storescp (bit-preserving, so the files hold the bytes as received) get
the stored bytes whenever they accept the stored transfer syntax, whatever
they prefer; an uncompressed object goes re-encoded to a peer that takes no
other syntax, a compressed one is a failed sub-operation, and so is an object
deleted from storage after it was indexed. C-CANCEL and the retrieve limit
hold."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless, generate_uid

from common.gen.dicomserver.v1 import ingest_service_pb2 as ingest_pb
from common.gen.dicomserver.v1 import ingest_service_pb2_grpc as ingest_grpc
from testbed.processes import free_port
from tests.ingest_svc.retrieve_support import (
    DCMTK_ENV,
    GET,
    SCU,
    GetScu,
    Setup,
    StoreScp,
    by_uid,
    dataset_bytes,
    move,
    movescu,
    run,
    save,
    series_query,
    series_uid,
    store_all,
    stored_file,
)
from tests.support import Archive

LIMIT = 16
# storescp profile of a destination that prefers Implicit VR Little Endian but also takes Explicit.
PREFERS_IMPLICIT = """
[[TransferSyntaxes]]
[ImplicitFirst]
TransferSyntax1 = LittleEndianImplicit
TransferSyntax2 = LocalEndianExplicit
[[PresentationContexts]]
[Storage]
PresentationContext1 = CTImageStorage\\ImplicitFirst
PresentationContext2 = MRImageStorage\\ImplicitFirst
[[Profiles]]
[Default]
PresentationContexts = Storage
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("retrieve")
    profile = root / "prefers-implicit.cfg"
    profile.write_text(PREFERS_IMPLICIT)
    options = {"XI": ["+xi"], "PREFERSI": ["-xf", str(profile), "Default"], "UNCOMPR": []}
    peers = {}
    for aet, opts in options.items():
        folder = root / aet
        folder.mkdir()
        port = free_port()
        proc = subprocess.Popen(
            ["storescp", "-aet", aet, "+B", "-od", str(folder), *opts, str(port)],
            env=DCMTK_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        peers[aet] = StoreScp(aet, port, folder, proc)
    archive = Archive(
        root / "archive",
        extra_env={
            "DICOMSERVER_DIMSE_PEERS": json.dumps(
                {aet: {"host": "127.0.0.1", "port": p.port} for aet, p in peers.items()}
            ),
            "DICOMSERVER_MAX_RETRIEVE_INSTANCES": str(LIMIT),
        },
    )
    archive.start()
    try:
        corpus = root / "corpus"
        corpus.mkdir()
        ct = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
        mr = pydicom.dcmread(get_testdata_file("MR_small_jpeg_ls_lossless.dcm", download=False))
        study = generate_uid()
        plan = {
            "explicit": [(ct, ExplicitVRLittleEndian)] * 2,
            "mixed": [(ct, ExplicitVRLittleEndian), (ct, ImplicitVRLittleEndian), (mr, JPEGLSLossless)],
            "deleted": [(ct, ExplicitVRLittleEndian)] * 2,
            "long": [(ct, ExplicitVRLittleEndian)] * 12,
            "too-long": [(ct, ExplicitVRLittleEndian)] * (LIMIT + 1),
        }
        series: dict[str, dict[str, Path]] = {}
        for name, items in plan.items():
            uid = generate_uid()
            series[name] = {}
            for ds, syntax in items:
                ds.StudyInstanceUID, ds.SeriesInstanceUID = study, uid
                path = save(ds, corpus, syntax)
                series[name][path.stem] = path
        store_all(archive, [p for s in series.values() for p in s.values()])
        yield Setup(archive, peers, series, study)
    finally:
        for peer in peers.values():
            peer.proc.terminate()
            peer.proc.wait(10)
        assert archive.stop() == 0, "".join(archive.output)


# ---- the stored bytes ----------------------------------------------------------------


def test_getscu_receives_the_stored_bytes(setup: Setup, tmp_path: Path) -> None:
    run(
        [
            "getscu",
            "+B",
            "-S",
            "-aet",
            SCU,
            "-aec",
            setup.archive.ae_title,
            "-od",
            str(tmp_path),
            "-k",
            "QueryRetrieveLevel=SERIES",
            "-k",
            f"StudyInstanceUID={setup.study}",
            "-k",
            f"SeriesInstanceUID={series_uid(setup, 'explicit')}",
            "127.0.0.1",
            str(setup.archive.dimse_port),
        ]
    )
    got = by_uid(tmp_path)
    assert set(got) == set(setup.series["explicit"])
    for uid, path in got.items():
        assert dataset_bytes(path) == dataset_bytes(setup.series["explicit"][uid])
        assert dataset_bytes(path) == dataset_bytes(stored_file(setup, uid))


def test_storescp_that_prefers_implicit_gets_each_object_as_stored(setup: Setup) -> None:
    peer = setup.peers["PREFERSI"]
    peer.clear()
    log = movescu(setup, "mixed", peer.aet)
    objects = setup.series["mixed"]
    jpeg_ls = next(uid for uid, p in objects.items() if pydicom.dcmread(p).file_meta.TransferSyntaxUID.is_compressed)
    # The profile takes no JPEG-LS: that one is a failed sub-operation.
    assert "Received Final Move Response (Warning:" in log, log
    got = peer.received(set(objects) - {jpeg_ls})
    assert set(got) == set(objects) - {jpeg_ls}
    for uid, path in got.items():
        assert dataset_bytes(path) == dataset_bytes(objects[uid]), uid


def test_storescp_taking_implicit_only_gets_implicit_as_stored_and_explicit_re_encoded(setup: Setup) -> None:
    peer = setup.peers["XI"]
    peer.clear()
    movescu(setup, "mixed", peer.aet)
    objects = {
        uid: p
        for uid, p in setup.series["mixed"].items()
        if not pydicom.dcmread(p).file_meta.TransferSyntaxUID.is_compressed
    }
    got = peer.received(set(objects))
    assert set(got) == set(objects)
    for uid, path in got.items():
        received, original = pydicom.dcmread(path), pydicom.dcmread(objects[uid])
        assert received.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        if original.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian:
            assert dataset_bytes(path) == dataset_bytes(objects[uid])
        else:
            assert received.PixelData == original.PixelData and received.PatientName == original.PatientName


def test_send_to_peer_sends_the_stored_bytes_with_its_progress(setup: Setup) -> None:
    """IngestService.SendToPeer (the console's "send") goes the way a C-MOVE
    goes: every object of the series in its stored syntax, counted."""
    peer = setup.peers["PREFERSI"]
    peer.clear()
    objects = setup.series["explicit"]
    stub = ingest_grpc.IngestServiceStub(grpc.insecure_channel(setup.archive.grpc_addrs["ingest"]))
    replies = list(
        stub.SendToPeer(
            ingest_pb.SendToPeerRequest(
                tenant="default",
                ae_title=peer.aet,
                study_instance_uid=setup.study,
                series_instance_uid=series_uid(setup, "explicit"),
            ),
            timeout=60,
        )
    )
    last = replies[-1]
    assert (last.done, last.total, last.completed, last.warning, last.failed) == (True, 2, 2, 0, 0), last
    got = peer.received(set(objects))
    assert set(got) == set(objects)
    for uid, path in got.items():
        assert dataset_bytes(path) == dataset_bytes(objects[uid]), uid


# ---- what cannot be sent -------------------------------------------------------------


def test_a_compressed_object_to_a_peer_taking_only_uncompressed_is_a_failed_sub_operation(setup: Setup) -> None:
    objects = setup.series["mixed"]
    jpeg_ls = next(uid for uid, p in objects.items() if pydicom.dcmread(p).file_meta.TransferSyntaxUID.is_compressed)
    peer = setup.peers["UNCOMPR"]
    peer.clear()
    final, failed = move(setup, series_query(setup, "mixed"), peer.aet)[-1]
    assert final.Status == 0xB000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (2, 1)
    assert failed is not None and failed.FailedSOPInstanceUIDList == jpeg_ls
    assert set(peer.received(set(objects) - {jpeg_ls})) == set(objects) - {jpeg_ls}

    scu = GetScu(setup, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    final, failed = scu.get(series_query(setup, "mixed"))[-1]
    assert final.Status == 0xB000
    assert failed is not None and failed.FailedSOPInstanceUIDList == jpeg_ls
    assert set(scu.received) == set(objects) - {jpeg_ls}


def test_an_object_deleted_from_storage_after_indexing_is_a_failed_sub_operation(setup: Setup) -> None:
    objects = setup.series["deleted"]
    gone, kept = sorted(objects)
    stored_file(setup, gone).unlink()
    scu = GetScu(setup, [ExplicitVRLittleEndian])
    final, failed = scu.get(series_query(setup, "deleted"))[-1]
    assert final.Status == 0xB000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (1, 1)
    assert failed is not None and failed.FailedSOPInstanceUIDList == gone
    assert list(scu.received) == [kept]
    assert scu.received[kept][1] == dataset_bytes(objects[kept])

    peer = setup.peers["UNCOMPR"]
    peer.clear()
    final, failed = move(setup, series_query(setup, "deleted"), peer.aet)[-1]
    assert final.Status == 0xB000
    assert failed is not None and failed.FailedSOPInstanceUIDList == gone


# ---- cancel and the limit --------------------------------------------------------------


def test_c_cancel_stops_a_c_get(setup: Setup) -> None:
    scu = GetScu(setup, [ExplicitVRLittleEndian])
    cx = next(c for c in scu.assoc.accepted_contexts if c.abstract_syntax == GET)
    # Sent from the requester's C-STORE handler: the C-GET is under way.
    scu.on_first = lambda: threading.Thread(target=scu.assoc.send_c_cancel, args=(7, cx.context_id)).start()
    final, failed = scu.get(series_query(setup, "long"), msg_id=7)[-1]
    assert final.Status == 0xFE00
    assert 1 <= len(scu.received) < len(setup.series["long"])
    assert final.NumberOfRemainingSuboperations == len(setup.series["long"]) - len(scu.received)


def test_more_instances_than_the_limit_are_refused(setup: Setup) -> None:
    scu = GetScu(setup, [ExplicitVRLittleEndian])
    final, _ = scu.get(series_query(setup, "too-long"))[-1]
    assert final.Status == 0xA700
    assert scu.received == {}
