"""AuthService decisions, in-process through pytest-grpc."""

from __future__ import annotations

import hashlib

import pytest

from auth_svc.policy import NotAuthenticated, Policy
from auth_svc.service import AuthService
from auth_svc.settings import ApiKey, AuthSettings
from common.clients import AuthClient
from common.errors import Unauthenticated
from common.gen.dicomserver.v1 import auth_service_pb2 as pb
from common.gen.dicomserver.v1 import auth_service_pb2_grpc as pb_grpc

KEY = "s3cret-key"
SETTINGS = AuthSettings(
    auth_enabled=True,
    api_keys=[ApiKey(sha256=hashlib.sha256(KEY.encode()).hexdigest(), subject="ci", tenants=["a"], scopes=["read"])],
    ae_allowlist=["MODALITY"],
    ae_tenants={"MODALITY": "b"},
)


@pytest.fixture(scope="module")
def grpc_add_to_server():  # type: ignore[no-untyped-def]
    return pb_grpc.add_AuthServiceServicer_to_server


@pytest.fixture(scope="module")
def grpc_servicer() -> AuthService:
    return AuthService(Policy(SETTINGS))


@pytest.fixture(scope="module")
def grpc_stub_cls(grpc_channel):  # type: ignore[no-untyped-def]
    return pb_grpc.AuthServiceStub


@pytest.fixture(scope="module")
def client(grpc_channel) -> AuthClient:  # type: ignore[no-untyped-def]
    return AuthClient(grpc_channel)


def test_api_key_gives_its_principal(client: AuthClient) -> None:
    p = client.authenticate(pb.AuthenticateRequest(api_key=KEY))
    assert (p.subject, list(p.tenants), list(p.scopes)) == ("ci", ["a"], ["read"])
    assert client.authorize(p, pb.ACTION_READ, "a").allowed
    denied = client.authorize(p, pb.ACTION_WRITE, "a")
    assert not denied.allowed and "write" in denied.reason
    assert not client.authorize(p, pb.ACTION_READ, "b").allowed


@pytest.mark.parametrize(
    "request_",
    [
        pb.AuthenticateRequest(),
        pb.AuthenticateRequest(api_key="wrong"),
        pb.AuthenticateRequest(bearer_token="eyJhbGciOiJub25lIn0.e30."),
        pb.AuthenticateRequest(dimse_peer=pb.DimsePeer(calling_ae_title="STRANGER")),
    ],
)
def test_fails_closed(client: AuthClient, request_: pb.AuthenticateRequest) -> None:
    with pytest.raises(Unauthenticated):
        client.authenticate(request_)


def test_ae_title_maps_to_tenant(client: AuthClient) -> None:
    p = client.authenticate(pb.AuthenticateRequest(dimse_peer=pb.DimsePeer(calling_ae_title="MODALITY")))
    assert list(p.tenants) == ["b"]
    # Who it is (the audit trail's subject) and what it may do, exactly.
    assert (p.subject, sorted(p.scopes)) == ("ae:MODALITY", ["read", "write"])
    assert client.authorize(p, pb.ACTION_WRITE, "b").allowed
    assert not client.authorize(p, pb.ACTION_DELETE, "b").allowed


def test_auth_off_gives_anonymous_default_tenant() -> None:
    p = Policy(AuthSettings(auth_enabled=False)).authenticate(pb.AuthenticateRequest())
    assert (p.subject, list(p.tenants)) == ("anonymous", ["default"])


def test_auth_off_still_holds_the_ae_allowlist() -> None:
    policy = Policy(AuthSettings(auth_enabled=False, ae_allowlist=["MODALITY"], ae_tenants={"MODALITY": "b"}))
    p = policy.authenticate(pb.AuthenticateRequest(dimse_peer=pb.DimsePeer(calling_ae_title="MODALITY")))
    assert (p.subject, list(p.tenants), list(p.scopes)) == ("ae:MODALITY", ["b"], ["read", "write", "delete", "admin"])
    with pytest.raises(NotAuthenticated, match="calling AE title is not allowed"):
        policy.authenticate(pb.AuthenticateRequest(dimse_peer=pb.DimsePeer(calling_ae_title="STRANGER")))


@pytest.mark.parametrize("action", [pb.ACTION_UNSPECIFIED, 99])
def test_an_unknown_action_is_never_allowed(action: int) -> None:
    everything = pb.Principal(subject="root", tenants=["a"], scopes=["read", "write", "delete", "admin"])
    answer = Policy.authorize(pb.AuthorizeRequest(principal=everything, action=action, tenant="a"))  # type: ignore[arg-type]
    assert (answer.allowed, answer.reason) == (False, "unknown action")
