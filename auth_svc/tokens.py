"""Bearer tokens (JWT) into principals: RS256/ES256 against a JWKS URL (keys
cached, the set fetched again when a token names an unknown key, at most
once per cooldown, so keys rotate without a restart and unknown key ids
cannot hammer the identity provider) and HS256 with a configured secret for
development. exp, nbf, iss and aud are checked; `alg: none` never passes."""

from __future__ import annotations

import logging
from typing import Any

import jwt

from auth_svc.settings import AuthSettings
from common.gen.dicomserver.v1 import auth_service_pb2 as pb

log = logging.getLogger(__name__)

# Token scopes (OAuth style) to the scopes a principal carries.
SCOPES = {"dicom.read": "read", "dicom.write": "write", "dicom.delete": "delete", "admin": "admin"}
ASYMMETRIC = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]


class InvalidToken(Exception):
    """The token is not accepted; the message says why, without its content."""


def claim(claims: dict[str, Any], path: str) -> Any:
    """A claim by dotted path, e.g. "realm_access.roles" (Keycloak)."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()  # OAuth "scope" is space-separated
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


class TokenValidator:
    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        secret = settings.jwt_hs256_secret
        self._secret = secret.get_secret_value() if secret is not None else None
        self._jwks = (
            jwt.PyJWKClient(
                settings.jwks_url,
                cache_keys=True,
                lifespan=settings.jwks_cache_seconds,
                timeout=5,
                cooldown_duration=settings.jwks_refresh_cooldown_seconds,
            )
            if settings.jwks_url
            else None
        )

    @property
    def configured(self) -> bool:
        return self._secret is not None or self._jwks is not None

    def principal(self, token: str) -> pb.Principal:
        claims = self._decode(token)
        s = self.settings
        subject = claim(claims, s.jwt_subject_claim)
        if not isinstance(subject, str) or not subject:
            raise InvalidToken(f"token has no '{s.jwt_subject_claim}' claim")
        tenants = _strings(claim(claims, s.jwt_tenants_claim))
        if not tenants:
            raise InvalidToken(f"token names no tenant in '{s.jwt_tenants_claim}'")
        scopes = sorted({SCOPES[v] for v in _strings(claim(claims, s.jwt_scopes_claim)) if v in SCOPES})
        return pb.Principal(subject=subject, tenants=tenants, scopes=scopes)

    def _decode(self, token: str) -> dict[str, Any]:
        if not self.configured:
            raise InvalidToken("bearer tokens are not accepted: no token issuer is configured")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise InvalidToken("malformed token") from None
        alg = header.get("alg")
        if alg == "HS256" and self._secret is not None:
            key: Any = self._secret
            algorithms = ["HS256"]
        elif alg in ASYMMETRIC and self._jwks is not None:
            try:
                key = self._jwks.get_signing_key_from_jwt(token).key
            except jwt.PyJWKClientError as exc:
                log.warning("no signing key for a token: %s", exc)
                raise InvalidToken("token signed with an unknown key") from None
            algorithms = ASYMMETRIC
        else:
            raise InvalidToken(f"token algorithm '{str(alg)[:16]}' is not accepted")
        s = self.settings
        try:
            return jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=s.jwt_audience or None,
                issuer=s.jwt_issuer or None,
                leeway=s.jwt_leeway_seconds,
                options={"require": ["exp"], "verify_aud": bool(s.jwt_audience)},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("token has expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("token is from another issuer") from None
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(f"token rejected ({type(exc).__name__})") from None
