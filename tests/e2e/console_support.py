"""What the console tests share: the browser (Debian's Chromium, headless),
screenshots kept under the test's folder and /work/artifacts/console, a
storescp peer, the viewer's dist, and reading the image area of a page."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image

from testbed.processes import dcmtk_env, free_port
from tests.support import ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# A copy of every screenshot for people to look at; tmp_path keeps the test's own.
SHARED_ARTIFACTS = Path(os.environ.get("DICOMSERVER_CONSOLE_ARTIFACTS", "/work/artifacts/console"))


def fetch_viewer() -> Path:
    """The OHIF dist the gateway serves by default (scripts/fetch_viewer)."""
    subprocess.run([str(ROOT / "scripts" / "fetch_viewer")], check=True)
    return ROOT / "viewer" / "dist"


class Shots:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def take(self, page: Any, name: str, full_page: bool = True) -> Path:
        path = self.folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        try:
            SHARED_ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, SHARED_ARTIFACTS / path.name)
        except OSError:
            pass  # the shared copy is a convenience
        return path


@contextmanager
def browser_page(problems: list[str] | None = None) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "chromium is missing: scripts/setup --test installs it"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
            page = context.new_page()
            if problems is not None:
                page.on("pageerror", lambda e: problems.append(f"page error: {str(e)[:300]}"))
            yield page
        finally:
            browser.close()


@dataclass
class StoreScp:
    """dcmtk's storescp as a DIMSE peer, writing what it receives to `folder`."""

    folder: Path
    ae_title: str = "STORESCP"
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["storescp", "-aet", self.ae_title, "+xa", "-od", str(self.folder), str(self.port)],
            env=dcmtk_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)

    def received(self, uids: set[str], timeout: float = 30) -> dict[str, Path]:
        deadline = time.monotonic() + timeout
        while True:
            got = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in self.folder.iterdir()}
            if uids <= set(got) or time.monotonic() > deadline:
                return {u: p for u, p in got.items() if u in uids}
            time.sleep(0.2)


def image_area_stats(png: Path) -> tuple[float, float]:
    """(mean, standard deviation) of the grey values in the middle of the page,
    where the viewer's viewport shows the image."""
    img = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    h, w = img.shape
    centre = img[h // 4 : 3 * h // 4, w // 3 : 5 * w // 6]
    return float(centre.mean()), float(centre.std())


def wait_for_first_image(page: Any, url: str, timeout: float = 90) -> bool:
    """Opens the viewer at `url` and waits until OHIF reports its first image."""
    seen: list[str] = []
    page.on("console", lambda m: seen.append(m.text) if "studyToFirstImage" in m.text else None)
    page.goto(url)
    deadline = time.monotonic() + timeout
    while not seen and time.monotonic() < deadline:
        page.wait_for_timeout(250)
    if seen:
        skip = page.get_by_text("Skip all")
        if skip.count():
            skip.first.click()
        page.wait_for_timeout(1500)  # let the viewport paint after the tour closes
    return bool(seen)
