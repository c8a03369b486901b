"""The DIMSE edge with a pynetdicom SCU against the launched server: AE title
policy, crafted bad objects (right status, nothing stored), warnings, C-CANCEL,
character sets, storage commitment, and C-GET bytes as stored."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pynetdicom import AE, _config, build_role, evt
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from common.clients import MetadataClient, StorageClient, channel
from testbed.processes import free_port
from tests.support import Archive, split_part10

SCU = "TESTSCU"
COMMIT_SCU = "COMMITSCU"
WELL_KNOWN = "1.2.840.10008.1.20.1.1"


@pytest.fixture(scope="module")
def commit_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def archive2(tmp_path_factory: pytest.TempPathFactory, commit_port: int) -> Iterator[Archive]:
    server = Archive(
        tmp_path_factory.mktemp("dimse-policy"),
        extra_env={
            "DICOMSERVER_AE_ALLOWLIST": json.dumps([SCU, COMMIT_SCU]),
            "DICOMSERVER_DIMSE_PEERS": json.dumps({COMMIT_SCU: {"host": "127.0.0.1", "port": commit_port}}),
            "DICOMSERVER_FIND_PAGE_SIZE": "1",
        },
    )
    server.start()
    yield server
    assert server.stop() == 0, "".join(server.output)


@pytest.fixture(autouse=True)
def send_files_as_encoded() -> Iterator[None]:
    # A path is sent as its bytes, so that broken objects reach the server.
    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    yield
    _config.STORE_SEND_CHUNKED_DATASET = before


def ct(tmp_path: Path, name: str = "ct.dcm", **changes: Any) -> tuple[Path, Dataset]:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path, ds


def associate(archive: Archive, calling: str = SCU, called: str | None = None, **kwargs: Any) -> Any:
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    ae.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian])
    ae.add_requested_context(StorageCommitmentPushModel)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    return ae.associate("127.0.0.1", archive.dimse_port, ae_title=called or archive.ae_title, **kwargs)


def stored_files(archive: Archive) -> set[Path]:
    return {p for p in (archive.data_dir / "objects").rglob("*") if p.is_file()}


def located(archive: Archive, *uids: str) -> list[Any]:
    return MetadataClient(channel(archive.grpc_addrs["metadata"])).locate_each("default", uids)


def store(archive: Archive, path: Path) -> int:
    assoc = associate(archive)
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(path).Status)
    finally:
        assoc.release()


def test_unknown_calling_ae_is_rejected_at_association(archive2: Archive) -> None:
    assoc = associate(archive2, calling="STRANGER")
    assert assoc.is_rejected
    assert not assoc.is_established


def test_wrong_called_ae_is_rejected(archive2: Archive) -> None:
    assoc = associate(archive2, called="SOMEONE_ELSE")
    assert assoc.is_rejected


def test_known_calling_ae_stores(archive2: Archive, tmp_path: Path) -> None:
    path, ds = ct(tmp_path)
    assert store(archive2, path) == 0x0000
    assert [loc.ref.sop_instance_uid for loc in located(archive2, ds.SOPInstanceUID)] == [ds.SOPInstanceUID]


def test_truncated_object_cannot_be_understood_and_is_not_stored(archive2: Archive, tmp_path: Path) -> None:
    path, ds = ct(tmp_path)
    path.write_bytes(path.read_bytes()[:-2000])
    before = stored_files(archive2)
    assert store(archive2, path) == 0xC000
    assert located(archive2, ds.SOPInstanceUID) == []
    assert stored_files(archive2) == before


def test_dataset_of_another_sop_class_is_a_mismatch(archive2: Archive, tmp_path: Path) -> None:
    # The request says MR (from the file meta); the dataset is a CT.
    path, ds = ct(tmp_path)
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.save_as(path, enforce_file_format=False)
    assert pydicom.dcmread(path).file_meta.MediaStorageSOPClassUID == MRImageStorage
    before = stored_files(archive2)
    assert store(archive2, path) == 0xA900
    assert located(archive2, ds.SOPInstanceUID) == []
    assert stored_files(archive2) == before


def test_missing_sop_instance_uid_cannot_be_understood(archive2: Archive, tmp_path: Path) -> None:
    path, ds = ct(tmp_path)
    del ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=False)
    before = stored_files(archive2)
    assert store(archive2, path) == 0xC000
    assert located(archive2, ds.file_meta.MediaStorageSOPInstanceUID) == []
    assert stored_files(archive2) == before


def test_values_pydicom_calls_invalid_are_kept_as_sent(archive2: Archive, tmp_path: Path) -> None:
    path, ds = ct(tmp_path)
    # InstanceNumber (IS) "1" -> "X": the object is stored as sent, and its
    # metadata keeps the value as it stands (a string: it is not a number).
    ds2 = pydicom.dcmread(path)
    ds2.InstanceNumber = "7"
    ds2.save_as(path, enforce_file_format=True)
    raw = path.read_bytes().replace(b"\x20\x00\x13\x00IS\x02\x007 ", b"\x20\x00\x13\x00IS\x02\x00X ")
    assert b"IS\x02\x00X " in raw
    path.write_bytes(raw)
    assert store(archive2, path) == 0x0000
    (loc,) = located(archive2, ds.SOPInstanceUID)
    stored = StorageClient(channel(archive2.grpc_addrs["storage"])).get_bytes(loc.object_key)
    assert split_part10(stored)[1] == split_part10(raw)[1]
    (header,) = MetadataClient(channel(archive2.grpc_addrs["metadata"])).get_metadata(
        "default", ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    )
    assert json.loads(header)["00200013"] == {"vr": "IS", "Value": ["X"]}


def test_c_cancel_stops_a_find(archive2: Archive, tmp_path: Path) -> None:
    patient = f"CANCEL-{uuid.uuid4().hex[:8]}"
    assoc = associate(archive2)
    try:
        for i in range(60):
            path, _ = ct(tmp_path, f"{i}.dcm", PatientID=patient)
            assert assoc.send_c_store(path).Status == 0x0000
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.PatientID = patient
        query.StudyInstanceUID = ""
        responses = assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind, msg_id=7)
        statuses = []
        for status, _ in responses:
            statuses.append(status.Status)
            if len(statuses) == 1:
                cx = next(
                    c
                    for c in assoc.accepted_contexts
                    if c.abstract_syntax == StudyRootQueryRetrieveInformationModelFind
                )
                assoc.send_c_cancel(7, cx.context_id)
    finally:
        assoc.release()
    assert statuses[-1] == 0xFE00
    assert len(statuses) < 61


def test_specific_character_set_in_request_and_response(archive2: Archive, tmp_path: Path) -> None:
    family = f"Müller{uuid.uuid4().hex[:6]}"
    path, ds = ct(tmp_path, SpecificCharacterSet="ISO_IR 100", PatientName=f"{family}^Jürgen")
    assert "Müller".encode("latin-1") in path.read_bytes()
    assert store(archive2, path) == 0x0000
    query = Dataset()
    query.SpecificCharacterSet = "ISO_IR 100"
    query.QueryRetrieveLevel = "PATIENT"
    query.PatientName = f"{family[:-2]}*"
    query.PatientID = ""
    assoc = associate(archive2)
    try:
        results = list(assoc.send_c_find(query, PatientRootQueryRetrieveInformationModelFind))
    finally:
        assoc.release()
    matches = [ident for status, ident in results if status.Status == 0xFF00]
    assert len(matches) == 1
    assert matches[0].SpecificCharacterSet == "ISO_IR 192"
    assert str(matches[0].PatientName) == f"{family}^Jürgen"
    assert results[-1][0].Status == 0x0000


def commitment_request(*refs: tuple[str, str]) -> Dataset:
    info = Dataset()
    info.TransactionUID = generate_uid()
    info.ReferencedSOPSequence = []
    for sop_class, uid in refs:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, uid
        info.ReferencedSOPSequence.append(item)
    return info


def check_report(report: tuple[int, Dataset], request: Dataset, stored: list[str], missing: str) -> None:
    event_type, info = report
    assert event_type == 2
    assert info.TransactionUID == request.TransactionUID
    assert sorted(i.ReferencedSOPInstanceUID for i in info.ReferencedSOPSequence) == sorted(stored)
    assert [(i.ReferencedSOPInstanceUID, i.FailureReason) for i in info.FailedSOPSequence] == [(missing, 0x0112)]


def test_storage_commitment_on_the_same_association(archive2: Archive, tmp_path: Path) -> None:
    reports: list[tuple[int, Dataset]] = []
    received = threading.Event()

    def on_report(event: evt.Event) -> tuple[int, None]:
        reports.append((event.event_type, event.event_information))
        received.set()
        return 0x0000, None

    stored = []
    paths = [ct(tmp_path, f"{i}.dcm") for i in range(2)]
    assoc = associate(archive2, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    try:
        for path, ds in paths:
            assert assoc.send_c_store(path).Status == 0x0000
            stored.append(ds.SOPInstanceUID)
        missing = generate_uid()
        request = commitment_request(*[(CTImageStorage, uid) for uid in stored], (CTImageStorage, missing))
        status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, WELL_KNOWN)
        assert status.Status == 0x0000
        assert received.wait(30)
    finally:
        assoc.release()
    (report,) = reports
    check_report(report, request, stored, missing)


def test_storage_commitment_after_release_comes_on_a_new_association(
    archive2: Archive, tmp_path: Path, commit_port: int
) -> None:
    reports: list[tuple[int, Dataset]] = []
    received = threading.Event()

    def on_report(event: evt.Event) -> tuple[int, None]:
        reports.append((event.event_type, event.event_information))
        received.set()
        return 0x0000, None

    listener = AE(ae_title=COMMIT_SCU)
    listener.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    server = listener.start_server(
        ("127.0.0.1", commit_port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)]
    )
    try:
        path, ds = ct(tmp_path)
        assert store(archive2, path) == 0x0000
        missing = generate_uid()
        request = commitment_request((CTImageStorage, ds.SOPInstanceUID), (CTImageStorage, missing))
        assoc = associate(archive2, calling=COMMIT_SCU)
        status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, WELL_KNOWN)
        assoc.release()
        assert status.Status == 0x0000
        assert received.wait(30)
    finally:
        server.shutdown()
    (report,) = reports
    check_report(report, request, [ds.SOPInstanceUID], missing)


def test_c_get_returns_the_stored_bytes(archive2: Archive, tmp_path: Path) -> None:
    path, ds = ct(tmp_path)
    assert store(archive2, path) == 0x0000
    received: list[bytes] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.encoded_dataset(include_meta=False))
        return 0x0000

    ae = AE(ae_title=SCU)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate(
        "127.0.0.1",
        archive2.dimse_port,
        ae_title=archive2.ae_title,
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID, query.SeriesInstanceUID = ds.StudyInstanceUID, ds.SeriesInstanceUID
    query.SOPInstanceUID = ds.SOPInstanceUID
    try:
        statuses = [status.Status for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)]
    finally:
        assoc.release()
    assert statuses[-1] == 0x0000
    assert received == [split_part10(path.read_bytes())[1]]


def test_simultaneous_associations_all_store(archive2: Archive, tmp_path: Path) -> None:
    paths = [ct(tmp_path, f"{i}.dcm") for i in range(24)]
    statuses: list[int] = []

    def sender(part: list[tuple[Path, Dataset]]) -> None:
        assoc = associate(archive2)
        try:
            statuses.extend(int(assoc.send_c_store(path).Status) for path, _ in part)
        finally:
            assoc.release()

    threads = [threading.Thread(target=sender, args=(paths[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert statuses == [0] * len(paths)
    uids = [ds.SOPInstanceUID for _, ds in paths]
    assert sorted(loc.ref.sop_instance_uid for loc in located(archive2, *uids)) == sorted(uids)


def test_a_silent_connection_does_not_hold_up_shutdown(tmp_path: Path) -> None:
    """A peer that connects and says nothing (a load balancer's TCP check)
    is aborted after the shutdown grace, not waited on until its ACSE timeout."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    from tests.support import ROOT, free_port

    port = free_port()
    env = {
        **os.environ,
        "DICOMSERVER_DIMSE_PORT": str(port),
        "DICOMSERVER_INGEST_ADDR": f"127.0.0.1:{free_port()}",
        "DICOMSERVER_DATA_DIR": str(tmp_path),
        "DICOMSERVER_SHUTDOWN_GRACE": "1",
        "DICOMSERVER_ACSE_TIMEOUT": "120",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingest_svc"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                silent = socket.create_connection(("127.0.0.1", port), timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline, "ingest_svc did not listen"
                time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0  # well before the 120 s ACSE timeout
        silent.close()
    finally:
        if proc.poll() is None:
            proc.kill()
