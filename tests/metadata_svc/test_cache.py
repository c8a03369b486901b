"""The Redis cache in front of Query and GetMetadata, against a real
redis-server: hits, invalidation by writes and by RefreshMetadata (the event
consumer), and correct answers while Redis is down, paused or back."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator

import pytest

from common.gen.dicomserver.v1 import dicom_pb2, events_pb2
from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from metadata_svc.cache import Cache
from metadata_svc.index import MetadataIndex
from metadata_svc.service import MetadataService
from testbed.records import make_ds, record
from testbed.servers import Redis


class Ctx:
    def abort(self, code: object, details: str) -> None:
        raise RuntimeError(code, details)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[Redis]:
    server = Redis()  # its own: these tests stop and pause it
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def service(md_index: MetadataIndex, redis_server: Redis) -> Iterator[MetadataService]:
    if redis_server.dir is None or not (redis_server.dir / "redis.pid").exists():
        redis_server.start()
    cache = Cache(redis_server.url, ttl=60, timeout=0.2, retry_after=0.2)
    yield MetadataService(md_index, cache)
    cache.close()


def studies(svc: MetadataService, tenant: str) -> list[str]:
    resp = svc.Query(md_pb.QueryRequest(tenant=tenant, level=dicom_pb2.QUERY_LEVEL_STUDY), Ctx())
    return sorted(json.loads(m)["0020000D"]["Value"][0] for m in resp.matches)


def sops(svc: MetadataService, tenant: str, study: str) -> list[str]:
    resp = svc.GetMetadata(md_pb.GetMetadataRequest(tenant=tenant, study_instance_uid=study), Ctx())
    return [json.loads(h)["00080018"]["Value"][0] for h in resp.instances]


def store(svc: MetadataService, tenant: str, study: str, sop: str) -> None:
    svc.IndexInstances(md_pb.IndexInstancesRequest(records=[record(make_ds(study, study + ".1", sop), tenant)]), Ctx())


def test_hits_and_invalidation_by_writes(service: MetadataService, tenant: str) -> None:
    cache = service.cache
    assert cache is not None
    store(service, tenant, "1.1", "1.1.1.1")
    assert studies(service, tenant) == ["1.1"] and sops(service, tenant, "1.1") == ["1.1.1.1"]
    hits = cache.hits
    assert studies(service, tenant) == ["1.1"] and sops(service, tenant, "1.1") == ["1.1.1.1"]
    assert cache.hits == hits + 2
    store(service, tenant, "1.2", "1.2.1.1")
    store(service, tenant, "1.1", "1.1.1.2")
    assert studies(service, tenant) == ["1.1", "1.2"]
    assert sops(service, tenant, "1.1") == ["1.1.1.1", "1.1.1.2"]
    service.DeleteInstances(md_pb.DeleteInstancesRequest(tenant=tenant, study_instance_uid="1.2"), Ctx())
    assert studies(service, tenant) == ["1.1"]
    # RefreshMetadata (the consumer's call per event) invalidates too: a change
    # made by another replica whose own invalidation was lost.
    assert sops(service, tenant, "1.1") == ["1.1.1.1", "1.1.1.2"]
    other = MetadataService(service.index)  # a replica without Redis
    store(other, tenant, "1.1", "1.1.1.3")
    assert sops(service, tenant, "1.1") == ["1.1.1.1", "1.1.1.2"]  # cached: not yet told
    service.RefreshMetadata(md_pb.RefreshMetadataRequest(tenant=tenant, study_instance_uid="1.1"), Ctx())
    assert sops(service, tenant, "1.1") == ["1.1.1.1", "1.1.1.2", "1.1.1.3"]


def test_redis_down_answers_stay_correct(service: MetadataService, redis_server: Redis, tenant: str) -> None:
    store(service, tenant, "2.1", "2.1.1.1")
    assert studies(service, tenant) == ["2.1"]
    redis_server.stop()
    assert studies(service, tenant) == ["2.1"]
    store(service, tenant, "2.2", "2.2.1.1")
    assert studies(service, tenant) == ["2.1", "2.2"]
    assert sops(service, tenant, "2.2") == ["2.2.1.1"]
    redis_server.start()  # empty again: it keeps nothing on disk
    store(service, tenant, "2.3", "2.3.1.1")
    for _ in range(3):
        assert studies(service, tenant) == ["2.1", "2.2", "2.3"]


def test_missed_invalidation_is_never_served(service: MetadataService, redis_server: Redis, tenant: str) -> None:
    """Redis paused (not restarted, so it keeps its entries) while a write
    commits: the invalidation times out, and the old entries stay unread."""
    cache = service.cache
    assert cache is not None
    store(service, tenant, "3.1", "3.1.1.1")
    assert studies(service, tenant) == ["3.1"] and sops(service, tenant, "3.1") == ["3.1.1.1"]
    pid = int((redis_server.dir / "redis.pid").read_text())  # type: ignore[operator]
    os.kill(pid, signal.SIGSTOP)
    try:
        store(service, tenant, "3.1", "3.1.1.2")
        assert sops(service, tenant, "3.1") == ["3.1.1.1", "3.1.1.2"]
    finally:
        os.kill(pid, signal.SIGCONT)
    hits = cache.hits
    time.sleep(cache.retry_after)  # the cache stays unused until then
    for _ in range(3):
        assert studies(service, tenant) == ["3.1"]
        assert sops(service, tenant, "3.1") == ["3.1.1.1", "3.1.1.2"]
    assert cache.hits > hits  # the cache is in use again, with fresh entries


def test_audit_records_leave_cached_answers_alone(service: MetadataService, tenant: str) -> None:
    """An audit record changes nothing an answer depends on: it must not
    cost the next reader a cache miss."""
    cache = service.cache
    assert cache is not None
    store(service, tenant, "4.1", "4.1.1.1")
    assert studies(service, tenant) == ["4.1"] and sops(service, tenant, "4.1") == ["4.1.1.1"]
    hits = cache.hits
    service.RecordAudit(
        md_pb.RecordAuditRequest(
            records=[
                events_pb2.AuditRecord(
                    tenant=tenant,
                    subject="alice",
                    operation="GET /studies/{study}/metadata",
                    study_instance_uid="4.1",
                    action=events_pb2.AuditRecord.ACTION_READ,
                    outcome=events_pb2.AuditRecord.OUTCOME_SUCCESS,
                )
            ]
        ),
        Ctx(),
    )
    assert studies(service, tenant) == ["4.1"] and sops(service, tenant, "4.1") == ["4.1.1.1"]
    assert cache.hits == hits + 2
