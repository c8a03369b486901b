"""The web console at / and the OHIF viewer at /viewer, served by the
gateway beside the DICOMweb API: server-rendered pages (Jinja2), a little
JavaScript for upload, send progress and small comforts, no build chain.

`install(...)` gives the app its routes and middleware: the session
middleware (outside authentication) and the authentication middleware's
console form (pages that are refused redirect to sign in)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from dicomweb_gateway.auth import Authentication, Refused
from dicomweb_gateway.console import pages, signin
from dicomweb_gateway.console.context import error_page, render, signin_url
from dicomweb_gateway.console.viewer import FETCH_COMMAND, OHIF_VERSION, PREFIX, ViewerApp, is_asset

HERE = Path(__file__).resolve().parent
STATIC = "/console-static"
OPEN_PATHS = ("/signin", "/signin/oidc", "/signin/oidc/callback", "/signout")
# Console routes whose POST handlers check their form's CSRF token themselves.
FORM_POSTS = ("/signin", "/signout", "/keys")


def is_open(path: str) -> bool:
    """Paths that need no credentials: sign-in, static files, viewer assets."""
    return path in OPEN_PATHS or path.startswith(STATIC + "/") or is_asset(path)


def is_form_path(path: str) -> bool:
    return (
        path in FORM_POSTS
        or path.startswith("/keys/")
        or (path.startswith("/study/") and (path.endswith("/delete") or path.endswith("/send")))
    )


PAGES = ("/study/", "/upload", "/system", "/keys", "/signin", "/signout", PREFIX)


def is_page(path: str) -> bool:
    """A console or viewer page (HTML), as opposed to the APIs (DICOMweb may
    be served at the root too)."""
    return path == "/" or path.startswith(PAGES)


async def viewer_missing(request: Request) -> Response:
    return render(request, "viewer_missing.html", status_code=503, command=FETCH_COMMAND, version=OHIF_VERSION)


def routes(viewer_app: ViewerApp) -> list[BaseRoute]:
    return [
        Route("/", pages.studies, methods=["GET"]),
        Route("/study/{study}", pages.study, methods=["GET"]),
        Route("/study/{study}/delete", pages.delete_confirm, methods=["GET"]),
        Route("/study/{study}/delete", pages.delete_study, methods=["POST"]),
        Route("/study/{study}/send", pages.send_study, methods=["POST"]),
        Route("/upload", pages.upload, methods=["GET"]),
        Route("/system", pages.system, methods=["GET"]),
        Route("/keys", pages.keys, methods=["GET"]),
        Route("/keys", pages.create_key, methods=["POST"]),
        Route("/keys/{key_id}/revoke", pages.revoke_key, methods=["POST"]),
        Route("/signin", signin.signin_page, methods=["GET"]),
        Route("/signin", signin.signin_api_key, methods=["POST"]),
        Route("/signin/oidc", signin.signin_oidc, methods=["GET"]),
        Route("/signin/oidc/callback", signin.oidc_callback, methods=["GET"], name="oidc_callback"),
        Route("/signout", signin.signout, methods=["POST"]),
        Route("/api/statistics", pages.statistics_api, methods=["GET"]),
        Route(PREFIX, lambda _r: RedirectResponse(PREFIX + "/", status_code=307), methods=["GET"]),
        Mount(PREFIX, app=viewer_app),
        Mount(STATIC, app=StaticFiles(directory=str(HERE / "static")), name="console-static"),
    ]


class ConsoleAuthentication(Authentication):
    """The API's authentication, whose refusals of console pages are pages:
    a browser without a session is sent to sign in."""

    def __init__(self, *args: object, page: Callable[[str], bool], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.page = page

    def refusal(self, scope: Scope, exc: Refused) -> Response:
        path = scope["path"]
        if not self.page(path) or scope["method"] not in ("GET", "HEAD"):
            return super().refusal(scope, exc)
        if exc.status == 401:
            query = scope.get("query_string", b"").decode("latin-1")
            return RedirectResponse(signin_url(path + ("?" + query if query else "")), status_code=303)
        return error_page(Request(scope), exc.status, "Not allowed" if exc.status == 403 else "Refused", exc.message)
