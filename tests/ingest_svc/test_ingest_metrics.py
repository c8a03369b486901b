"""The ingest pipeline counts what it stores, by outcome, and the bytes."""

from __future__ import annotations

import io

from prometheus_client import REGISTRY

from common.gen.dicomserver.v1 import ingest_service_pb2 as ingest_pb
from common.ingest import IngestPipeline


def test_failed_objects_are_counted_and_add_no_bytes() -> None:
    def sample(name: str, labels: dict[str, str] | None = None) -> float:
        return REGISTRY.get_sample_value(name, labels or {}) or 0.0

    failed = {"status": "STORE_STATUS_FAILED"}
    before = sample("dicomserver_ingest_instances_total", failed), sample("dicomserver_ingest_bytes_total")
    # Garbage is refused before any service is called, so no clients are needed.
    pipeline = IngestPipeline(storage=None, metadata=None)  # type: ignore[arg-type]
    outcome = pipeline.store(io.BytesIO(b"not dicom" * 50), 450, "default")
    assert outcome.status == ingest_pb.STORE_STATUS_FAILED
    assert sample("dicomserver_ingest_instances_total", failed) == before[0] + 1
    assert sample("dicomserver_ingest_bytes_total") == before[1]
