"""Sign-in with an OpenID Connect provider: the authorization code flow with
PKCE (RFC 7636, S256), as a public client (or confidential, with a secret).

The provider is found by discovery from the issuer. The state, nonce and
code verifier travel in a short-lived encrypted cookie, not in server
memory, so any gateway replica can finish a sign-in. The ID token is
checked (signature from the JWKS, issuer, audience, nonce); the access
token is what the console then sends as its bearer credential, checked by
auth_svc like any other token."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from typing import Any
from urllib.parse import urlencode

import jwt
import urllib3

from dicomweb_gateway.settings import GatewaySettings

_HTTP = urllib3.PoolManager(timeout=urllib3.Timeout(connect=5, read=15), retries=False)
DISCOVERY_SECONDS = 300


class OidcError(Exception):
    """Sign-in could not complete; the message is fit for the person signing in."""


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


class OpenIdClient:
    def __init__(self, settings: GatewaySettings) -> None:
        self.issuer = settings.jwt_issuer.rstrip("/")
        self.jwks_url = settings.jwks_url
        self.client_id = settings.oidc_client_id
        self.secret = settings.oidc_client_secret.get_secret_value() if settings.oidc_client_secret else ""
        self.scopes = settings.oidc_scopes
        self.resource = settings.oidc_resource
        self._discovered: tuple[float, dict[str, Any]] | None = None
        self._lock = threading.Lock()
        self._jwks = jwt.PyJWKClient(self.jwks_url, cache_keys=True, lifespan=300, timeout=10)

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> OpenIdClient | None:
        if not settings.jwks_url or not settings.jwt_issuer:
            return None
        return cls(settings)

    def _get_json(self, url: str) -> dict[str, Any]:
        try:
            resp = _HTTP.request("GET", url, headers={"Accept": "application/json"})
        except urllib3.exceptions.HTTPError as exc:
            raise OidcError(f"the identity provider cannot be reached ({type(exc).__name__})") from None
        if resp.status != 200:
            raise OidcError(f"the identity provider answered {resp.status}")
        data: dict[str, Any] = json.loads(resp.data)
        return data

    def discovery(self) -> dict[str, Any]:
        with self._lock:
            if self._discovered is None or self._discovered[0] < time.monotonic():
                doc = self._get_json(self.issuer + "/.well-known/openid-configuration")
                if doc.get("issuer", "").rstrip("/") != self.issuer:
                    raise OidcError("the identity provider names another issuer")
                self._discovered = (time.monotonic() + DISCOVERY_SECONDS, doc)
            return self._discovered[1]

    def authorization_url(self, redirect_uri: str) -> tuple[str, dict[str, str]]:
        """Where to send the browser, and what to keep until it comes back."""
        verifier, challenge = pkce_pair()
        flow = {
            "state": secrets.token_urlsafe(24),
            "nonce": secrets.token_urlsafe(24),
            "verifier": verifier,
            "redirect_uri": redirect_uri,
        }
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "scope": self.scopes,
            "state": flow["state"],
            "nonce": flow["nonce"],
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        if self.resource:
            params["resource"] = self.resource
        return self.discovery()["authorization_endpoint"] + "?" + urlencode(params), flow

    def exchange(self, code: str, flow: dict[str, str]) -> dict[str, Any]:
        """The token response for `code`, its ID token checked."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": flow["redirect_uri"],
            "client_id": self.client_id,
            "code_verifier": flow["verifier"],
        }
        if self.resource:
            form["resource"] = self.resource
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
        if self.secret:
            basic = base64.b64encode(f"{self.client_id}:{self.secret}".encode()).decode()
            headers["Authorization"] = f"Basic {basic}"
        try:
            resp = _HTTP.request("POST", self.discovery()["token_endpoint"], body=urlencode(form), headers=headers)
        except urllib3.exceptions.HTTPError as exc:
            raise OidcError(f"the identity provider cannot be reached ({type(exc).__name__})") from None
        try:
            tokens: dict[str, Any] = json.loads(resp.data)
        except ValueError:
            tokens = {}
        if resp.status != 200 or "access_token" not in tokens:
            raise OidcError(f"the identity provider refused the code ({tokens.get('error', resp.status)})")
        id_token = tokens.get("id_token")
        if not id_token:
            raise OidcError("the identity provider sent no ID token (is 'openid' among the scopes?)")
        try:
            key = self._jwks.get_signing_key_from_jwt(id_token)
            claims = jwt.decode(
                id_token,
                key.key,
                algorithms=["RS256", "ES256", "PS256", "EdDSA"],
                audience=self.client_id,
                issuer=self.issuer,
                leeway=30,
                options={"require": ["exp", "iat", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise OidcError(f"the ID token is not valid: {exc}") from None
        if claims.get("nonce") != flow["nonce"]:
            raise OidcError("the ID token does not answer this sign-in (nonce)")
        tokens["id_claims"] = claims
        return tokens
