"""The console inside the gateway app (in-process services, auth off): the
viewer says how to fetch itself when its dist is missing, the console can be
switched off, sessions and CSRF tokens, and the root DICOMweb layout
(base path "") leaves the console's routes alone."""

from __future__ import annotations

import re
from pathlib import Path

from starlette.testclient import TestClient

from dicomweb_gateway.app import create_app
from tests.dicomweb_gateway.gateway_support import Backend, make_instance, make_settings


def test_missing_viewer_says_how_to_fetch_it(backend: Backend, tmp_path: Path) -> None:
    app = create_app(make_settings(backend, viewer_dir=tmp_path / "nothing"))
    with TestClient(app) as client:
        r = client.get("/viewer/viewer?StudyInstanceUIDs=1.2.3")
        assert r.status_code == 503 and "scripts/fetch_viewer" in r.text
        _, data = make_instance()
        stored = client.post("/dicomweb/studies", content=data, headers={"Content-Type": "application/dicom"})
        study = stored.json()["00081199"]["Value"][0]["00081190"]["Value"][0].split("/studies/")[1].split("/")[0]
        page = client.get(f"/study/{study}").text
        assert "Viewer not installed" in page and "/viewer/viewer?StudyInstanceUIDs" not in page


def test_console_can_be_switched_off(backend: Backend) -> None:
    app = create_app(make_settings(backend, console_enabled=False))
    with TestClient(app) as client:
        assert client.get("/").status_code == 404
        assert client.get("/viewer/").status_code == 404
        assert client.get("/dicomweb/studies").status_code == 200


def test_session_cookie_and_csrf(backend: Backend) -> None:
    app = create_app(make_settings(backend, console_session_secret="s3cret"))
    with TestClient(app) as client:
        r = client.get("/")
        cookie = r.headers["set-cookie"]
        assert cookie.startswith("dicomserver_session=") and "httponly" in cookie.lower()
        assert "samesite=lax" in cookie.lower() and "secure" not in cookie.lower()  # plain HTTP here
        token = re.search(r'name="csrf-token" content="([^"]+)"', r.text).group(1)  # type: ignore[union-attr]
        # The same session on the next page: one token, no new cookie.
        again = client.get("/upload")
        assert "set-cookie" not in again.headers and token in again.text
        # API answers set no cookie.
        assert "set-cookie" not in client.get("/dicomweb/studies").headers
        # A form without the token changes nothing.
        r = client.post("/keys", data={"subject": "x", "scope": "read"})
        assert r.status_code == 403
        r = client.post("/keys", data={"subject": "x", "scope": "read", "csrf_token": token})
        assert r.status_code in (201, 400, 503)  # the in-process auth may have no key store
        # A tampered cookie is no session (a new anonymous one is given).
        client.cookies.set("dicomserver_session", "garbage")
        assert client.get("/").headers["set-cookie"].startswith("dicomserver_session=")


def test_console_beside_dicomweb_at_the_root(backend: Backend) -> None:
    app = create_app(make_settings(backend, base_path="/"))
    with TestClient(app) as client:
        page = client.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert page.headers["set-cookie"].startswith("dicomserver_session=")
        assert client.get("/studies").status_code == 200
        assert client.get("/studies").headers["content-type"].startswith("application/dicom+json")
