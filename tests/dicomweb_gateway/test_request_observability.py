"""Request ids in and out of the gateway, and HTTP metrics by route template."""

from __future__ import annotations

from prometheus_client import REGISTRY
from starlette.testclient import TestClient


def test_request_id_is_echoed_or_made(client: TestClient) -> None:
    r = client.get("/dicomweb/studies", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    made = client.get("/dicomweb/studies", headers={"X-Request-ID": "bad id\r\nx"}).headers["x-request-id"]
    assert len(made) == 32 and made != "abc-123"


def test_metrics_use_route_templates_not_uids(client: TestClient) -> None:
    labels = {"method": "GET", "route": "/studies/{study}", "status": "404"}
    before = REGISTRY.get_sample_value("dicomserver_http_requests_total", labels) or 0
    assert client.get("/dicomweb/studies/1.2.3.4").status_code == 404
    assert REGISTRY.get_sample_value("dicomserver_http_requests_total", labels) == before + 1
    samples = [s for m in REGISTRY.collect() if m.name == "dicomserver_http_requests" for s in m.samples]
    assert not any("1.2.3.4" in s.labels.get("route", "") for s in samples)
