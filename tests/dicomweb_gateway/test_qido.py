"""QIDO-RS: query strings into QueryRequests, and the response shape."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from common.gen.dicomserver.v1 import dicom_pb2
from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from dicomweb_gateway.errors import ApiError
from dicomweb_gateway.qido import build_query
from tests.dicomweb_gateway.gateway_support import Backend, make_instance


def test_build_query() -> None:
    q = build_query(
        [
            ("PatientName", "Mü*"),
            ("00080020", "20240101-"),
            ("StudyInstanceUID", "1.2.3,1.2.4"),
            ("includefield", "StudyDescription,00081030"),
            ("includefield", "all"),
            ("includefield", "Modality"),
            ("limit", "10"),
            ("offset", "5"),
            ("fuzzymatching", "true"),
            ("ModalitiesInStudy", ""),
        ],
        dicom_pb2.QUERY_LEVEL_STUDY,
        "default",
    )
    assert q.tenant == "default"
    assert q.level == dicom_pb2.QUERY_LEVEL_STUDY
    assert (q.limit, q.offset) == (10, 5)
    assert q.include_all_fields
    assert list(q.include_fields) == ["00081030", "00080060"]
    by_tag = {f.tag: f for f in q.filters}
    assert by_tag["00100010"].fuzzy == "Mü*"  # fuzzymatching applies to PN
    assert by_tag["00080020"].range == md_pb.Range(lower="20240101")
    assert list(by_tag["0020000D"].uid_list.values) == ["1.2.3", "1.2.4"]
    assert by_tag["00080061"].universal


def test_build_query_scope() -> None:
    q = build_query([], dicom_pb2.QUERY_LEVEL_INSTANCE, "t", "1.2", "1.2.3")
    assert (q.study_instance_uid, q.series_instance_uid, q.limit, q.offset) == ("1.2", "1.2.3", 0, 0)
    assert not q.include_all_fields


@pytest.mark.parametrize(
    ("params", "mentions"),
    [
        ([("StudyDate", "2020-01-01-x")], "StudyDate"),
        ([("NoSuchKeyword", "x")], "NoSuchKeyword"),
        ([("PatientID", "a"), ("00100020", "b")], "more than once"),
        ([("limit", "-1")], "limit"),
        ([("limit", "0")], "limit"),
        ([("limit", "ten")], "limit"),
        ([("offset", "99999999999")], "offset"),
        ([("limit", "1"), ("limit", "2")], "limit"),
        ([("fuzzymatching", "yes")], "fuzzymatching"),
        ([("includefield", "Bogus")], "includefield"),
        ([("StudyInstanceUID", "1.2.x")], "StudyInstanceUID"),
    ],
)
def test_build_query_rejects(params: list[tuple[str, str]], mentions: str) -> None:
    with pytest.raises(ApiError) as err:
        build_query(params, dicom_pb2.QUERY_LEVEL_STUDY, "default")
    assert err.value.status == 400
    assert mentions in err.value.message


def test_search_routes_and_response(client: TestClient, backend: Backend) -> None:
    ds, data = make_instance()
    client.post("/dicomweb/studies", content=data, headers={"Content-Type": "application/dicom"})
    study, series = ds.StudyInstanceUID, ds.SeriesInstanceUID
    for path, level, scope in [
        ("/dicomweb/studies", dicom_pb2.QUERY_LEVEL_STUDY, ("", "")),
        ("/dicomweb/series", dicom_pb2.QUERY_LEVEL_SERIES, ("", "")),
        ("/dicomweb/instances", dicom_pb2.QUERY_LEVEL_INSTANCE, ("", "")),
        (f"/dicomweb/studies/{study}/series", dicom_pb2.QUERY_LEVEL_SERIES, (study, "")),
        (f"/dicomweb/studies/{study}/instances", dicom_pb2.QUERY_LEVEL_INSTANCE, (study, "")),
        (f"/dicomweb/studies/{study}/series/{series}/instances", dicom_pb2.QUERY_LEVEL_INSTANCE, (study, series)),
    ]:
        r = client.get(path, params={"PatientName": "Mü*", "limit": "5"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/dicom+json"
        assert len(r.json()) == 1
        asked = backend.metadata.queries[-1]
        assert asked.level == level
        assert (asked.study_instance_uid, asked.series_instance_uid) == scope
        assert asked.filters[0].wildcard == "Mü*"
        assert asked.limit == 5
    assert "warning" not in r.headers


def test_empty_result_is_200_empty_array(client: TestClient) -> None:
    r = client.get("/dicomweb/studies")
    assert r.status_code == 200
    assert r.json() == []


def test_truncated_result_warns(client: TestClient) -> None:
    for _ in range(2):
        client.post("/dicomweb/studies", content=make_instance()[1], headers={"Content-Type": "application/dicom"})
    r = client.get("/dicomweb/studies", params={"limit": "1"})
    assert len(r.json()) == 1
    assert r.headers["warning"] == '299 testserver: "There are additional results that can be requested"'


def test_invalid_query_is_400(client: TestClient) -> None:
    r = client.get("/dicomweb/studies", params={"StudyDate": "2020-01-01-x"})
    assert r.status_code == 400
    assert "StudyDate" in r.json()["error"]


def test_accept_must_allow_json(client: TestClient) -> None:
    assert client.get("/dicomweb/studies", headers={"Accept": "application/json"}).status_code == 200
    assert client.get("/dicomweb/studies", headers={"Accept": "application/dicom+xml"}).status_code == 406


def test_unknown_route_and_method_are_json(client: TestClient) -> None:
    r = client.get("/dicomweb/nothing")
    assert r.status_code == 404
    assert r.json() == {"error": "Not Found"}
    r = client.delete("/dicomweb/studies")
    assert r.status_code == 405
    assert r.json()["error"]
