"""A destination's worker in process, against real services: StorageService
on a folder or on S3 (SeaweedFS, presigned URLs), MetadataService on
SQLite, objects ingested by the real pipeline, and a pynetdicom storage SCP
as the peer. The peer gets the stored bytes in the stored transfer syntax;
a failing instance is retried after its backoff without holding up the
others; a peer that is down makes the worker wait out its backoff; the
metrics count it all; spool files of bucket objects are removed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

from common.blobs import Blobs
from common.clients import MetadataClient, StorageClient, channel
from common.gen.dicomserver.v1 import metadata_service_pb2_grpc as md_grpc
from common.gen.dicomserver.v1 import storage_service_pb2_grpc as st_grpc
from common.grpc_server import build_server
from common.ingest import IngestPipeline
from eventbus.routing.config import DimseDestination
from eventbus.routing.delivery import DestinationWorker, refresh_metrics
from eventbus.routing.dimse import DimseSender
from eventbus.routing.objects import ObjectFiles
from eventbus.routing.queue import DeliveryQueue, Retry, Target
from eventbus.store import Store
from metadata_svc.db import Database
from metadata_svc.index import MetadataIndex
from metadata_svc.service import MetadataService
from storage_svc.backend import open_store
from storage_svc.filesystem import FilesystemStore
from storage_svc.service import StorageService
from storage_svc.settings import StorageSettings
from testbed.processes import free_port
from testbed.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedS3
from tests.support import split_part10

FILES = ["CT_small.dcm", "MR_small_jpeg_ls_lossless.dcm", "rtplan.dcm", "ExplVR_BigEnd.dcm"]


@dataclass
class Peer:
    """A pynetdicom storage SCP that keeps what it receives, as received."""

    port: int = field(default_factory=free_port)
    syntaxes: list[str] = field(default_factory=lambda: list(ALL_TRANSFER_SYNTAXES))
    received: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # SOP UID -> (syntax, data set bytes)
    fail: dict[str, int] = field(default_factory=dict)  # SOP UID -> status to answer
    server: Any = None

    def start(self) -> None:
        ae = AE(ae_title="PEER")
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, self.syntaxes)
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def stop(self) -> None:
        self.server.shutdown()

    def _store(self, event: evt.Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        if uid in self.fail:
            return self.fail[uid]
        self.received[uid] = (str(event.context.transfer_syntax), event.encoded_dataset(include_meta=False))
        return 0x0000


@dataclass
class Env:
    addr: str
    queue: DeliveryQueue
    metadata: MetadataClient
    storage: StorageClient
    pipeline: IngestPipeline
    files: ObjectFiles
    spool: Path
    stored: dict[str, Path] = field(default_factory=dict)  # SOP UID -> original file

    def ingest(self, path: Path) -> str:
        staged = self.pipeline.stage()
        staged.write(path.read_bytes())
        outcome = self.pipeline.store(staged, "default")
        assert outcome.dicom_status == 0, outcome.reason
        return str(outcome.ref.sop_instance_uid)

    def worker(self, peer: Peer, name: str, retry: Retry) -> DestinationWorker:
        dest = DimseDestination(
            type="dimse", host="127.0.0.1", port=peer.port, ae_title="PEER", tenants=["default"], timeout=5
        )
        return DestinationWorker(
            name, dest, DimseSender(dest, "ROUTER"), self.queue, self.metadata, self.files, retry, batch=10
        )

    def queue_all(self, destination: str) -> None:
        targets = []
        for uid, path in self.stored.items():
            ds = dcmread(path, stop_before_pixels=True)
            targets.append(Target(destination, "default", ds.StudyInstanceUID, ds.SeriesInstanceUID, uid, "test"))
        self.queue.add(targets, now=time.time())


@pytest.fixture(scope="module", params=["filesystem", "s3"])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp(f"routing-{request.param}")
    seaweed = None
    if request.param == "s3":
        seaweed = SeaweedS3(root / "seaweed")
        seaweed.start()
        store = open_store(
            StorageSettings(
                storage_backend="s3",
                s3_endpoint_url=seaweed.endpoint,
                s3_bucket=seaweed.bucket,
                s3_access_key_id=ACCESS_KEY,
                s3_secret_access_key=SECRET_KEY,
                s3_create_bucket=True,
            )
        )
    else:
        store = FilesystemStore(root / "objects", fsync=False)
    db = Database.from_url(f"sqlite:///{root / 'index.sqlite3'}")

    def register(server: grpc.Server) -> None:
        st_grpc.add_StorageServiceServicer_to_server(StorageService(store), server)
        md_grpc.add_MetadataServiceServicer_to_server(MetadataService(MetadataIndex(db)), server)

    server, _health, port = build_server(
        register, ["dicomserver.v1.StorageService", "dicomserver.v1.MetadataService"], "127.0.0.1:0"
    )
    ch = channel(f"127.0.0.1:{port}")
    storage, metadata = StorageClient(ch), MetadataClient(ch)
    pipeline = IngestPipeline(storage, metadata, Blobs(storage, spool_dir=str(root)))
    bus = Store(f"sqlite:///{root / 'bus.sqlite3'}")
    spool = root / "spool"
    spool.mkdir()
    e = Env(
        f"127.0.0.1:{port}",
        DeliveryQueue(bus.engine),
        metadata,
        storage,
        pipeline,
        ObjectFiles(storage, str(spool)),
        spool,
    )
    for name in FILES:
        path = Path(get_testdata_file(name, download=False))
        e.stored[e.ingest(path)] = path
    yield e
    ch.close()
    server.stop(None)
    bus.dispose()
    db.dispose()
    if seaweed is not None:
        seaweed.stop()


def sample(name: str, destination: str) -> float:
    return REGISTRY.get_sample_value(name, {"destination": destination}) or 0.0


def test_the_peer_gets_the_stored_bytes_and_a_failing_instance_waits_its_turn(env: Env, request: Any) -> None:
    name = f"peer-{request.node.callspec.id}"
    peer = Peer()
    peer.start()
    stop = threading.Event()
    try:
        poison = next(iter(env.stored))
        peer.fail[poison] = 0xA700
        worker = env.worker(peer, name, Retry(max_attempts=3, backoff=0.5, max_backoff=1))
        env.queue_all(name)
        refresh_metrics(env.queue, [name], time.time())
        assert sample("dicomserver_routing_queued", name) == len(FILES)
        assert worker.run_once(stop) == 0.0
        assert set(peer.received) == set(env.stored) - {poison}
        for uid, (syntax, data) in peer.received.items():
            original = env.stored[uid]
            assert syntax == dcmread(original, stop_before_pixels=True).file_meta.TransferSyntaxUID, uid
            assert data == split_part10(original.read_bytes())[1], f"{uid}: not the stored bytes"
        assert sample("dicomserver_routing_sent_total", name) == len(FILES) - 1
        assert sample("dicomserver_routing_failed_total", name) == 1
        # The failing one waits its backoff; then, the peer takes it.
        wait = worker.run_once(stop)
        assert 0 < wait <= 0.5
        del peer.fail[poison]
        time.sleep(wait)
        assert worker.run_once(stop) == 0.0 and poison in peer.received
        refresh_metrics(env.queue, [name], time.time())
        assert sample("dicomserver_routing_queued", name) == 0 and sample("dicomserver_routing_lag_seconds", name) == 0
        assert list(env.spool.iterdir()) == [], "spool files left behind"
    finally:
        peer.stop()


def test_a_peer_that_is_down_makes_its_worker_back_off_then_receives_everything(env: Env, request: Any) -> None:
    name = f"down-{request.node.callspec.id}"
    peer = Peer()
    stop = threading.Event()
    worker = env.worker(peer, name, Retry(max_attempts=5, backoff=1.0, max_backoff=1.0))
    env.queue_all(name)
    assert worker.run_once(stop) == pytest.approx(1.0, abs=0.2)  # nothing listens: wait out the backoff
    assert worker.run_once(stop) > 0  # still waiting, nothing tried
    assert sample("dicomserver_routing_failed_total", name) == len(FILES)
    jobs = env.queue.due(name, time.time() + 10, 100)
    assert {j.attempts for j in jobs} == {1} and len(jobs) == len(FILES)
    peer.start()
    try:
        time.sleep(1.0)
        assert worker.run_once(stop) == 0.0
        assert set(peer.received) == set(env.stored)
        assert name not in env.queue.stats()  # nothing queued, no dead letters
    finally:
        peer.stop()


def test_a_peer_without_the_stored_syntax_gets_little_endian_objects_re_encoded_and_no_other(
    env: Env, request: Any
) -> None:
    name = f"implicit-{request.node.callspec.id}"
    peer = Peer(syntaxes=[ImplicitVRLittleEndian])
    peer.start()
    stop = threading.Event()
    try:
        worker = env.worker(peer, name, Retry(max_attempts=1, backoff=0, max_backoff=0))
        env.queue_all(name)
        worker.run_once(stop)
        syntax = {uid: dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID for uid, p in env.stored.items()}
        others = {uid for uid, ts in syntax.items() if ts not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)}
        assert len(others) == 2 and set(peer.received) == set(env.stored) - others  # JPEG-LS, big endian
        assert {syntax for syntax, _ in peer.received.values()} == {ImplicitVRLittleEndian}
        for uid, (_, data) in peer.received.items():
            if syntax[uid] == ImplicitVRLittleEndian:
                assert data == split_part10(env.stored[uid].read_bytes())[1]
        dead, _ = env.queue.dead_letters("default", name, 0, 10)
        assert {d.sop_instance_uid for d in dead} == others
        assert {d.error for d in dead} == {"the peer accepted no context for the object's stored transfer syntax"}
    finally:
        peer.stop()


def test_an_indexed_object_storage_lost_becomes_a_dead_letter_and_holds_up_nothing(
    env: Env, request: Any, tmp_path: Path
) -> None:
    name = f"lost-{request.node.callspec.id}"
    ds = dcmread(get_testdata_file("CT_small.dcm", download=False))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "lost.dcm", enforce_file_format=True)
    lost = env.ingest(tmp_path / "lost.dcm")
    (location,) = env.metadata.locate_each("default", [lost])
    assert env.storage.delete(location.object_key)
    peer = Peer()
    peer.start()
    try:
        worker = env.worker(peer, name, Retry(max_attempts=1, backoff=0, max_backoff=0))
        env.queue.add(
            [Target(name, "default", ds.StudyInstanceUID, ds.SeriesInstanceUID, lost, "test")], now=time.time()
        )
        env.queue_all(name)
        assert worker.run_once(threading.Event()) == 0.0
        assert set(peer.received) == set(env.stored)
        (dead,), _ = env.queue.dead_letters("default", name, 0, 10)
        assert dead.sop_instance_uid == lost and dead.error.startswith("the stored object cannot be read")
        assert list(env.spool.iterdir()) == []
    finally:
        peer.stop()
