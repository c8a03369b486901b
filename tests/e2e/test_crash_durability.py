"""Nothing acknowledged is lost when a service dies: 1,000 objects go in over
4 associations while storage_svc, then metadata_svc, then ingest_svc is
killed with SIGKILL and started again on the same data. Every object that
got a success or warning status is then retrievable byte-identical and
indexed, and after storage's sweep no object file is left that no index
row points to (nor any staging file)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from common.clients import MetadataClient, StorageClient, channel
from testbed.processes import free_port, stop_process
from tests.support import ROOT, split_part10

OBJECTS = 1000
ASSOCIATIONS = 4
ACKNOWLEDGED = {0x0000, 0xB000, 0xB006, 0xB007}
SERVICES = ["storage_svc", "metadata_svc", "auth_svc", "ingest_svc"]


class Services:
    """The core services and the DIMSE edge as separate processes, on fixed
    addresses and one data folder, so that each can be killed and started again."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.dimse_port = free_port()
        self.addrs = {name: f"127.0.0.1:{free_port()}" for name in SERVICES if name != "ingest_svc"}
        self.addrs["ingest_svc"] = f"127.0.0.1:{free_port()}"
        self.env = {
            **os.environ,
            "DICOMSERVER_DATA_DIR": str(data_dir),
            "DICOMSERVER_STORAGE_ADDR": self.addrs["storage_svc"],
            "DICOMSERVER_METADATA_ADDR": self.addrs["metadata_svc"],
            "DICOMSERVER_AUTH_ADDR": self.addrs["auth_svc"],
            "DICOMSERVER_INGEST_ADDR": self.addrs["ingest_svc"],
            "DICOMSERVER_DIMSE_HOST": "127.0.0.1",
            "DICOMSERVER_DIMSE_PORT": str(self.dimse_port),
            "DICOMSERVER_LOG_LEVEL": "WARNING",
            "DICOMSERVER_AUDIT_ENABLED": "false",
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> None:
        log = (self.data_dir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", name], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 60
        with grpc.insecure_channel(self.addrs[name]) as ch:
            while True:
                assert self.procs[name].poll() is None, (self.data_dir / f"{name}.log").read_text()[-3000:]
                try:
                    status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                assert time.monotonic() < deadline, f"{name} did not start"
                time.sleep(0.1)

    def kill(self, name: str) -> None:
        self.procs[name].kill()
        self.procs[name].wait()

    def stop_all(self) -> None:
        for name in reversed(SERVICES):
            if name in self.procs:
                stop_process(self.procs[name])


def make_object(study: str, series: str, n: int) -> tuple[Dataset, bytes]:
    """A small CT with 32x32 pixels, and its dataset encoded as it goes on the wire."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientID, ds.PatientName, ds.Modality = f"CRASH{n % 7}", f"Crash^Test{n % 7}", "CT"
    ds.InstanceNumber = n
    ds.Rows = ds.Columns = 32
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    ds.PixelData = (np.arange(32 * 32, dtype=np.uint16) + n).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return ds, buf.getvalue()


@dataclass
class Sender:
    """One association's worth of objects, sent in order; an object whose
    association broke is not retried (it was never acknowledged)."""

    port: int
    objects: list[tuple[Dataset, bytes]]
    statuses: dict[str, int | None] = field(default_factory=dict)
    progress: int = 0

    def run(self) -> None:
        ae = AE(ae_title="CRASHTEST")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        assoc = None
        for ds, _ in self.objects:
            deadline = time.monotonic() + 90
            while assoc is None or not assoc.is_established:
                assoc = ae.associate("127.0.0.1", self.port, ae_title="DICOMSERVER")
                if not assoc.is_established:
                    assert time.monotonic() < deadline, "the DIMSE edge did not come back"
                    time.sleep(0.2)
            try:
                rsp = assoc.send_c_store(ds)
                self.statuses[ds.SOPInstanceUID] = int(rsp.Status) if "Status" in rsp else None
            except (RuntimeError, OSError):
                self.statuses[ds.SOPInstanceUID] = None
            self.progress += 1
        if assoc is not None and assoc.is_established:
            assoc.release()


@pytest.mark.timeout(900)
def test_nothing_acknowledged_is_lost_when_services_are_killed(tmp_path: Path) -> None:
    services = Services(tmp_path)
    for name in SERVICES:
        services.start(name)
    studies = [(generate_uid(), generate_uid()) for _ in range(20)]
    objects = [make_object(*studies[n % len(studies)], n) for n in range(OBJECTS)]
    senders = [Sender(services.dimse_port, objects[k::ASSOCIATIONS]) for k in range(ASSOCIATIONS)]
    threads = [threading.Thread(target=s.run) for s in senders]
    try:
        for t in threads:
            t.start()
        for victim, at in (("storage_svc", 0.2), ("metadata_svc", 0.45), ("ingest_svc", 0.7)):
            while sum(s.progress for s in senders) < at * OBJECTS:
                assert any(t.is_alive() for t in threads)
                time.sleep(0.05)
            services.kill(victim)
            time.sleep(1.0)
            services.start(victim)
        for t in threads:
            t.join(600)
        statuses = {uid: st for s in senders for uid, st in s.statuses.items()}
        assert len(statuses) == OBJECTS
        acknowledged = {uid for uid, st in statuses.items() if st in ACKNOWLEDGED}
        failed = OBJECTS - len(acknowledged)
        # The kills must have cost something (else this proves nothing), not everything.
        assert 0 < failed < OBJECTS // 2, f"{failed} of {OBJECTS} objects were not acknowledged"

        # Everything starts again on the same data before anything is checked.
        services.stop_all()
        for name in SERVICES:
            services.start(name)
        storage = StorageClient(channel(services.addrs["storage_svc"]))
        metadata = MetadataClient(channel(services.addrs["metadata_svc"]))
        sent = {ds.SOPInstanceUID: wire for ds, wire in objects}
        locations = {loc.ref.sop_instance_uid: loc for loc in metadata.locate_each("default", list(sent))}
        missing = acknowledged - set(locations)
        assert not missing, f"{len(missing)} acknowledged objects are not in the index"
        for uid in acknowledged:
            _, dataset = split_part10(storage.get_bytes(locations[uid].object_key))
            assert dataset == sent[uid], f"stored bytes of {uid} differ from what was sent"

        time.sleep(1.1)  # the sweep leaves anything younger than its minimum age alone
        storage.sweep(min_age_seconds=1)
        objects_dir = tmp_path / "objects"
        leftovers = [p for p in (objects_dir / ".staging").iterdir()] + [p for p in (objects_dir / ".tmp").iterdir()]
        assert not leftovers, f"staging files outlived the sweep: {leftovers[:3]}"
        files = [
            str(p.relative_to(objects_dir))
            for p in objects_dir.rglob("*.dcm")
            if not p.relative_to(objects_dir).parts[0].startswith(".")
        ]
        referenced = set()
        for i in range(0, len(files), 1000):
            referenced |= set(metadata.referenced_objects(files[i : i + 1000]))
        orphans = sorted(set(files) - referenced)
        assert not orphans, f"{len(orphans)} object files no index row points to outlived the sweep"
        assert len(files) == len(locations)  # one file per indexed instance, nothing else
    finally:
        services.stop_all()
