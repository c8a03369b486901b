from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError, field_validator
from pydantic_settings import SettingsError

from common.exposure import host_of, is_loopback
from common.settings import CommonSettings
from common.validation import check_tenant

SCOPES = ("read", "write", "delete", "admin")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ApiKey(BaseModel):
    # SHA-256 hex of the key: the key itself is never stored in settings.
    sha256: str
    subject: str
    tenants: list[str]
    scopes: list[str] = ["read", "write"]


class DimseRule(BaseModel):
    """Who a DIMSE peer is: the first rule matching its calling AE title and
    address gives its tenant and scopes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The exact calling AE title, or "*" for any.
    calling_ae_title: str
    # CIDR networks the peer address must be in; empty: any address.
    networks: list[str] = []
    tenant: str
    scopes: list[str] = ["read", "write"]

    @field_validator("calling_ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        if value != "*" and not (
            0 < len(value) <= 16 and value == value.strip() and value.isprintable() and "\\" not in value
        ):
            raise ValueError(f'calling_ae_title {value[:20]!r} is not "*" or an AE title of 1-16 characters')
        return value

    @field_validator("networks")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=True)
            except ValueError as exc:
                raise ValueError(f"{value[:50]!r} is not a network in CIDR notation (e.g. 10.0.0.0/8): {exc}") from None
        return values

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, value: str) -> str:
        return check_tenant(value)

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, values: list[str]) -> list[str]:
        unknown = [v for v in values if v not in SCOPES]
        if unknown or not values:
            raise ValueError(f"scopes must be a non-empty list of {', '.join(SCOPES)}")
        return [s for s in SCOPES if s in values]

    def parsed_networks(self) -> list[Network]:
        return [ipaddress.ip_network(v) for v in self.networks]


class AuthSettings(CommonSettings):
    # Off for the embedded run: every caller is the anonymous principal of the
    # default tenant. On: credentials are required and checked.
    auth_enabled: bool = False
    # JSON list in DICOMSERVER_API_KEYS, e.g.
    # [{"sha256": "...", "subject": "ci", "tenants": ["default"], "scopes": ["read"]}]
    api_keys: list[ApiKey] = []
    # JSON list of DIMSE rules, e.g. [{"calling_ae_title": "CT1", "networks":
    # ["10.0.0.0/8"], "tenant": "radiology", "scopes": ["read", "write"]}];
    # the first match wins. With auth on, a peer no rule admits is refused.
    dimse_rules: list[DimseRule] = []
    # Older form, still honoured after the rules. Auth off: calling AE titles
    # allowed (empty allows any), each in its tenant from ae_tenants or the
    # default tenant, with every scope. Auth on: only the titles named in
    # either list are admitted (read and write, from any address).
    ae_allowlist: list[str] = []
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

    @field_validator("default_tenant")
    @classmethod
    def _default_tenant(cls, value: str) -> str:
        return check_tenant(value)

    @field_validator("ae_tenants")
    @classmethod
    def _ae_tenants(cls, value: dict[str, str]) -> dict[str, str]:
        for tenant in value.values():
            check_tenant(tenant)
        return value

    @property
    def effective_auth_database_url(self) -> str:
        return self.auth_database_url or f"sqlite:///{self.data_dir / 'auth.sqlite3'}"


def exposure_problem(settings: AuthSettings) -> str | None:
    """Why this auth_svc must not serve, or None: authentication may be off
    only while its gRPC listener is bound to loopback."""
    address = settings.listen_address(settings.auth_addr)
    if settings.auth_enabled or is_loopback(host_of(address)):
        return None
    return (
        f"auth is off (DICOMSERVER_AUTH_ENABLED=false) but the gRPC listener {address} is not loopback: "
        "configure authentication or bind to 127.0.0.1"
    )


class InvalidSettings(Exception):
    """The settings cannot be used; the message names the variables, in one line."""


def load_settings() -> AuthSettings:
    """AuthSettings from the environment, or InvalidSettings saying what is wrong."""
    try:
        return AuthSettings()
    except ValidationError as exc:
        raise InvalidSettings(describe_errors(exc)) from None
    except SettingsError as exc:
        cause = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
        raise InvalidSettings(f"{exc}{cause}") from None


def describe_errors(exc: ValidationError) -> str:
    """Settings errors in one line, named by their environment variables."""
    parts = []
    for error in exc.errors():
        loc = [str(p) for p in error["loc"]]
        name = f"DICOMSERVER_{loc[0].upper()}" if loc else "settings"
        where = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc[1:])
        parts.append(f"{name}{where}: {error['msg']}")
    return "; ".join(parts)
