"""What the console's handlers share: its clients and settings, templates,
and helpers to read DICOM JSON and render pages and errors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from common.clients import AuthClient, EventBusClient, IngestClient, MetadataClient, StorageClient
from common.gen.dicomserver.v1 import auth_service_pb2 as auth_pb
from common.version import VERSION
from dicomweb_gateway.auth import Access, credential
from dicomweb_gateway.console.oidc import OpenIdClient
from dicomweb_gateway.console.session import CSRF_FIELD, Session, SessionCodec, current
from dicomweb_gateway.console.viewer import Viewer
from dicomweb_gateway.settings import GatewaySettings

HERE = Path(__file__).resolve().parent
TEMPLATES = Jinja2Templates(directory=str(HERE / "templates"))


@dataclass
class Console:
    settings: GatewaySettings
    storage: StorageClient
    metadata: MetadataClient
    auth: AuthClient
    ingest: IngestClient
    eventbus: EventBusClient
    codec: SessionCodec
    viewer: Viewer
    oidc: OpenIdClient | None
    viewer_app: Any = None


def console(request: Request) -> Console:
    c: Console = request.app.state.console
    return c


def session_of(request: Request) -> Session:
    return current(request) or Session()


def access_of(request: Request) -> Access:
    granted: Access | None = request.scope.get("access")
    if granted is None:
        raise RuntimeError("a console page was reached without authentication")
    return granted


def caller(request: Request) -> auth_pb.Credential | None:
    """The credential the request carries (the session's, lent by SessionMiddleware)."""
    return credential(request.headers)


def has_scope(request: Request, scope: str) -> bool:
    return scope in access_of(request).principal.scopes


def render(request: Request, template: str, status_code: int = 200, **values: Any) -> Response:
    c = console(request)
    session = session_of(request)
    granted: Access | None = request.scope.get("access")
    values.update(
        request=request,
        session=session,
        csrf_field=CSRF_FIELD,
        principal=granted.principal if granted else None,
        tenant=granted.tenant if granted else "",
        is_admin=bool(granted and "admin" in granted.principal.scopes),
        version=VERSION,
        dicomweb=c.settings.base_path,
        oidc_enabled=c.oidc is not None,
        viewer_ready=c.viewer.ready,
    )
    return TEMPLATES.TemplateResponse(request, template, values, status_code=status_code)


def error_page(request: Request, status_code: int, title: str, message: str) -> Response:
    return render(request, "error.html", status_code=status_code, title=title, message=message)


def redirect(url: str) -> Response:
    return RedirectResponse(url, status_code=303)


def signin_url(next_path: str) -> str:
    return "/signin?next=" + quote(next_path, safe="/?=&")


def safe_next(value: str | None) -> str:
    """A local path to go back to after sign-in; anything else is /."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


# -- DICOM JSON -----------------------------------------------------------------


def first(obj: dict[str, Any], tag: str) -> Any:
    values = obj.get(tag, {}).get("Value") or []
    if not values:
        return ""
    value = values[0]
    if isinstance(value, dict):  # a person name
        return value.get("Alphabetic") or value.get("Ideographic") or value.get("Phonetic") or ""
    return value


def all_values(obj: dict[str, Any], tag: str) -> list[Any]:
    return list(obj.get(tag, {}).get("Value") or [])


def loads(match: bytes) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(match)
    return parsed


def dicom_date(value: str) -> str:
    """20240131 -> 2024-01-31; anything else as it is."""
    if len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value
