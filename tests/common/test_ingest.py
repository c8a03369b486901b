"""The ingest pipeline (common/ingest.py) on its own, over an in-process
StorageService (objects folder) and MetadataService (SQLite): what each
outcome leaves in storage and in the index."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import grpc
import pytest

from common import errors
from common.clients import MetadataClient, StorageClient
from common.gen.dicomserver.v1 import ingest_service_pb2 as ingest_pb
from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from common.gen.dicomserver.v1 import metadata_service_pb2_grpc as md_grpc
from common.gen.dicomserver.v1 import storage_service_pb2_grpc as st_grpc
from common.ingest import IngestPipeline
from dicomcore.status import (
    CANNOT_UNDERSTAND,
    DATASET_MISMATCH,
    DUPLICATE_INSTANCE,
    OUT_OF_RESOURCES,
    SUCCESS,
)
from metadata_svc.db import Database
from metadata_svc.index import MetadataIndex
from metadata_svc.service import MetadataService
from storage_svc.filesystem import FilesystemStore
from storage_svc.service import StorageService
from tests.support import small_ct

TENANT = "default"
OVERWRITE, KEEP_FIRST, REJECT = (
    md_pb.DUPLICATE_POLICY_OVERWRITE,
    md_pb.DUPLICATE_POLICY_KEEP_FIRST,
    md_pb.DUPLICATE_POLICY_REJECT,
)


@dataclass
class Services:
    storage: StorageClient
    metadata: MetadataClient
    objects: Path

    def stored(self) -> list[bytes]:
        """The committed objects in the objects folder (staging left out)."""
        return sorted(p.read_bytes() for p in self.objects.rglob("*.dcm") if ".staging" not in p.parts)

    def served(self, study: str) -> list[bytes]:
        return sorted(self.storage.get_bytes(loc.object_key) for loc in self.metadata.locate(TENANT, study))


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    db = Database.from_url(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    server = grpc.server(ThreadPoolExecutor(8))
    st_grpc.add_StorageServiceServicer_to_server(StorageService(FilesystemStore(tmp_path / "objects")), server)
    md_grpc.add_MetadataServiceServicer_to_server(MetadataService(MetadataIndex(db)), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Services(StorageClient(channel), MetadataClient(channel), tmp_path / "objects")
    finally:
        channel.close()
        server.stop(0)
        db.dispose()


def store(pipeline: IngestPipeline, data: bytes, policy: int = OVERWRITE, **expected: str) -> ingest_pb.InstanceOutcome:
    staged = pipeline.stage()
    staged.write(data)
    return pipeline.store(staged, TENANT, policy=policy, **expected)


def variant(study: str, sop: str, name: str) -> bytes:
    """The same instance UIDs with other content (another patient name)."""
    ds, _ = small_ct(study, PatientName=name)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_a_stored_object_is_committed_indexed_and_served_as_sent(services: Services) -> None:
    pipeline = IngestPipeline(services.storage, services.metadata)
    ds, data = small_ct(PatientName="Pipeline^One")
    outcome = store(pipeline, data, calling_ae_title="MODALITY")
    assert (outcome.status, outcome.dicom_status, outcome.index_outcome) == (
        ingest_pb.STORE_STATUS_STORED,
        SUCCESS,
        md_pb.INDEX_OUTCOME_CREATED,
    )
    assert outcome.ref.sop_instance_uid == ds.SOPInstanceUID and outcome.sop_class_uid == ds.SOPClassUID
    assert services.stored() == [data] == services.served(ds.StudyInstanceUID)
    (loc,) = services.metadata.locate(TENANT, ds.StudyInstanceUID)
    assert (loc.ref.series_instance_uid, loc.size) == (ds.SeriesInstanceUID, len(data))


@pytest.mark.parametrize(
    ("data", "expected", "status"),
    [
        (b"not dicom at all" * 40, {}, CANNOT_UNDERSTAND),
        (small_ct("1.2.3.4")[1], {"expected_study": "1.2.3.5"}, DATASET_MISMATCH),
        (small_ct()[1], {"expected_sop_class": "1.2.840.10008.5.1.4.1.1.4"}, DATASET_MISMATCH),
        (small_ct()[1], {"expected_sop_instance": "1.2.3.999"}, DATASET_MISMATCH),
    ],
)
def test_a_refused_object_leaves_nothing(
    services: Services, data: bytes, expected: dict[str, str], status: int
) -> None:
    pipeline = IngestPipeline(services.storage, services.metadata)
    outcome = store(pipeline, data, **expected)
    assert (outcome.status, outcome.dicom_status) == (ingest_pb.STORE_STATUS_FAILED, status), outcome.reason
    assert outcome.reason
    assert services.stored() == []
    assert [p for p in services.objects.rglob("*") if p.is_file()] == [], "a staged part was left behind"


@pytest.mark.parametrize(
    ("policy", "kept", "index_outcome", "status"),
    [
        (OVERWRITE, "second", md_pb.INDEX_OUTCOME_REPLACED, SUCCESS),
        (KEEP_FIRST, "first", md_pb.INDEX_OUTCOME_KEPT_EXISTING, SUCCESS),
        (REJECT, "first", md_pb.INDEX_OUTCOME_REJECTED_DUPLICATE, DUPLICATE_INSTANCE),
    ],
)
def test_a_second_object_with_the_same_uid_follows_the_policy(
    services: Services, policy: int, kept: str, index_outcome: int, status: int
) -> None:
    pipeline = IngestPipeline(services.storage, services.metadata)
    first = variant("1.2.826.0.1.3680043.8.498.7", "1.2.826.0.1.3680043.8.498.8", "First^Copy")
    second = variant("1.2.826.0.1.3680043.8.498.7", "1.2.826.0.1.3680043.8.498.8", "Second^Copy")
    assert store(pipeline, first).index_outcome == md_pb.INDEX_OUTCOME_CREATED
    outcome = store(pipeline, second, policy)
    assert (outcome.index_outcome, outcome.dicom_status) == (index_outcome, status)
    if index_outcome != md_pb.INDEX_OUTCOME_REJECTED_DUPLICATE:
        assert outcome.reason.endswith("replaced" if kept == "second" else "kept")
    # One copy: the one kept, served and alone in the objects folder.
    expected = [second if kept == "second" else first]
    assert services.served("1.2.826.0.1.3680043.8.498.7") == expected == services.stored()


def test_an_index_that_cannot_be_reached_fails_the_object_and_keeps_its_bytes_for_the_sweep(
    services: Services,
) -> None:
    """The index may have committed before its answer was lost, so the
    bytes stay (storage's sweep removes them if no row points at them)."""
    down = grpc.insecure_channel("127.0.0.1:9")  # nothing listens there
    pipeline = IngestPipeline(services.storage, MetadataClient(down))
    ds, data = small_ct()
    outcome = store(pipeline, data)
    assert (outcome.status, outcome.dicom_status) == (ingest_pb.STORE_STATUS_FAILED, OUT_OF_RESOURCES)
    with pytest.raises(errors.NotFound):
        services.metadata.locate(TENANT, ds.StudyInstanceUID)
    assert services.stored() == [data]
    assert (
        services.metadata.referenced_objects(
            [p.relative_to(services.objects).as_posix() for p in services.objects.rglob("*.dcm")]
        )
        == []
    )


def test_storage_that_cannot_be_reached_fails_the_object_with_its_uids(tmp_path: Path) -> None:
    """Staging falls back to a local spool, so the failure names the instance."""
    down = grpc.insecure_channel("127.0.0.1:9")  # nothing listens there
    pipeline = IngestPipeline(StorageClient(down), MetadataClient(down))
    ds, data = small_ct()
    staged = pipeline.stage()
    staged.write(data)
    spool = Path(staged.path)
    outcome = pipeline.store(staged, TENANT)
    assert (outcome.status, outcome.dicom_status) == (ingest_pb.STORE_STATUS_FAILED, OUT_OF_RESOURCES)
    assert outcome.ref.sop_instance_uid == ds.SOPInstanceUID and "storage" in outcome.reason
    assert not spool.exists()
