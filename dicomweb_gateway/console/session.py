"""Console sessions: an encrypted cookie (Fernet: AES-CBC + HMAC, with its
own timestamp) that holds the credential a person signed in with (an API
key or an OpenID Connect access token), the tenant they chose and a CSRF
token. Nothing is stored server-side, so any gateway replica with the same
secret reads it. The cookie is HttpOnly, SameSite=Lax, and Secure over HTTPS.

SessionMiddleware sits outside the authentication middleware: a request
that carries no credential of its own gets the session's, as the
`Authorization` header, so the console, the viewer and the DICOMweb API
share one sign-in and one authorization path. Requests that change state
get the session's credential only with the session's CSRF token: in the
`X-CSRF-Token` header (scripts), or, for the console's own forms, checked
by the form handler (`csrf_token` field) before it acts."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from http.cookies import SimpleCookie
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

COOKIE = "dicomserver_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass
class Session:
    # "api_key", "bearer" or "" (no credential: the anonymous caller when auth is off).
    kind: str = ""
    credential: str = ""
    subject: str = ""
    # The tenant chosen among the principal's (X-Tenant); "" lets auth_svc choose.
    tenant: str = ""
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    # Unix time after which the session is over (a token's exp, or the session length).
    expires: float = 0.0
    # Where sign-in came from: "api_key" or "oidc".
    method: str = ""

    @property
    def signed_in(self) -> bool:
        return bool(self.credential)

    def csrf_ok(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf.encode(), str(token).encode())


class SessionCodec:
    def __init__(self, secret: str | None, max_age: float) -> None:
        raw = secret.encode() if secret else os.urandom(32)
        self._fernet = Fernet(base64.urlsafe_b64encode(hashlib.sha256(b"dicomserver-console\0" + raw).digest()))
        self.max_age = max_age

    def dumps(self, session: Session) -> str:
        return self._fernet.encrypt(json.dumps(asdict(session), separators=(",", ":")).encode()).decode()

    def loads(self, value: str | None) -> Session | None:
        if not value:
            return None
        try:
            data = json.loads(self._fernet.decrypt(value.encode(), ttl=int(self.max_age)))
            session = Session(**{k: data[k] for k in Session.__dataclass_fields__ if k in data})
        except (InvalidToken, ValueError, TypeError):
            return None
        if session.expires and session.expires < time.time():
            return None
        return session

    # Small encrypted values other than the session (the OpenID Connect
    # flow's state), with their own lifetime.
    def seal(self, data: dict[str, Any]) -> str:
        return self._fernet.encrypt(json.dumps(data).encode()).decode()

    def unseal(self, value: str | None, ttl: int) -> dict[str, Any] | None:
        if not value:
            return None
        try:
            data = json.loads(self._fernet.decrypt(value.encode(), ttl=ttl))
        except (InvalidToken, ValueError):
            return None
        return data if isinstance(data, dict) else None


def secure(request: Request) -> bool:
    return request.url.scheme == "https"


def set_cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="lax", secure=secure(request))


def save(response: Response, request: Request, codec: SessionCodec, session: Session) -> None:
    max_age = int(codec.max_age)
    if session.expires:
        max_age = max(0, min(max_age, int(session.expires - time.time())))
    set_cookie(response, request, COOKIE, codec.dumps(session), max_age)


def clear(response: Response, request: Request) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="lax", secure=secure(request))


def current(request: Request) -> Session | None:
    """The request's session as SessionMiddleware read it."""
    session: Session | None = request.scope.get("console_session")
    return session


def _cookie(headers: Headers, name: str) -> str | None:
    jar: SimpleCookie = SimpleCookie()
    for raw in headers.getlist("cookie"):
        try:
            jar.load(raw)
        except Exception:  # a malformed cookie header is no session
            continue
    morsel = jar.get(name)
    return morsel.value if morsel is not None else None


class SessionMiddleware:
    """Reads the session cookie into scope["console_session"], lends its
    credential (and tenant) to requests that bring none, and hands out an
    anonymous session (a CSRF token) to console pages that have none."""

    def __init__(self, app: ASGIApp, codec: SessionCodec, is_page: Any, is_form_path: Any) -> None:
        self.app = app
        self.codec = codec
        # Console and viewer pages, which get an anonymous session (a CSRF token) when they have none.
        self.is_page = is_page
        # Console paths whose POST handlers check the form's CSRF token themselves.
        self.is_form_path = is_form_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        session = self.codec.loads(_cookie(headers, COOKIE))
        fresh = session is None
        if session is None:
            session = Session()
        scope["console_session"] = session
        own_credential = "authorization" in headers or "x-api-key" in headers
        if session.signed_in and not own_credential:
            method = scope["method"]
            allowed = (
                method in SAFE_METHODS or session.csrf_ok(headers.get(CSRF_HEADER)) or self.is_form_path(scope["path"])
            )
            if allowed:
                mutable = MutableHeaders(scope=scope)
                mutable["authorization"] = f"Bearer {session.credential}"
                if session.tenant and "x-tenant" not in headers and "/tenants/" not in scope["path"]:
                    mutable["x-tenant"] = session.tenant
        if not fresh or not self.is_page(scope["path"]):
            await self.app(scope, receive, send)
            return
        # A new anonymous session for the console, so its forms have a CSRF token.
        cookie = self._cookie_header(scope, session)

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                if not any(v.startswith(COOKIE + "=") for v in out.getlist("set-cookie")):
                    out.append("set-cookie", cookie)
            await send(message)

        await self.app(scope, receive, send_with_cookie)

    def _cookie_header(self, scope: Scope, session: Session) -> str:
        probe = Response()
        save(probe, Request(scope), self.codec, session)
        return probe.headers["set-cookie"]
