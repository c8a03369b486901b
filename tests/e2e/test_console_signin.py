"""Signing in to the console with authentication on: with an API key, and
with a real OpenID Connect provider (npm oidc-provider on loopback:
authorization code with PKCE, a JWT access token checked by auth_svc). The
session cookie is HttpOnly and SameSite; the viewer works with the same
credential; state changes without the CSRF token get no credential."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testbed.processes import free_port, stop_process
from tests.e2e.console_support import (
    Shots,
    browser_page,
    fetch_viewer,
    image_area_stats,
    wait_for_first_image,
)
from tests.support import ROOT, Archive, corpus_paths

OIDC = ROOT / "tests" / "oidc"
CT = corpus_paths()[0]
CT_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"


def _make_key(data_dir: Path, *scopes: str) -> str:
    args = [sys.executable, "-m", "auth_svc.keys", "create", "--tenant", "default", "--subject", "console-admin"]
    for scope in scopes:
        args += ["--scope", scope]
    out = subprocess.run(
        args,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "DICOMSERVER_DATA_DIR": str(data_dir)},
    ).stdout
    match = re.search(r"dsk_\S+", out)
    assert match, out
    return match.group(0)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Archive, str]]:
    fetch_viewer()
    root = tmp_path_factory.mktemp("console-auth")
    data = root / "archive"
    data.mkdir()
    key = _make_key(data, "read", "write", "delete", "admin")
    archive = Archive(data, extra_env={"DICOMSERVER_AUTH_ENABLED": "true"})
    archive.start()
    try:
        r = httpx.post(
            f"{archive.dicomweb}/studies",
            content=CT.read_bytes(),
            headers={"Content-Type": "application/dicom", "X-API-Key": key},
        )
        assert r.status_code == 200, r.text
        yield archive, key
    finally:
        assert archive.stop() == 0, "".join(archive.output)


def test_sign_in_with_an_api_key(secured: tuple[Archive, str], tmp_path: Path) -> None:
    archive, key = secured
    base = f"http://127.0.0.1:{archive.http_port}"
    shots = Shots(tmp_path / "screenshots")
    assert httpx.get(base + "/").status_code == 303  # a page without a session goes to sign in
    assert httpx.get(archive.dicomweb + "/studies").status_code == 401  # the API still answers 401
    with browser_page() as page:
        page.goto(base + f"/study/{CT_STUDY}")
        assert page.url.startswith(base + "/signin?next=")
        page.locator("input[name=api_key]").fill("dsk_wrong")
        page.locator('form[action="/signin"] button').click()
        assert page.get_by_text("unknown or revoked API key").is_visible()
        shots.take(page, "20-signin-refused")
        page.locator("input[name=api_key]").fill(key)
        page.locator('form[action="/signin"] button').click()
        assert page.url == f"{base}/study/{CT_STUDY}"  # back where the person wanted to go
        assert "console-admin · default" in page.locator("header .who").inner_text()
        shots.take(page, "21-signed-in-study")

        (cookie,) = [c for c in page.context.cookies() if c["name"] == "dicomserver_session"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and key not in cookie["value"]

        # A script on the page: reads get the session's credential, a
        # change without the CSRF token does not; with it, it does.
        status = page.evaluate(
            """async () => {
            const qido = await fetch('/dicomweb/studies');
            const bare = await fetch('/dicomweb/studies/"""
            + CT_STUDY
            + """', {method: 'DELETE'});
            return [qido.status, bare.status];
        }"""
        )
        assert status == [200, 401], status
        body = list(CT.read_bytes())
        status = page.evaluate(
            """async (body) => {
            const token = document.querySelector('meta[name="csrf-token"]').content;
            const r = await fetch('/dicomweb/studies', {method: 'POST', body: new Uint8Array(body),
                headers: {'Content-Type': 'application/dicom', 'X-CSRF-Token': token}});
            return r.status;
        }""",
            body,
        )
        assert status == 200

        # The viewer works with the same session.
        assert wait_for_first_image(page, f"{base}/viewer/viewer?StudyInstanceUIDs={CT_STUDY}")
        shot = shots.take(page, "22-viewer-signed-in", full_page=False)
        mean, std = image_area_stats(shot)
        assert std > 15 and mean > 10, f"the viewport looks empty (mean {mean:.1f}, std {std:.1f})"

        page.goto(base + "/system")
        shots.take(page, "23-system-signed-in")
        page.get_by_role("button", name="Sign out").click()
        assert page.url.startswith(base + "/signin")
        page.goto(base + "/")
        assert page.url.startswith(base + "/signin?next=")


@pytest.fixture(scope="module")
def provider(secured: tuple[Archive, str]) -> Iterator[str]:
    subprocess.run([str(OIDC / "install.sh")], check=True)
    port = free_port()
    archive, _ = secured
    proc = subprocess.Popen(
        [
            "node",
            "provider.mjs",
            str(port),
            f"http://127.0.0.1:{archive.http_port}/signin/oidc/callback",
            "http://127.0.0.1/dicomweb",
        ],
        cwd=OIDC,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("ready "), line
    try:
        yield line.split()[1]
    finally:
        stop_process(proc, 10)


@pytest.fixture(scope="module")
def oidc_archive(secured: tuple[Archive, str], provider: str) -> Iterator[tuple[Archive, str]]:
    """The secured archive restarted with the provider configured (its port stays)."""
    archive, key = secured
    assert archive.stop() == 0
    archive.extra_env.update(
        {
            "DICOMSERVER_JWKS_URL": provider + "/jwks",
            "DICOMSERVER_JWT_ISSUER": provider,
            "DICOMSERVER_JWT_AUDIENCE": "http://127.0.0.1/dicomweb",
            "DICOMSERVER_OIDC_RESOURCE": "http://127.0.0.1/dicomweb",
            "DICOMSERVER_OIDC_SCOPES": "openid dicom.read dicom.write dicom.delete admin",
        }
    )
    archive.output.clear()
    archive.start()
    yield archive, key


def test_sign_in_with_openid_connect(oidc_archive: tuple[Archive, str], provider: str, tmp_path: Path) -> None:
    archive, _ = oidc_archive
    base = f"http://127.0.0.1:{archive.http_port}"
    shots = Shots(tmp_path / "screenshots")
    with browser_page() as page:
        page.goto(base + "/system")
        assert page.url.startswith(base + "/signin?next=")
        shots.take(page, "30-signin-choices")
        page.locator("#oidc-signin").click()
        assert page.url.startswith(provider)
        assert "code_challenge_method=S256" in page.url or page.locator("input[name=login]").count()
        page.locator("input[name=login]").fill("alice")
        page.locator("input[name=password]").fill("anything")
        shots.take(page, "31-provider-login")
        page.locator("button[type=submit]").click()
        consent = page.locator("button[type=submit]")
        if page.url.startswith(provider) and consent.count():
            shots.take(page, "32-provider-consent")
            consent.click()
        page.wait_for_url(base + "/system", timeout=30_000)
        assert "alice · default" in page.locator("header .who").inner_text()
        assert page.locator("#count-studies").inner_text() == "1"
        shots.take(page, "33-signed-in-with-oidc")

        # The session holds the provider's access token: a JWT auth_svc accepts.
        assert wait_for_first_image(page, f"{base}/viewer/viewer?StudyInstanceUIDs={CT_STUDY}")
        shot = shots.take(page, "34-viewer-oidc", full_page=False)
        mean, std = image_area_stats(shot)
        assert std > 15 and mean > 10, f"the viewport looks empty (mean {mean:.1f}, std {std:.1f})"

        # A forged state is refused and signs nobody in.
        page.context.clear_cookies()
        page.goto(base + "/signin/oidc/callback?code=x&state=forged")
        assert page.get_by_text("start again").first.is_visible()
        page.goto(base + "/")
        assert page.url.startswith(base + "/signin")
