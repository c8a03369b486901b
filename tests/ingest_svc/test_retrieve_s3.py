"""C-GET, C-MOVE and WADO-RS of an archive whose objects are in an S3
bucket (SeaweedFS): objects are downloaded from their presigned URLs (to
spool files for DIMSE, read ahead for WADO-RS) and go out as stored; one
deleted from the bucket is a failed sub-operation, and left out of a
WADO-RS answer; no spool file is left."""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import httpx
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless

from testbed.processes import dcmtk_env, free_port
from testbed.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedS3
from tests.ingest_svc.retrieve_support import (
    GetScu,
    Setup,
    StoreScp,
    dataset_bytes,
    move,
    save,
    series_query,
    store_all,
)
from tests.support import Archive, split_part10


@dataclass
class Bucketed:
    setup: Setup
    seaweed: SeaweedS3
    spool: Path


@pytest.fixture(scope="module")
def bucketed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bucketed]:
    root = tmp_path_factory.mktemp("retrieve-s3")
    seaweed = SeaweedS3(root / "seaweed")
    seaweed.data_dir.mkdir()
    seaweed.start()
    folder, port = root / "dest", free_port()
    folder.mkdir()
    proc = subprocess.Popen(
        ["storescp", "-aet", "DEST", "+B", "+xa", "-od", str(folder), str(port)],
        env=dcmtk_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    spool = root / "spool"
    spool.mkdir()
    archive = Archive(
        root / "archive",
        extra_env={
            "DICOMSERVER_STORAGE_BACKEND": "s3",
            "DICOMSERVER_S3_ENDPOINT_URL": seaweed.endpoint,
            "DICOMSERVER_S3_BUCKET": seaweed.bucket,
            "DICOMSERVER_S3_ACCESS_KEY_ID": ACCESS_KEY,
            "DICOMSERVER_S3_SECRET_ACCESS_KEY": SECRET_KEY,
            "DICOMSERVER_S3_CREATE_BUCKET": "true",
            "DICOMSERVER_RETRIEVE_SPOOL_DIR": str(spool),
            "DICOMSERVER_DIMSE_PEERS": json.dumps({"DEST": {"host": "127.0.0.1", "port": port}}),
        },
    )
    archive.start()
    try:
        corpus = root / "corpus"
        corpus.mkdir()
        ct = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm", download=False))
        mr = pydicom.dcmread(pydicom.data.get_testdata_file("MR_small_jpeg_ls_lossless.dcm", download=False))
        study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
        paths = []
        for ds, syntax in [
            (ct, ExplicitVRLittleEndian),
            (ct, ImplicitVRLittleEndian),
            (mr, JPEGLSLossless),
            (ct, ExplicitVRLittleEndian),
        ]:
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            paths.append(save(ds, corpus, syntax))
        store_all(archive, paths)
        setup = Setup(
            archive, {"DEST": StoreScp("DEST", port, folder, proc)}, {"s3": {p.stem: p for p in paths}}, study
        )
        yield Bucketed(setup, seaweed, spool)
    finally:
        proc.terminate()
        proc.wait(10)
        try:
            assert archive.stop() == 0, "".join(archive.output)
        finally:
            seaweed.stop()


def test_c_get_and_c_move_send_what_the_bucket_holds_and_leave_no_spool(bucketed: Bucketed) -> None:
    setup = bucketed.setup
    objects = setup.series["s3"]
    scu = GetScu(setup, [ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless], each_alone=True)
    final, _ = scu.get(series_query(setup, "s3"))[-1]
    assert final.Status == 0x0000
    assert {uid: data for uid, (_, data) in scu.received.items()} == {
        uid: dataset_bytes(p) for uid, p in objects.items()
    }

    peer = setup.peers["DEST"]
    final, _ = move(setup, series_query(setup, "s3"), "DEST")[-1]
    assert final.Status == 0x0000
    got = peer.received(set(objects))
    assert {uid: dataset_bytes(p) for uid, p in got.items()} == {uid: dataset_bytes(p) for uid, p in objects.items()}
    assert list(bucketed.spool.iterdir()) == []


WADO_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def wado_series(setup: Setup) -> dict[str, bytes]:
    """The series by WADO-RS: each part's data set (after its file meta) by SOP Instance UID."""
    series = next(iter(setup.series["s3"].values()))
    uid = str(pydicom.dcmread(series, stop_before_pixels=True).SeriesInstanceUID)
    r = httpx.get(
        f"{setup.archive.dicomweb}/studies/{setup.study}/series/{uid}", headers={"Accept": WADO_ANY}, timeout=60
    )
    assert r.status_code == 200, r.text
    boundary = r.headers["content-type"].split("boundary=")[1].strip('"').encode()
    assert r.content.endswith(b"--" + boundary + b"--\r\n")
    parts = [p.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0] for p in r.content.split(b"--" + boundary)[1:-1]]
    return {
        str(pydicom.dcmread(io.BytesIO(p), stop_before_pixels=True).SOPInstanceUID): split_part10(p)[1] for p in parts
    }


def test_wado_rs_series_is_the_bucket_s_bytes(bucketed: Bucketed) -> None:
    objects = bucketed.setup.series["s3"]
    for _ in range(3):  # the read-ahead's futures are per request
        assert wado_series(bucketed.setup) == {uid: dataset_bytes(p) for uid, p in objects.items()}


def test_an_object_deleted_from_the_bucket_is_a_failed_sub_operation(bucketed: Bucketed) -> None:
    setup, seaweed = bucketed.setup, bucketed.seaweed
    s3 = boto3.client(
        "s3",
        endpoint_url=seaweed.endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
    )
    objects = setup.series["s3"]
    gone = sorted(objects)[0]
    (key,) = [o["Key"] for o in s3.list_objects_v2(Bucket=seaweed.bucket)["Contents"] if gone in o["Key"]]
    s3.delete_object(Bucket=seaweed.bucket, Key=key)
    scu = GetScu(setup, [ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless], each_alone=True)
    final, failed = scu.get(series_query(setup, "s3"))[-1]
    assert final.Status == 0xB000
    assert failed is not None and failed.FailedSOPInstanceUIDList == gone
    assert set(scu.received) == set(objects) - {gone}
    assert list(bucketed.spool.iterdir()) == []
    # WADO-RS leaves it out of the series and sends the rest as stored.
    assert wado_series(setup) == {uid: dataset_bytes(p) for uid, p in objects.items() if uid != gone}
