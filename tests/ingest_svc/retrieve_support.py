"""What the retrieve tests share: storescp destinations, objects saved and
stored as encoded, a C-GET requester, a C-MOVE requester."""

from __future__ import annotations

import copy
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    MRImageStorage,
    generate_uid,
)
from pynetdicom import AE, _config, build_role, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MOVE

from testbed.processes import dcmtk_env
from tests.support import Archive, split_part10

DCMTK_ENV = dcmtk_env()
SCU = "RETRIEVESCU"


@dataclass
class StoreScp:
    aet: str
    port: int
    folder: Path
    proc: subprocess.Popen[bytes]

    def received(self, uids: set[str], timeout: float = 30) -> dict[str, Path]:
        """The files storescp wrote for `uids`."""
        deadline = time.monotonic() + timeout
        while True:
            got = {uid: p for uid, p in by_uid(self.folder).items() if uid in uids}
            if set(got) == uids or time.monotonic() > deadline:
                return got
            time.sleep(0.1)

    def clear(self) -> None:
        for p in self.folder.iterdir():
            p.unlink()


def by_uid(folder: Path) -> dict[str, Path]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in folder.iterdir()}


@dataclass
class Setup:
    archive: Archive
    peers: dict[str, StoreScp]
    # Series by name: the SOP Instance UIDs and original file of each object.
    series: dict[str, dict[str, Path]]
    study: str


def save(ds: Dataset, folder: Path, syntax: str) -> Path:
    ds = copy.deepcopy(ds)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    if UID(syntax).is_compressed:
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(path, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=True, enforce_file_format=True)
    return path


def store_all(archive: Archive, paths: list[Path]) -> None:
    """Sends each file as it is encoded, each in its own stored syntax."""
    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=SCU)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    ae.add_requested_context(CTImageStorage, [ImplicitVRLittleEndian])
    ae.add_requested_context(MRImageStorage, [JPEGLSLossless])
    assoc = ae.associate("127.0.0.1", archive.dimse_port, ae_title=archive.ae_title)
    try:
        assert assoc.is_established
        for path in paths:
            assert assoc.send_c_store(path).Status == 0x0000, path
    finally:
        assoc.release()
        _config.STORE_SEND_CHUNKED_DATASET = before


def dataset_bytes(path: Path) -> bytes:
    return split_part10(path.read_bytes())[1]


def stored_file(setup: Setup, uid: str) -> Path:
    (path,) = [p for p in (setup.archive.data_dir / "objects").rglob(f"*{uid}*") if p.is_file()]
    return path


def series_uid(setup: Setup, name: str) -> str:
    return str(pydicom.dcmread(next(iter(setup.series[name].values())), stop_before_pixels=True).SeriesInstanceUID)


def series_query(setup: Setup, name: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = setup.study
    ds.SeriesInstanceUID = series_uid(setup, name)
    return ds


def run(args: list[str], ok: tuple[int, ...] = (0,)) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, env=DCMTK_ENV, timeout=120)
    assert proc.returncode in ok, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def movescu(setup: Setup, name: str, destination: str) -> str:
    return run(
        [
            "movescu",
            "-v",
            "-S",
            "-aet",
            SCU,
            "-aec",
            setup.archive.ae_title,
            "-aem",
            destination,
            "-k",
            "QueryRetrieveLevel=SERIES",
            "-k",
            f"StudyInstanceUID={setup.study}",
            "-k",
            f"SeriesInstanceUID={series_uid(setup, name)}",
            "127.0.0.1",
            str(setup.archive.dimse_port),
        ],
        ok=(0, 68),
    )  # 68: a warning status


class GetScu:
    """A pynetdicom C-GET requester offering `syntaxes` for storage, in one
    context per SOP class or, `each_alone`, one context per syntax."""

    def __init__(self, setup: Setup, syntaxes: list[str], each_alone: bool = False) -> None:
        self.received: dict[str, tuple[str, bytes]] = {}
        self.on_first: Any = None
        ae = AE(ae_title=SCU)
        ae.add_requested_context(GET)
        for sop_class in (CTImageStorage, MRImageStorage):
            for offered in [[s] for s in syntaxes] if each_alone else [syntaxes]:
                ae.add_requested_context(sop_class, offered)
        self.assoc = ae.associate(
            "127.0.0.1",
            setup.archive.dimse_port,
            ae_title=setup.archive.ae_title,
            ext_neg=[build_role(c, scp_role=True) for c in (CTImageStorage, MRImageStorage)],
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )
        assert self.assoc.is_established

    def _on_store(self, event: evt.Event) -> int:
        self.received[str(event.request.AffectedSOPInstanceUID)] = (
            str(event.context.transfer_syntax),
            event.encoded_dataset(include_meta=False),
        )
        if self.on_first is not None and len(self.received) == 1:
            self.on_first()
        return 0x0000

    def get(self, query: Dataset, msg_id: int = 1) -> list[tuple[Dataset, Dataset | None]]:
        try:
            return list(self.assoc.send_c_get(query, GET, msg_id=msg_id))
        finally:
            self.assoc.release()


def move(setup: Setup, query: Dataset, destination: str) -> list[tuple[Dataset, Dataset | None]]:
    ae = AE(ae_title=SCU)
    ae.add_requested_context(MOVE)
    assoc = ae.associate("127.0.0.1", setup.archive.dimse_port, ae_title=setup.archive.ae_title)
    assert assoc.is_established
    try:
        return list(assoc.send_c_move(query, destination, MOVE))
    finally:
        assoc.release()
