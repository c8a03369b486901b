"""AuthService.Check and DescribePolicy over a real gRPC server: who is
calling, which tenant the operation runs in, and whether the action is
allowed there."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from auth_svc.settings import ApiKey, AuthSettings
from common.clients import AuthClient
from common.errors import InvalidArgument, PermissionDenied, Unauthenticated
from common.gen.dicomserver.v1 import auth_service_pb2 as pb
from tests.auth_svc.auth_support import serving

SECRET = "development-secret-of-32-bytes!!"
READER_KEY, MULTI_KEY = "reader-key-for-tenant-a", "key-of-tenants-a-and-b"
KEYS = [
    ApiKey(sha256=hashlib.sha256(READER_KEY.encode()).hexdigest(), subject="reader", tenants=["a"], scopes=["read"]),
    ApiKey(
        sha256=hashlib.sha256(MULTI_KEY.encode()).hexdigest(),
        subject="multi",
        tenants=["a", "b"],
        scopes=["read", "write"],
    ),
]
ALL_ACTIONS = [pb.ACTION_READ, pb.ACTION_WRITE, pb.ACTION_DELETE, pb.ACTION_ADMIN]


def token(**claims: Any) -> str:
    now = int(time.time())
    return jwt.encode(
        {"sub": "alice", "exp": now + 300, "tenants": ["a"], "scope": "dicom.read", **claims}, SECRET, "HS256"
    )


def key(value: str) -> pb.Credential:
    return pb.Credential(api_key=value)


@pytest.fixture(scope="module")
def auth_on() -> Iterator[AuthClient]:
    with serving(AuthSettings(auth_enabled=True, api_keys=KEYS, jwt_hs256_secret=SECRET)) as client:
        yield client


@pytest.fixture(scope="module")
def auth_off() -> Iterator[AuthClient]:
    with serving(AuthSettings(auth_enabled=False, api_keys=KEYS, default_tenant="home")) as client:
        yield client


def test_auth_off_no_credential_is_anonymous_in_the_default_tenant_with_every_scope(auth_off: AuthClient) -> None:
    for action in ALL_ACTIONS:
        answer = auth_off.check(None, action)
        assert (answer.principal.subject, list(answer.principal.tenants), answer.tenant) == (
            "anonymous",
            ["home"],
            "home",
        )
    assert auth_off.check(pb.Credential(), pb.ACTION_DELETE, "home").tenant == "home"


def test_auth_off_the_anonymous_caller_holds_only_the_default_tenant(auth_off: AuthClient) -> None:
    with pytest.raises(PermissionDenied, match="^no access to tenant$"):
        auth_off.check(None, pb.ACTION_READ, "other")


@pytest.mark.parametrize(
    ("credential", "reason"),
    [
        (key("wrong"), "unknown or revoked API key"),
        (key(""), "unknown or revoked API key"),
        (pb.Credential(bearer_token=token()), "no token issuer"),
        (pb.Credential(bearer_token="not.a.jwt"), "no token issuer"),
    ],
)
def test_auth_off_a_bad_credential_is_refused_not_taken_as_anonymous(
    auth_off: AuthClient, credential: pb.Credential, reason: str
) -> None:
    with pytest.raises(Unauthenticated, match=reason):
        auth_off.check(credential, pb.ACTION_READ)


def test_auth_off_a_good_api_key_gives_its_own_principal(auth_off: AuthClient) -> None:
    answer = auth_off.check(key(READER_KEY), pb.ACTION_READ)
    assert (answer.principal.subject, answer.tenant) == ("reader", "a")
    with pytest.raises(PermissionDenied, match="'write' scope"):
        auth_off.check(key(READER_KEY), pb.ACTION_WRITE)


def test_auth_on_without_credentials_is_unauthenticated(auth_on: AuthClient) -> None:
    for credential in (None, pb.Credential()):
        with pytest.raises(Unauthenticated, match="^credentials are required$"):
            auth_on.check(credential, pb.ACTION_READ)


@pytest.mark.parametrize(
    "credential",
    [
        key("wrong"),
        pb.Credential(bearer_token=token(exp=int(time.time()) - 60)),
        pb.Credential(
            bearer_token=jwt.encode(
                {"sub": "x", "exp": 2**40, "tenants": ["a"]}, "another-secret-of-32-bytes!!!!!!", "HS256"
            )
        ),
    ],
)
def test_auth_on_bad_credentials_are_unauthenticated(auth_on: AuthClient, credential: pb.Credential) -> None:
    with pytest.raises(Unauthenticated):
        auth_on.check(credential, pb.ACTION_READ)


def test_one_tenant_is_chosen_when_none_is_asked_for(auth_on: AuthClient) -> None:
    answer = auth_on.check(key(READER_KEY), pb.ACTION_READ)
    assert (answer.principal.subject, list(answer.principal.tenants), list(answer.principal.scopes), answer.tenant) == (
        "reader",
        ["a"],
        ["read"],
        "a",
    )
    assert auth_on.check(key(READER_KEY), pb.ACTION_READ, "a").tenant == "a"
    assert auth_on.check(pb.Credential(bearer_token=token()), pb.ACTION_READ).tenant == "a"


def test_missing_scope_is_permission_denied(auth_on: AuthClient) -> None:
    with pytest.raises(PermissionDenied, match="^the 'write' scope is required$"):
        auth_on.check(key(READER_KEY), pb.ACTION_WRITE, "a")
    with pytest.raises(PermissionDenied, match="^the 'delete' scope is required$"):
        auth_on.check(key(MULTI_KEY), pb.ACTION_DELETE, "b")


def test_several_tenants_must_choose_one(auth_on: AuthClient) -> None:
    with pytest.raises(InvalidArgument, match="several tenants: choose one with the X-Tenant header"):
        auth_on.check(key(MULTI_KEY), pb.ACTION_READ)
    assert auth_on.check(key(MULTI_KEY), pb.ACTION_WRITE, "b").tenant == "b"
    assert auth_on.check(key(MULTI_KEY), pb.ACTION_READ, "a").tenant == "a"


def test_several_tenants_fall_back_to_the_default_tenant_when_held() -> None:
    with serving(AuthSettings(auth_enabled=True, jwt_hs256_secret=SECRET, default_tenant="b")) as client:
        answer = client.check(pb.Credential(bearer_token=token(tenants=["a", "b"])), pb.ACTION_READ)
        assert answer.tenant == "b"
        with pytest.raises(InvalidArgument, match="several tenants"):
            client.check(pb.Credential(bearer_token=token(tenants=["a", "c"])), pb.ACTION_READ)


def test_a_tenant_not_held_is_refused_alike_whether_it_exists_or_not(auth_on: AuthClient) -> None:
    messages = set()
    for tenant in ("b", "no-such-tenant"):  # b exists (another key holds it); the other does not
        with pytest.raises(PermissionDenied) as err:
            auth_on.check(key(READER_KEY), pb.ACTION_READ, tenant)
        messages.add(str(err.value))
    assert messages == {"no access to tenant"}


@pytest.mark.parametrize("tenant", ["A", "../a", "a b", "-a", "x" * 64, "a\x00"])
def test_a_malformed_tenant_is_invalid_argument(auth_on: AuthClient, tenant: str) -> None:
    with pytest.raises(InvalidArgument, match="tenant must be"):
        auth_on.check(key(READER_KEY), pb.ACTION_READ, tenant)


def test_an_unspecified_action_is_invalid_argument(auth_on: AuthClient, auth_off: AuthClient) -> None:
    for client, credential in ((auth_on, key(READER_KEY)), (auth_off, None)):
        with pytest.raises(InvalidArgument, match="action"):
            client.check(credential, pb.ACTION_UNSPECIFIED)
        with pytest.raises(InvalidArgument, match="action"):
            client.check(credential, 99)


def test_a_principal_whose_tenant_breaks_the_grammar_is_refused(auth_on: AuthClient) -> None:
    with pytest.raises(PermissionDenied, match="not a valid tenant"):
        auth_on.check(pb.Credential(bearer_token=token(tenants=["Not Valid"])), pb.ACTION_READ)


def test_describe_policy(auth_on: AuthClient, auth_off: AuthClient) -> None:
    assert (auth_on.describe_policy().auth_enabled, auth_on.describe_policy().default_tenant) == (True, "default")
    assert (auth_off.describe_policy().auth_enabled, auth_off.describe_policy().default_tenant) == (False, "home")


def test_dimse_peer_is_a_credential_too(auth_off: AuthClient) -> None:
    answer = auth_off.check(
        pb.Credential(dimse_peer=pb.DimsePeer(calling_ae_title="CT1", peer_address="127.0.0.1")), pb.ACTION_WRITE
    )
    assert (answer.principal.subject, answer.tenant) == ("ae:CT1", "home")
