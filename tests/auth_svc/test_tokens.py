"""Bearer tokens: real JWTs signed by test keys, RS256/ES256 keys served from
a JWKS endpoint on loopback (rotated while running), HS256 with a secret."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from auth_svc.policy import NotAuthenticated, Policy
from auth_svc.settings import AuthSettings
from common.gen.dicomserver.v1 import auth_service_pb2 as pb

ISSUER, AUDIENCE, SECRET = "https://idp.test", "dicomserver", "development-secret-of-32-bytes!!"


class Jwks:
    """A JWKS endpoint whose key set can change while it runs."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                jwks.fetches += 1
                body = json.dumps({"keys": jwks.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"

    def publish(self, private_key: Any, kid: str, alg: str) -> None:
        jwk = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(private_key.public_key()))
        self.keys.append({**jwk, "kid": kid, "alg": alg, "use": "sig"})


@pytest.fixture(scope="module")
def jwks() -> Iterator[Jwks]:
    server = Jwks()
    yield server
    server.server.shutdown()


def settings(jwks: Jwks, **overrides: Any) -> AuthSettings:
    values: dict[str, Any] = dict(
        auth_enabled=True,
        jwks_url=jwks.url,
        jwt_hs256_secret=SECRET,
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        jwt_leeway_seconds=0,
        jwks_refresh_cooldown_seconds=0,
    )
    values.update(overrides)
    return AuthSettings(**values)


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "sub": "alice",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 300,
        "tenants": ["hospital-a"],
        "scope": "dicom.read dicom.write openid",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def authenticate(policy: Policy, token: str) -> pb.Principal:
    return policy.authenticate(pb.AuthenticateRequest(bearer_token=token))


def test_rs256_and_es256_from_jwks_and_a_rotated_key(jwks: Jwks) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwks.publish(rsa_key, "rsa-1", "RS256")
    jwks.publish(ec_key, "ec-1", "ES256")
    policy = Policy(settings(jwks))
    p = authenticate(policy, jwt.encode(claims(), rsa_key, "RS256", headers={"kid": "rsa-1"}))
    assert (p.subject, list(p.tenants), list(p.scopes)) == ("alice", ["hospital-a"], ["read", "write"])
    assert (
        authenticate(policy, jwt.encode(claims(sub="bob"), ec_key, "ES256", headers={"kid": "ec-1"})).subject == "bob"
    )
    # The identity provider rotates to a new key while we run: no restart needed.
    rotated = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks.publish(rotated, "rsa-2", "RS256")
    fetched = jwks.fetches
    assert authenticate(policy, jwt.encode(claims(), rotated, "RS256", headers={"kid": "rsa-2"})).subject == "alice"
    assert jwks.fetches == fetched + 1


def test_unknown_key_ids_refetch_at_most_once_per_cooldown(jwks: Jwks) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks.publish(key, "rsa-cool", "RS256")
    policy = Policy(settings(jwks, jwks_refresh_cooldown_seconds=60))
    assert authenticate(policy, jwt.encode(claims(), key, "RS256", headers={"kid": "rsa-cool"})).subject == "alice"
    fetched = jwks.fetches
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for i in range(5):
        with pytest.raises(NotAuthenticated, match="unknown key"):
            authenticate(policy, jwt.encode(claims(), stranger, "RS256", headers={"kid": f"unknown-{i}"}))
    assert jwks.fetches <= fetched + 1


def test_hs256_with_the_configured_secret(jwks: Jwks) -> None:
    policy = Policy(settings(jwks))
    assert authenticate(policy, jwt.encode(claims(), SECRET, "HS256")).subject == "alice"


def test_keycloak_realm_roles_as_scopes(jwks: Jwks) -> None:
    policy = Policy(settings(jwks, jwt_scopes_claim="realm_access.roles", jwt_tenants_claim="org.tenants"))
    token = jwt.encode(
        claims(scope=None, tenants=None, realm_access={"roles": ["dicom.read", "admin", "x"]}, org={"tenants": ["b"]}),
        SECRET,
        "HS256",
    )
    p = authenticate(policy, token)
    assert (list(p.tenants), list(p.scopes)) == (["b"], ["admin", "read"])


def _forged(jwks: Jwks) -> str:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(claims(), other, "RS256", headers={"kid": "rsa-1"})  # a known kid, the wrong key


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda j: jwt.encode(claims(exp=int(time.time()) - 10), SECRET, "HS256"), "expired"),
        (lambda j: jwt.encode(claims(nbf=int(time.time()) + 600), SECRET, "HS256"), "not valid yet"),
        (lambda j: jwt.encode(claims(aud="someone-else"), SECRET, "HS256"), "audience"),
        (lambda j: jwt.encode(claims(iss="https://evil.test"), SECRET, "HS256"), "issuer"),
        (lambda j: jwt.encode(claims(exp=None), SECRET, "HS256"), "rejected"),
        (lambda j: jwt.encode(claims(), "a-different-secret-of-32-bytes!!", "HS256"), "rejected"),
        (lambda j: jwt.encode(claims(), None, "none"), "algorithm 'none'"),
        (lambda j: jwt.encode(claims(tenants=[]), SECRET, "HS256"), "no tenant"),
        (lambda j: jwt.encode(claims(sub=None), SECRET, "HS256"), "'sub'"),
        (_forged, "rejected"),
        (
            lambda j: jwt.encode(
                claims(),
                rsa.generate_private_key(public_exponent=65537, key_size=2048),
                "RS256",
                headers={"kid": "nobody-knows"},
            ),
            "unknown key",
        ),
        (lambda j: "not.a.jwt", "malformed"),
        (lambda j: "", "malformed"),
    ],
)
def test_bad_tokens_fail_closed(jwks: Jwks, make: Any, reason: str) -> None:
    if not jwks.keys:
        jwks.publish(rsa.generate_private_key(public_exponent=65537, key_size=2048), "rsa-1", "RS256")
    with pytest.raises(NotAuthenticated) as err:
        authenticate(Policy(settings(jwks)), make(jwks))
    assert reason in str(err.value)


def test_tokens_without_a_configured_issuer_are_refused() -> None:
    policy = Policy(AuthSettings(auth_enabled=True))
    with pytest.raises(NotAuthenticated, match="no token issuer"):
        authenticate(policy, jwt.encode(claims(), SECRET, "HS256"))
