"""Precomputed series metadata (RefreshMetadata, what the metadata consumer
calls per event): /metadata reads one row per series while it is current,
and never serves it once the series changed."""

from __future__ import annotations

import json
from typing import Any

import grpc
from sqlalchemy import select, update

from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from metadata_svc import headers
from metadata_svc.index import MetadataIndex
from metadata_svc.schema import Series, SeriesMetadata
from testbed.records import make_ds, record


def index(stub: Any, *recs: md_pb.InstanceRecord) -> None:
    stub.IndexInstances(md_pb.IndexInstancesRequest(records=recs))


def metadata(stub: Any, tenant: str, study: str, series: str = "") -> list[str]:
    """SOP Instance UIDs of /metadata, in order."""
    resp = stub.GetMetadata(
        md_pb.GetMetadataRequest(tenant=tenant, study_instance_uid=study, series_instance_uid=series)
    )
    return [json.loads(h)["00080018"]["Value"][0] for h in resp.instances]


def refresh(stub: Any, tenant: str, study: str, series: str = "") -> int:
    return stub.RefreshMetadata(
        md_pb.RefreshMetadataRequest(tenant=tenant, study_instance_uid=study, series_instance_uid=series)
    ).series_refreshed


def _stored(md_index: MetadataIndex) -> dict[int, tuple[int, bytes]]:
    with md_index.db.reader() as s:
        return {r.series_pk: (r.revision, r.payload) for r in s.scalars(select(SeriesMetadata))}


def _tamper(md_index: MetadataIndex, tenant: str, marker: str) -> None:
    """Replaces every precomputed payload by a recognisable one."""
    payload = md_pb.GetMetadataResponse(
        instances=[json.dumps({"00080018": {"vr": "UI", "Value": [marker]}}).encode()]
    ).SerializeToString()
    with md_index.db.writer() as s, s.begin():
        s.execute(update(SeriesMetadata).values(payload=payload))


def test_refresh_serves_the_same_headers_in_order(grpc_stub: Any, md_index: MetadataIndex, tenant: str) -> None:
    index(
        grpc_stub,
        *(
            record(make_ds("5.1", f"5.1.{se}", f"5.1.{se}.{n}", series_number=str(se), instance_number=str(n)), tenant)
            for se in (2, 1)
            for n in (3, 1, 2)
        ),
    )
    before = grpc_stub.GetMetadata(md_pb.GetMetadataRequest(tenant=tenant, study_instance_uid="5.1")).instances
    assert refresh(grpc_stub, tenant, "5.1") == 2
    after = grpc_stub.GetMetadata(md_pb.GetMetadataRequest(tenant=tenant, study_instance_uid="5.1")).instances
    assert list(after) == list(before)
    assert metadata(grpc_stub, tenant, "5.1") == [f"5.1.{se}.{n}" for se in (1, 2) for n in (1, 2, 3)]
    assert metadata(grpc_stub, tenant, "5.1", "5.1.2") == ["5.1.2.1", "5.1.2.2", "5.1.2.3"]
    # Idempotent: nothing changed, nothing rewritten.
    assert refresh(grpc_stub, tenant, "5.1") == 0
    assert list(
        grpc_stub.GetMetadata(md_pb.GetMetadataRequest(tenant=tenant, study_instance_uid="5.1")).instances
    ) == list(before)


def test_current_precompute_is_what_is_served_and_a_change_retires_it(
    grpc_stub: Any, md_index: MetadataIndex, tenant: str
) -> None:
    index(
        grpc_stub,
        record(make_ds("6.1", "6.1.1", "6.1.1.1"), tenant),
        record(make_ds("6.1", "6.1.2", "6.1.2.1", series_number="2"), tenant),
    )
    assert refresh(grpc_stub, tenant, "6.1", "6.1.1") == 1
    _tamper(md_index, tenant, "9.9.9")
    # The current precomputed row is the answer: one read per series.
    assert metadata(grpc_stub, tenant, "6.1") == ["9.9.9", "6.1.2.1"]
    # A new instance bumps the series revision: the old row is not served.
    index(grpc_stub, record(make_ds("6.1", "6.1.1", "6.1.1.2", instance_number="2"), tenant))
    assert metadata(grpc_stub, tenant, "6.1") == ["6.1.1.1", "6.1.1.2", "6.1.2.1"]
    assert refresh(grpc_stub, tenant, "6.1") == 2
    _tamper(md_index, tenant, "9.9.8")
    # So does a deletion.
    grpc_stub.DeleteInstances(
        md_pb.DeleteInstancesRequest(
            tenant=tenant, study_instance_uid="6.1", series_instance_uid="6.1.1", sop_instance_uid="6.1.1.1"
        )
    )
    assert metadata(grpc_stub, tenant, "6.1") == ["6.1.1.2", "9.9.8"]


def test_an_older_revision_never_overwrites_a_newer_one(grpc_stub: Any, md_index: MetadataIndex, tenant: str) -> None:
    index(grpc_stub, record(make_ds("7.1", "7.1.1", "7.1.1.1"), tenant))
    index(grpc_stub, record(make_ds("7.1", "7.1.1", "7.1.1.2", instance_number="2"), tenant))
    assert refresh(grpc_stub, tenant, "7.1") == 1
    stored = _stored(md_index)
    (pk,) = [pk for pk, (_, payload) in stored.items() if b"7.1.1.2" in payload and b"7.1.1.1" in payload]
    revision = stored[pk][0]
    # A late writer holding an older snapshot loses.
    with md_index.db.write() as conn:
        headers.upsert(conn, [{"series_pk": pk, "revision": revision - 1, "payload": b"old", "members": ""}])
    assert _stored(md_index)[pk] == stored[pk]


def test_refresh_of_what_is_gone_is_a_no_op(grpc_stub: Any, tenant: str) -> None:
    index(grpc_stub, record(make_ds("8.1", "8.1.1", "8.1.1.1"), tenant))
    grpc_stub.DeleteInstances(md_pb.DeleteInstancesRequest(tenant=tenant, study_instance_uid="8.1"))
    assert refresh(grpc_stub, tenant, "8.1") == 0
    assert refresh(grpc_stub, tenant, "8.1", "8.1.1") == 0


def _instance(tenant: str, sop: str, number: str, series: str = "9.1.1", model: str = "ScannerX") -> Any:
    return record(
        make_ds("9.1", series, sop, instance_number=number, model=model, series_number=series.rsplit(".", 1)[1]), tenant
    )


def _headers(stub: Any, tenant: str, series: str) -> list[bytes]:
    return list(
        stub.GetMetadata(
            md_pb.GetMetadataRequest(tenant=tenant, study_instance_uid="9.1", series_instance_uid=series)
        ).instances
    )


def test_refresh_after_each_change_serves_what_the_index_holds(
    grpc_stub: Any, md_index: MetadataIndex, tenant: str
) -> None:
    """Whatever changed since the stored form (appended, replaced in place,
    inserted before, renumbered, deleted, moved away, without a number),
    a refresh stores exactly what reading the instances gives."""
    steps: list[Any] = [
        *(lambda n=n: index(grpc_stub, _instance(tenant, f"9.1.1.{n}", str(n))) for n in range(1, 6)),
        lambda: index(grpc_stub, _instance(tenant, "9.1.1.3", "3", model="ScannerY")),
        lambda: index(grpc_stub, _instance(tenant, "9.1.1.0", "0")),
        lambda: index(grpc_stub, _instance(tenant, "9.1.1.2", "9")),
        lambda: grpc_stub.DeleteInstances(
            md_pb.DeleteInstancesRequest(
                tenant=tenant, study_instance_uid="9.1", series_instance_uid="9.1.1", sop_instance_uid="9.1.1.4"
            )
        ),
        lambda: index(grpc_stub, _instance(tenant, "9.1.1.5", "5", series="9.1.2")),
        lambda: index(grpc_stub, _instance(tenant, "9.1.1.6", "")),
        lambda: index(grpc_stub, _instance(tenant, "9.1.1.7", "10"), _instance(tenant, "9.1.1.8", "11")),
        lambda: index(grpc_stub, _instance(tenant, "9.1.1.7", "10", model="ScannerZ")),
    ]
    for step in steps:
        step()
        for series in ("9.1.1", "9.1.2"):
            try:
                read = _headers(grpc_stub, tenant, series)  # not current: read from the instances
            except grpc.RpcError:
                continue
            refresh(grpc_stub, tenant, "9.1", series)
            assert refresh(grpc_stub, tenant, "9.1", series) == 0  # current: what is served now
            assert _headers(grpc_stub, tenant, series) == read
    assert [json.loads(h)["00080018"]["Value"][0] for h in _headers(grpc_stub, tenant, "9.1.1")] == [
        "9.1.1.0",
        "9.1.1.1",
        "9.1.1.3",
        "9.1.1.2",
        "9.1.1.7",
        "9.1.1.8",
        "9.1.1.6",
    ]


def test_a_refresh_rereads_only_what_changed(grpc_stub: Any, md_index: MetadataIndex, tenant: str) -> None:
    index(
        grpc_stub, *(record(make_ds("10.1", "10.1.1", f"10.1.1.{n}", instance_number=str(n)), tenant) for n in (1, 2))
    )
    assert refresh(grpc_stub, tenant, "10.1") == 1
    # A stored header that no longer matches its row shows whether it was read again.
    marker = json.dumps({"00080018": {"vr": "UI", "Value": ["9.9.9"]}}).encode()
    with md_index.db.write() as conn:
        ((pk, payload),) = conn.execute(
            select(SeriesMetadata.series_pk, SeriesMetadata.payload)
            .join(Series, Series.id == SeriesMetadata.series_pk)
            .where(Series.tenant == tenant)
        ).all()
        stored = md_pb.GetMetadataResponse.FromString(payload)
        stored.instances[0] = marker
        conn.execute(
            update(SeriesMetadata).where(SeriesMetadata.series_pk == pk).values(payload=stored.SerializeToString())
        )
    index(grpc_stub, record(make_ds("10.1", "10.1.1", "10.1.1.3", instance_number="3"), tenant))
    assert refresh(grpc_stub, tenant, "10.1") == 1
    assert metadata(grpc_stub, tenant, "10.1") == ["9.9.9", "10.1.1.2", "10.1.1.3"]
    # An instance left the series: everything is read again.
    grpc_stub.DeleteInstances(
        md_pb.DeleteInstancesRequest(
            tenant=tenant, study_instance_uid="10.1", series_instance_uid="10.1.1", sop_instance_uid="10.1.1.2"
        )
    )
    assert refresh(grpc_stub, tenant, "10.1") == 1
    assert metadata(grpc_stub, tenant, "10.1") == ["10.1.1.1", "10.1.1.3"]
