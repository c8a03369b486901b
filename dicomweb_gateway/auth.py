"""Who is calling and in which tenant, asked of auth_svc for every request.

Fails closed: a request reaches a handler only with a principal and a tenant
auth_svc granted for the request's action; when auth_svc cannot answer the
request gets 503. Credentials: `Authorization: Bearer <JWT>`, or an API key as
`Authorization: Bearer dsk_...` or `X-API-Key: dsk_...`. A tenant other than
the principal's own is chosen with the `X-Tenant` header or the path prefix
`{base}/tenants/{tenant}/...`; both may only select among the principal's
tenants."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common import errors
from common.clients import AuthClient
from common.gen.dicomserver.v1 import auth_service_pb2 as auth_pb
from dicomweb_gateway import audit_trail
from dicomweb_gateway.errors import error_response

API_KEY_PREFIX = "dsk_"
TENANT_HEADER = "x-tenant"
_ACTIONS = {
    "GET": auth_pb.ACTION_READ,
    "HEAD": auth_pb.ACTION_READ,
    "POST": auth_pb.ACTION_WRITE,
    "DELETE": auth_pb.ACTION_DELETE,
}
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="dicomweb"'}
# A tenant path segment as far as routing goes; auth_svc checks its grammar.
_TENANT_SEGMENT = re.compile(r"/tenants/([^/]*)(/.*)?$")


@dataclass(frozen=True)
class Access:
    """What auth_svc granted this request; handlers read it as scope["access"]."""

    principal: auth_pb.Principal
    tenant: str
    # "/tenants/<t>" when the path chose the tenant, so that URLs in answers keep it.
    path_prefix: str


class Refused(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def credential(headers: Headers) -> auth_pb.Credential | None:
    """The request's credential; None when it carries none."""
    authorization = headers.get("authorization")
    api_key = headers.get("x-api-key")
    if authorization is not None and api_key is not None:
        raise Refused(400, "send one credential: Authorization or X-API-Key, not both")
    if api_key is not None:
        if not api_key.strip():
            raise Refused(401, "the X-API-Key header is empty", _CHALLENGE)
        return auth_pb.Credential(api_key=api_key.strip())
    if authorization is None:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        raise Refused(401, "the Authorization header must be 'Bearer <token>'", _CHALLENGE)
    if value.startswith(API_KEY_PREFIX):
        return auth_pb.Credential(api_key=value)
    return auth_pb.Credential(bearer_token=value)


def split_tenant_path(path: str, base_path: str) -> tuple[str | None, str]:
    """(tenant from a `{base}/tenants/<t>/...` path or None, the path without it)."""
    rest = path[len(base_path) :] if path.startswith(base_path + "/") else None
    if rest is None:
        return None, path
    match = _TENANT_SEGMENT.match(rest)
    if match is None:
        return None, path
    return match.group(1), base_path + (match.group(2) or "")


class Grants:
    """auth_svc's recent grants, so that a burst of requests with one
    credential (a viewer loading a study) asks once: a round trip to
    auth_svc cost ~2.5 ms per request, measured. Only grants are kept, each
    for `ttl` seconds, keyed by a hash of the credential."""

    MAX_ENTRIES = 10000

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[tuple[bytes, int, str], tuple[float, auth_pb.CheckResponse]] = {}

    @staticmethod
    def key(cred: auth_pb.Credential | None, action: int, tenant: str) -> tuple[bytes, int, str]:
        raw = cred.SerializeToString() if cred is not None else b""
        return hashlib.sha256(raw).digest(), action, tenant

    def get(self, key: tuple[bytes, int, str]) -> auth_pb.CheckResponse | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, key: tuple[bytes, int, str], granted: auth_pb.CheckResponse) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= self.MAX_ENTRIES:
            self._entries.clear()
        self._entries[key] = (time.monotonic() + self.ttl, granted)


class Authentication:
    """ASGI middleware in front of the DICOMweb routes. Probes, the API
    description and CORS preflights pass without credentials."""

    def __init__(
        self,
        app: ASGIApp,
        auth: AuthClient,
        audit: audit_trail.AuditSink,
        base_path: str,
        open_paths: frozenset[str],
        cache_seconds: float = 0.0,
        is_open: Callable[[str], bool] | None = None,
    ) -> None:
        self.app = app
        self.auth = auth
        self.audit = audit
        self.base_path = base_path
        self.open_paths = open_paths
        # More paths that pass without credentials (the console's static files).
        self.is_open = is_open or (lambda _path: False)
        self.grants = Grants(cache_seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] == "OPTIONS"
            or scope["path"] in self.open_paths
            or self.is_open(scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        try:
            access = await self._grant(scope)
        except Refused as exc:
            audit_trail.refused(self.audit, scope, exc.status, exc.message)
            await self.refusal(scope, exc)(scope, receive, send)
            return
        scope["access"] = access
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            audit_trail.served(self.audit, scope, access.tenant, access.principal.subject, status)

    def refusal(self, scope: Scope, exc: Refused) -> Response:
        """The answer to a refused request (the console's pages redirect to sign in)."""
        return error_response(exc.status, exc.message, exc.headers)

    async def _grant(self, scope: Scope) -> Access:
        action = _ACTIONS.get(scope["method"])
        if action is None:
            raise Refused(405, f"method {scope['method']} is not allowed")
        headers = Headers(scope=scope)
        cred = credential(headers)
        path_tenant, path = split_tenant_path(scope["path"], self.base_path)
        header_tenant = headers.get(TENANT_HEADER)
        if path_tenant is not None and header_tenant is not None and path_tenant != header_tenant:
            raise Refused(400, "the X-Tenant header and the tenant in the path differ")
        asked = path_tenant if path_tenant is not None else (header_tenant or "")
        key = self.grants.key(cred, action, asked)
        granted = self.grants.get(key)
        try:
            if granted is None:
                granted = await run_in_threadpool(self.auth.check, cred, action, asked)
                self.grants.put(key, granted)
        except errors.Unauthenticated as exc:
            raise Refused(401, str(exc), _CHALLENGE) from None
        except errors.PermissionDenied as exc:
            raise Refused(403, str(exc)) from None
        except errors.InvalidArgument as exc:
            raise Refused(400, str(exc)) from None
        except errors.ServiceError:
            raise Refused(503, "the authorization service is unavailable; try again", {"Retry-After": "5"}) from None
        prefix = ""
        if path_tenant is not None:
            scope["path"] = path
            scope["raw_path"] = path.encode()
            prefix = f"/tenants/{granted.tenant}"
        return Access(granted.principal, granted.tenant, prefix)
