"""The gateway asks auth_svc for every request and fails closed.

A real AuthService with authentication on (HS256 tokens and a configured API
key) serves the gateway; storage and metadata are the real services of the
`backend` fixture."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from starlette.testclient import TestClient

from auth_svc.policy import Policy
from auth_svc.service import AuthService
from auth_svc.settings import AuthSettings
from common.clients import AuthClient, channel
from common.exposure import ExposedWithoutAuth
from common.gen.dicomserver.v1 import auth_service_pb2, auth_service_pb2_grpc, events_pb2
from common.grpc_server import build_server
from dicomweb_gateway.app import create_app
from tests.dicomweb_gateway.gateway_support import (
    Backend,
    make_instance,
    make_settings,
    multipart_body,
)

SECRET = "a-development-secret-of-at-least-32-bytes!"
READER_KEY = "dsk_readerkey001_" + "r" * 43
DICOM = "application/dicom"


def token(tenants: list[str], scope: str = "dicom.read dicom.write dicom.delete", **claims: Any) -> str:
    body = {"sub": "alice", "tenants": tenants, "scope": scope, "exp": int(time.time()) + 300, **claims}
    return jwt.encode(body, SECRET, algorithm="HS256")


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


class Sink:
    """Collects the gateway's audit records (common.audit.AuditLog's role)."""

    def __init__(self) -> None:
        self.records: list[events_pb2.AuditRecord] = []

    def record(self, record: events_pb2.AuditRecord) -> None:
        self.records.append(record)

    def close(self, timeout: float) -> None:
        pass


@pytest.fixture
def auth_on(tmp_path: Path) -> Iterator[str]:
    settings = AuthSettings(
        data_dir=tmp_path,
        auth_enabled=True,
        jwt_hs256_secret=SECRET,
        api_keys=[
            {
                "sha256": hashlib.sha256(READER_KEY.encode()).hexdigest(),
                "subject": "viewer",
                "tenants": ["alpha"],
                "scopes": ["read"],
            }
        ],
    )
    service = AuthService(Policy(settings))
    name = auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
    server, _health, port = build_server(
        lambda s: auth_service_pb2_grpc.add_AuthServiceServicer_to_server(service, s), [name], "127.0.0.1:0"
    )
    yield f"127.0.0.1:{port}"
    server.stop(None).wait()


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
def api(backend: Backend, auth_on: str, sink: Sink) -> Iterator[TestClient]:
    app = create_app(make_settings(backend, auth_addr=auth_on, cors_origins=["http://viewer.test"]), audit=sink)
    with TestClient(app, base_url="http://testserver") as c:
        yield c


def stow(client: TestClient, headers: dict[str, str], path: str = "/dicomweb/studies") -> tuple[int, str]:
    ds, data = make_instance()
    body = multipart_body([(DICOM, data)], "b0undary")
    ctype = f'multipart/related; type="{DICOM}"; boundary=b0undary'
    r = client.post(path, content=body, headers={"Content-Type": ctype, **headers})
    return r.status_code, str(ds.StudyInstanceUID)


def studies(client: TestClient, headers: dict[str, str], path: str = "/dicomweb/studies") -> list[str]:
    r = client.get(path, headers=headers)
    assert r.status_code in (200, 204), r.text
    return [s["0020000D"]["Value"][0] for s in (r.json() if r.status_code == 200 else [])]


def test_no_credentials_is_401_with_a_challenge_and_stores_nothing(api: TestClient, backend: Backend) -> None:
    status, _ = stow(api, {})
    assert status == 401
    r = api.get("/dicomweb/studies")
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert "credentials are required" in r.json()["error"]
    assert not any(backend.objects.rglob("*.dcm"))


@pytest.mark.parametrize(
    "header",
    [
        {"Authorization": "Basic YWxpY2U6c2VjcmV0"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer not.a.jwt"},
        {
            "Authorization": "Bearer "
            + jwt.encode(
                {"sub": "x", "tenants": ["alpha"], "exp": int(time.time()) + 60},
                "another-secret-another-secret-another",
                algorithm="HS256",
            )
        },
        {
            "Authorization": "Bearer "
            + jwt.encode({"sub": "x", "tenants": ["alpha"], "exp": int(time.time()) - 3600}, SECRET, algorithm="HS256")
        },
        {"Authorization": "Bearer dsk_unknownkey0_" + "x" * 43},
        {"X-API-Key": ""},
    ],
    ids=["basic", "empty-bearer", "garbage", "forged", "expired", "unknown-api-key", "empty-api-key"],
)
def test_bad_credentials_are_401(api: TestClient, header: dict[str, str]) -> None:
    r = api.get("/dicomweb/studies", headers=header)
    assert r.status_code == 401, r.text
    assert r.json()["error"]


def test_two_credentials_at_once_are_400(api: TestClient) -> None:
    r = api.get("/dicomweb/studies", headers={**bearer(token(["alpha"])), "X-API-Key": READER_KEY})
    assert r.status_code == 400


def test_tenants_are_walls(api: TestClient, backend: Backend) -> None:
    alpha, beta = bearer(token(["alpha"])), bearer(token(["beta"]))
    status, study = stow(api, alpha)
    assert status == 200
    assert studies(api, alpha) == [study]
    assert studies(api, beta) == []
    # Every way of naming tenant alpha from a beta principal is refused alike.
    assert api.get("/dicomweb/studies", headers={**beta, "X-Tenant": "alpha"}).status_code == 403
    assert api.get("/dicomweb/tenants/alpha/studies", headers=beta).status_code == 403
    assert api.get(f"/dicomweb/studies/{study}", headers=beta).status_code == 404
    assert api.delete(f"/dicomweb/studies/{study}", headers=beta).status_code == 404
    assert studies(api, alpha) == [study]


def test_a_principal_of_several_tenants_chooses_by_header_or_path(api: TestClient) -> None:
    both = token(["alpha", "beta"])
    assert api.get("/dicomweb/studies", headers=bearer(both)).status_code == 400
    status, study = stow(api, bearer(both), "/dicomweb/tenants/beta/studies")
    assert status == 200
    assert studies(api, {**bearer(both), "X-Tenant": "beta"}) == [study]
    assert studies(api, {**bearer(both), "X-Tenant": "alpha"}) == []
    # URLs in answers keep the tenant the path chose.
    ds, data = make_instance(study=study)
    r = api.post(
        f"/dicomweb/tenants/beta/studies/{study}",
        headers={**bearer(both), "Content-Type": f'multipart/related; type="{DICOM}"; boundary=b0undary'},
        content=multipart_body([(DICOM, data)], "b0undary"),
    )
    assert r.json()["00081190"]["Value"][0] == f"http://testserver/dicomweb/tenants/beta/studies/{study}"
    assert api.get("/dicomweb/tenants/beta/studies", headers={**bearer(both), "X-Tenant": "alpha"}).status_code == 400
    assert api.get("/dicomweb/tenants/../studies", headers=bearer(both)).status_code in (400, 404)


def test_scopes_limit_actions(api: TestClient, backend: Backend) -> None:
    status, study = stow(api, bearer(token(["alpha"])))
    assert status == 200
    reader = {"X-API-Key": READER_KEY}
    assert studies(api, reader) == [study]
    assert stow(api, reader)[0] == 403
    r = api.delete(f"/dicomweb/studies/{study}", headers=reader)
    assert r.status_code == 403
    assert "'delete' scope" in r.json()["error"]
    assert studies(api, reader) == [study]
    # An API key can also travel as a bearer value.
    assert studies(api, bearer(READER_KEY)) == [study]


def test_probes_openapi_and_preflight_need_no_credentials(api: TestClient) -> None:
    assert api.get("/healthz").status_code == 200
    assert api.get("/dicomweb/openapi.json").status_code == 200
    r = api.options(
        "/dicomweb/studies",
        headers={
            "Origin": "http://viewer.test",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert r.status_code == 200
    # A browser can read a refusal: CORS headers ride on the 401 too.
    r = api.get("/dicomweb/studies", headers={"Origin": "http://viewer.test"})
    assert r.status_code == 401
    assert r.headers["access-control-allow-origin"] == "http://viewer.test"


def test_auth_service_down_is_503_never_open(backend: Backend) -> None:
    app = create_app(make_settings(backend, auth_addr="127.0.0.1:1"))
    with TestClient(app) as client:
        r = client.get("/dicomweb/studies")
        assert r.status_code == 503
        assert r.headers["Retry-After"]
        status, _ = stow(client, {})
        assert status == 503
    assert not any(backend.objects.rglob("*.dcm"))


def test_audit_records_reads_writes_deletes_and_refusals(api: TestClient, sink: Sink) -> None:
    alpha = bearer(token(["alpha"]))
    _, study = stow(api, alpha)
    api.get(f"/dicomweb/studies/{study}/metadata", headers=alpha)
    api.delete(f"/dicomweb/studies/{study}", headers=alpha)
    api.get("/dicomweb/studies?PatientName=SECRET*", headers={"Authorization": "Bearer forged"})
    R = events_pb2.AuditRecord
    got = [(r.action, r.outcome, r.status, r.operation, r.tenant, r.subject) for r in sink.records]
    assert got == [
        (R.ACTION_WRITE, R.OUTCOME_SUCCESS, 200, "POST /studies", "alpha", "alice"),
        (R.ACTION_READ, R.OUTCOME_SUCCESS, 200, "GET /studies/{study}/metadata", "alpha", "alice"),
        (R.ACTION_DELETE, R.OUTCOME_SUCCESS, 204, "DELETE /studies/{study}", "alpha", "alice"),
        (R.ACTION_AUTHENTICATE, R.OUTCOME_DENIED, 401, "GET /dicomweb/studies", "", ""),
    ]
    assert sink.records[1].study_instance_uid == study
    assert all(r.source_address and r.edge == "dicomweb" and r.request_id != "-" for r in sink.records)
    # The query string (patient names) never reaches the audit trail.
    assert "SECRET" not in json.dumps([str(r) for r in sink.records])


def test_refuses_to_serve_a_network_address_with_auth_off(backend: Backend) -> None:
    app = create_app(make_settings(backend, http_host="0.0.0.0"))
    with pytest.raises(ExposedWithoutAuth, match="authentication is off .* HTTP listener 0.0.0.0 is not loopback"):
        with TestClient(app):
            pass


def test_serves_a_network_address_with_auth_on(backend: Backend, auth_on: str) -> None:
    app = create_app(make_settings(backend, http_host="0.0.0.0", auth_addr=auth_on))
    with TestClient(app) as client:
        assert client.get("/dicomweb/studies", headers=bearer(token(["alpha"]))).status_code in (200, 204)


def test_describe_policy_tells_the_edges(auth_on: str) -> None:
    with channel(auth_on) as ch:
        assert AuthClient(ch).describe_policy().auth_enabled


def test_grants_are_reused_for_a_short_while_refusals_never(backend: Backend, tmp_path: Path) -> None:
    """auth_cache_seconds: a grant holds that long even if auth_svc goes away;
    then the gateway asks again and fails closed."""
    settings = AuthSettings(data_dir=tmp_path, auth_enabled=True, jwt_hs256_secret=SECRET)
    service = AuthService(Policy(settings))
    name = auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
    server, _health, port = build_server(
        lambda s: auth_service_pb2_grpc.add_AuthServiceServicer_to_server(service, s), [name], "127.0.0.1:0"
    )
    app = create_app(make_settings(backend, auth_addr=f"127.0.0.1:{port}", auth_cache_seconds=1.0))
    good = bearer(token(["alpha"]))
    with TestClient(app) as client:
        assert client.get("/dicomweb/studies", headers=good).status_code in (200, 204)
        assert client.get("/dicomweb/studies", headers=bearer("forged")).status_code == 401
        server.stop(None).wait()
        assert client.get("/dicomweb/studies", headers=good).status_code in (200, 204)  # the grant, reused
        assert client.get("/dicomweb/studies", headers=bearer(token(["beta"]))).status_code == 503  # never granted
        # The refusal was not kept: the forged token is asked about again and
        # gets the outage, not a remembered 401.
        assert client.get("/dicomweb/studies", headers=bearer("forged")).status_code == 503
        # The grant expires within its second: then the gateway asks and fails closed.
        deadline = time.monotonic() + 10
        while client.get("/dicomweb/studies", headers=good).status_code != 503:
            assert time.monotonic() < deadline, "a 1 s grant was still honoured 10 s later"
            time.sleep(0.05)
