"""WADO-RS through the app: bytes back from a real StorageService."""

from __future__ import annotations

import pytest
from pydicom.uid import generate_uid
from starlette.testclient import TestClient

from common.clients import MetadataClient, channel
from common.ingest import read_record
from dicomweb_gateway.app import create_app
from tests.dicomweb_gateway.gateway_support import (
    Backend,
    make_instance,
    make_settings,
    multipart_parts,
)

EXPLICIT_LE = "1.2.840.10008.1.2.1"
BASE = "http://testserver/dicomweb"


def store(client: TestClient, data: bytes) -> None:
    r = client.post("/dicomweb/studies", content=data, headers={"Content-Type": "application/dicom"})
    assert r.status_code == 200, r.text


@pytest.fixture
def study(client: TestClient) -> tuple[str, str, list[tuple[str, bytes]]]:
    study, series = generate_uid(), generate_uid()
    stored = []
    for _ in range(3):
        ds, data = make_instance(study, series)
        store(client, data)
        stored.append((ds.SOPInstanceUID, data))
    return study, series, sorted(stored)


def test_study_series_and_instance(client: TestClient, study: tuple[str, str, list[tuple[str, bytes]]]) -> None:
    uid, series, stored = study
    for path, expected in [
        (f"/dicomweb/studies/{uid}", stored),
        (f"/dicomweb/studies/{uid}/series/{series}", stored),
        (f"/dicomweb/studies/{uid}/series/{series}/instances/{stored[1][0]}", [stored[1]]),
    ]:
        r = client.get(path)
        assert r.status_code == 200, r.text
        parts = multipart_parts(r.content, r.headers["content-type"], "application/dicom")
        assert [data for _, data in parts] == [data for _, data in expected]
        for (headers, _), (sop, _) in zip(parts, expected, strict=False):
            assert headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
            assert headers["content-location"] == f"{BASE}/studies/{uid}/series/{series}/instances/{sop}"


@pytest.mark.parametrize(
    "accept",
    [
        "*/*",
        "multipart/related; type=application/dicom",
        'multipart/related; type="application/dicom"; transfer-syntax=*',
        f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_LE}',
        f"image/png, multipart/related; type=application/dicom; transfer-syntax={EXPLICIT_LE}; q=0.5",
        "multipart/*",
    ],
)
def test_acceptable(client: TestClient, study: tuple[str, str, list[tuple[str, bytes]]], accept: str) -> None:
    r = client.get(f"/dicomweb/studies/{study[0]}", headers={"Accept": accept})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "accept",
    [
        "image/png",
        "application/dicom+json",
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.51',
        'multipart/related; type="application/octet-stream"',
        "*/*; q=0",
    ],
)
def test_not_acceptable(client: TestClient, study: tuple[str, str, list[tuple[str, bytes]]], accept: str) -> None:
    r = client.get(f"/dicomweb/studies/{study[0]}", headers={"Accept": accept})
    assert r.status_code == 406
    assert "transcoding" in r.json()["error"]


def test_unknown_resources_are_404(client: TestClient, study: tuple[str, str, list[tuple[str, bytes]]]) -> None:
    uid, series, _ = study
    for path in [
        f"/dicomweb/studies/{generate_uid()}",
        f"/dicomweb/studies/{uid}/series/{generate_uid()}",
        f"/dicomweb/studies/{uid}/series/{series}/instances/{generate_uid()}",
        f"/dicomweb/studies/{generate_uid()}/metadata",
    ]:
        r = client.get(path)
        assert r.status_code == 404, path
        assert r.json()["error"]


def test_bad_uid_in_path_is_400(client: TestClient) -> None:
    r = client.get("/dicomweb/studies/1.2.abc")
    assert r.status_code == 400


def test_object_missing_from_storage_is_skipped(
    client: TestClient, backend: Backend, study: tuple[str, str, list[tuple[str, bytes]]]
) -> None:
    uid, _, stored = study
    for path in backend.objects.rglob("*.dcm"):
        if path.read_bytes() == stored[0][1]:
            path.unlink()
    r = client.get(f"/dicomweb/studies/{uid}")
    assert r.status_code == 200
    assert [d for _, d in multipart_parts(r.content, r.headers["content-type"], "application/dicom")] == [
        d for _, d in stored[1:]
    ]


def test_metadata_with_absolute_bulkdata_uris(
    client: TestClient, study: tuple[str, str, list[tuple[str, bytes]]]
) -> None:
    uid, series, stored = study
    r = client.get(f"/dicomweb/studies/{uid}/metadata")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/dicom+json"
    instances = r.json()
    assert sorted(i["00080018"]["Value"][0] for i in instances) == [sop for sop, _ in stored]
    first = instances[0]
    sop = first["00080018"]["Value"][0]
    instance_url = f"{BASE}/studies/{uid}/series/{series}/instances/{sop}"
    assert first["00281201"]["BulkDataURI"] == f"{instance_url}/bulkdata/00281201"
    assert first["00880200"]["Value"][0]["7FE00010"]["BulkDataURI"].startswith(f"{instance_url}/bulkdata/")
    assert first["00100010"]["Value"][0]["Alphabetic"] == "Müller^Jürgen"
    assert "Müller".encode() in r.content  # UTF-8, not \\u escapes

    one = client.get(f"/dicomweb/studies/{uid}/series/{series}/instances/{stored[2][0]}/metadata").json()
    assert [i["00080018"]["Value"][0] for i in one] == [stored[2][0]]
    assert client.get(f"/dicomweb/studies/{uid}/series/{series}/metadata").status_code == 200
    assert client.get(f"/dicomweb/studies/{uid}/metadata", headers={"Accept": "image/jpeg"}).status_code == 406


def test_public_url_is_used_for_urls(backend: Backend) -> None:
    app = create_app(make_settings(backend, public_url="https://pacs.example.org/dicomweb/"))
    _, data = make_instance()
    with TestClient(app) as client:
        r = client.post("/dicomweb/studies", content=data, headers={"Content-Type": "application/dicom"})
    assert r.json()["00081190"]["Value"][0].startswith("https://pacs.example.org/dicomweb/studies/")


def test_custom_base_path(backend: Backend) -> None:
    app = create_app(make_settings(backend, base_path="/"))
    _, data = make_instance()
    with TestClient(app) as client:
        r = client.post("/studies", content=data, headers={"Content-Type": "application/dicom"})
        assert r.status_code == 200
        assert r.json()["00081190"]["Value"][0].startswith("http://testserver/studies/")
        assert client.get("/dicomweb/studies").status_code == 404


def test_metadata_service_down_is_503(backend: Backend) -> None:
    app = create_app(make_settings(backend, metadata_addr="127.0.0.1:1"))
    with TestClient(app) as client:
        r = client.get(f"/dicomweb/studies/{generate_uid()}")
    assert r.status_code == 503
    assert r.json() == {"error": "a backend service is unavailable"}


@pytest.mark.parametrize("suffix", ["", "/metadata", "/rendered", "/frames/1"])
def test_malformed_accept_is_400_naming_the_header(
    client: TestClient, study: tuple[str, str, list[tuple[str, bytes]]], suffix: str
) -> None:
    study_uid, series_uid, instances = study
    sop = instances[0][0]
    url = f"/dicomweb/studies/{study_uid}/series/{series_uid}/instances/{sop}{suffix}"
    r = client.get(url, headers={"Accept": "multipart/related; type"})
    assert r.status_code == 400, (suffix, r.status_code)
    assert r.json()["error"].startswith("Accept: ")


def test_metadata_of_objects_indexed_before_root_relative_uris(client: TestClient, backend: Backend) -> None:
    """Rows written before BulkDataURIs were stored relative to the DICOMweb
    root hold them relative to their instance ("bulkdata/…"): still absolute."""
    ds, data = make_instance()
    record = read_record(data, len(data), "default")
    record.dicom_json = record.dicom_json.replace(
        b"studies/"
        + ds.StudyInstanceUID.encode()
        + b"/series/"
        + ds.SeriesInstanceUID.encode()
        + b"/instances/"
        + ds.SOPInstanceUID.encode()
        + b"/bulkdata/",
        b"bulkdata/",
    )
    assert b'"BulkDataURI":"bulkdata/' in record.dicom_json
    record.location.object_key = (
        f"default/{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}_0123456789abcdef.dcm"
    )
    MetadataClient(channel(backend.storage_addr)).index([record])
    (meta,) = client.get(f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/metadata").json()
    instance_url = f"{BASE}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    assert meta["7FE00010"]["BulkDataURI"] == f"{instance_url}/bulkdata/7FE00010"
    assert meta["00880200"]["Value"][0]["7FE00010"]["BulkDataURI"].startswith(f"{instance_url}/bulkdata/00880200/0/")
