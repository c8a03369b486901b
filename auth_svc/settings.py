from __future__ import annotations

from pydantic import BaseModel

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
