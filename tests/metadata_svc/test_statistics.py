"""GetStatistics over the real service (SQLite and PostgreSQL): per-tenant
usage, per-day and per-modality counts, the recent ingest rate, tenant
walls, and bad requests refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from testbed.records import make_ds, record


def _store(grpc_stub: Any, tenant: str) -> None:
    records = [
        record(make_ds("1.2.3.1", "1.2.3.1.1", "1.2.3.1.1.1", modality="CT"), tenant, size=1000),
        record(make_ds("1.2.3.1", "1.2.3.1.1", "1.2.3.1.1.2", modality="CT"), tenant, size=1000),
        record(make_ds("1.2.3.1", "1.2.3.1.2", "1.2.3.1.2.1", modality="SR"), tenant, size=10),
        record(make_ds("1.2.3.2", "1.2.3.2.1", "1.2.3.2.1.1", modality="MR", patient_id="P2"), tenant, size=500),
    ]
    grpc_stub.IndexInstances(md_pb.IndexInstancesRequest(records=records))


def test_counts_usage_days_modalities_and_rate(grpc_stub: Any, tenant: str) -> None:
    _store(grpc_stub, tenant)
    other = tenant + "x"
    grpc_stub.IndexInstances(
        md_pb.IndexInstancesRequest(
            records=[record(make_ds("1.2.9.1", "1.2.9.1.1", "1.2.9.1.1.1", modality="CT"), other, size=99999)]
        )
    )

    stats = grpc_stub.GetStatistics(md_pb.GetStatisticsRequest(tenants=[tenant], days=7))
    (usage,) = stats.tenants
    assert (usage.tenant, usage.patients, usage.studies, usage.series, usage.instances, usage.bytes) == (
        tenant,
        2,
        2,
        3,
        4,
        2510,
    )
    assert len(stats.days) == 7
    today = datetime.now(UTC).date()
    assert stats.days[-1].date == today.isoformat()
    assert stats.days[0].date == (today - timedelta(days=6)).isoformat()
    assert (stats.days[-1].studies, stats.days[-1].instances, stats.days[-1].bytes) == (2, 4, 2510)
    assert all(d.instances == 0 for d in stats.days[:-1])
    by_modality = {m.modality: (m.studies, m.series, m.instances) for m in stats.modalities}
    assert by_modality == {"CT": (1, 1, 2), "SR": (1, 1, 1), "MR": (1, 1, 1)}
    assert stats.modalities[0].modality == "CT"  # most instances first
    assert stats.instances_last_minute == 4 and stats.instances_last_hour == 4

    both = grpc_stub.GetStatistics(md_pb.GetStatisticsRequest(tenants=[other, tenant]))
    assert [(u.tenant, u.instances, u.bytes) for u in both.tenants] == [(other, 1, 99999), (tenant, 4, 2510)]
    assert len(both.days) == 30


def test_a_tenant_without_data_counts_zero(grpc_stub: Any, tenant: str) -> None:
    stats = grpc_stub.GetStatistics(md_pb.GetStatisticsRequest(tenants=[tenant], days=1))
    assert stats.tenants[0].instances == 0 and stats.tenants[0].bytes == 0
    assert [d.instances for d in stats.days] == [0]
    assert list(stats.modalities) == []


@pytest.mark.parametrize(
    "request_",
    [
        md_pb.GetStatisticsRequest(),
        md_pb.GetStatisticsRequest(tenants=["no/slash"]),
        md_pb.GetStatisticsRequest(tenants=["default"], days=367),
        md_pb.GetStatisticsRequest(tenants=["default"], days=-1),
    ],
    ids=["no tenant", "bad tenant", "too many days", "negative days"],
)
def test_bad_requests_are_invalid_arguments(grpc_stub: Any, request_: md_pb.GetStatisticsRequest) -> None:
    with pytest.raises(grpc.RpcError) as info:
        grpc_stub.GetStatistics(request_)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_days_are_utc_days_of_the_write(md_index: Any, tenant: str) -> None:
    """A write just before midnight UTC counts on its own day."""
    from metadata_svc.index import MetadataIndex
    from metadata_svc.statistics import statistics

    assert isinstance(md_index, MetadataIndex)
    md_index.index(
        [record(make_ds("1.2.4.1", "1.2.4.1.1", "1.2.4.1.1.1"), tenant, size=7)], md_pb.DUPLICATE_POLICY_OVERWRITE
    )
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    stats = statistics(md_index.db, md_pb.GetStatisticsRequest(tenants=[tenant], days=2), now=tomorrow)
    assert [d.instances for d in stats.days] == [1, 0]
