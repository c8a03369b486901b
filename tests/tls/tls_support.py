"""What the TLS tests share: a PKI made with the dev CA's command line, dcmtk
with TLS options, fresh objects, HTTPS clients."""

from __future__ import annotations

import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
from pydicom.data import get_testdata_file

from common import tls
from testbed.processes import dcmtk_env
from tests.support import ROOT

DCMTK_ENV = dcmtk_env()


def devca(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "scripts/devca.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


@dataclass(frozen=True)
class Pki:
    """Our CA with a server certificate (localhost, 127.0.0.1; also a client
    certificate, as every service is for gRPC) and a client certificate; and
    another CA with its own client certificate."""

    dir: Path
    other: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    def cert(self, name: str) -> Path:
        return self.dir / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"


def make_pki(root: Path) -> Pki:
    pki = Pki(root / "pki", root / "other-pki")
    for args in (
        ["init", "--dir", str(pki.dir)],
        [
            "server",
            "--dir",
            str(pki.dir),
            "--name",
            "server",
            "--host",
            "localhost",
            "--host",
            "127.0.0.1",
            "--also-client",
        ],
        ["client", "--dir", str(pki.dir), "--name", "client", "--cn", "modality"],
        ["init", "--dir", str(pki.other), "--cn", "someone else's CA"],
        ["client", "--dir", str(pki.other), "--name", "client"],
    ):
        proc = devca(*args)
        assert proc.returncode == 0, proc.stderr
    return pki


def dcmtk(tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool, *args], capture_output=True, text=True, env=DCMTK_ENV, timeout=timeout)


def fresh_ct(folder: Path) -> tuple[Path, pydicom.Dataset]:
    """CT_small with new UIDs, saved in `folder`."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    tag = uuid.uuid4().int
    ds.StudyInstanceUID = f"2.25.{tag}1"
    ds.SeriesInstanceUID = f"2.25.{tag}2"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"2.25.{tag}3"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, pydicom.dcmread(path)


def content(ds: pydicom.Dataset) -> dict[int, object]:
    """Values by tag, without group lengths and padding, which a DICOM sender may rewrite."""
    return {int(e.tag): e.value for e in ds if e.tag.element != 0 and e.tag != 0xFFFCFFFC}


def https_client(ca: Path, cert: Path | None = None, key: Path | None = None) -> httpx.Client:
    return httpx.Client(verify=tls.client_context(ca, cert, key), timeout=30)


def wado_uri(ds: pydicom.Dataset) -> str:
    return (
        f"/wado?requestType=WADO&studyUID={ds.StudyInstanceUID}&seriesUID={ds.SeriesInstanceUID}"
        f"&objectUID={ds.SOPInstanceUID}&contentType=application/dicom"
    )
