"""The clients both servers get, the same code for each: httpx on a persistent
connection for DICOMweb, dcmtk binaries (with TCP_NODELAY=1) for DIMSE."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import httpx

from bench.servers import CLIENT_AET, HOST, Server
from testbed.processes import dcmtk_env

BOUNDARY = "benchBOUNDARY7f3a9c"
DCMTK_ENV = dcmtk_env()


class NotAvailable(Exception):
    """The server does not offer this (yet): reported as n/a with the reason."""


def _na_for(resp: httpx.Response) -> NotAvailable:
    return NotAvailable(f"HTTP {resp.status_code}")


class DicomWeb:
    """One persistent connection to a DICOMweb root. Responses are not
    compressed (Accept-Encoding: identity): we measure the server's work, not gzip."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self.http = httpx.Client(timeout=600, headers={"Accept-Encoding": "identity"})

    def close(self) -> None:
        self.http.close()

    def stow(self, objects: list[bytes]) -> None:
        parts = []
        for data in objects:
            parts.append(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode())
            parts.append(data)
            parts.append(b"\r\n")
        parts.append(f"--{BOUNDARY}--\r\n".encode())
        resp = self.http.post(
            f"{self.base}/studies",
            content=b"".join(parts),
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
                "Accept": "application/dicom+json",
            },
        )
        if resp.status_code not in (200, 202):
            raise _na_for(resp)
        failed = resp.json().get("00081198", {}).get("Value") if resp.content else None
        if resp.status_code == 202 or failed:
            raise NotAvailable(f"HTTP {resp.status_code}: some instances failed")

    def query(self, path: str, params: dict[str, str]) -> int:
        """Number of matches of a QIDO-RS query."""
        # "*" stays literal: Orthanc's DICOMweb plugin takes "%2A" for a plain asterisk.
        query = "&".join(f"{quote(k)}={quote(v, safe='*')}" for k, v in params.items())
        url = f"{self.base}{path}" + (f"?{query}" if query else "")
        resp = self.http.get(url, headers={"Accept": "application/dicom+json"})
        if resp.status_code == 204:
            return 0
        if resp.status_code != 200:
            raise _na_for(resp)
        return len(resp.json())

    def get_json(self, path: str) -> int:
        """Number of items in a DICOM JSON answer (e.g. /metadata)."""
        return self.query(path, {})

    def get_bytes(self, path: str, accept: str) -> int:
        """Bytes received (the whole body, read as it streams)."""
        n = 0
        with self.http.stream("GET", f"{self.base}{path}", headers={"Accept": accept}) as resp:
            if resp.status_code != 200:
                raise _na_for(resp)
            for chunk in resp.iter_raw(1 << 20):
                n += len(chunk)
        return n


def _dcmtk_failure(res: subprocess.CompletedProcess[str] | tuple[int, str]) -> str | None:
    code, err = (res.returncode, res.stderr) if isinstance(res, subprocess.CompletedProcess) else res
    lines = [ln for ln in err.splitlines() if ln.startswith(("E:", "F:"))]
    if code != 0 or lines:
        return (lines[0] if lines else f"exit status {code}")[:120]
    return None


def cstore(srv: Server, file_lists: list[list[str]]) -> float:
    """Sends each list over its own association (one storescu process each),
    all at once; returns the elapsed seconds."""
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["storescu", "-aet", CLIENT_AET, "-aec", srv.aet, HOST, str(srv.dimse_port), *files],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=DCMTK_ENV,
        )
        for files in file_lists
        if files
    ]
    outcomes = [(p.wait(), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.stderr.close()  # type: ignore[union-attr]
    for outcome in outcomes:
        if (failure := _dcmtk_failure(outcome)) is not None:
            raise NotAvailable(f"storescu: {failure}")
    return elapsed


def cfind_studies(srv: Server, keys: dict[str, str]) -> int:
    """One study-level C-FIND (study root); returns the number of matches."""
    with tempfile.TemporaryDirectory(prefix="bench-find-") as out:
        args = [
            "findscu",
            "-S",
            "-aet",
            CLIENT_AET,
            "-aec",
            srv.aet,
            "-X",
            "-od",
            out,
            "-k",
            "QueryRetrieveLevel=STUDY",
        ]
        for tag in ("StudyInstanceUID", "PatientName", "PatientID", "StudyDate", "ModalitiesInStudy"):
            args += ["-k", f"{tag}={keys.get(tag, '')}"]
        res = subprocess.run([*args, HOST, str(srv.dimse_port)], capture_output=True, text=True, env=DCMTK_ENV)
        if (failure := _dcmtk_failure(res)) is not None:
            raise NotAvailable(f"findscu: {failure}")
        return len(os.listdir(out))


def cget_series(srv: Server, study: str, series: str) -> tuple[int, int]:
    """One series-level C-GET; returns (files, bytes) received."""
    out = Path(tempfile.mkdtemp(prefix="bench-get-"))
    try:
        res = subprocess.run(
            [
                "getscu",
                "-S",
                "-aet",
                CLIENT_AET,
                "-aec",
                srv.aet,
                "-od",
                str(out),
                "-k",
                "QueryRetrieveLevel=SERIES",
                "-k",
                f"StudyInstanceUID={study}",
                "-k",
                f"SeriesInstanceUID={series}",
                HOST,
                str(srv.dimse_port),
            ],
            capture_output=True,
            text=True,
            env=DCMTK_ENV,
        )
        files = list(out.iterdir())
        if (failure := _dcmtk_failure(res)) is not None or not files:
            raise NotAvailable(f"getscu: {failure or 'nothing received'}")
        return len(files), sum(p.stat().st_size for p in files)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def cmove_series(srv: Server, dest_aet: str, study: str, series: str) -> None:
    """One series-level C-MOVE to ``dest_aet`` (waits for all sub-operations)."""
    res = subprocess.run(
        [
            "movescu",
            "-S",
            "-aet",
            CLIENT_AET,
            "-aec",
            srv.aet,
            "-aem",
            dest_aet,
            "-k",
            "QueryRetrieveLevel=SERIES",
            "-k",
            f"StudyInstanceUID={study}",
            "-k",
            f"SeriesInstanceUID={series}",
            HOST,
            str(srv.dimse_port),
        ],
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
    )
    if (failure := _dcmtk_failure(res)) is not None:
        raise NotAvailable(f"movescu: {failure}")
