"""WADO-RS zip downloads from a launched archive with authentication on:
zips unzip to the stored objects byte for byte in readable folders, a link
with ?accept=application/zip works like the header, a tenant cannot zip
another tenant's study (the answer is that of a study that does not exist)
and every zip is audited like any retrieve, and the gateway streams a large
study at constant memory."""

from __future__ import annotations

import io
import os
import sqlite3
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from tests.support import Archive, corpus_paths

SECRET = "zip-download-test-secret-0123456789abcdef"
ZIP = "application/zip"
TENANT_A, TENANT_B = "zip-a", "zip-b"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    server = Archive(
        tmp_path_factory.mktemp("zip"),
        extra_env={
            "DICOMSERVER_AUTH_ENABLED": "true",
            "DICOMSERVER_JWT_HS256_SECRET": SECRET,
        },
    )
    server.start()
    yield server
    assert server.stop() == 0, "".join(server.output)


def bearer(tenant: str) -> dict[str, str]:
    claims = {
        "sub": f"zip-{tenant}",
        "tenants": [tenant],
        "scope": "dicom.read dicom.write",
        "exp": int(time.time()) + 3600,
    }
    return {"Authorization": "Bearer " + jwt.encode(claims, SECRET, algorithm="HS256")}


def stow(server: Archive, tenant: str, objects: list[bytes]) -> None:
    body = b"".join(b"--b\r\nContent-Type: application/dicom\r\n\r\n" + o + b"\r\n" for o in objects) + b"--b--\r\n"
    r = httpx.post(
        f"{server.dicomweb}/studies",
        content=body,
        timeout=120,
        headers={**bearer(tenant), "Content-Type": 'multipart/related; type="application/dicom"; boundary=b'},
    )
    assert r.status_code == 200, r.text


def ct(study: str, series: str, number: int | None, pixels: bytes = b"", **attrs: object) -> bytes:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.Modality = "CT"
    if number is not None:
        ds.InstanceNumber = number
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    if pixels:
        ds.Rows = ds.Columns = 512
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = pixels
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def audited_zips(server: Archive, study: str, want: int, timeout: float = 60) -> list[dict[str, object]]:
    """The audit consumer's records of GET /studies/{study} for `study`."""
    deadline = time.monotonic() + timeout
    rows: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        db = server.data_dir / "eventbus.sqlite3"
        if db.exists():
            with sqlite3.connect(db) as conn:
                conn.row_factory = sqlite3.Row
                try:
                    rows = [
                        dict(r)
                        for r in conn.execute(
                            "SELECT * FROM audit_log WHERE kind = 'audit' AND operation = 'GET /studies/{study}' "
                            "AND study_instance_uid = ?",
                            (study,),
                        )
                    ]
                except sqlite3.OperationalError:
                    rows = []
            if len(rows) >= want:
                return rows
        time.sleep(0.3)
    raise AssertionError(f"{len(rows)} audit records of the study after {timeout} s, wanted {want}: {rows}")


def unzip(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        return {name: zf.read(name) for name in zf.namelist()}


def test_a_study_unzips_to_the_stored_objects_in_readable_folders(secured: Archive) -> None:
    study = generate_uid()
    s1, s2 = sorted([generate_uid(), generate_uid()])  # of two alike series, the second UID gets "(2)"
    common = {
        "PatientName": "Zip^Zoë",
        "PatientID": "ZIP/1",
        "StudyDate": "20240229",
        "StudyDescription": "Thorax: CT?",
        "SeriesNumber": 3,
        "SeriesDescription": "Lung",
    }
    objects = {
        "Zip Zoë (ZIP_1)/2024-02-29 Thorax_ CT_/3 CT Lung/0001.dcm": ct(study, s1, 1, **common),
        "Zip Zoë (ZIP_1)/2024-02-29 Thorax_ CT_/3 CT Lung/0002.dcm": ct(study, s1, 2, **common),
        # The same series number and description again: a folder of its own.
        "Zip Zoë (ZIP_1)/2024-02-29 Thorax_ CT_/3 CT Lung (2)/0001.dcm": ct(study, s2, 1, **common),
    }
    stow(secured, TENANT_A, list(objects.values()))
    r = httpx.get(f"{secured.dicomweb}/studies/{study}", headers={**bearer(TENANT_A), "Accept": ZIP}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == ZIP
    assert int(r.headers["content-length"]) == len(r.content)
    assert r.headers["content-disposition"] == f'attachment; filename="study-{study}.zip"'
    assert unzip(r.content) == objects

    # A series, by link (no Accept header a browser link could not send).
    r = httpx.get(
        f"{secured.dicomweb}/studies/{study}/series/{s2}?accept=application/zip", headers=bearer(TENANT_A), timeout=60
    )
    assert r.status_code == 200, r.text
    # Names are unique within one zip: alone, the series needs no "(2)".
    assert unzip(r.content) == {k.replace(" (2)", ""): v for k, v in objects.items() if "(2)" in k}
    # Multipart first, zip second: multipart.
    r = httpx.get(
        f"{secured.dicomweb}/studies/{study}/series/{s2}",
        timeout=60,
        headers={**bearer(TENANT_A), "Accept": f'multipart/related; type="application/dicom", {ZIP}; q=0.5'},
    )
    assert r.headers["content-type"].startswith("multipart/related")


def test_every_transfer_syntax_unzips_byte_identical(secured: Archive) -> None:
    sent = {p.name: p.read_bytes() for p in corpus_paths()}
    stow(secured, TENANT_A, list(sent.values()))
    got: dict[str, bytes] = {}
    for data in sent.values():
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        r = httpx.get(
            f"{secured.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}",
            params={"accept": ZIP},
            headers=bearer(TENANT_A),
            timeout=60,
        )
        assert r.status_code == 200, r.text
        (member,) = unzip(r.content).values()
        got[next(k for k, v in sent.items() if v is data)] = member
    assert got == sent


def test_a_tenant_cannot_zip_another_tenants_study(secured: Archive) -> None:
    study = generate_uid()
    secret = ct(study, generate_uid(), 1, PatientName="SECRETB^Only", PatientID="PIDB-1")
    stow(secured, TENANT_B, [secret])
    url = f"{secured.dicomweb}/studies/{study}"
    assert unzip(httpx.get(url, headers={**bearer(TENANT_B), "Accept": ZIP}).content) != {}
    ghost = f"{secured.dicomweb}/studies/{generate_uid()}"
    for variant in (
        {"headers": {**bearer(TENANT_A), "Accept": ZIP}},
        {"headers": bearer(TENANT_A), "params": {"accept": ZIP}},
    ):
        theirs = httpx.get(url, **variant)  # type: ignore[arg-type]
        nowhere = httpx.get(ghost, **variant)  # type: ignore[arg-type]
        assert theirs.status_code == nowhere.status_code == 404
        assert theirs.content == nowhere.content and b"SECRETB" not in theirs.content
    # Another tenant's token on its own path prefix is refused as well.
    r = httpx.get(f"{secured.dicomweb}/tenants/{TENANT_B}/studies/{study}", headers={**bearer(TENANT_A), "Accept": ZIP})
    assert r.status_code == 403
    # Audited like any retrieve: who, which study, the outcome.
    rows = audited_zips(secured, study, 3)
    assert sorted((r["tenant"], r["outcome"], r["status"]) for r in rows) == [
        (TENANT_A, "failure", 404),
        (TENANT_A, "failure", 404),
        (TENANT_B, "success", 200),
    ]


def _gateway_pid(server: Archive) -> int:
    assert server.proc is not None
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == server.proc.pid and b"dicomweb_gateway" in cmdline:
            return int(name)
    raise AssertionError("no gateway process under the launcher")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_large_study_streams_at_constant_memory(secured: Archive) -> None:
    """400 CT slices of 512 KiB (200 MiB) zipped while the gateway's
    resident memory is sampled: it grows by a few blocks, not by the study."""
    study, series = generate_uid(), generate_uid()
    pixels = np.random.default_rng(7).integers(0, 4096, 512 * 512, dtype=np.uint16).tobytes()
    for start in range(0, 400, 50):
        stow(secured, TENANT_A, [ct(study, series, i + 1, pixels, PatientID="BIG") for i in range(start, start + 50)])
    pid = _gateway_pid(secured)
    url = f"{secured.dicomweb}/studies/{study}"
    with httpx.stream("GET", url, headers={**bearer(TENANT_A), "Accept": ZIP}, timeout=120) as r:  # warm up
        sum(len(c) for c in r.iter_raw())
    before = _rss_mb(pid)
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], _rss_mb(pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with httpx.stream("GET", url, headers={**bearer(TENANT_A), "Accept": ZIP}, timeout=120) as r:
            assert r.status_code == 200
            received = sum(len(c) for c in r.iter_raw(1024 * 1024))
            assert received == int(r.headers["content-length"]) > 200 * 1024 * 1024
    finally:
        done.set()
        sampler.join()
    grown = peak[0] - before
    print(f"gateway RSS {before:.0f} MB before, peak {peak[0]:.0f} MB while zipping {received / 1e6:.0f} MB")
    assert grown < 40, f"gateway RSS grew {grown:.0f} MB while streaming {received / 1e6:.0f} MB"
