"""Query over gRPC: every matching type at every level returns exactly the
expected UIDs, with computed attributes and paging."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from common.gen.dicomserver.v1 import dicom_pb2
from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from dicomcore.matching import parse
from testbed.records import make_ds, record, uids

T = "qry"
A, B, C, D, E = "1.9.1", "1.9.2", "1.9.3", "1.9.4", "1.9.5"
STUDY, SERIES, INSTANCE, PATIENT = (
    dicom_pb2.QUERY_LEVEL_STUDY,
    dicom_pb2.QUERY_LEVEL_SERIES,
    dicom_pb2.QUERY_LEVEL_INSTANCE,
    dicom_pb2.QUERY_LEVEL_PATIENT,
)


@pytest.fixture(scope="module", autouse=True)
def corpus(grpc_stub: Any) -> None:
    recs = [
        # Study A: two series (CT with 3 instances stored out of order, SR).
        *(
            record(
                make_ds(
                    A,
                    "1.9.1.1",
                    f"1.9.1.1.{n}",
                    study_date="20240105",
                    study_time="101500",
                    accession="ACC_1",
                    referring="Smith^Anna",
                    description="CT Chest",
                    instance_number=str(n),
                    model="ModelA",
                ),
                T,
            )
            for n in (3, 1, 2)
        ),
        record(
            make_ds(
                A,
                "1.9.1.2",
                "1.9.1.2.1",
                study_date="20240105",
                study_time="101500",
                accession="ACC_1",
                referring="Smith^Anna",
                description="CT Chest",
                modality="SR",
                series_number="2",
                model="ModelA",
            ),
            T,
        ),
        # Study B: another patient, name with a space inside a component.
        *(
            record(
                make_ds(
                    B,
                    "1.9.2.1",
                    f"1.9.2.1.{n}",
                    patient_id="P2",
                    name="O'Neil^Mary Ann",
                    study_date="20240210",
                    study_time="120000",
                    accession="ACC%2",
                    modality="MR",
                    instance_number=str(n),
                ),
                T,
            )
            for n in (1, 2)
        ),
        # Study C: same patient as A, no study date.
        record(make_ds(C, "1.9.3.1", "1.9.3.1.1", accession="X?Y"), T),
        # Studies D and E: no Patient ID (must stay two patients), non-ASCII name.
        record(
            make_ds(
                D,
                "1.9.4.1",
                "1.9.4.1.1",
                patient_id="",
                name="MÜLLER^JÜRGEN",
                study_date="20231231",
                study_time="093000",
                modality="PT",
            ),
            T,
        ),
        record(
            make_ds(
                E,
                "1.9.5.1",
                "1.9.5.1.1",
                patient_id="",
                name="DOE^JANE",
                study_date="20240301",
                study_time="101600",
                modality="US",
            ),
            T,
        ),
    ]
    results = grpc_stub.IndexInstances(md_pb.IndexInstancesRequest(records=recs)).results
    assert [r.outcome for r in results] == [md_pb.INDEX_OUTCOME_CREATED] * len(recs)


def query(stub: Any, level: int, *filters: md_pb.Filter, **kw: Any) -> md_pb.QueryResponse:
    return stub.Query(md_pb.QueryRequest(tenant=kw.pop("tenant", T), level=level, filters=filters, **kw))


def f(keyword: str, raw: str, fuzzy: bool = False) -> md_pb.Filter:
    """A filter exactly as QIDO/C-FIND would build it."""
    from dicomcore.matching import resolve_tag

    return parse(resolve_tag(keyword), raw, fuzzy)


def studies(stub: Any, *filters: md_pb.Filter, **kw: Any) -> set[str]:
    return set(uids(query(stub, STUDY, *filters, **kw).matches, "0020000D"))


def matches(resp: md_pb.QueryResponse) -> list[dict[str, Any]]:
    return [json.loads(m) for m in resp.matches]


@pytest.mark.parametrize(
    ("keyword", "raw", "expected"),
    [
        ("PatientID", "P1", {A, C}),
        ("PatientName", "doe^john", {A, C}),  # person names ignore case
        ("PatientName", "müller^jürgen", {D}),  # beyond ASCII too
        ("AccessionNumber", "acc_1", set()),  # other strings are exact
        ("AccessionNumber", "ACC_1", {A}),
        ("StudyInstanceUID", B, {B}),
        ("ReferringPhysicianName", "SMITH^ANNA", {A}),
    ],
)
def test_study_equal(grpc_stub: Any, keyword: str, raw: str, expected: set[str]) -> None:
    assert studies(grpc_stub, f(keyword, raw)) == expected


@pytest.mark.parametrize(
    ("keyword", "raw", "expected"),
    [
        ("PatientName", "doe*", {A, C, E}),
        ("PatientName", "D?E^J*", {A, C, E}),
        ("PatientName", "*ann", {B}),
        ("PatientName", "*", {A, B, C, D, E}),
        ("AccessionNumber", "ACC%*", {B}),  # % is literal, not a LIKE wildcard
        ("AccessionNumber", "ACC_*", {A}),  # _ is literal too
        ("AccessionNumber", "acc*", set()),  # case-sensitive outside person names
        ("AccessionNumber", "X?Y", {C}),
        ("StudyDescription", "*chest", set()),
        ("StudyDescription", "*Chest", {A}),
    ],
)
def test_study_wildcard(grpc_stub: Any, keyword: str, raw: str, expected: set[str]) -> None:
    assert studies(grpc_stub, f(keyword, raw)) == expected


@pytest.mark.parametrize(
    ("keyword", "raw", "expected"),
    [
        ("StudyDate", "20240101-20240228", {A, B}),
        ("StudyDate", "-20240105", {A, D}),  # empty dates never match a range
        ("StudyDate", "20240210-", {B, E}),
        ("StudyDate", "20240105", {A}),
        ("StudyTime", "1000-1015", {A}),  # 101500 is within "up to 10:15"
        ("StudyTime", "0930-", {A, B, D, E}),  # 093000 is 09:30 itself
        ("StudyTime", "0931-", {A, B, E}),
    ],
)
def test_study_range(grpc_stub: Any, keyword: str, raw: str, expected: set[str]) -> None:
    assert studies(grpc_stub, f(keyword, raw)) == expected


def test_uid_list(grpc_stub: Any) -> None:
    assert studies(grpc_stub, f("StudyInstanceUID", f"{A}\\{B}\\1.9.99")) == {A, B}
    series = query(grpc_stub, SERIES, f("SeriesInstanceUID", "1.9.1.2,1.9.4.1"))
    assert set(uids(series.matches, "0020000E")) == {"1.9.1.2", "1.9.4.1"}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("jo do", {A, C}), ("mary", {B}), ("ANN", {B}), ("jür", {D}), ("john jane", set()), ("ohn", set())],
)
def test_fuzzy_person_name(grpc_stub: Any, raw: str, expected: set[str]) -> None:
    assert studies(grpc_stub, f("PatientName", raw, fuzzy=True)) == expected


def test_modalities_in_study_and_lower_level_keys(grpc_stub: Any) -> None:
    assert studies(grpc_stub, f("ModalitiesInStudy", "MR")) == {B}
    assert studies(grpc_stub, f("ModalitiesInStudy", "CT\\SR")) == {A, C}
    assert studies(grpc_stub, f("ModalitiesInStudy", "P*")) == {D}
    # Series and instance keys at study level: some descendant must match.
    assert studies(grpc_stub, f("Modality", "SR")) == {A}
    assert studies(grpc_stub, f("SOPInstanceUID", "1.9.2.1.2")) == {B}
    assert studies(grpc_stub, f("Modality", "SR"), f("SOPInstanceUID", "1.9.1.1.1")) == set()
    pts = query(grpc_stub, PATIENT, f("ModalitiesInStudy", "MR"))
    assert uids(pts.matches, "00100020") == ["P2"]


def test_study_results_carry_computed_attributes(grpc_stub: Any) -> None:
    (a,) = matches(query(grpc_stub, STUDY, f("StudyInstanceUID", A)))
    assert a["00080061"] == {"vr": "CS", "Value": ["CT", "SR"]}
    assert a["00201206"] == {"vr": "IS", "Value": [2]}
    assert a["00201208"] == {"vr": "IS", "Value": [4]}
    assert a["00080005"] == {"vr": "CS", "Value": ["ISO_IR 192"]}
    assert a["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]}
    assert a["00080090"] == {"vr": "PN", "Value": [{"Alphabetic": "Smith^Anna"}]}
    assert a["00080020"] == {"vr": "DA", "Value": ["20240105"]}
    (c,) = matches(query(grpc_stub, STUDY, f("StudyInstanceUID", C)))
    assert c["00080020"] == {"vr": "DA"}  # empty: no Value
    assert "00080018" not in a and "00081090" not in a  # nothing beyond the defaults


def test_study_order_and_paging(grpc_stub: Any) -> None:
    everything = query(grpc_stub, STUDY)
    assert uids(everything.matches, "0020000D") == [C, D, A, B, E]  # by date, empty first
    assert not everything.truncated
    page1 = query(grpc_stub, STUDY, limit=2)
    page2 = query(grpc_stub, STUDY, limit=2, offset=2)
    page3 = query(grpc_stub, STUDY, limit=2, offset=4)
    assert (uids(page1.matches, "0020000D"), page1.truncated) == ([C, D], True)
    assert (uids(page2.matches, "0020000D"), page2.truncated) == ([A, B], True)
    assert (uids(page3.matches, "0020000D"), page3.truncated) == ([E], False)
    assert query(grpc_stub, STUDY, limit=5).truncated is False


def test_series_level(grpc_stub: Any) -> None:
    scoped = query(grpc_stub, SERIES, study_instance_uid=A)
    assert uids(scoped.matches, "0020000E") == ["1.9.1.1", "1.9.1.2"]
    first = matches(scoped)[0]
    assert first["00201209"] == {"vr": "IS", "Value": [3]}
    assert first["00080060"] == {"vr": "CS", "Value": ["CT"]}
    assert first["00200011"] == {"vr": "IS", "Value": [1]}
    assert first["0020000D"] == {"vr": "UI", "Value": [A]}
    ct = query(grpc_stub, SERIES, f("Modality", "CT"))
    assert set(uids(ct.matches, "0020000E")) == {"1.9.1.1", "1.9.3.1"}
    # Keys of higher levels filter series too.
    john = query(grpc_stub, SERIES, f("PatientName", "DOE^JOHN"), f("StudyDate", "20240101-"))
    assert set(uids(john.matches, "0020000E")) == {"1.9.1.1", "1.9.1.2"}
    assert uids(query(grpc_stub, SERIES, f("SeriesNumber", "2")).matches, "0020000E") == ["1.9.1.2"]


def test_instance_level(grpc_stub: Any) -> None:
    resp = query(grpc_stub, INSTANCE, study_instance_uid=A, series_instance_uid="1.9.1.1")
    assert uids(resp.matches, "00080018") == ["1.9.1.1.1", "1.9.1.1.2", "1.9.1.1.3"]  # by instance number
    first = matches(resp)[0]
    assert first["00083002"] == {"vr": "UI", "Value": ["1.2.840.10008.1.2.1"]}
    assert first["00280010"] == {"vr": "US", "Value": [4]}
    assert first["00200013"] == {"vr": "IS", "Value": [1]}
    assert first["0020000E"] == {"vr": "UI", "Value": ["1.9.1.1"]}
    mr = query(grpc_stub, INSTANCE, f("Modality", "MR"), f("InstanceNumber", "2"))
    assert uids(mr.matches, "00080018") == ["1.9.2.1.2"]
    assert uids(query(grpc_stub, INSTANCE, series_instance_uid="1.9.4.1").matches, "00080018") == ["1.9.4.1.1"]


def test_patient_level_counts_and_anonymous_patients(grpc_stub: Any) -> None:
    resp = matches(query(grpc_stub, PATIENT))
    assert len(resp) == 5 - 1  # P1 (A, C), P2, and two patients without ID
    by_name = {m["00100010"]["Value"][0]["Alphabetic"]: m for m in resp}
    assert set(by_name) == {"Doe^John", "O'Neil^Mary Ann", "MÜLLER^JÜRGEN", "DOE^JANE"}
    john = by_name["Doe^John"]
    assert (john["00201200"]["Value"], john["00201202"]["Value"], john["00201204"]["Value"]) == ([2], [3], [5])
    assert by_name["DOE^JANE"]["00100020"] == {"vr": "LO"}


def test_include_fields_and_universal(grpc_stub: Any) -> None:
    (a,) = matches(query(grpc_stub, STUDY, f("StudyInstanceUID", A), include_fields=["00081090", "00204000"]))
    assert a["00081090"] == {"vr": "LO", "Value": ["ModelA"]}  # from the study's first instance
    assert a["00204000"] == {"vr": "LT"}  # asked for, absent: zero length
    (b,) = matches(query(grpc_stub, STUDY, f("StudyInstanceUID", B), f("ManufacturerModelName", "")))
    assert b["00081090"] == {"vr": "LO", "Value": ["ScannerX"]}  # universal: returned, not filtered
    assert studies(grpc_stub, f("ManufacturerModelName", "")) == {A, B, C, D, E}


def test_include_all_fields(grpc_stub: Any) -> None:
    (inst,) = matches(query(grpc_stub, INSTANCE, f("SOPInstanceUID", "1.9.2.1.1"), include_all_fields=True))
    assert inst["00081090"]["Value"] == ["ScannerX"]
    assert inst["00100020"]["Value"] == ["P2"]
    assert inst["00080005"]["Value"] == ["ISO_IR 192"]
    (study,) = matches(query(grpc_stub, STUDY, f("StudyInstanceUID", B), include_all_fields=True))
    assert study["00081090"]["Value"] == ["ScannerX"]
    assert study["00201208"]["Value"] == [2]
    # Instance- and series-level attributes do not leak into a study result.
    assert "00080018" not in study and "00200013" not in study and "00280010" not in study
    assert "0020000E" not in study


def test_tenant_isolation(grpc_stub: Any) -> None:
    for level in (PATIENT, STUDY, SERIES, INSTANCE):
        assert list(query(grpc_stub, level, tenant="someone-else").matches) == []
    assert studies(grpc_stub, f("StudyInstanceUID", A), tenant="someone-else") == set()


@pytest.mark.parametrize(
    "request_kw",
    [
        {"tenant": "Not A Tenant", "level": STUDY},
        {"tenant": T, "level": dicom_pb2.QUERY_LEVEL_UNSPECIFIED},
        {"tenant": T, "level": SERIES, "study_instance_uid": "1.2.abc"},
        {"tenant": T, "level": STUDY, "include_fields": ["PatientName"]},
        {"tenant": T, "level": STUDY, "offset": -1},
        {"tenant": T, "level": STUDY, "filters": [md_pb.Filter(tag="00200011", equal="two")]},
        {"tenant": T, "level": STUDY, "filters": [md_pb.Filter(tag="00080020", fuzzy="x")]},
    ],
)
def test_invalid_requests(grpc_stub: Any, request_kw: dict[str, Any]) -> None:
    with pytest.raises(grpc.RpcError) as err:
        grpc_stub.Query(md_pb.QueryRequest(**request_kw))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_filter_on_unindexed_tag_names_it(grpc_stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as err:
        query(grpc_stub, STUDY, f("ManufacturerModelName", "ModelA"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ManufacturerModelName" in err.value.details() and "00081090" in err.value.details()
