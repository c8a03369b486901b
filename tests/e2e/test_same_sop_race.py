"""One SOP Instance UID stored at the same moment, with different bytes, from
two STOW-RS requests and from two DIMSE associations, on the embedded
archive (files, SQLite) and on S3 with PostgreSQL. Afterwards exactly one
object is served, the index has one row for it and agrees with the served
bytes, no other copy is left in storage, and the change feed holds only
creations of it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import boto3
import httpx
import pytest
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from testbed.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedS3
from testbed.servers import new_database, shared
from tests.support import WADO_AS_STORED, Archive, small_ct, split_part10

ROUNDS = 6


class Setup:
    def __init__(self, archive: Archive, objects: Callable[[], list[bytes]]) -> None:
        self.archive = archive
        self.objects = objects  # every stored object's bytes


@pytest.fixture(scope="module", params=["files-sqlite", "s3-postgres"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "files-sqlite":
        archive = Archive(root / "archive")
        archive.start()
        yield Setup(archive, lambda: [p.read_bytes() for p in (root / "archive" / "objects").rglob("*.dcm")])
        assert archive.stop() == 0
        return
    with shared("postgres") as pg:
        seaweed = SeaweedS3(root / "seaweed")
        seaweed.data_dir.mkdir()
        seaweed.start()
        archive = Archive(
            root / "archive",
            extra_env={
                "DICOMSERVER_DATABASE_URL": new_database(pg, "race"),
                "DICOMSERVER_STORAGE_BACKEND": "s3",
                "DICOMSERVER_S3_ENDPOINT_URL": seaweed.endpoint,
                "DICOMSERVER_S3_BUCKET": seaweed.bucket,
                "DICOMSERVER_S3_ACCESS_KEY_ID": ACCESS_KEY,
                "DICOMSERVER_S3_SECRET_ACCESS_KEY": SECRET_KEY,
                "DICOMSERVER_S3_CREATE_BUCKET": "true",
            },
        )
        s3 = boto3.client(
            "s3",
            endpoint_url=seaweed.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )

        def objects() -> list[bytes]:
            keys = [
                o["Key"]
                for page in s3.get_paginator("list_objects_v2").paginate(Bucket=seaweed.bucket)
                for o in page.get("Contents", [])
            ]
            return [s3.get_object(Bucket=seaweed.bucket, Key=k)["Body"].read() for k in keys]

        try:
            archive.start()
            yield Setup(archive, objects)
            assert archive.stop() == 0
        finally:
            seaweed.stop()


def twins(study: str, sop: str) -> list[bytes]:
    """Two different objects under one SOP Instance UID (and series)."""
    out = []
    series = small_ct()[0].SeriesInstanceUID
    for name in ("Twin^One", "Twin^Two"):
        ds, _ = small_ct(study, PatientName=name, PatientID="TWIN", SeriesInstanceUID=series)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop
        buf = DicomBytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


def at_once(actions: list[Callable[[], object]]) -> list[object]:
    start = threading.Barrier(len(actions))
    results: list[object] = [None] * len(actions)

    def run(i: int) -> None:
        start.wait()
        results[i] = actions[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(actions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def check_one_copy(setup: Setup, study: str, sop: str, sent: list[bytes]) -> None:
    base = setup.archive.dicomweb
    rows = httpx.get(f"{base}/instances", params={"SOPInstanceUID": sop, "includefield": "00100010"}).json()
    assert len(rows) == 1, rows
    r = httpx.get(
        f"{base}/studies/{study}/series/{rows[0]['0020000E']['Value'][0]}/instances/{sop}",
        headers={"Accept": WADO_AS_STORED},
    )
    assert r.status_code == 200
    body = r.content.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n--", 1)[0]
    datasets = {split_part10(s)[1] for s in sent}  # C-STORE gets a file meta of the archive's making
    assert split_part10(body)[1] in datasets, "the served object is neither of those sent"
    # The index describes the object it serves.
    assert str(dcmread(DicomBytesIO(body)).PatientName) == rows[0]["00100010"]["Value"][0]["Alphabetic"]
    copies = [o for o in setup.objects() if split_part10(o)[1] in datasets]
    assert copies == [body], f"{len(copies)} copies of the instance are stored"
    feed = [e for e in httpx.get(f"{base}/changefeed", params={"limit": "1000"}).json() if e["SopInstanceUid"] == sop]
    assert feed and {e["Action"] for e in feed} == {"Create"} and len(feed) <= 2


def test_two_stow_requests_with_one_sop_uid(setup: Setup) -> None:
    for _ in range(ROUNDS):
        study, sop = small_ct()[0].StudyInstanceUID, small_ct()[0].SOPInstanceUID
        sent = twins(study, sop)
        answers = at_once(
            [
                lambda data=data: httpx.post(
                    f"{setup.archive.dicomweb}/studies",
                    content=data,
                    headers={"Content-Type": "application/dicom"},
                    timeout=60,
                )
                for data in sent
            ]
        )
        assert [a.status_code for a in answers] == [200, 200]  # type: ignore[attr-defined]
        check_one_copy(setup, study, sop, sent)


def test_two_associations_with_one_sop_uid(setup: Setup) -> None:
    ae = AE(ae_title="RACER")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assocs = [ae.associate("127.0.0.1", setup.archive.dimse_port, ae_title=setup.archive.ae_title) for _ in range(2)]
    try:
        assert all(a.is_established for a in assocs)
        for _ in range(ROUNDS):
            study, sop = small_ct()[0].StudyInstanceUID, small_ct()[0].SOPInstanceUID
            sent = twins(study, sop)
            statuses = at_once(
                [
                    lambda a=a, data=data: a.send_c_store(dcmread(DicomBytesIO(data))).Status
                    for a, data in zip(assocs, sent, strict=True)
                ]
            )
            assert statuses == [0x0000, 0x0000]
            check_one_copy(setup, study, sop, sent)
    finally:
        for a in assocs:
            a.release()


def test_nothing_else_is_stored(setup: Setup) -> None:
    """Across every round: as many stored objects as indexed instances."""
    listed = httpx.get(f"{setup.archive.dicomweb}/instances", params={"limit": "1000"}).json()
    assert len(setup.objects()) == len(listed)
