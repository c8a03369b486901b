"""The foundation slice through the real processes and real clients:
dcmtk for DIMSE, httpx for DICOMweb."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import httpx
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RTPlanStorage,
)
from pynetdicom import AE

from testbed.processes import dcmtk_env
from tests.support import Archive, corpus_paths, multipart_body, response_parts, split_part10

DCMTK_ENV = dcmtk_env()


def content(ds: pydicom.Dataset) -> dict[int, object]:
    """Values by tag, without what dcmtk rewrites when it sends: VRs, group
    lengths and trailing padding."""
    return {int(e.tag): e.value for e in ds if e.tag.element != 0 and e.tag != 0xFFFCFFFC}


def retrieve_instance(archive: Archive, ds: pydicom.Dataset) -> tuple[dict[str, str], bytes]:
    url = (
        f"{archive.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    )
    r = httpx.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert r.status_code == 200, r.text
    (part,) = response_parts(r)
    return part


def study_uids(archive: Archive) -> set[str]:
    r = httpx.get(f"{archive.dicomweb}/studies", params={"limit": "1000"})
    assert r.status_code == 200, r.text
    return {study["0020000D"]["Value"][0] for study in r.json()}


def with_new_uids(path: Path, out: Path) -> pydicom.Dataset:
    """A copy of a corpus file with fresh UIDs, so each test owns its studies."""
    ds = pydicom.dcmread(path)
    suffix = str(uuid.uuid4().int)[:20]
    ds.StudyInstanceUID = f"2.25.1{suffix}"
    ds.SeriesInstanceUID = f"2.25.2{suffix}"
    ds.SOPInstanceUID = f"2.25.3{suffix}"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(out, enforce_file_format=True)
    return ds


def test_echoscu(archive: Archive) -> None:
    proc = subprocess.run(
        ["echoscu", "-aec", archive.ae_title, "127.0.0.1", str(archive.dimse_port)],
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def test_echoscu_wrong_called_ae_is_rejected(archive: Archive) -> None:
    proc = subprocess.run(
        ["echoscu", "-aec", "NOT_US", "127.0.0.1", str(archive.dimse_port)],
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "Rejected" in proc.stdout + proc.stderr


def test_dcmsend_folder_then_qido_and_wado(archive: Archive, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    sent = {}
    for path in corpus_paths():
        shutil.copy(path, folder / path.name)
        sent[path.name] = pydicom.dcmread(path, stop_before_pixels=True)
    proc = subprocess.run(
        [
            "dcmsend",
            "-v",
            "--decompress-never",
            "-aec",
            archive.ae_title,
            "+sd",
            "127.0.0.1",
            str(archive.dimse_port),
            str(folder),
        ],
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
        timeout=120,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert re.search(rf"with status SUCCESS +: {len(sent)}\b", log), log

    stored_studies = study_uids(archive)
    assert {ds.StudyInstanceUID for ds in sent.values()} <= stored_studies

    # dcmtk re-encodes what it sends (it drops trailing padding, for one), so
    # compare decoded content here; the pynetdicom test below checks bytes.
    for name, ds in sent.items():
        headers, body = retrieve_instance(archive, ds)
        returned = pydicom.dcmread(io.BytesIO(body))
        original = pydicom.dcmread(folder / name)
        ts = returned.file_meta.TransferSyntaxUID
        assert f"transfer-syntax={ts}" in headers["content-type"], name
        # dcmsend may send uncompressed data in another uncompressed syntax it
        # negotiated; compressed data travels as it is.
        if original.file_meta.TransferSyntaxUID.is_compressed:
            assert ts == original.file_meta.TransferSyntaxUID, name
        else:
            assert not ts.is_compressed, name
        assert content(returned) == content(original), name


def test_c_store_keeps_the_bytes_as_sent(archive: Archive, tmp_path: Path) -> None:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    ae.add_requested_context(RTPlanStorage, [ImplicitVRLittleEndian])
    files = {}
    for i, name in enumerate(["CT_small.dcm", "rtplan.dcm"]):
        out = tmp_path / f"{i}.dcm"
        files[out] = with_new_uids(Path(get_testdata_file(name, download=False)), out)
    assoc = ae.associate("127.0.0.1", archive.dimse_port, ae_title=archive.ae_title)
    assert assoc.is_established
    try:
        for path in files:
            # A path is sent as its encoded bytes, without decoding.
            status = assoc.send_c_store(path)
            assert status.Status == 0x0000
    finally:
        assoc.release()
    for path, ds in files.items():
        _, body = retrieve_instance(archive, ds)
        assert split_part10(body)[1] == split_part10(path.read_bytes())[1]


def test_stow_then_qido_and_wado_return_the_same_bytes(archive: Archive, tmp_path: Path) -> None:
    files, datasets = [], []
    for i, path in enumerate(corpus_paths()):
        out = tmp_path / f"{i}.dcm"
        datasets.append(with_new_uids(path, out))
        files.append(out.read_bytes())
    body, ctype = multipart_body(files)
    r = httpx.post(f"{archive.dicomweb}/studies", content=body, headers={"Content-Type": ctype}, timeout=60)
    assert r.status_code == 200, r.text
    result = r.json()
    referenced = {item["00081155"]["Value"][0] for item in result["00081199"]["Value"]}
    assert referenced == {ds.SOPInstanceUID for ds in datasets}
    assert "00081198" not in result or not result["00081198"].get("Value")

    assert {ds.StudyInstanceUID for ds in datasets} <= study_uids(archive)
    for data, ds in zip(files, datasets, strict=False):
        _, body = retrieve_instance(archive, ds)
        assert body == data


def test_stow_of_a_non_dicom_part_fails_and_stores_nothing(archive: Archive) -> None:
    before = study_uids(archive)
    files_before = archive.stored_files()
    body, ctype = multipart_body([b"this is not DICOM" * 20])
    r = httpx.post(f"{archive.dicomweb}/studies", content=body, headers={"Content-Type": ctype})
    assert r.status_code == 409, r.text
    failed = r.json()["00081198"]["Value"]
    assert failed[0]["00081197"]["Value"] == [0xC000]
    assert study_uids(archive) == before
    assert archive.stored_files() == files_before  # no object, no staged part left behind


def test_qido_rejects_malformed_values(archive: Archive) -> None:
    r = httpx.get(f"{archive.dicomweb}/studies", params={"StudyDate": "2020-01-01-x"})
    assert r.status_code == 400
    assert "StudyDate" in r.text


def test_wado_unknown_study_is_404(archive: Archive) -> None:
    r = httpx.get(f"{archive.dicomweb}/studies/1.2.3.4.5.6.7.8.9")
    assert r.status_code == 404


def test_series_metadata_is_the_stored_header_with_bulk_data_uris(archive: Archive, tmp_path: Path) -> None:
    ds = with_new_uids(Path(get_testdata_file("CT_small.dcm", download=False)), tmp_path / "ct.dcm")
    r = httpx.post(
        f"{archive.dicomweb}/studies",
        content=(tmp_path / "ct.dcm").read_bytes(),
        headers={"Content-Type": "application/dicom"},
    )
    assert r.status_code == 200, r.text
    r = httpx.get(f"{archive.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/metadata")
    assert r.status_code == 200, r.text
    (meta,) = r.json()
    expected = ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=lambda e: "")
    for tag, value in expected.items():
        if "BulkDataURI" in value or tag == "FFFCFFFC":  # padding follows the pixels
            continue
        assert meta[tag] == value, tag
    instance_url = (
        f"{archive.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    )
    assert meta["7FE00010"] == {"vr": "OW", "BulkDataURI": f"{instance_url}/bulkdata/7FE00010"}
