"""Credentials to principals, and principals to decisions. Fails closed."""

from __future__ import annotations

import hashlib
import hmac

from auth_svc.settings import AuthSettings
from auth_svc.tokens import InvalidToken, TokenValidator
from common.gen.dicomserver.v1 import auth_service_pb2 as pb

ALL_SCOPES = ["read", "write", "delete", "admin"]
SCOPE_FOR_ACTION = {
    pb.ACTION_READ: "read",
    pb.ACTION_WRITE: "write",
    pb.ACTION_DELETE: "delete",
    pb.ACTION_ADMIN: "admin",
}


class NotAuthenticated(Exception):
    pass


class Policy:
    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self.tokens = TokenValidator(settings)

    def authenticate(self, request: pb.AuthenticateRequest) -> pb.Principal:
        kind = request.WhichOneof("credential")
        if kind == "dimse_peer":
            return self._dimse(request.dimse_peer)
        if not self.settings.auth_enabled:
            return pb.Principal(subject="anonymous", tenants=[self.settings.default_tenant], scopes=ALL_SCOPES)
        if kind == "api_key":
            return self._api_key(request.api_key)
        if kind == "bearer_token":
            try:
                return self.tokens.principal(request.bearer_token)
            except InvalidToken as exc:
                raise NotAuthenticated(str(exc)) from None
        raise NotAuthenticated("credentials are required")

    def _api_key(self, key: str) -> pb.Principal:
        digest = hashlib.sha256(key.encode()).hexdigest()
        for entry in self.settings.api_keys:
            if hmac.compare_digest(digest, entry.sha256.lower()):
                return pb.Principal(subject=entry.subject, tenants=entry.tenants, scopes=entry.scopes)
        raise NotAuthenticated("unknown API key")

    def _dimse(self, peer: pb.DimsePeer) -> pb.Principal:
        allow = self.settings.ae_allowlist
        if allow and peer.calling_ae_title not in allow:
            raise NotAuthenticated("calling AE title is not allowed")
        tenant = self.settings.ae_tenants.get(peer.calling_ae_title, self.settings.default_tenant)
        scopes = ALL_SCOPES if not self.settings.auth_enabled else ["read", "write"]
        return pb.Principal(subject=f"ae:{peer.calling_ae_title}", tenants=[tenant], scopes=scopes)

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
