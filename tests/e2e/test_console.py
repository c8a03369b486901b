"""The web console in headless Chromium against the launched archive: every
page, an upload of the acceptance corpus (plus a non-ASCII name and a file
that is not DICOM), search by a non-ASCII name, sorting, a study page with
thumbnails, the viewer rendering pixels, a send to dcmtk's storescp, a
delete after its confirmation, the System page's numbers and charts, API
keys made and revoked, error states and CSRF refusals. Screenshots go to the
test's folder and to /work/artifacts/console."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest

from testbed.processes import dcmtk_env
from tests.e2e.console_support import (
    Shots,
    StoreScp,
    browser_page,
    fetch_viewer,
    image_area_stats,
    wait_for_first_image,
)
from tests.support import Archive, corpus_paths, small_ct

CT_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"  # CT_small.dcm
RGB_STUDY = "1.2.826.0.1.3680043.8.498.12406831542731051035295345080039845114"  # Lestrade^G, two files


@dataclass
class Served:
    archive: Archive
    peer: StoreScp
    url: str
    files: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    fetch_viewer()
    root = tmp_path_factory.mktemp("console")
    peer = StoreScp(root / "storescp")
    peer.start()
    archive = Archive(
        root / "archive",
        extra_env={
            "DICOMSERVER_DIMSE_PEERS": json.dumps({peer.ae_title: {"host": "127.0.0.1", "port": peer.port}}),
            "DICOMSERVER_LAG_INTERVAL": "1",
            "DICOMSERVER_CONSUMER_LINGER": "0.2",
        },
    )
    archive.start()
    files = root / "files"
    files.mkdir()
    try:
        yield Served(archive, peer, f"http://127.0.0.1:{archive.http_port}", files)
    finally:
        peer.stop()
        assert archive.stop() == 0, "".join(archive.output)


def _stored_sops(served: Served) -> set[str]:
    r = httpx.get(f"{served.archive.dicomweb}/instances", params={"limit": "1000"})
    assert r.status_code == 200, r.text
    return {m["00080018"]["Value"][0] for m in r.json()} if r.content else set()


def _upload_files(served: Served) -> tuple[list[Path], str]:
    """The corpus, a non-ASCII name and a text file; the Müller study's UID."""
    ds, data = small_ct(
        PatientName="Müller^Jürgen",
        PatientID="NA-1",
        SpecificCharacterSet="ISO_IR 192",
        StudyDescription="Knie links",
        StudyDate="20240131",
    )
    muller = served.files / "mueller.dcm"
    muller.write_bytes(data)
    text = served.files / "notes.txt"
    text.write_text("not a DICOM file\n")
    return [*corpus_paths(), muller, text], str(ds.StudyInstanceUID)


def test_console_pages_end_to_end(served: Served, tmp_path: Path) -> None:
    shots = Shots(tmp_path / "screenshots")
    base = served.url
    problems: list[str] = []
    with browser_page(problems) as page:
        # An empty archive says so.
        page.goto(base + "/")
        assert page.get_by_text("The archive holds no study yet.").is_visible()
        shots.take(page, "01-studies-empty")

        # Upload: every file its own STOW-RS request, with its outcome.
        files, muller_study = _upload_files(served)
        page.goto(base + "/upload")
        page.set_input_files("#files", [str(f) for f in files])
        page.wait_for_function(
            f"document.getElementById('upload-summary').textContent.startsWith('{len(files)} of')", timeout=60_000
        )
        outcomes = {
            row.locator("td").nth(0).inner_text(): row.locator("td").nth(2).inner_text()
            for row in page.locator("#uploads tbody tr").all()
        }
        shots.take(page, "02-upload")
        assert outcomes["notes.txt"].startswith("failed:"), outcomes
        assert all(
            o.startswith(("stored", "stored with a warning")) for f, o in outcomes.items() if f != "notes.txt"
        ), outcomes
        expected = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files[:-1]}
        assert expected <= _stored_sops(served)

        # A C-STORE from a modality, for the audit statistics.
        _, extra = small_ct(PatientName="Modality^Sent", PatientID="MOD-1")
        sent = served.files / "modality.dcm"
        sent.write_bytes(extra)
        proc = subprocess.run(
            [
                "storescu",
                "-aet",
                "MODALITY1",
                "-aec",
                served.archive.ae_title,
                "127.0.0.1",
                str(served.archive.dimse_port),
                str(sent),
            ],
            env=dcmtk_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr

        # The study list, sorted by patient name.
        page.goto(base + "/")
        assert page.locator("table.studies tbody tr").count() == 10
        shots.take(page, "03-studies")
        page.get_by_role("link", name="Patient", exact=True).click()
        names = page.locator("table.studies tbody tr td:first-child").all_inner_texts()
        assert names == sorted(names, key=str.lower), names
        page.get_by_role("link", name="Patient", exact=True).click()  # and back, descending
        names_desc = page.locator("table.studies tbody tr td:first-child").all_inner_texts()
        assert names_desc == list(reversed(names)), names_desc

        # Search by a non-ASCII name, typed as a person would.
        page.goto(base + "/")
        page.get_by_label("Patient name").fill("mül")
        page.get_by_role("button", name="Search").click()
        rows = page.locator("table.studies tbody tr")
        assert rows.count() == 1 and "Müller^Jürgen" in rows.first.inner_text()
        assert "Knie links" in rows.first.inner_text()
        shots.take(page, "04-search-non-ascii")
        page.goto(base + "/?modality=MR")
        assert "CompressedSamples^MR1" in page.locator("table.studies tbody").inner_text()
        page.goto(base + "/?name=Nobody")
        assert page.get_by_text("No study matches this search.").is_visible()
        shots.take(page, "04b-search-empty")

        # A study page: attributes, series with thumbnails and counts, actions.
        page.goto(base + "/")
        page.get_by_role("link", name="CompressedSamples^CT1").click()
        page.wait_for_load_state("networkidle")
        assert page.url == f"{base}/study/{CT_STUDY}"
        thumb = page.locator("ul.series img").first
        assert thumb.evaluate("img => img.complete && img.naturalWidth > 0")
        assert "1 instance" in page.locator("ul.series").inner_text()
        zip_link = page.locator("#download-zip")
        assert zip_link.get_attribute("href") == f"/dicomweb/studies/{CT_STUDY}?accept=application/zip"
        assert page.locator("#delete-study").is_visible()
        shots.take(page, "05-study")

        # Send to the storescp peer, with the progress and the outcome shown.
        page.locator("select[name=peer]").select_option(served.peer.ae_title)
        page.locator("#send-form button").click()
        page.locator("#send-progress .outcome.stored").wait_for(timeout=60_000)
        assert page.locator("#send-progress .outcome").inner_text() == "Done: 1 of 1 sent."
        shots.take(page, "06-send")
        ct_sop = str(pydicom.dcmread(corpus_paths()[0], stop_before_pixels=True).SOPInstanceUID)
        received = served.peer.received({ct_sop})
        assert set(received) == {ct_sop}
        assert pydicom.dcmread(received[ct_sop]).PixelData == pydicom.dcmread(corpus_paths()[0]).PixelData

        # The viewer, from the study page, shows the image.
        page.goto(f"{base}/study/{CT_STUDY}")
        href = page.locator("#open-viewer").get_attribute("href")
        assert href == f"/viewer/viewer?StudyInstanceUIDs={CT_STUDY}"
        assert wait_for_first_image(page, base + href), "the viewer never reported its first image"
        shot = shots.take(page, "07-viewer", full_page=False)
        mean, std = image_area_stats(shot)
        assert std > 15 and mean > 10, f"the viewport looks empty (mean {mean:.1f}, std {std:.1f})"

        # Delete, after a confirmation that names the patient and the study.
        page.goto(f"{base}/study/{RGB_STUDY}")
        page.locator("#delete-study").click()
        question = page.locator("#delete-question").inner_text()
        assert "Lestrade^G" in question and "2 instances" in question, question
        shots.take(page, "08-delete-confirm")
        page.get_by_role("link", name="Keep it").click()
        assert page.url == f"{base}/study/{RGB_STUDY}"
        page.locator("#delete-study").click()
        page.locator("#confirm-delete").click()
        assert page.get_by_text("The study was deleted.").is_visible()
        shots.take(page, "09-deleted")
        r = httpx.get(f"{served.archive.dicomweb}/studies", params={"StudyInstanceUID": RGB_STUDY})
        assert r.status_code == 200 and not r.content.strip(b"[]")
        page.goto(f"{base}/study/{RGB_STUDY}")
        assert page.get_by_text("No such study").is_visible()
        shots.take(page, "09b-no-such-study")

        # System: counts, storage, rate, lag, health, charts; the audit lists
        # once the audit consumer has the modality's C-STORE and the viewer's reads.
        deadline = time.monotonic() + 60
        while True:
            stats = httpx.get(base + "/api/statistics", params={"days": "7"}).json()
            audit = stats["audit"] or {}
            aes = {c["key"] for c in audit.get("calling_ae_titles", [])}
            reads = {c["key"] for c in audit.get("study_reads", [])}
            if ("MODALITY1" in aes and CT_STUDY in reads) or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert "MODALITY1" in aes and CT_STUDY in reads, stats
        usage = stats["index"]["tenants"][0]
        assert (usage["tenant"], int(usage["studies"]), int(usage["instances"])) == ("default", 9, 9)
        assert int(stats["index"]["instances_last_hour"]) >= 9
        page.goto(base + "/system?days=7")
        for name in ("gateway", "storage", "metadata", "auth", "ingest", "eventbus"):
            assert page.get_by_role("row", name=f"{name} serving").count() == 1, name
        assert page.locator("#count-studies").inner_text() == "9"
        assert page.locator("#count-patients").inner_text() == usage["patients"]
        assert page.locator("#eventbus-lag").inner_text().endswith(("event", "events"))
        assert page.locator("#chart-instances rect.bar").count() == 7
        assert page.locator("#chart-modalities rect.bar").count() >= 5
        assert "MODALITY1" in page.locator("#top-ae").inner_text()
        assert CT_STUDY in page.locator("#study-reads").inner_text()
        shots.take(page, "10-system")

        # API keys: made (shown once), used, revoked.
        page.goto(base + "/keys")
        page.get_by_label("For (subject)").fill("station-3")
        page.get_by_label("write").check()
        page.get_by_role("button", name="Create the key").click()
        key = page.get_by_label("The new API key").input_value()
        assert key.startswith("dsk_")
        shots.take(page, "11-keys-created")
        assert httpx.get(f"{served.archive.dicomweb}/studies", headers={"X-API-Key": key}).status_code == 200
        page.once("dialog", lambda d: d.accept())
        page.locator("#key-list").get_by_role("button", name="Revoke").first.click()
        assert page.get_by_text("is revoked").is_visible()
        shots.take(page, "12-keys-revoked")
        deadline = time.monotonic() + 10
        while httpx.get(f"{served.archive.dicomweb}/studies", headers={"X-API-Key": key}).status_code != 401:
            assert time.monotonic() < deadline, "the revoked key still works"
            time.sleep(0.5)

        # Error states: a bad search value, a malformed UID.
        page.goto(base + "/?date_from=2024-13-45")
        assert page.locator(".alert.error").is_visible()
        shots.take(page, "13-bad-search")
        response = page.goto(base + "/study/not-a-uid")
        assert response is not None and response.status == 400
    assert not problems, "\n".join(problems)


def test_bad_console_requests_change_nothing(served: Served) -> None:
    """No CSRF token, a foreign origin's form, an unknown peer: refused, and
    the study is still there."""
    client = httpx.Client(base_url=served.url)
    if not httpx.get(f"{served.archive.dicomweb}/studies", params={"StudyInstanceUID": CT_STUDY}).content.strip(b"[]"):
        data = corpus_paths()[0].read_bytes()
        assert (
            httpx.post(
                f"{served.archive.dicomweb}/studies", content=data, headers={"Content-Type": "application/dicom"}
            ).status_code
            == 200
        )
    client.get("/")  # an anonymous session with its CSRF token
    assert "dicomserver_session" in client.cookies
    r = client.post(f"/study/{CT_STUDY}/delete", data={"csrf_token": "forged"})
    assert r.status_code == 403 and "expired" in r.json()["error"]
    r = client.post(
        f"/study/{CT_STUDY}/delete", content=b"", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert r.status_code == 403
    r = client.post(f"/study/{CT_STUDY}/delete", content=b"{}", headers={"Content-Type": "application/json"})
    assert r.status_code == 415
    page = client.get(f"/study/{CT_STUDY}").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    r = client.post(f"/study/{CT_STUDY}/send", data={"csrf_token": token, "peer": "NOWHERE"})
    assert r.status_code == 404 and "no such DIMSE peer" in r.text
    r = client.post("/study/1.2.3.4.5/send", data={"csrf_token": token, "peer": served.peer.ae_title})
    assert r.status_code == 404 and "Not sent" in r.text
    assert client.get("/api/statistics", params={"days": "0"}).status_code == 400
    r = httpx.get(f"{served.archive.dicomweb}/studies", params={"StudyInstanceUID": CT_STUDY})
    assert r.content.strip(b"[]"), "the study was deleted"


def test_viewer_is_configured_for_this_origin(served: Served) -> None:
    config = httpx.get(served.url + "/viewer/app-config.js").text
    assert 'var root = "/dicomweb"' in config and '"routerBasename": "/viewer"' in config
    assert '"supportsWildcard": true' in config and '"qidoSupportsIncludeField": true' in config
    index = httpx.get(served.url + f"/viewer/viewer?StudyInstanceUIDs={CT_STUDY}")
    assert index.status_code == 200 and 'src="/viewer/app-config.js"' in index.text
    assert 'window.PUBLIC_URL="/viewer/"' in index.text
    bundle = re.search(r'src="(/viewer/app\.bundle\.[^"]+\.js)"', index.text).group(1)  # type: ignore[union-attr]
    assert '__webpack_require__.p = "/viewer/";' in httpx.get(served.url + bundle).text
    outside = httpx.get(served.url + "/viewer/..%2Fpackage.json")
    assert outside.status_code == 200 and outside.text.startswith("<!doctype html>")  # the app's page, not the file
