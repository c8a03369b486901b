"""Helpers the tests share: the corpus, the archive process, Part 10 parsing."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from testbed.processes import free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent
WADO_AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'

# One object per transfer syntax family, each with its own SOP Instance UID.
CORPUS_FILES = [
    "CT_small.dcm",  # Explicit VR Little Endian
    "rtplan.dcm",  # Implicit VR Little Endian, no pixels
    "ExplVR_BigEnd.dcm",  # Explicit VR Big Endian
    "image_dfl.dcm",  # Deflated Explicit VR Little Endian
    "SC_rgb_rle.dcm",  # RLE Lossless
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG Baseline
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS Lossless
    "693_J2KI.dcm",  # JPEG 2000
    "test-SR.dcm",  # Structured report
]


def corpus_paths() -> list[Path]:
    return [Path(get_testdata_file(name, download=False)) for name in CORPUS_FILES]


def bench_ct() -> Path:
    """The CT folder of `python -m bench`'s full corpus (8 series of 50
    512x512 16-bit slices), generated into the bench's cache on first use
    (about 40 s on a fresh machine, then cached)."""
    from bench.corpus import FULL, ensure

    root, _ = ensure(Path.home() / ".cache" / "dicomserver-bench", FULL, log=lambda *_: None)
    return root / "ct"


def split_part10(data: bytes) -> tuple[bytes, bytes]:
    """Splits a Part 10 object into (preamble + file meta, dataset bytes)."""
    f = io.BytesIO(data)
    read_preamble(f, False)
    _read_file_meta_info(f)
    return data[: f.tell()], data[f.tell() :]


def multipart_body(parts: list[bytes], boundary: str = "", part_type: str = "application/dicom") -> tuple[bytes, str]:
    """A multipart/related body of `parts` and its Content-Type (a random boundary unless given)."""
    boundary = boundary or uuid.uuid4().hex
    body = b"".join(f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + part + b"\r\n" for part in parts)
    return body + f"--{boundary}--\r\n".encode(), f'multipart/related; type="{part_type}"; boundary={boundary}'


def response_parts(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart answer as (lower-cased headers, bytes), read
    here rather than with the gateway's own parser."""
    ctype = response.headers.get("content-type", "")
    m = re.search(r'boundary="?([^";]+)"?', ctype)
    assert m, ctype
    parts = []
    for chunk in response.content.split(b"--" + m.group(1).encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, body = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, body.removesuffix(b"\r\n")))
    return parts


@dataclass
class Archive:
    """The whole server, started as the run command starts it."""

    data_dir: Path
    http_port: int = field(default_factory=free_port)
    dimse_port: int = field(default_factory=free_port)
    ae_title: str = "DICOMSERVER"
    proc: subprocess.Popen[str] | None = None
    output: list[str] = field(default_factory=list)
    grpc_addrs: dict[str, str] = field(default_factory=dict)
    # More DICOMSERVER_* settings for this instance, e.g. C-MOVE destinations.
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def dicomweb(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicomweb"

    def stow(self, data: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        """One Part 10 object STOW-RS'd as application/dicom."""
        return httpx.post(
            f"{self.dicomweb}/studies",
            content=data,
            timeout=60,
            headers={"Content-Type": "application/dicom", **(headers or {})},
        )

    def served(self, study: str, headers: dict[str, str] | None = None) -> list[bytes]:
        """The datasets (after the Part 10 header) of a study as WADO-RS serves them, sorted."""
        r = httpx.get(
            f"{self.dicomweb}/studies/{study}", headers={"Accept": WADO_AS_STORED, **(headers or {})}, timeout=60
        )
        assert r.status_code == 200, r.text
        return sorted(split_part10(body)[1] for _, body in response_parts(r))

    def listed(self, headers: dict[str, str] | None = None) -> list[str]:
        """The SOP Instance UIDs QIDO-RS lists (up to 1000), sorted."""
        r = httpx.get(f"{self.dicomweb}/instances", params={"limit": "1000"}, headers=headers or {}, timeout=60)
        assert r.status_code == 200, r.text
        return sorted(m["00080018"]["Value"][0] for m in r.json())

    def stored_files(self) -> list[str]:
        """Every file in the objects folder, staged and temporary parts too:
        what "stores nothing" must leave unchanged."""
        objects = self.data_dir / "objects"
        return sorted(str(p.relative_to(objects)) for p in objects.rglob("*") if p.is_file())

    def start(self, timeout: float = 90) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "launcher",
                "--data-dir",
                str(self.data_dir),
                "--http-port",
                str(self.http_port),
                "--dimse-port",
                str(self.dimse_port),
                "--ae-title",
                self.ae_title,
                "--grpc-base-port",
                "0",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "DICOMSERVER_LOG_LEVEL": "WARNING", **self.extra_env},
        )
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.output.append(line)
            if m := re.match(r"grpc +(\w+) +(\S+)", line):
                self.grpc_addrs[m.group(1)] = m.group(2)
            if line.startswith("ready"):
                # Keep draining, so that chatty services never block on a full pipe.
                self._drain = threading.Thread(target=self._read_rest, daemon=True)
                self._drain.start()
                return
        self.stop()
        raise RuntimeError("archive did not start:\n" + "".join(self.output))

    def _read_rest(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    def stop(self) -> int:
        assert self.proc is not None
        stop_process(self.proc)
        drain = getattr(self, "_drain", None)
        if drain is not None:
            drain.join(timeout=10)
        elif self.proc.stdout:
            self.output.extend(self.proc.stdout.readlines())
        return self.proc.returncode


def small_ct(study: str = "", **attrs: Any) -> tuple[Dataset, bytes]:
    """A CT header without pixels, as a Dataset and as Part 10 bytes; `attrs`
    set patient and other attributes by keyword."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study or generate_uid(), generate_uid()
    ds.Modality = "CT"
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return ds, buf.getvalue()


def c_store_ct(archive: Archive, data: bytes, calling: str = "TESTSCU") -> int:
    """One CT object (Part 10 bytes) C-STOREd on an association of its own; the status."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", archive.dimse_port, ae_title=archive.ae_title)
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(pydicom.dcmread(io.BytesIO(data))).Status)
    finally:
        assoc.release()
