"""STOW-RS through the app, a real StorageService and the in-memory index."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid
from starlette.testclient import TestClient

from dicomweb_gateway.app import create_app
from tests.dicomweb_gateway.gateway_support import (
    Backend,
    make_instance,
    make_settings,
    multipart_body,
    multipart_parts,
)

BOUNDARY = "stow-boundary-1"
MULTIPART = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
BASE = "http://testserver/dicomweb"


def post(client: TestClient, body: bytes, path: str = "/dicomweb/studies", ctype: str = MULTIPART):  # type: ignore[no-untyped-def]
    return client.post(path, content=body, headers={"Content-Type": ctype})


def stored_objects(backend: Backend) -> list[bytes]:
    return sorted(p.read_bytes() for p in backend.objects.rglob("*.dcm"))


def test_two_instances_of_one_study(client: TestClient, backend: Backend) -> None:
    study, series = generate_uid(), generate_uid()
    a, a_bytes = make_instance(study, series)
    b, b_bytes = make_instance(study, series)
    r = post(client, multipart_body([("application/dicom", a_bytes), ("application/dicom", b_bytes)], BOUNDARY))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom+json"
    body = r.json()
    assert body["00081190"] == {"vr": "UR", "Value": [f"{BASE}/studies/{study}"]}
    items = body["00081199"]["Value"]
    assert [i["00081155"]["Value"][0] for i in items] == [a.SOPInstanceUID, b.SOPInstanceUID]
    assert items[0]["00081150"]["Value"] == [a.SOPClassUID]
    assert items[0]["00081190"]["Value"] == [f"{BASE}/studies/{study}/series/{series}/instances/{a.SOPInstanceUID}"]
    assert "00081198" not in body
    assert stored_objects(backend) == sorted([a_bytes, b_bytes])
    assert "warning" not in r.headers


def test_study_in_url_must_match(client: TestClient, backend: Backend) -> None:
    ds, data = make_instance()
    other = generate_uid()
    r = post(client, multipart_body([("application/dicom", data)], BOUNDARY), f"/dicomweb/studies/{other}")
    assert r.status_code == 409, r.text
    (failed,) = r.json()["00081198"]["Value"]
    assert failed["00081197"] == {"vr": "US", "Value": [0xA900]}
    assert failed["00081155"]["Value"] == [ds.SOPInstanceUID]
    assert r.json()["00081190"]["Value"] == [f"{BASE}/studies/{other}"]
    assert stored_objects(backend) == []


def test_mixed_outcomes_are_202_with_reasons(client: TestClient, backend: Backend) -> None:
    ds, data = make_instance()
    body = multipart_body(
        [("application/dicom", data), ("application/dicom", b"not dicom" * 50), ("text/plain", b"hello")], BOUNDARY
    )
    r = post(client, body)
    assert r.status_code == 202, r.text
    result = r.json()
    assert [i["00081155"]["Value"][0] for i in result["00081199"]["Value"]] == [ds.SOPInstanceUID]
    failed = result["00081198"]["Value"]
    assert [f["00081197"]["Value"] for f in failed] == [[0xC000], [0xC000]]
    assert "00081155" not in failed[0]  # unknown: the part never parsed
    warning = r.headers["warning"]
    assert warning.startswith('299 testserver: "part 2: not a DICOM Part 10 object')
    assert "part 3: part Content-Type 'text/plain' is not application/dicom" in warning


def test_single_part_application_dicom(client: TestClient, backend: Backend) -> None:
    ds, data = make_instance()
    r = post(client, data, ctype="application/dicom")
    assert r.status_code == 200, r.text
    assert r.json()["00081199"]["Value"][0]["00081155"]["Value"] == [ds.SOPInstanceUID]
    assert stored_objects(backend) == [data]


@pytest.mark.parametrize(
    "ctype",
    [
        f"multipart/related; type=application/dicom; boundary={BOUNDARY}",  # unquoted type
        f'multipart/related; boundary="{BOUNDARY}"',  # no type: parts decide
        f'Multipart/Related; Type="Application/DICOM"; boundary={BOUNDARY}',
    ],
)
def test_content_type_variants(client: TestClient, ctype: str) -> None:
    _, data = make_instance()
    r = post(
        client,
        multipart_body([("application/dicom; transfer-syntax=1.2.840.10008.1.2.1", data)], BOUNDARY),
        ctype=ctype,
    )
    assert r.status_code == 200, r.text


def test_part_without_content_type_takes_the_declared_type(client: TestClient) -> None:
    _, data = make_instance()
    assert post(client, multipart_body([(None, data)], BOUNDARY)).status_code == 200
    r = post(client, multipart_body([(None, data)], BOUNDARY), ctype=f"multipart/related; boundary={BOUNDARY}")
    assert r.status_code == 409


def test_streamed_body_in_small_chunks(client: TestClient, backend: Backend) -> None:
    parts = [make_instance()[1] for _ in range(3)]
    body = multipart_body([("application/dicom", p) for p in parts], BOUNDARY)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 333):
            yield body[i : i + 333]

    r = client.post("/dicomweb/studies", content=chunks(), headers={"Content-Type": MULTIPART})
    assert r.status_code == 200, r.text
    assert len(r.json()["00081199"]["Value"]) == 3
    assert "00081190" not in r.json()  # three studies: no single study URL
    assert stored_objects(backend) == sorted(parts)


@pytest.mark.parametrize(
    ("ctype", "status"),
    [
        ("application/json", 415),
        ('multipart/related; type="application/dicom+json"; boundary=x', 415),
        ("not a media type", 415),
        ('multipart/related; type="application/dicom"', 400),  # no boundary
    ],
)
def test_refused_content_types(client: TestClient, ctype: str, status: int) -> None:
    r = post(client, b"whatever", ctype=ctype)
    assert r.status_code == status
    assert r.json()["error"]


def test_no_content_type_is_415(client: TestClient) -> None:
    r = client.post("/dicomweb/studies", content=b"x")
    assert r.status_code == 415


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"no delimiter at all",
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\ntruncated".encode(),
        f"--{BOUNDARY}--\r\n".encode(),  # well-formed, but no parts
    ],
)
def test_malformed_or_empty_multipart_is_400(client: TestClient, backend: Backend, body: bytes) -> None:
    r = post(client, body)
    assert r.status_code == 400
    assert r.json()["error"]
    assert stored_objects(backend) == []


def test_truncation_after_a_stored_part_reports_both(client: TestClient, backend: Backend) -> None:
    ds, data = make_instance()
    body = multipart_body([("application/dicom", data)], BOUNDARY).removesuffix(f"--{BOUNDARY}--\r\n".encode())
    body += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\ncut off".encode()
    r = post(client, body)
    assert r.status_code == 202, r.text
    assert r.json()["00081199"]["Value"][0]["00081155"]["Value"] == [ds.SOPInstanceUID]
    assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    assert "malformed" in r.headers["warning"]


def test_invalid_study_uid_in_path(client: TestClient) -> None:
    r = post(client, multipart_body([], BOUNDARY), "/dicomweb/studies/not-a-uid")
    assert r.status_code == 400
    assert "Study Instance UID" in r.json()["error"]


def test_reject_policy_refuses_duplicates(backend: Backend) -> None:
    app = create_app(make_settings(backend, duplicate_policy="reject"))
    _, data = make_instance()
    with TestClient(app) as client:
        assert post(client, multipart_body([("application/dicom", data)], BOUNDARY)).status_code == 200
        r = post(client, multipart_body([("application/dicom", data)], BOUNDARY))
    assert r.status_code == 409
    assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0x0111]
    assert stored_objects(backend) == [data]  # the refused copy was reclaimed


def _twins() -> tuple[Dataset, bytes, bytes]:
    """Two different objects under one SOP Instance UID (the second renamed)."""
    first, a = make_instance(name="First^Copy")
    _, b = make_instance(first.StudyInstanceUID, first.SeriesInstanceUID, first.SOPInstanceUID, name="Second^Copy")
    assert a != b
    return first, a, b


def _served(client: TestClient, ds: Dataset) -> bytes:
    r = client.get(
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )
    assert r.status_code == 200, r.text
    ((_, body),) = multipart_parts(r.content, r.headers["content-type"])
    return body


def test_keep_first_keeps_the_first_bytes_and_reclaims_the_second(backend: Backend) -> None:
    app = create_app(make_settings(backend, duplicate_policy="keep_first"))
    ds, first, second = _twins()
    with TestClient(app) as client:
        assert post(client, first, ctype="application/dicom").status_code == 200
        r = post(client, second, ctype="application/dicom")
        assert r.status_code == 200
        assert "existing instance was kept" in r.headers["warning"]
        assert _served(client, ds) == first
    assert stored_objects(backend) == [first]  # the second copy was reclaimed, not left behind


def test_overwrite_serves_the_new_bytes_and_removes_the_old(backend: Backend) -> None:
    app = create_app(make_settings(backend, duplicate_policy="overwrite"))
    ds, first, second = _twins()
    with TestClient(app) as client:
        assert post(client, first, ctype="application/dicom").status_code == 200
        r = post(client, second, ctype="application/dicom")
        assert r.status_code == 200
        assert "existing instance was replaced" in r.headers["warning"]
        assert _served(client, ds) == second
        study = client.get(f"/dicomweb/studies?StudyInstanceUID={ds.StudyInstanceUID}").json()
        assert [row["00100010"]["Value"][0]["Alphabetic"] for row in study] == ["Second^Copy"]
    assert stored_objects(backend) == [second]  # the old object is gone


def test_request_larger_than_the_limit_is_413(backend: Backend) -> None:
    app = create_app(make_settings(backend, max_request_bytes=1000))
    _, data = make_instance()
    with TestClient(app) as client:
        r = post(client, data, ctype="application/dicom")
        assert r.status_code == 413
        assert r.json()["error"] == f"the request body has {len(data)} bytes; at most 1000 are accepted"
        assert client.get("/dicomweb/studies?" + "x" * 17000).status_code == 414  # any route


def test_storage_down_fails_the_instance_with_out_of_resources(backend: Backend) -> None:
    app = create_app(make_settings(backend, storage_addr="127.0.0.1:1"))
    _, data = make_instance()
    with TestClient(app) as client:
        r = post(client, data, ctype="application/dicom")
    assert r.status_code == 409
    assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA700]
