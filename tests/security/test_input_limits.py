"""The input limits, case by case: QIDO-RS query limits, matching values,
multipart limits and boundaries, the STOW-RS Content-Type check, PN values
in DICOM JSON."""

from __future__ import annotations

import json

import pytest
from pydicom.dataset import Dataset

from common.gen.dicomserver.v1 import dicom_pb2
from common.validation import InvalidValue
from dicomcore import dataset_json, matching
from dicomweb_gateway.errors import ApiError
from dicomweb_gateway.media import RepeatedParameter, parse_media_type
from dicomweb_gateway.multipart import (
    LimitExceeded,
    Limits,
    MultipartParser,
    NestedMultipart,
    check_boundary,
)
from dicomweb_gateway.qido import QueryLimits, build_query

STUDY = dicom_pb2.QUERY_LEVEL_STUDY
LIMITS = QueryLimits(max_limit=100, max_params=4, max_includefields=3, max_value_length=16, max_wildcards=3)


def refused(params: list[tuple[str, str]]) -> str:
    with pytest.raises(ApiError) as err:
        build_query(params, STUDY, "default", limits=LIMITS)
    assert err.value.status == 400
    return err.value.message


def test_query_limits() -> None:
    assert "5 parameters; at most 4" in refused([("PatientID", "a")] + [("includefield", "Modality")] * 4)
    assert "more than 3 attributes" in refused(
        [("includefield", "PatientID,Modality"), ("includefield", "StudyDate,AccessionNumber")]
    )
    assert "longer than 16" in refused([("PatientID", "x" * 17)])
    assert "more than 3 wildcard" in refused([("PatientName", "a*b*c?d*")])
    assert "control characters" in refused([("PatientName", "a\x00")])
    assert "control characters" in refused([("StudyDescription", "line\nbreak")])


def test_limit_is_lowered_not_refused() -> None:
    assert build_query([("limit", "5000")], STUDY, "default", limits=LIMITS).limit == 100
    assert build_query([("limit", "7")], STUDY, "default", limits=LIMITS).limit == 7
    assert build_query([], STUDY, "default", limits=LIMITS).limit == 0  # metadata_svc's own cap


def test_runs_of_stars_count_once() -> None:
    f = matching.parse(0x00100010, "D**o***e*", max_wildcards=3)
    assert f.wildcard == "D*o*e*"
    with pytest.raises(InvalidValue):
        matching.parse(0x00100010, "*a*b*c*", max_wildcards=3)


def test_non_ascii_is_fine_controls_are_not() -> None:
    assert matching.parse(0x00100010, "Müller^Jürgen").equal == "Müller^Jürgen"
    with pytest.raises(InvalidValue, match="control characters"):
        matching.parse(0x00100020, "a\x7fb")


@pytest.mark.parametrize("boundary", ["simple", "a'()+_,-./:=?b", "with space", "x" * 70, "0"])
def test_boundaries_rfc_2046_allows(boundary: str) -> None:
    assert check_boundary(boundary) == boundary.encode()


@pytest.mark.parametrize("boundary", ["a<b", 'a"b', "a;b", "a\tb", "tab\t", "x" * 71, "ends "])
def test_boundaries_rfc_2046_forbids(boundary: str) -> None:
    with pytest.raises(Exception) as err:
        check_boundary(boundary)
    assert getattr(err.value, "status", None) == 400


def test_a_repeated_parameter_is_found_outside_quotes_only() -> None:
    assert parse_media_type('multipart/related; boundary=a; type="x; boundary=b"').params["boundary"] == "a"
    with pytest.raises(RepeatedParameter, match="'boundary' parameter is given more than once"):
        parse_media_type("multipart/related; boundary=a; BOUNDARY=b")
    assert "boundary" not in parse_media_type('multipart/related; type="a\\"; boundary=b"').params


def test_nested_multipart_is_refused_before_its_body() -> None:
    parser = MultipartParser(b"b", 64)
    with pytest.raises(NestedMultipart) as err:
        parser.feed(b"--b\r\nContent-Type: Multipart/Related; boundary=c\r\n\r\n")
    assert err.value.status == 415
    parser.abort()


def test_part_count_is_refused_before_the_extra_part() -> None:
    parser = MultipartParser(b"b", 64, Limits(max_parts=2))
    done = parser.feed(b"--b\r\n\r\none\r\n--b\r\n\r\ntwo\r\n--b")
    assert [p.file.read() for p in done] == [b"one", b"two"]
    with pytest.raises(LimitExceeded, match="more than 2 parts") as err:
        parser.feed(b"\r\n")
    assert err.value.status == 413
    parser.abort()


def test_part_size_is_refused_while_streaming() -> None:
    parser = MultipartParser(b"b", 64, Limits(max_part_bytes=10))
    assert parser.feed(b"--b\r\n\r\n" + b"x" * 8) == []
    with pytest.raises(LimitExceeded, match="part 1 is larger than 10 bytes"):
        parser.feed(b"x" * 20)
    parser.abort()


def test_person_names_with_empty_values_survive() -> None:
    ds = Dataset()
    ds.add_new(0x00101001, "PN", ["Doe^John", "", "=山田^太郎"])
    attrs = dataset_json.dataset_to_json(ds)
    assert attrs["00101001"]["Value"] == [
        {"Alphabetic": "Doe^John"},
        None,
        {"Alphabetic": "", "Ideographic": "山田^太郎"},
    ]
    back = Dataset.from_json(json.loads(dataset_json.dumps(attrs)))
    assert list(back.OtherPatientNames) == ["Doe^John", "", "=山田^太郎"]
