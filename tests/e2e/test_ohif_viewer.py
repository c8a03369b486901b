"""The OHIF viewer (npm @ohif/app's built dist/) against the running server, in
headless Debian Chromium: the study list shows the stored studies, a study
opens, its image renders, and the console stays free of errors.

The viewer is served from its own origin, so every DICOMweb call is a CORS
request: the server runs with that origin in DICOMSERVER_CORS_ORIGINS.
Screenshots go to test-artifacts/."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from testbed.processes import free_port
from tests.support import ROOT, Archive

OHIF = ROOT / "tests" / "ohif"
DIST = OHIF / "node_modules" / "@ohif" / "app" / "dist"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# file: its patient name as the study list shows it
STUDIES = {
    "CT_small.dcm": "CompressedSamples, CT1",  # native
    "MR_small_jpeg_ls_lossless.dcm": "CompressedSamples, MR1",  # JPEG-LS frames, decoded in the browser
    "SC_rgb_jpeg_dcmtk.dcm": "Lestrade, G",  # JPEG baseline colour
}


def app_config(dicomweb: str) -> str:
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "dicomserver",
        "configuration": {
            "friendlyName": "dicomserver",
            "name": "dicomserver",
            "wadoUriRoot": f"{dicomweb}/wado",
            "qidoRoot": dicomweb,
            "wadoRoot": dicomweb,
            "qidoSupportsIncludeField": True,
            "imageRendering": "wadors",
            "thumbnailRendering": "thumbnail",
            "thumbnailRequestStrategy": "fetch",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": True,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": "bulkdata,video",
            "bulkDataURI": {"enabled": True},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {
        "routerBasename": None,
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
    return f"window.config = {json.dumps(config)};\n"


def serve_viewer(port: int, config: str) -> ThreadingHTTPServer:
    """dist/ as static files; /app-config.js generated; other paths are the
    single-page app's routes (index.html)."""

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(DIST), **kwargs)

        def log_message(self, *_args: Any) -> None:
            pass

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/app-config.js":
                body = config.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/javascript")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            if not (DIST / path.lstrip("/")).is_file():
                self.path = "/index.html"
            super().do_GET()

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def viewer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Archive, dict[str, str]]]:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: scripts/setup installs it")
    subprocess.run([str(OHIF / "install.sh")], check=True)
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DICOMSERVER_CORS_ORIGINS", json.dumps([origin]))
        archive = Archive(tmp_path_factory.mktemp("ohif-archive"))
        archive.start()
    server = serve_viewer(port, app_config(archive.dicomweb))
    studies: dict[str, str] = {}
    try:
        for name in STUDIES:
            data = Path(str(get_testdata_file(name, download=False))).read_bytes()
            r = httpx.post(f"{archive.dicomweb}/studies", content=data, headers={"Content-Type": "application/dicom"})
            assert r.status_code in (200, 202), r.text
            url = r.json()["00081199"]["Value"][0]["00081190"]["Value"][0]
            studies[name] = url.split("/studies/")[1].split("/")[0]
        yield origin, archive, studies
    finally:
        server.shutdown()
        assert archive.stop() == 0


def image_area_stats(png: Path) -> tuple[float, float]:
    """(mean, standard deviation) of the grey values in the middle of the page,
    where the viewport shows the image."""
    img = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    h, w = img.shape
    centre = img[h // 4 : 3 * h // 4, w // 3 : 5 * w // 6]
    return float(centre.mean()), float(centre.std())


def test_ohif_lists_opens_and_renders(viewer: tuple[str, Archive, dict[str, str]]) -> None:
    from playwright.sync_api import sync_playwright

    origin, archive, studies = viewer
    ARTIFACTS.mkdir(exist_ok=True)
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on(
                "console", lambda m: problems.append(f"console {m.type}: {m.text[:300]}") if m.type == "error" else None
            )
            page.on("pageerror", lambda e: problems.append(f"page error: {str(e)[:300]}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url[:200]} {r.failure}"))
            page.on(
                "response", lambda r: problems.append(f"HTTP {r.status}: {r.url[:200]}") if r.status >= 400 else None
            )

            page.goto(origin + "/")
            for patient in STUDIES.values():
                page.get_by_text(patient).first.wait_for(timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "ohif-study-list.png"))

            for name in ["CT_small.dcm", "SC_rgb_jpeg_dcmtk.dcm"]:
                # Each study its own list and listener: a listener left from the
                # study before would count that study's late message as this one's.
                first_image: list[str] = []

                def on_console(m: Any, seen: list[str] = first_image) -> None:
                    if "studyToFirstImage" in m.text:
                        seen.append(m.text)

                page.on("console", on_console)
                page.goto(f"{origin}/viewer?StudyInstanceUIDs={studies[name]}")
                deadline = time.monotonic() + 90
                while not first_image and time.monotonic() < deadline:
                    page.wait_for_timeout(250)
                page.remove_listener("console", on_console)
                assert first_image, f"{name}: the viewer never reported its first image\n" + "\n".join(problems)
                skip = page.get_by_text("Skip all")
                if skip.count():
                    skip.first.click()
                page.wait_for_timeout(1500)  # let the viewport paint after the tour closes
                shot = ARTIFACTS / f"ohif-viewer-{name.removesuffix('.dcm')}.png"
                page.screenshot(path=str(shot))
                mean, std = image_area_stats(shot)
                # An empty viewport is flat black; a rendered image has structure.
                assert std > 15 and mean > 10, f"{name}: the viewport looks empty (mean {mean:.1f}, std {std:.1f})"
        finally:
            browser.close()
    assert not problems, "\n".join(problems)
    assert os.path.getsize(ARTIFACTS / "ohif-study-list.png") > 0
