"""The OHIF viewer (npm @ohif/app's built dist/) at /viewer, on the same
origin as the DICOMweb API: no CORS, the console's session cookie reaches
the API from the viewer, and deep links (/viewer/viewer?StudyInstanceUIDs=)
work.

The dist is built for the site root. Its index.html names every asset as
"/…" and the webpack runtimes of the app and its web workers load chunks
from "/": both are rewritten to /viewer/ when served (kept in memory). app-config.js is generated: one
DICOMweb data source on this server, configured for what it supports."""

from __future__ import annotations

import json
import mimetypes
import re
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.types import Receive, Scope, Send

PREFIX = "/viewer"
OHIF_VERSION = "3.13.2"
FETCH_COMMAND = "scripts/fetch_viewer"
_PUBLIC_PATH = re.compile(rb'__webpack_require__\.p = "/";')
_ASSET_REF = re.compile(rb'(href|src)="/(?!/)')
mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("application/javascript", ".mjs")


def app_config(dicomweb_root: str) -> str:
    """window.config for OHIF: `dicomweb_root` is a path on this origin
    (e.g. /dicomweb) or an absolute URL (DICOMSERVER_PUBLIC_URL)."""
    root = json.dumps(dicomweb_root)
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "dicomserver",
        "configuration": {
            "friendlyName": "dicomserver",
            "name": "dicomserver",
            "qidoSupportsIncludeField": True,  # includefield=… and =all
            "supportsWildcard": True,  # PatientName=Mül*
            "supportsFuzzyMatching": True,  # fuzzymatching=true
            "imageRendering": "wadors",
            "thumbnailRendering": "thumbnail",  # …/series/{uid}/thumbnail
            "thumbnailRequestStrategy": "fetch",
            "enableStudyLazyLoad": True,
            "staticWado": False,
            # Frames as stored (OHIF's default Accept asks transfer-syntax=*):
            # the server serves any stored syntax that way, and the viewer
            # decodes JPEG, JPEG-LS, JPEG 2000 and RLE itself. Bulk data and
            # video single part.
            "requestTransferSyntaxUID": "*",
            "singlepart": "bulkdata,video",
            "bulkDataURI": {"enabled": True},
            "omitQuotationForMultipartRequest": True,
            "dicomUploadEnabled": False,
        },
    }
    config = {
        "routerBasename": PREFIX,
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": "dicomserver",
        "dataSources": [source],
    }
    body = json.dumps(config, indent=1)
    # The roots are absolute URLs on the page's own origin.
    return (
        f"(function () {{\n  var root = {root};\n"
        "  if (root.charAt(0) === '/') { root = window.location.origin + root; }\n"
        f"  var config = {body};\n"
        "  var c = config.dataSources[0].configuration;\n"
        "  c.qidoRoot = root; c.wadoRoot = root; c.wadoUriRoot = root + '/wado';\n"
        "  window.config = config;\n})();\n"
    )


class Viewer:
    """Serves the dist under PREFIX; `ready` says whether it is there."""

    def __init__(self, dist: Path, dicomweb_root: str) -> None:
        self.dist = dist.resolve()
        self.config = app_config(dicomweb_root).encode()
        self._patched: dict[str, bytes] = {}

    @property
    def ready(self) -> bool:
        return (self.dist / "index.html").is_file()

    def _index(self) -> bytes:
        if "index.html" not in self._patched:
            html = (self.dist / "index.html").read_bytes()
            html = _ASSET_REF.sub(rb'\1="' + PREFIX.encode() + b"/", html)
            html = html.replace(b'window.PUBLIC_URL="/"', b'window.PUBLIC_URL="' + PREFIX.encode() + b'/"')
            self._patched["index.html"] = html
        return self._patched["index.html"]

    def _file(self, relative: str) -> Path | None:
        if not relative or "\x00" in relative:
            return None
        path = (self.dist / relative).resolve()
        if not path.is_relative_to(self.dist) or not path.is_file():
            return None
        return path

    def response(self, request: Request) -> Response:
        relative = request.url.path[len(PREFIX) :].lstrip("/")
        if relative == "app-config.js":
            return Response(self.config, media_type="application/javascript", headers={"Cache-Control": "no-cache"})
        path = self._file(relative)
        if path is None or relative == "index.html":
            # The single-page app's own routes: /viewer, /viewer/viewer?StudyInstanceUIDs=…
            return Response(self._index(), media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"})
        if relative in ("sw.js", "init-service-worker.js"):
            # No service worker: it would cache the API's answers.
            return Response(b"", media_type="application/javascript")
        if path.suffix == ".js":
            # The app's and its web workers' webpack runtimes load chunks from "/".
            if relative not in self._patched:
                data = path.read_bytes()
                self._patched[relative] = (
                    _PUBLIC_PATH.sub(b'__webpack_require__.p = "' + PREFIX.encode() + b'/";', data)
                    if _PUBLIC_PATH.search(data)
                    else b""
                )
            if self._patched[relative]:
                return Response(
                    self._patched[relative],
                    media_type="application/javascript",
                    headers={"Cache-Control": "public, max-age=3600"},
                )
        return FileResponse(path, headers={"Cache-Control": "public, max-age=3600"})


def is_asset(path: str) -> bool:
    """A viewer file (a name with a dot: bundles, styles, wasm, app-config.js)
    rather than one of the app's pages; assets carry no data and need no
    credentials."""
    if not path.startswith(PREFIX + "/"):
        return False
    last = path.rsplit("/", 1)[-1]
    return "." in last and last != "index.html"


class ViewerApp:
    """ASGI app for the PREFIX mount."""

    def __init__(self, viewer: Viewer, missing: object) -> None:
        self.viewer = viewer
        self.missing = missing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        if not self.viewer.ready:
            response = await self.missing(request)  # type: ignore[operator]
        else:
            response = self.viewer.response(request)
        await response(scope, receive, send)
