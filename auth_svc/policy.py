"""Credentials to principals, and principals to decisions. Fails closed.

A credential that is given is always checked, whether authentication is on
or off: a wrong API key or a bad token is refused, never taken for the
anonymous caller. Only the absence of any credential, with authentication
off, gives the anonymous principal (the default tenant, every scope)."""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from auth_svc.dimse import DimseRules
from auth_svc.keystore import KeyInfo, KeyStore, check_key_id, check_scopes, check_subject
from auth_svc.settings import AuthSettings
from auth_svc.tokens import InvalidToken, TokenValidator
from common.gen.dicomserver.v1 import auth_service_pb2 as pb
from common.validation import InvalidValue, check_tenant

ALL_SCOPES = ["read", "write", "delete", "admin"]
SCOPE_FOR_ACTION = {
    pb.ACTION_READ: "read",
    pb.ACTION_WRITE: "write",
    pb.ACTION_DELETE: "delete",
    pb.ACTION_ADMIN: "admin",
}


class Refused(Exception):
    """A request the policy does not grant; the message is fit for the caller."""


class NotAuthenticated(Refused):
    """No credential where one is required, or a credential not accepted."""


class Forbidden(Refused):
    """The principal may not do this."""


class BadRequest(Refused):
    """The request itself is malformed or ambiguous."""


class NotFound(Refused):
    """No such thing, or none the principal may see."""


class NoKeyStore(Refused):
    """This policy was built without an API key store."""


def _timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def key_info(info: KeyInfo) -> pb.ApiKeyInfo:
    return pb.ApiKeyInfo(
        key_id=info.key_id,
        subject=info.subject,
        tenant=info.tenant,
        scopes=info.scopes,
        created=_timestamp(info.created),
        revoked=_timestamp(info.revoked),
    )


class Policy:
    def __init__(self, settings: AuthSettings, keys: KeyStore | None = None) -> None:
        self.settings = settings
        self.tokens = TokenValidator(settings)
        self.keys = keys
        self.dimse_rules = DimseRules(settings.dimse_rules)

    # -- who is calling -----------------------------------------------------

    def anonymous(self) -> pb.Principal:
        return pb.Principal(subject="anonymous", tenants=[self.settings.default_tenant], scopes=ALL_SCOPES)

    def identify(self, credential: pb.Credential | None) -> pb.Principal:
        """The principal behind a Credential; None or an empty one is the anonymous caller."""
        kind = credential.WhichOneof("kind") if credential is not None else None
        return self._principal(kind, getattr(credential, kind) if kind else None)

    def authenticate(self, request: pb.AuthenticateRequest) -> pb.Principal:
        kind = request.WhichOneof("credential")
        return self._principal(kind, getattr(request, kind) if kind else None)

    def _principal(self, kind: str | None, value: object) -> pb.Principal:
        if kind == "dimse_peer":
            assert isinstance(value, pb.DimsePeer)
            return self._dimse(value)
        if kind == "api_key":
            assert isinstance(value, str)
            return self._api_key(value)
        if kind == "bearer_token":
            assert isinstance(value, str)
            try:
                return self.tokens.principal(value)
            except InvalidToken as exc:
                raise NotAuthenticated(str(exc)) from None
        if self.settings.auth_enabled:
            raise NotAuthenticated("credentials are required")
        return self.anonymous()

    def _api_key(self, key: str) -> pb.Principal:
        """Keys in the settings first (no database needed), then the key store."""
        digest = hashlib.sha256(key.encode()).hexdigest()
        for entry in self.settings.api_keys:
            if hmac.compare_digest(digest, entry.sha256.lower()):
                return pb.Principal(subject=entry.subject, tenants=entry.tenants, scopes=entry.scopes)
        if self.keys is not None and (info := self.keys.find(key)) is not None:
            return pb.Principal(subject=info.subject, tenants=[info.tenant], scopes=info.scopes)
        raise NotAuthenticated("unknown or revoked API key")

    def _dimse(self, peer: pb.DimsePeer) -> pb.Principal:
        calling = peer.calling_ae_title
        subject = f"ae:{calling}"
        rule = self.dimse_rules.match(calling, peer.peer_address)
        if rule is not None:
            return pb.Principal(subject=subject, tenants=[rule.tenant], scopes=rule.scopes)
        s = self.settings
        if s.auth_enabled:
            # The older settings admit, with auth on, only the titles they name.
            named = calling in s.ae_tenants or calling in s.ae_allowlist
            if calling and named and (not s.ae_allowlist or calling in s.ae_allowlist):
                return pb.Principal(
                    subject=subject, tenants=[s.ae_tenants.get(calling, s.default_tenant)], scopes=["read", "write"]
                )
            raise NotAuthenticated("no DIMSE rule admits this calling AE title from this address")
        if s.ae_allowlist and calling not in s.ae_allowlist:
            raise NotAuthenticated("calling AE title is not allowed")
        return pb.Principal(subject=subject, tenants=[s.ae_tenants.get(calling, s.default_tenant)], scopes=ALL_SCOPES)

    # -- what it may do -----------------------------------------------------

    def tenant_for(self, principal: pb.Principal, requested: str) -> str:
        """The tenant an operation runs in: the requested one if the principal
        holds it, else the principal's only tenant (or the default tenant
        among several). The refusal never says whether a tenant exists."""
        if requested:
            return self._held(principal, requested)
        held = list(dict.fromkeys(principal.tenants))
        if not held:
            raise Forbidden("this principal holds no tenant")
        if len(held) == 1:
            chosen = held[0]
        elif self.settings.default_tenant in held:
            chosen = self.settings.default_tenant
        else:
            raise BadRequest("this principal holds several tenants: choose one with the X-Tenant header")
        try:
            return check_tenant(chosen)
        except InvalidValue:
            raise Forbidden("this principal's tenant is not a valid tenant id") from None

    @staticmethod
    def require_scope(principal: pb.Principal, action: pb.Action.ValueType) -> None:
        scope = SCOPE_FOR_ACTION.get(action)
        if scope is None:
            raise BadRequest("the action is not specified")
        if scope not in principal.scopes:
            raise Forbidden(f"the '{scope}' scope is required")

    def check(self, request: pb.CheckRequest) -> pb.CheckResponse:
        """Authenticate, then choose the tenant, then authorize the action."""
        principal = self.identify(request.credential if request.HasField("credential") else None)
        if request.action not in SCOPE_FOR_ACTION:
            raise BadRequest("the action is not specified")
        tenant = self.tenant_for(principal, request.tenant)
        self.require_scope(principal, request.action)
        return pb.CheckResponse(principal=principal, tenant=tenant)

    def describe(self) -> pb.DescribePolicyResponse:
        return pb.DescribePolicyResponse(
            auth_enabled=self.settings.auth_enabled, default_tenant=self.settings.default_tenant
        )

    @staticmethod
    def authorize(request: pb.AuthorizeRequest) -> pb.AuthorizeResponse:
        scope = SCOPE_FOR_ACTION.get(request.action)
        if scope is None:
            return pb.AuthorizeResponse(allowed=False, reason="unknown action")
        if request.tenant not in request.principal.tenants:
            return pb.AuthorizeResponse(allowed=False, reason="no access to this tenant")
        if scope not in request.principal.scopes:
            return pb.AuthorizeResponse(allowed=False, reason=f"the '{scope}' scope is required")
        return pb.AuthorizeResponse(allowed=True)

    # -- API key administration ----------------------------------------------

    def _admin(self, caller: pb.Credential | None) -> tuple[pb.Principal, KeyStore]:
        """The calling admin: authenticated, holding the 'admin' scope, and not
        a DIMSE peer (whose identity is only what the edge saw)."""
        principal = self.identify(caller)
        if caller is not None and caller.WhichOneof("kind") == "dimse_peer":
            raise Forbidden("a DIMSE peer cannot administer API keys")
        if "admin" not in principal.scopes:
            raise Forbidden("the 'admin' scope is required")
        if self.keys is None:
            raise NoKeyStore("this auth_svc has no API key store")
        return principal, self.keys

    @staticmethod
    def _held(principal: pb.Principal, tenant: str) -> str:
        try:
            check_tenant(tenant)
        except InvalidValue as exc:
            raise BadRequest(str(exc)) from None
        if tenant not in principal.tenants:
            raise Forbidden("no access to tenant")
        return tenant

    def create_api_key(self, request: pb.CreateApiKeyRequest) -> pb.CreateApiKeyResponse:
        """An admin makes keys only for its own tenants, with scopes it holds itself."""
        admin, keys = self._admin(request.caller if request.HasField("caller") else None)
        try:
            subject = check_subject(request.subject)
            scopes = check_scopes(list(request.scopes))
        except InvalidValue as exc:
            raise BadRequest(str(exc)) from None
        tenant = self._held(admin, request.tenant)
        beyond = [s for s in scopes if s not in admin.scopes]
        if beyond:
            raise Forbidden(f"cannot grant the '{beyond[0]}' scope, which the caller does not hold")
        info, key = keys.create(subject, tenant, scopes)
        return pb.CreateApiKeyResponse(info=key_info(info), api_key=key)

    def revoke_api_key(self, request: pb.RevokeApiKeyRequest) -> pb.RevokeApiKeyResponse:
        """A key of another tenant is as unknown to the caller as a key that does not exist."""
        admin, keys = self._admin(request.caller if request.HasField("caller") else None)
        try:
            check_key_id(request.key_id)
        except InvalidValue as exc:
            raise BadRequest(str(exc)) from None
        info = keys.revoke(request.key_id, list(admin.tenants))
        if info is None:
            raise NotFound("unknown API key id")
        return pb.RevokeApiKeyResponse(info=key_info(info))

    def list_api_keys(self, request: pb.ListApiKeysRequest) -> pb.ListApiKeysResponse:
        admin, keys = self._admin(request.caller if request.HasField("caller") else None)
        tenants = [self._held(admin, request.tenant)] if request.tenant else list(admin.tenants)
        return pb.ListApiKeysResponse(keys=[key_info(i) for i in keys.list_keys(tenants)])
