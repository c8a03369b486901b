"""What the lean query/retrieve tests share: a launched archive (auth_svc,
metadata_svc, storage_svc, its objects folder) holding a few series in
several transfer syntaxes, storescp destinations, and in-process DIMSE
servers on the archive's services, one per path (the lean acceptor, or
pynetdicom for everything), so that the same requests can be put to both."""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from prometheus_client import REGISTRY
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    generate_uid,
)
from pynetdicom import AE, _config

from common.clients import AuthClient, MetadataClient, StorageClient, channel
from common.ingest import IngestPipeline
from ingest_svc.scp import DimseServer, start_scp
from ingest_svc.settings import IngestSettings
from tests.ingest_svc.dimse_support import AuditSink, free_port
from tests.ingest_svc.retrieve_support import DCMTK_ENV, StoreScp
from tests.support import Archive

OTHER_AE = "OTHERAE"  # a calling AE title of tenant "other"
SCU = "LEANSCU"


def served(path: str) -> float:
    return REGISTRY.get_sample_value("dicomserver_dimse_association_requests_total", {"path": path}) or 0.0


@dataclass
class Scp:
    server: DimseServer
    port: int
    settings: IngestSettings
    audit: AuditSink
    stopped: bool = False


@dataclass
class World:
    archive: Archive
    peers: dict[str, StoreScp]
    study: str
    # Series by name: SOP Instance UID -> the file stored.
    series: dict[str, dict[str, Path]]
    series_uids: dict[str, str]
    patient_id: str
    clients: tuple[AuthClient, StorageClient, MetadataClient]

    @contextmanager
    def scp(self, lean: bool = True, auth: Any = None, **settings: Any) -> Iterator[Scp]:
        """An in-process DIMSE server on the archive's services; `lean`
        False leaves query/retrieve to pynetdicom; `auth` in front of auth_svc's client."""
        real_auth, storage, metadata = self.clients
        auth = auth or real_auth
        values = {
            "dimse_port": free_port(),
            "ae_title": "DICOMSERVER",
            "dimse_lean_query_retrieve": lean,
            "dimse_peers": {aet: {"host": "127.0.0.1", "port": p.port} for aet, p in self.peers.items()},
            **settings,
        }
        ingest_settings = IngestSettings(**values)
        audit = AuditSink()
        server = start_scp(ingest_settings, IngestPipeline(storage, metadata), auth, storage, metadata, audit)
        scp = Scp(server, ingest_settings.dimse_port, ingest_settings, audit)
        try:
            yield scp
        finally:
            if not scp.stopped:
                server.stop(0.5)


# What each series holds, in its stored transfer syntaxes.
PLAN = {
    "explicit": [("ct", ExplicitVRLittleEndian)] * 3,
    "mixed": [
        ("ct", ExplicitVRLittleEndian),
        ("ct", ImplicitVRLittleEndian),
        ("mr", JPEGLSLossless),
        ("ct", DeflatedExplicitVRLittleEndian),
        ("ct", ExplicitVRBigEndian),
    ],
    "long": [("ct", ExplicitVRLittleEndian)] * 12,
}


def save(ds: Dataset, folder: Path, syntax: str) -> Path:
    """A copy of `ds` with its own SOP Instance UID, encoded in `syntax`
    (a compressed one: as it already is)."""
    ds = copy.deepcopy(ds)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    syntax = UID(syntax)
    if syntax.is_compressed:
        ds.save_as(path, enforce_file_format=True)
        return path
    ds.file_meta.TransferSyntaxUID = syntax
    if not syntax.is_little_endian:
        for _ in ds.iterall():  # every element decoded, so that it is written anew in big endian
            pass
        ds.set_original_encoding(False, False, ds.original_character_set)
    ds.save_as(path, implicit_vr=syntax.is_implicit_VR, little_endian=syntax.is_little_endian, enforce_file_format=True)
    return path


def store_as_encoded(archive: Archive, paths: list[Path]) -> None:
    """Sends each file as it is encoded, in its own transfer syntax."""
    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=SCU)
    for pair in dict.fromkeys(
        (m.MediaStorageSOPClassUID, m.TransferSyntaxUID)
        for m in (pydicom.dcmread(p, stop_before_pixels=True).file_meta for p in paths)
    ):
        ae.add_requested_context(*pair)
    assoc = ae.associate("127.0.0.1", archive.dimse_port, ae_title=archive.ae_title)
    try:
        assert assoc.is_established
        for path in paths:
            assert assoc.send_c_store(path).Status == 0x0000, path
    finally:
        assoc.release()
        _config.STORE_SEND_CHUNKED_DATASET = before


@contextmanager
def world(root: Path) -> Iterator[World]:
    """The archive and its destinations: UNCOMPR (storescp taking the
    uncompressed syntaxes it prefers), XI (Implicit VR Little Endian
    only), ALL (every syntax, bit preserving)."""
    options = {"UNCOMPR": [], "XI": ["+xi"], "ALL": ["+xa"]}
    peers = {}
    for aet, opts in options.items():
        folder = root / aet
        folder.mkdir(parents=True)
        port = free_port()
        proc = subprocess.Popen(
            ["storescp", "-aet", aet, "+B", "-od", str(folder), *opts, str(port)],
            env=DCMTK_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        peers[aet] = StoreScp(aet, port, folder, proc)
    archive = Archive(
        root / "archive",
        extra_env={
            "DICOMSERVER_AE_TENANTS": json.dumps({OTHER_AE: "other"}),
        },
    )
    archive.start()
    try:
        corpus = root / "corpus"
        corpus.mkdir()
        ct = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
        mr = pydicom.dcmread(get_testdata_file("MR_small_jpeg_ls_lossless.dcm", download=False))
        study, patient = generate_uid(), "LEAN-QR-1"
        series: dict[str, dict[str, Path]] = {}
        uids: dict[str, str] = {}
        for name, items in PLAN.items():
            uids[name] = generate_uid()
            series[name] = {}
            for number, (kind, syntax) in enumerate(items, 1):
                ds = copy.deepcopy(ct if kind == "ct" else mr)
                ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID = study, uids[name], patient
                ds.InstanceNumber = number
                path = save(ds, corpus, syntax)
                series[name][path.stem] = path
        store_as_encoded(archive, [p for s in series.values() for p in s.values()])
        addrs = archive.grpc_addrs
        clients = (
            AuthClient(channel(addrs["auth"])),
            StorageClient(channel(addrs["storage"])),
            MetadataClient(channel(addrs["metadata"])),
        )
        yield World(archive, peers, study, series, uids, patient, clients)
    finally:
        for peer in peers.values():
            peer.proc.terminate()
            peer.proc.wait(10)
        assert archive.stop() == 0, "".join(archive.output)
