"""Indexing, duplicate policies, deletion, the change feed and metadata
lookups over gRPC, each test in its own tenant."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from common.gen.dicomserver.v1 import dicom_pb2
from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from testbed.records import make_ds, record, sample_record, uids

CT, MR, RT = "CT_small.dcm", "MR_small.dcm", "rtplan.dcm"
CT_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
CT_SERIES = "1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322"
CT_SOP = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"
MR_STUDY = "1.3.6.1.4.1.5962.1.2.4.20040826185059.5457"
RT_STUDY = "1.22.333.4.555555.6.7777777777777777777777777777"


def index(stub: Any, *recs: md_pb.InstanceRecord, policy: int = 0) -> list[md_pb.IndexResult]:
    return list(stub.IndexInstances(md_pb.IndexInstancesRequest(records=recs, duplicate_policy=policy)).results)


def feed(stub: Any, tenant: str, after: int = 0, limit: int = 0) -> md_pb.ReadChangeFeedResponse:
    return stub.ReadChangeFeed(md_pb.ReadChangeFeedRequest(tenant=tenant, after_sequence=after, limit=limit))


def study_uids(stub: Any, tenant: str) -> set[str]:
    resp = stub.Query(md_pb.QueryRequest(tenant=tenant, level=dicom_pb2.QUERY_LEVEL_STUDY))
    return set(uids(resp.matches, "0020000D"))


def code_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


def test_real_files_index_locate_and_metadata(grpc_stub: Any, tenant: str) -> None:
    recs = [sample_record(n, tenant) for n in (CT, MR, RT)]
    assert [r.outcome for r in index(grpc_stub, *recs)] == [md_pb.INDEX_OUTCOME_CREATED] * 3
    assert study_uids(grpc_stub, tenant) == {CT_STUDY, MR_STUDY, RT_STUDY}

    (loc,) = grpc_stub.LocateInstances(
        md_pb.LocateInstancesRequest(tenant=tenant, study_instance_uid=CT_STUDY)
    ).locations
    assert loc == recs[0].location

    (header,) = grpc_stub.GetMetadata(
        md_pb.GetMetadataRequest(
            tenant=tenant, study_instance_uid=CT_STUDY, series_instance_uid=CT_SERIES, sop_instance_uid=CT_SOP
        )
    ).instances
    assert json.loads(header) == json.loads(recs[0].dicom_json)
    assert json.loads(header)["00100010"]["Value"] == [{"Alphabetic": "CompressedSamples^CT1"}]


def test_metadata_and_locate_of_a_series_in_instance_order(grpc_stub: Any, tenant: str) -> None:
    index(
        grpc_stub, *(record(make_ds("2.1", "2.1.1", f"2.1.1.{n}", instance_number=str(n)), tenant) for n in (2, 3, 1))
    )
    index(grpc_stub, record(make_ds("2.1", "2.1.2", "2.1.2.1", series_number="2"), tenant))
    req = md_pb.GetMetadataRequest(tenant=tenant, study_instance_uid="2.1", series_instance_uid="2.1.1")
    headers = [json.loads(h) for h in grpc_stub.GetMetadata(req).instances]
    assert [h["00080018"]["Value"][0] for h in headers] == ["2.1.1.1", "2.1.1.2", "2.1.1.3"]
    locs = grpc_stub.LocateInstances(md_pb.LocateInstancesRequest(tenant=tenant, study_instance_uid="2.1")).locations
    assert [loc.ref.sop_instance_uid for loc in locs] == ["2.1.1.1", "2.1.1.2", "2.1.1.3", "2.1.2.1"]


def test_not_found(grpc_stub: Any, tenant: str) -> None:
    index(grpc_stub, record(make_ds("3.1", "3.1.1", "3.1.1.1"), tenant))
    for call in (
        lambda: grpc_stub.GetMetadata(md_pb.GetMetadataRequest(tenant=tenant, study_instance_uid="3.2")),
        lambda: grpc_stub.LocateInstances(
            md_pb.LocateInstancesRequest(tenant=tenant, study_instance_uid="3.1", series_instance_uid="3.1.2")
        ),
        lambda: grpc_stub.DeleteInstances(
            md_pb.DeleteInstancesRequest(tenant=tenant, study_instance_uid="3.1", sop_instance_uid="3.1.1.2")
        ),
    ):
        assert code_of(call) == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("policy", "outcome", "kept"),
    [
        (md_pb.DUPLICATE_POLICY_UNSPECIFIED, md_pb.INDEX_OUTCOME_REPLACED, "new"),
        (md_pb.DUPLICATE_POLICY_OVERWRITE, md_pb.INDEX_OUTCOME_REPLACED, "new"),
        (md_pb.DUPLICATE_POLICY_KEEP_FIRST, md_pb.INDEX_OUTCOME_KEPT_EXISTING, "old"),
        (md_pb.DUPLICATE_POLICY_REJECT, md_pb.INDEX_OUTCOME_REJECTED_DUPLICATE, "old"),
    ],
)
def test_duplicate_policies(grpc_stub: Any, tenant: str, policy: int, outcome: int, kept: str) -> None:
    old = record(make_ds("4.1", "4.1.1", "4.1.1.1", description="first"), tenant, key="old-key")
    new = record(make_ds("4.1", "4.1.1", "4.1.1.1", description="second"), tenant, key="new-key")
    assert index(grpc_stub, old)[0].outcome == md_pb.INDEX_OUTCOME_CREATED
    (result,) = index(grpc_stub, new, policy=policy)
    assert result.outcome == outcome
    # The caller reclaims whichever object the index does not point to.
    assert result.unreferenced_object_key == ("old-key" if kept == "new" else "new-key")
    (loc,) = grpc_stub.LocateInstances(md_pb.LocateInstancesRequest(tenant=tenant, study_instance_uid="4.1")).locations
    assert loc.object_key == f"{kept}-key"
    (study,) = grpc_stub.Query(md_pb.QueryRequest(tenant=tenant, level=dicom_pb2.QUERY_LEVEL_STUDY)).matches
    assert json.loads(study)["00081030"]["Value"] == ["second" if kept == "new" else "first"]
    events = feed(grpc_stub, tenant).events
    assert [e.instance_stored.replaced for e in events] == ([False, True] if kept == "new" else [False])


def test_retried_index_call_never_unreferences_the_live_object(grpc_stub: Any, tenant: str) -> None:
    rec = record(make_ds("5.1", "5.1.1", "5.1.1.1"), tenant, key="same-key")
    index(grpc_stub, rec)
    for policy in (md_pb.DUPLICATE_POLICY_OVERWRITE, md_pb.DUPLICATE_POLICY_KEEP_FIRST):
        (result,) = index(grpc_stub, rec, policy=policy)
        assert result.unreferenced_object_key == ""


def test_duplicate_inside_one_request(grpc_stub: Any, tenant: str) -> None:
    a = record(make_ds("6.1", "6.1.1", "6.1.1.1"), tenant, key="a")
    b = record(make_ds("6.1", "6.1.1", "6.1.1.1"), tenant, key="b")
    results = index(grpc_stub, a, b, policy=md_pb.DUPLICATE_POLICY_REJECT)
    assert [(r.outcome, r.unreferenced_object_key) for r in results] == [
        (md_pb.INDEX_OUTCOME_CREATED, ""),
        (md_pb.INDEX_OUTCOME_REJECTED_DUPLICATE, "b"),
    ]


def test_newest_instance_updates_study_patient_and_series(grpc_stub: Any, tenant: str) -> None:
    index(grpc_stub, record(make_ds("7.1", "7.1.1", "7.1.1.1", patient_id="OLD", name="Old^Name"), tenant))
    index(
        grpc_stub,
        record(
            make_ds("7.1", "7.1.1", "7.1.1.2", patient_id="NEW", name="New^Name", description="updated", modality="MR"),
            tenant,
        ),
    )
    (study,) = [
        json.loads(m)
        for m in grpc_stub.Query(md_pb.QueryRequest(tenant=tenant, level=dicom_pb2.QUERY_LEVEL_STUDY)).matches
    ]
    assert study["00100020"]["Value"] == ["NEW"]
    assert study["00081030"]["Value"] == ["updated"]
    assert study["00080061"]["Value"] == ["MR"]
    # The study moved to the new patient; the emptied old patient is gone.
    patients = grpc_stub.Query(md_pb.QueryRequest(tenant=tenant, level=dicom_pb2.QUERY_LEVEL_PATIENT)).matches
    assert uids(patients, "00100020") == ["NEW"]


def test_overwrite_can_move_an_instance_to_another_series(grpc_stub: Any, tenant: str) -> None:
    index(grpc_stub, record(make_ds("8.1", "8.1.1", "8.1.1.1"), tenant))
    index(grpc_stub, record(make_ds("8.1", "8.1.2", "8.1.1.1", series_number="2"), tenant))
    series = grpc_stub.Query(md_pb.QueryRequest(tenant=tenant, level=dicom_pb2.QUERY_LEVEL_SERIES)).matches
    assert uids(series, "0020000E") == ["8.1.2"]


def test_request_is_one_transaction(grpc_stub: Any, tenant: str) -> None:
    index(grpc_stub, record(make_ds("9.1", "9.1.1", "9.1.1.1"), tenant))
    good = record(make_ds("9.2", "9.2.1", "9.2.1.1"), tenant)
    # The series already belongs to study 9.1: the whole request fails.
    conflicting = record(make_ds("9.3", "9.1.1", "9.3.1.1"), tenant)
    assert code_of(lambda: index(grpc_stub, good, conflicting)) == grpc.StatusCode.INVALID_ARGUMENT
    assert study_uids(grpc_stub, tenant) == {"9.1"}
    assert len(feed(grpc_stub, tenant).events) == 1


@pytest.mark.parametrize(
    "breakage",
    ["tenant", "study", "sop", "sop_class", "object_key", "json", "policy"],
)
def test_invalid_records(grpc_stub: Any, tenant: str, breakage: str) -> None:
    rec = record(make_ds("10.1", "10.1.1", "10.1.1.1"), tenant)
    policy = 0
    if breakage == "tenant":
        rec.location.ref.tenant = "Bad Tenant"
    elif breakage == "study":
        rec.location.ref.study_instance_uid = "1.2.x"
    elif breakage == "sop":
        rec.location.ref.sop_instance_uid = "1." + "2" * 70
    elif breakage == "sop_class":
        rec.location.sop_class_uid = ""
    elif breakage == "object_key":
        rec.location.object_key = ""
    elif breakage == "json":
        rec.dicom_json = b"{not json"
    else:
        policy = 99
    assert code_of(lambda: index(grpc_stub, rec, policy=policy)) == grpc.StatusCode.INVALID_ARGUMENT
    assert study_uids(grpc_stub, tenant) == set()


def test_delete_levels_prune_and_emit_events(grpc_stub: Any, tenant: str) -> None:
    index(
        grpc_stub,
        *(
            record(
                make_ds(
                    "11.1", f"11.1.{s}", f"11.1.{s}.{n}", series_number=str(s), instance_number=str(n), patient_id="PX"
                ),
                tenant,
                key=f"k{s}{n}",
            )
            for s in (1, 2)
            for n in (1, 2)
        ),
    )
    index(grpc_stub, record(make_ds("11.2", "11.2.1", "11.2.1.1", patient_id="PX"), tenant, key="other"))

    one = grpc_stub.DeleteInstances(
        md_pb.DeleteInstancesRequest(
            tenant=tenant, study_instance_uid="11.1", series_instance_uid="11.1.1", sop_instance_uid="11.1.1.1"
        )
    )
    assert [loc.object_key for loc in one.removed] == ["k11"]
    series = grpc_stub.DeleteInstances(
        md_pb.DeleteInstancesRequest(tenant=tenant, study_instance_uid="11.1", series_instance_uid="11.1.2")
    )
    assert [loc.object_key for loc in series.removed] == ["k21", "k22"]
    remaining = grpc_stub.Query(
        md_pb.QueryRequest(tenant=tenant, level=dicom_pb2.QUERY_LEVEL_SERIES, study_instance_uid="11.1")
    ).matches
    assert uids(remaining, "0020000E") == ["11.1.1"]  # the emptied series is gone

    study = grpc_stub.DeleteInstances(md_pb.DeleteInstancesRequest(tenant=tenant, study_instance_uid="11.1"))
    assert [loc.ref.sop_instance_uid for loc in study.removed] == ["11.1.1.2"]
    assert study_uids(grpc_stub, tenant) == {"11.2"}
    (patient,) = [
        json.loads(m)
        for m in grpc_stub.Query(md_pb.QueryRequest(tenant=tenant, level=dicom_pb2.QUERY_LEVEL_PATIENT)).matches
    ]
    assert patient["00201200"]["Value"] == [1] and patient["00201204"]["Value"] == [1]

    grpc_stub.DeleteInstances(md_pb.DeleteInstancesRequest(tenant=tenant, study_instance_uid="11.2"))
    assert grpc_stub.Query(md_pb.QueryRequest(tenant=tenant, level=dicom_pb2.QUERY_LEVEL_PATIENT)).matches == []

    events = feed(grpc_stub, tenant).events
    kinds = [(e.WhichOneof("kind"), getattr(e, e.WhichOneof("kind")).location.object_key) for e in events]
    assert kinds == [("instance_stored", k) for k in ("k11", "k12", "k21", "k22", "other")] + [
        ("instance_deleted", k) for k in ("k11", "k21", "k22", "k12", "other")
    ]


def test_change_feed_order_paging_and_latest(grpc_stub: Any, tenant: str) -> None:
    index(grpc_stub, *(record(make_ds("12.1", "12.1.1", f"12.1.1.{n}"), tenant, key=f"k{n}") for n in range(1, 6)))
    full = feed(grpc_stub, tenant)
    seqs = [e.sequence for e in full.events]
    assert len(seqs) == 5 and seqs == sorted(seqs) and len(set(seqs)) == 5
    assert full.latest_sequence == seqs[-1]
    assert all(e.tenant == tenant and e.time.seconds > 0 for e in full.events)
    assert [e.instance_stored.location.object_key for e in full.events] == [f"k{n}" for n in range(1, 6)]

    page = feed(grpc_stub, tenant, after=seqs[1], limit=2)
    assert [e.sequence for e in page.events] == seqs[2:4]
    assert page.latest_sequence == seqs[-1]
    assert feed(grpc_stub, tenant, after=seqs[-1]).events == []


def test_change_feed_and_lookups_are_per_tenant(grpc_stub: Any, tenant: str) -> None:
    other = tenant + "-b"
    rec = record(make_ds("13.1", "13.1.1", "13.1.1.1"), tenant, key="mine")
    index(grpc_stub, rec)
    assert feed(grpc_stub, other).events == [] and feed(grpc_stub, other).latest_sequence == 0
    assert (
        code_of(
            lambda: grpc_stub.LocateInstances(md_pb.LocateInstancesRequest(tenant=other, study_instance_uid="13.1"))
        )
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        code_of(
            lambda: grpc_stub.DeleteInstances(md_pb.DeleteInstancesRequest(tenant=other, study_instance_uid="13.1"))
        )
        == grpc.StatusCode.NOT_FOUND
    )
    # The same UIDs in another tenant are another instance, not a duplicate.
    theirs = record(make_ds("13.1", "13.1.1", "13.1.1.1"), other, key="theirs")
    assert index(grpc_stub, theirs, policy=md_pb.DUPLICATE_POLICY_REJECT)[0].outcome == md_pb.INDEX_OUTCOME_CREATED
    (loc,) = grpc_stub.LocateInstances(md_pb.LocateInstancesRequest(tenant=tenant, study_instance_uid="13.1")).locations
    assert loc.object_key == "mine"


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.ReadChangeFeed(md_pb.ReadChangeFeedRequest(tenant="UPPER")),
        lambda s: s.LocateInstances(md_pb.LocateInstancesRequest(tenant="t", study_instance_uid="")),
        lambda s: s.GetMetadata(
            md_pb.GetMetadataRequest(tenant="t", study_instance_uid="1.2", series_instance_uid="x")
        ),
        lambda s: s.DeleteInstances(md_pb.DeleteInstancesRequest(tenant="", study_instance_uid="1.2")),
    ],
)
def test_invalid_lookups(grpc_stub: Any, call: Any) -> None:
    assert code_of(lambda: call(grpc_stub)) == grpc.StatusCode.INVALID_ARGUMENT


def test_event_payload_matches_record(grpc_stub: Any, tenant: str) -> None:
    rec = sample_record(MR, tenant)
    rec.source.calling_ae_title = "MR_SCANNER"
    index(grpc_stub, rec)
    (event,) = feed(grpc_stub, tenant).events
    assert event.instance_stored.location == rec.location
    assert not event.instance_stored.replaced
    # Where it came from travels with the event (routing rules match on it).
    assert event.instance_stored.source.calling_ae_title == "MR_SCANNER"


def test_locate_by_sop_uids_across_studies(grpc_stub: Any, tenant: str) -> None:
    index(
        grpc_stub,
        record(make_ds("7.1", "7.1.1", "7.1.1.1"), tenant),
        record(make_ds("7.2", "7.2.1", "7.2.1.1"), tenant),
    )
    req = md_pb.LocateInstancesRequest(tenant=tenant, sop_instance_uids=["7.1.1.1", "7.2.1.1", "7.9.9.9"])
    locs = grpc_stub.LocateInstances(req).locations
    assert sorted((loc.ref.study_instance_uid, loc.ref.sop_instance_uid) for loc in locs) == [
        ("7.1", "7.1.1.1"),
        ("7.2", "7.2.1.1"),
    ]
    other = md_pb.LocateInstancesRequest(tenant=tenant + "x", sop_instance_uids=["7.1.1.1"])
    assert list(grpc_stub.LocateInstances(other).locations) == []
    with pytest.raises(grpc.RpcError) as err:
        grpc_stub.LocateInstances(md_pb.LocateInstancesRequest(tenant=tenant, sop_instance_uids=["../x"]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _layout() -> dicom_pb2.PixelLayout:
    return dicom_pb2.PixelLayout(
        value_offset=1234,
        value_length=5002,
        encapsulated=True,
        bits_allocated=16,
        fragment_offsets=[1250, 3250],
        fragment_lengths=[2000, 2986],
        frame_first_fragment=[0, 1],
    )


def test_pixel_layout_round_trip(grpc_stub: Any, tenant: str) -> None:
    with_layout = record(make_ds("14.1", "14.1.1", "14.1.1.1"), tenant, key="with")
    with_layout.location.pixel_layout.CopyFrom(_layout())
    without = record(make_ds("14.1", "14.1.1", "14.1.1.2", instance_number="2"), tenant, key="without")
    index(grpc_stub, with_layout, without)
    expected = [with_layout.location, without.location]
    for req in (
        md_pb.LocateInstancesRequest(tenant=tenant, study_instance_uid="14.1"),
        md_pb.LocateInstancesRequest(tenant=tenant, study_instance_uid="14.1", series_instance_uid="14.1.1"),
        md_pb.LocateInstancesRequest(tenant=tenant, sop_instance_uids=["14.1.1.1", "14.1.1.2"]),
    ):
        assert list(grpc_stub.LocateInstances(req).locations) == expected
    (one,) = grpc_stub.LocateInstances(
        md_pb.LocateInstancesRequest(
            tenant=tenant, study_instance_uid="14.1", series_instance_uid="14.1.1", sop_instance_uid="14.1.1.1"
        )
    ).locations
    assert one.pixel_layout == _layout()
    assert not expected[1].HasField("pixel_layout")
    assert [e.instance_stored.location for e in feed(grpc_stub, tenant).events] == expected
    # A replacement without a layout drops the old one.
    again = record(make_ds("14.1", "14.1.1", "14.1.1.1"), tenant, key="with-again")
    index(grpc_stub, again)
    (loc,) = grpc_stub.LocateInstances(
        md_pb.LocateInstancesRequest(tenant=tenant, sop_instance_uids=["14.1.1.1"])
    ).locations
    assert not loc.HasField("pixel_layout")
    again.location.pixel_layout.CopyFrom(_layout())
    index(grpc_stub, again)
    removed = grpc_stub.DeleteInstances(md_pb.DeleteInstancesRequest(tenant=tenant, study_instance_uid="14.1")).removed
    assert list(removed) == [again.location, without.location]
    assert [e.instance_deleted.location for e in feed(grpc_stub, tenant).events[-2:]] == list(removed)


def referenced(stub: Any, *keys: str) -> list[str]:
    return list(stub.ReferencedObjects(md_pb.ReferencedObjectsRequest(object_keys=keys)).object_keys)


def test_referenced_objects(grpc_stub: Any, tenant: str) -> None:
    a, b, c = (f"{tenant}/objects/{n}.dcm" for n in "abc")
    index(
        grpc_stub,
        record(make_ds("15.1", "15.1.1", "15.1.1.1"), tenant, key=a),
        record(make_ds("15.1", "15.1.1", "15.1.1.2"), tenant, key=b),
    )
    assert referenced(grpc_stub, f"{tenant}/objects/gone.dcm", b, a, b, "") == [b, a]
    assert referenced(grpc_stub) == []
    # A replacement frees the old key; a deletion frees its key.
    index(grpc_stub, record(make_ds("15.1", "15.1.1", "15.1.1.1"), tenant, key=c))
    grpc_stub.DeleteInstances(
        md_pb.DeleteInstancesRequest(tenant=tenant, study_instance_uid="15.1", sop_instance_uid="15.1.1.2")
    )
    assert referenced(grpc_stub, a, b, c) == [c]
    # The sweep's batches: up to 1000 keys of up to 300 characters.
    many = [f"{tenant}/{n}/".ljust(300, "x") for n in range(999)]
    assert referenced(grpc_stub, c, *many) == [c]
    for keys in ([c, *many, "one too many"], ["x" * 301]):
        assert code_of(lambda keys=keys: referenced(grpc_stub, *keys)) == grpc.StatusCode.INVALID_ARGUMENT
