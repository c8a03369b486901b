"""The ingest pipeline counts what it stores, by outcome, and the bytes."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import REGISTRY

from common.blobs import StagedObject
from common.gen.dicomserver.v1 import ingest_service_pb2 as ingest_pb
from common.ingest import IngestPipeline


def test_failed_objects_are_counted_and_add_no_bytes(tmp_path: Path) -> None:
    def sample(name: str, labels: dict[str, str] | None = None) -> float:
        return REGISTRY.get_sample_value(name, labels or {}) or 0.0

    failed = {"status": "STORE_STATUS_FAILED"}
    before = sample("dicomserver_ingest_instances_total", failed), sample("dicomserver_ingest_bytes_total")
    # Garbage is refused before any service is called, so no clients are needed.
    pipeline = IngestPipeline(storage=None, metadata=None)  # type: ignore[arg-type]
    spool = tmp_path / "object.part"
    staged = StagedObject(spool.open("w+b"), str(spool), "", None)  # type: ignore[arg-type]
    staged.write(b"not dicom" * 50)
    outcome = pipeline.store(staged, "default")
    assert outcome.status == ingest_pb.STORE_STATUS_FAILED
    assert not spool.exists(), "a refused object leaves its staged bytes behind"
    assert sample("dicomserver_ingest_instances_total", failed) == before[0] + 1
    assert sample("dicomserver_ingest_bytes_total") == before[1]
