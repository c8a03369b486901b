"""DELETE, CORS, gzip of metadata and the OpenAPI document, through the app."""

from __future__ import annotations

import gzip
import re

from pydicom.uid import generate_uid
from starlette.routing import Route
from starlette.testclient import TestClient

from dicomweb_gateway.app import create_app, routes
from tests.dicomweb_gateway.gateway_support import Backend, make_instance, make_settings


def store(client: TestClient, data: bytes) -> None:
    r = client.post("/dicomweb/studies", content=data, headers={"Content-Type": "application/dicom"})
    assert r.status_code == 200, r.text


def stored_objects(backend: Backend) -> set[bytes]:
    return {p.read_bytes() for p in backend.objects.rglob("*.dcm")}


def test_delete_instance_series_study(client: TestClient, backend: Backend) -> None:
    study, series_a, series_b = generate_uid(), generate_uid(), generate_uid()
    a = [make_instance(study, series_a) for _ in range(2)]
    b = [make_instance(study, series_b) for _ in range(2)]
    other = make_instance()
    for _, data in [*a, *b, other]:
        store(client, data)
    base = f"/dicomweb/studies/{study}"

    r = client.delete(f"{base}/series/{series_a}/instances/{a[0][0].SOPInstanceUID}")
    assert r.status_code == 204
    assert a[0][1] not in stored_objects(backend)
    assert client.get(f"{base}/series/{series_a}/instances/{a[0][0].SOPInstanceUID}").status_code == 404
    assert [i["00080018"]["Value"][0] for i in client.get(f"{base}/series/{series_a}/instances").json()] == [
        a[1][0].SOPInstanceUID
    ]

    assert client.delete(f"{base}/series/{series_b}").status_code == 204
    assert client.get(f"{base}/series/{series_b}").status_code == 404
    assert not {d for _, d in b} & stored_objects(backend)

    assert client.delete(base).status_code == 204
    assert client.get(f"/dicomweb/studies?StudyInstanceUID={study}").json() == []
    # Only the unrelated study is left, in the index and in storage.
    assert stored_objects(backend) == {other[1]}
    assert client.get(f"/dicomweb/studies/{other[0].StudyInstanceUID}/metadata").status_code == 200

    r = client.delete(base)
    assert r.status_code == 404 and r.json()["error"] == "no such study"
    assert client.delete("/dicomweb/studies/1.2.x").status_code == 400


def test_cors_preflight_and_simple_requests(backend: Backend) -> None:
    app = create_app(make_settings(backend, cors_origins=["http://viewer.test"]))
    with TestClient(app) as client:
        r = client.options(
            "/dicomweb/studies",
            headers={
                "Origin": "http://viewer.test",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "accept, authorization",
            },
        )
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "http://viewer.test"
        assert "GET" in r.headers["access-control-allow-methods"]
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        r = client.get("/dicomweb/studies", headers={"Origin": "http://viewer.test"})
        assert r.headers["access-control-allow-origin"] == "http://viewer.test"
        assert "Warning" in r.headers["access-control-expose-headers"]
        r = client.options(
            "/dicomweb/studies", headers={"Origin": "http://evil.test", "Access-Control-Request-Method": "GET"}
        )
        assert r.status_code == 400
        assert "access-control-allow-origin" not in r.headers
        r = client.get("/dicomweb/studies", headers={"Origin": "http://evil.test"})
        assert "access-control-allow-origin" not in r.headers


def test_no_cors_headers_by_default(client: TestClient) -> None:
    r = client.get("/dicomweb/studies", headers={"Origin": "http://viewer.test"})
    assert "access-control-allow-origin" not in r.headers


def test_metadata_is_gzipped_when_accepted(client: TestClient) -> None:
    study = generate_uid()
    for _ in range(3):
        store(client, make_instance(study)[1])
    plain = client.get(f"/dicomweb/studies/{study}/metadata", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    # httpx would decode transparently: read the raw bytes.
    with client.stream("GET", f"/dicomweb/studies/{study}/metadata", headers={"Accept-Encoding": "gzip"}) as r:
        raw = b"".join(r.iter_raw())
        assert r.headers["content-encoding"] == "gzip"
        assert r.headers["vary"] == "Accept-Encoding"
    assert gzip.decompress(raw) == plain.content
    assert len(raw) < len(plain.content)
    r = client.get(f"/dicomweb/studies/{study}/metadata", headers={"Accept-Encoding": "gzip;q=0"})
    assert "content-encoding" not in r.headers


def test_openapi_describes_every_route(client: TestClient) -> None:
    doc = client.get("/dicomweb/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    described = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    served = {
        (re.sub(r"{(\w+):\w+}", r"{\1}", r.path), m.lower())
        for r in routes()
        if isinstance(r, Route)
        for m in (r.methods or set()) - {"HEAD"}
    }
    assert described == served
    assert ("/studies/{study}/series/{series}/instances/{sop}/frames/{frames}", "get") in described


def test_error_bodies_are_readable(client: TestClient) -> None:
    for r, status in [
        (client.get(f"/dicomweb/studies/{generate_uid()}"), 404),
        (client.get("/dicomweb/studies", headers={"Accept": "image/png"}), 406),
        (client.post("/dicomweb/studies", content=b"x", headers={"Content-Type": "text/plain"}), 415),
        (client.get("/dicomweb/studies?limit=-1"), 400),
    ]:
        assert r.status_code == status
        assert isinstance(r.json()["error"], str) and r.json()["error"]


def test_health_and_readiness_probes(client: TestClient, backend: Backend) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"] == {"storage": True, "metadata": True, "auth": True}
    for missing in ("metadata", "auth"):
        app = create_app(make_settings(backend, **{f"{missing}_addr": "127.0.0.1:1"}))
        with TestClient(app) as down:
            r = down.get("/readyz")
            assert r.status_code == 503
            assert r.json()["checks"] == {"storage": True, "metadata": True, "auth": True, missing: False}
            assert down.get("/healthz").status_code == 200
