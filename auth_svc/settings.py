from __future__ import annotations

from pydantic import BaseModel, SecretStr, ValidationError

from common.exposure import host_of, is_loopback
from common.settings import CommonSettings


class ApiKey(BaseModel):
    # SHA-256 hex of the key: the key itself is never stored in settings.
    sha256: str
    subject: str
    tenants: list[str]
    scopes: list[str] = ["read", "write"]


class AuthSettings(CommonSettings):
    # Off for the embedded run: every caller is the anonymous principal of the
    # default tenant. On: credentials are required and checked.
    auth_enabled: bool = False
    # JSON list in DICOMSERVER_API_KEYS, e.g.
    # [{"sha256": "...", "subject": "ci", "tenants": ["default"], "scopes": ["read"]}]
    api_keys: list[ApiKey] = []
    # Calling AE titles allowed to associate; empty allows any.
    ae_allowlist: list[str] = []
    # Calling AE title -> tenant; others get the default tenant.
    ae_tenants: dict[str, str] = {}
    # Bearer tokens: RS256/ES256 keys from a JWKS URL, and/or HS256 with a
    # shared secret (development).
    jwks_url: str = ""
    jwks_cache_seconds: int = 300
    # Least seconds between refetches caused by tokens with unknown key ids.
    jwks_refresh_cooldown_seconds: float = 30.0
    jwt_hs256_secret: SecretStr | None = None
    # Empty: not checked.
    jwt_issuer: str = ""
    jwt_audience: str = ""
    jwt_leeway_seconds: int = 30
    # Where the principal is in the claims; dotted paths reach nested claims
    # (Keycloak realm roles: "realm_access.roles").
    jwt_subject_claim: str = "sub"
    jwt_tenants_claim: str = "tenants"
    jwt_scopes_claim: str = "scope"
    # API keys made by `python -m auth_svc.keys` or the CreateApiKey RPC are
    # stored (hashed) here; default sqlite:///<data_dir>/auth.sqlite3.
    # PostgreSQL: postgresql+psycopg://user:password@host:port/database
    auth_database_url: str | None = None

    @property
    def effective_auth_database_url(self) -> str:
        return self.auth_database_url or f"sqlite:///{self.data_dir / 'auth.sqlite3'}"


def exposure_problem(settings: AuthSettings) -> str | None:
    """Why this auth_svc must not serve, or None: authentication may be off
    only while its gRPC listener is bound to loopback."""
    address = settings.listen_address(settings.auth_addr)
    if settings.auth_enabled or is_loopback(host_of(address)):
        return None
    return (f"auth is off (DICOMSERVER_AUTH_ENABLED=false) but the gRPC listener {address} is not loopback: "
            "configure authentication or bind to 127.0.0.1")


def describe_errors(exc: ValidationError) -> str:
    """Settings errors in one line, named by their environment variables."""
    parts = []
    for error in exc.errors():
        loc = [str(p) for p in error["loc"]]
        name = f"DICOMSERVER_{loc[0].upper()}" if loc else "settings"
        where = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc[1:])
        parts.append(f"{name}{where}: {error['msg']}")
    return "; ".join(parts)
