"""IndexInstances with many records per call (what the edges' group commit
sends): a batch ends exactly as the same records indexed one call at a
time, whatever the records share, and numbers each tenant's changes
without gaps."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from common.gen.dicomserver.v1 import dicom_pb2
from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from testbed.records import make_ds, record

LEVELS = (
    dicom_pb2.QUERY_LEVEL_PATIENT,
    dicom_pb2.QUERY_LEVEL_STUDY,
    dicom_pb2.QUERY_LEVEL_SERIES,
    dicom_pb2.QUERY_LEVEL_INSTANCE,
)
OVERWRITE, KEEP_FIRST, REJECT = (
    md_pb.DUPLICATE_POLICY_OVERWRITE,
    md_pb.DUPLICATE_POLICY_KEEP_FIRST,
    md_pb.DUPLICATE_POLICY_REJECT,
)


def index(stub: Any, *recs: md_pb.InstanceRecord, policy: int = OVERWRITE) -> list[md_pb.IndexResult]:
    return list(stub.IndexInstances(md_pb.IndexInstancesRequest(records=recs, duplicate_policy=policy)).results)


def feed(stub: Any, tenant: str) -> list[Any]:
    return list(stub.ReadChangeFeed(md_pb.ReadChangeFeedRequest(tenant=tenant, limit=1000)).events)


def rec(tenant: str, key: str, study: str, series: str, sop: str, **attrs: Any) -> md_pb.InstanceRecord:
    return record(make_ds(study, series, sop, **attrs), tenant, key=f"{tenant}/{key}")


def scenario(tenant: str) -> tuple[list[md_pb.InstanceRecord], list[md_pb.InstanceRecord]]:
    """Records indexed before, then a batch that touches the same patient,
    study, series and instance several times."""
    before = [
        rec(tenant, "k0", "1.1", "1.1.1", "1.1.1.1", patient_id="P1", name="One^Old"),
        rec(tenant, "k1", "1.2", "1.2.1", "1.2.1.1", patient_id=""),  # an anonymous patient of its own
    ]
    batch = [
        rec(tenant, "a", "1.1", "1.1.1", "1.1.1.2", patient_id="P1", name="One^New", instance_number="2"),
        # The same SOP Instance twice: the later record wins (and names the first one's key).
        rec(tenant, "b", "1.3", "1.3.1", "1.3.1.1", patient_id="P3", description="first"),
        rec(tenant, "c", "1.3", "1.3.1", "1.3.1.1", patient_id="P3", description="second"),
        # An instance indexed before moves to another series of its study.
        rec(tenant, "d", "1.1", "1.1.2", "1.1.1.1", patient_id="P1", name="One^New", series_number="2"),
        # A study moves from its anonymous patient to a named one (then pruned), and back to a new anonymous one.
        rec(tenant, "e", "1.2", "1.2.1", "1.2.1.2", patient_id="P2", instance_number="2"),
        rec(tenant, "f", "1.2", "1.2.1", "1.2.1.3", patient_id="", instance_number="3"),
        # Two new studies without Patient ID: two patients.
        rec(tenant, "g", "1.4", "1.4.1", "1.4.1.1", patient_id=""),
        rec(tenant, "h", "1.5", "1.5.1", "1.5.1.1", patient_id=""),
        # A retried record: the key the index holds already.
        rec(tenant, "a", "1.1", "1.1.1", "1.1.1.2", patient_id="P1", name="One^New", instance_number="2"),
        # An instance of the batch moves to another study: its series, study and patient are left empty.
        rec(tenant, "i", "1.6", "1.6.1", "1.6.1.1", patient_id="P6"),
        rec(tenant, "j", "1.7", "1.7.1", "1.6.1.1", patient_id="P7"),
        # A study named by a later record under another Patient ID whose study comes first in the batch.
        rec(tenant, "k", "1.8", "1.8.1", "1.8.1.1", patient_id="P8"),
        rec(tenant, "l", "1.3", "1.3.1", "1.3.1.2", patient_id="P8", instance_number="2"),
    ]
    return before, batch


def normalized(message: Any, tenant: str) -> str:
    """A message as text, with its tenant's name replaced: two tenants compare equal."""
    return str(message).replace(tenant, "TENANT")


def state(stub: Any, tenant: str) -> dict[str, Any]:
    """Everything a client can see of a tenant's index."""
    out: dict[str, Any] = {}
    for level in LEVELS:
        resp = stub.Query(md_pb.QueryRequest(tenant=tenant, level=level, include_all_fields=True))
        out[f"query {level}"] = [json.loads(m) for m in resp.matches]
    studies = [m["0020000D"]["Value"][0] for m in out[f"query {dicom_pb2.QUERY_LEVEL_STUDY}"]]
    for study in studies:
        out[f"metadata {study}"] = list(
            stub.GetMetadata(md_pb.GetMetadataRequest(tenant=tenant, study_instance_uid=study)).instances
        )
        locs = stub.LocateInstances(md_pb.LocateInstancesRequest(tenant=tenant, study_instance_uid=study)).locations
        out[f"locations {study}"] = [normalized(loc, tenant) for loc in locs]
    events = feed(stub, tenant)
    out["feed"] = [(e.sequence, normalized(e.instance_stored, tenant)) for e in events]
    return out


@pytest.mark.parametrize("policy", [OVERWRITE, KEEP_FIRST, REJECT])
def test_a_batch_ends_as_sequential_calls(grpc_stub: Any, tenant: str, policy: int) -> None:
    one_by_one, batched = tenant + "-seq", tenant + "-batch"
    before, records = scenario(one_by_one)
    index(grpc_stub, *before)
    sequential = [index(grpc_stub, r, policy=policy)[0] for r in records]
    before, records = scenario(batched)
    index(grpc_stub, *before)
    together = index(grpc_stub, *records, policy=policy)

    assert [normalized(r, batched) for r in together] == [normalized(r, one_by_one) for r in sequential]
    assert state(grpc_stub, batched) == state(grpc_stub, one_by_one)
    events = feed(grpc_stub, batched)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    if policy == OVERWRITE:
        # Pruned: P2 and the first anonymous patient of 1.2 (the study moved on), P3 (1.3 moved to P8),
        # P6 with its study and series (its only instance moved to 1.7).
        patients = state(grpc_stub, batched)[f"query {dicom_pb2.QUERY_LEVEL_PATIENT}"]
        assert sorted(p.get("00100020", {}).get("Value", [""])[0] for p in patients) == ["", "", "", "P1", "P7", "P8"]
        studies = state(grpc_stub, batched)[f"query {dicom_pb2.QUERY_LEVEL_STUDY}"]
        assert sorted(s["0020000D"]["Value"][0] for s in studies) == ["1.1", "1.2", "1.3", "1.4", "1.5", "1.7", "1.8"]
        assert [(r.outcome, r.unreferenced_object_key) for r in together][1:3] == [
            (md_pb.INDEX_OUTCOME_CREATED, ""),
            (md_pb.INDEX_OUTCOME_REPLACED, f"{batched}/b"),
        ]
        assert together[8].unreferenced_object_key == ""  # the retried record


def test_two_tenants_in_one_batch_each_numbered_from_one(grpc_stub: Any, tenant: str) -> None:
    a, b = tenant + "-a", tenant + "-b"
    first = [
        rec(t, f"k{n}", "2.1", "2.1.1", f"2.1.1.{n}", instance_number=str(n))
        for n in range(1, 7)
        for t in ((a, b) if n % 2 else (b, a))
    ]
    assert [r.outcome for r in index(grpc_stub, *first)] == [md_pb.INDEX_OUTCOME_CREATED] * 12
    second = [rec(b, "k9", "2.1", "2.1.1", "2.1.1.9"), rec(a, "k1", "2.1", "2.1.1", "2.1.1.1")]
    index(grpc_stub, *second)
    for t in (a, b):
        events = feed(grpc_stub, t)
        assert [e.sequence for e in events] == list(range(1, 8))
        assert all(e.tenant == t and e.instance_stored.location.ref.tenant == t for e in events)
        expected = [r.location.object_key for r in first + second if r.location.ref.tenant == t]
        assert [e.instance_stored.location.object_key for e in events] == expected
    # The outbox has them in record order.
    outbox = grpc_stub.ReadOutbox(md_pb.ReadOutboxRequest(after_sequence=0, limit=1000)).events
    mine = [e.instance_stored.location.object_key for e in outbox if e.tenant in (a, b)]
    assert mine == [r.location.object_key for r in first + second]
    locs = grpc_stub.LocateInstances(md_pb.LocateInstancesRequest(tenant=a, study_instance_uid="2.1")).locations
    assert {loc.ref.tenant for loc in locs} == {a} and len(locs) == 6


@pytest.mark.parametrize(
    ("policy", "outcome"),
    [(KEEP_FIRST, md_pb.INDEX_OUTCOME_KEPT_EXISTING), (REJECT, md_pb.INDEX_OUTCOME_REJECTED_DUPLICATE)],
)
def test_keep_first_and_reject_see_earlier_records_of_the_batch(
    grpc_stub: Any, tenant: str, policy: int, outcome: int
) -> None:
    index(grpc_stub, rec(tenant, "old", "3.1", "3.1.1", "3.1.1.1"))
    results = index(
        grpc_stub,
        rec(tenant, "new", "3.1", "3.1.1", "3.1.1.2", description="kept"),
        rec(tenant, "dup", "3.1", "3.1.1", "3.1.1.2", description="not kept"),
        rec(tenant, "new", "3.1", "3.1.1", "3.1.1.2"),  # a retry of the first: its key is held
        rec(tenant, "old", "3.1", "3.1.1", "3.1.1.1"),
        policy=policy,
    )
    assert [(r.outcome, r.unreferenced_object_key) for r in results] == [
        (md_pb.INDEX_OUTCOME_CREATED, ""),
        (outcome, f"{tenant}/dup"),
        (outcome, ""),
        (outcome, ""),
    ]
    locs = grpc_stub.LocateInstances(md_pb.LocateInstancesRequest(tenant=tenant, study_instance_uid="3.1")).locations
    assert [loc.object_key for loc in locs] == [f"{tenant}/old", f"{tenant}/new"]
    (study,) = grpc_stub.Query(md_pb.QueryRequest(tenant=tenant, level=dicom_pb2.QUERY_LEVEL_STUDY)).matches
    assert json.loads(study)["00081030"]["Value"] == ["kept"]
    assert len(feed(grpc_stub, tenant)) == 2


def test_a_patient_move_inside_a_batch_prunes_the_patient_left(grpc_stub: Any, tenant: str) -> None:
    index(grpc_stub, rec(tenant, "k0", "4.1", "4.1.1", "4.1.1.1", patient_id="OLD"))
    index(
        grpc_stub,
        rec(tenant, "k1", "4.1", "4.1.1", "4.1.1.2", patient_id="NEW", instance_number="2"),
        rec(tenant, "k2", "4.2", "4.2.1", "4.2.1.1", patient_id="OLD", name="Other^Study"),
        rec(tenant, "k3", "4.2", "4.2.1", "4.2.1.2", patient_id="LAST", instance_number="2"),
    )
    patients = grpc_stub.Query(md_pb.QueryRequest(tenant=tenant, level=dicom_pb2.QUERY_LEVEL_PATIENT)).matches
    # OLD took study 4.2 for a moment, then lost both of its studies.
    assert sorted(json.loads(p)["00100020"]["Value"][0] for p in patients) == ["LAST", "NEW"]


def test_a_series_named_under_two_studies_fails_the_whole_batch(grpc_stub: Any, tenant: str) -> None:
    index(grpc_stub, rec(tenant, "k0", "5.1", "5.1.1", "5.1.1.1"))
    with pytest.raises(grpc.RpcError) as err:
        index(
            grpc_stub, rec(tenant, "k1", "5.2", "5.2.1", "5.2.1.1"), rec(tenant, "k2", "5.3", "5.2.1", "5.3.1.1")
        )  # 5.2.1 was made under 5.2 by the record before
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    resp = grpc_stub.Query(md_pb.QueryRequest(tenant=tenant, level=dicom_pb2.QUERY_LEVEL_STUDY))
    assert [json.loads(m)["0020000D"]["Value"][0] for m in resp.matches] == ["5.1"]
    assert len(feed(grpc_stub, tenant)) == 1


@pytest.mark.parametrize(
    ("policy", "outcome"),
    [(KEEP_FIRST, md_pb.INDEX_OUTCOME_KEPT_EXISTING), (REJECT, md_pb.INDEX_OUTCOME_REJECTED_DUPLICATE)],
)
def test_a_duplicate_filed_elsewhere_is_kept_whatever_series_it_names(
    grpc_stub: Any, tenant: str, policy: int, outcome: int
) -> None:
    """As one call at a time: a duplicate is answered before its series is looked at."""
    index(grpc_stub, rec(tenant, "x", "6.1", "6.1.1", "6.1.1.1"), rec(tenant, "y", "6.2", "6.2.1", "6.2.1.1"))
    # 6.2.1 belongs to 6.2, not 6.3; the instance is in 6.1.1.
    again = rec(tenant, "x2", "6.3", "6.2.1", "6.1.1.1")
    other = rec(tenant, "z", "6.2", "6.2.1", "6.2.1.2")
    results = index(grpc_stub, other, again, policy=policy)
    assert [(r.outcome, r.unreferenced_object_key) for r in results] == [
        (md_pb.INDEX_OUTCOME_CREATED, ""),
        (outcome, f"{tenant}/x2"),
    ]
    with pytest.raises(grpc.RpcError) as err:
        index(grpc_stub, again, policy=OVERWRITE)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
