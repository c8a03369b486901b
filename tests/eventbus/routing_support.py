"""What the launched routing tests share: a corpus in every stored transfer
syntax, storescp and pynetdicom peers, C-STORE with a chosen calling AE
title, and routing settings."""

from __future__ import annotations

import copy
import json
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt

from testbed.processes import dcmtk_env, free_port
from tests.support import CORPUS_FILES, Archive, split_part10

DCMTK_ENV = dcmtk_env()


def make_objects(
    folder: Path,
    names: list[str] | None = None,
    *,
    study: str = "",
    patient_id: str = "P1",
    description: str = "",
    copies: int = 1,
) -> dict[str, Path]:
    """pydicom's test files (one per stored transfer syntax by default) as
    objects of one study with fresh UIDs, each saved in its own syntax;
    returns SOP Instance UID -> file."""
    folder.mkdir(parents=True, exist_ok=True)
    study = study or generate_uid()
    out: dict[str, Path] = {}
    for name in names or CORPUS_FILES:
        original = pydicom.dcmread(get_testdata_file(name, download=False))
        series = generate_uid()
        for _ in range(copies):
            ds = copy.deepcopy(original)
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
            ds.PatientID = patient_id
            if description:
                ds.StudyDescription = description
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
            path = folder / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            out[str(ds.SOPInstanceUID)] = path
    return out


def c_store(archive: Archive, files: dict[str, Path], calling_ae_title: str) -> None:
    """Sends each file as it is encoded, in its own transfer syntax."""
    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=calling_ae_title)
    metas = {p: pydicom.dcmread(p, stop_before_pixels=True).file_meta for p in files.values()}
    for pair in dict.fromkeys((m.MediaStorageSOPClassUID, m.TransferSyntaxUID) for m in metas.values()):
        ae.add_requested_context(pair[0], [pair[1]])
    assoc = ae.associate("127.0.0.1", archive.dimse_port, ae_title=archive.ae_title)
    try:
        assert assoc.is_established, "the archive refused the association"
        for path in files.values():
            status = assoc.send_c_store(path)
            assert status and status.Status == 0x0000, f"{path.name}: {status}"
    finally:
        assoc.release()
        _config.STORE_SEND_CHUNKED_DATASET = before


def dataset_bytes(path: Path) -> bytes:
    return split_part10(path.read_bytes())[1]


def wait_for(what: str, check: Any, timeout: float = 60, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


@dataclass
class StoreScp:
    """dcmtk's storescp, bit-preserving: its files hold the data sets as received."""

    aet: str
    folder: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["storescp", "-aet", self.aet, "+B", "+xa", "-od", str(self.folder), str(self.port)],
            env=DCMTK_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(f"storescp {self.aet}", self._listening, timeout=20, every=0.05)

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def received(self) -> dict[str, Path]:
        """SOP Instance UID -> file, of what arrived whole so far."""
        out = {}
        for p in self.folder.iterdir() if self.folder.exists() else []:
            try:
                out[str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)] = p
            except Exception:  # still being written
                continue
        return out

    def destination(self, tenants: list[str], **more: Any) -> dict[str, Any]:
        return {
            "type": "dimse",
            "host": "127.0.0.1",
            "port": self.port,
            "ae_title": self.aet,
            "tenants": tenants,
            **more,
        }


@dataclass
class ScuPeer:
    """A pynetdicom storage SCP in the test process that answers `status` (0 takes the object)."""

    aet: str
    port: int = field(default_factory=free_port)
    status: int = 0x0000
    received: dict[str, bytes] = field(default_factory=dict)
    calls: int = 0
    server: Any = None

    def start(self) -> None:
        ae = AE(ae_title=self.aet)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def stop(self) -> None:
        self.server.shutdown()

    def _store(self, event: evt.Event) -> int:
        self.calls += 1
        if self.status == 0x0000:
            self.received[str(event.request.AffectedSOPInstanceUID)] = event.encoded_dataset(include_meta=False)
        return self.status

    def destination(self, tenants: list[str], **more: Any) -> dict[str, Any]:
        return {
            "type": "dimse",
            "host": "127.0.0.1",
            "port": self.port,
            "ae_title": self.aet,
            "tenants": tenants,
            **more,
        }


def routing_env(destinations: dict[str, Any], rules: list[dict[str, Any]], **more: str) -> dict[str, str]:
    return {
        "DICOMSERVER_ROUTING_DESTINATIONS": json.dumps(destinations),
        "DICOMSERVER_ROUTING_RULES": json.dumps(rules),
        **more,
    }
