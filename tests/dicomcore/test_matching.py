"""Query text into the typed filter model (PS3.4 C.2.2.2)."""

from __future__ import annotations

import pytest

from common.validation import InvalidValue, check_tenant, check_uid
from dicomcore.matching import parse, resolve_tag

PATIENT_NAME, STUDY_DATE, STUDY_UID, MODALITY, STUDY_TIME = 0x00100010, 0x00080020, 0x0020000D, 0x00080060, 0x00080030


@pytest.mark.parametrize(
    ("tag", "raw", "fuzzy", "kind", "value"),
    [
        (PATIENT_NAME, "", False, "universal", True),
        (PATIENT_NAME, "Doe^John", False, "equal", "Doe^John"),
        (PATIENT_NAME, "Do*^J?hn", False, "wildcard", "Do*^J?hn"),
        (PATIENT_NAME, "doe", True, "fuzzy", "doe"),
        (MODALITY, "CT", False, "equal", "CT"),
        (STUDY_UID, "1.2.3", False, "equal", "1.2.3"),
        (STUDY_DATE, "20200101", False, "equal", "20200101"),
        (STUDY_TIME, "1200", False, "equal", "1200"),
    ],
)
def test_single_kinds(tag: int, raw: str, fuzzy: bool, kind: str, value: object) -> None:
    f = parse(tag, raw, fuzzy)
    assert f.WhichOneof("constraint") == kind
    assert getattr(f, kind) == value
    assert f.tag == f"{tag:08X}"


def test_ranges() -> None:
    assert parse(STUDY_DATE, "20200101-20201231").range.lower == "20200101"
    assert parse(STUDY_DATE, "20200101-20201231").range.upper == "20201231"
    assert parse(STUDY_DATE, "-20201231").range.lower == ""
    assert parse(STUDY_DATE, "20200101-").range.upper == ""
    assert parse(STUDY_TIME, "0800-1200").range.upper == "1200"


def test_uid_lists_with_backslash_or_comma() -> None:
    assert list(parse(STUDY_UID, "1.2\\1.3,1.4").uid_list.values) == ["1.2", "1.3", "1.4"]


@pytest.mark.parametrize(
    ("tag", "raw"),
    [
        (STUDY_DATE, "2020-01-01-x"),
        (STUDY_DATE, "yesterday"),
        (STUDY_DATE, "-"),
        (STUDY_UID, "1.2.abc"),
        (STUDY_UID, "1.2\\../x"),
        (PATIENT_NAME, "x" * 2000),
    ],
)
def test_malformed_values_name_the_attribute(tag: int, raw: str) -> None:
    with pytest.raises(InvalidValue):
        parse(tag, raw)


def test_wildcards_are_literal_outside_string_vrs() -> None:
    with pytest.raises(InvalidValue):
        parse(STUDY_DATE, "2020*")


def test_resolve_tag() -> None:
    assert resolve_tag("PatientName") == PATIENT_NAME
    assert resolve_tag("00100010") == PATIENT_NAME
    with pytest.raises(InvalidValue):
        resolve_tag("NoSuchKeyword")


@pytest.mark.parametrize("uid", ["", "1..2", ".1", "1.", "a.b", "1/2", "1" * 65])
def test_bad_uids(uid: str) -> None:
    with pytest.raises(InvalidValue):
        check_uid(uid)


@pytest.mark.parametrize("tenant", ["", "A", "../x", "a/b", "-a", "a" * 64])
def test_bad_tenants(tenant: str) -> None:
    with pytest.raises(InvalidValue):
        check_tenant(tenant)


# ---- limits at their exact edges (found by python -m bench.mutation) ---------

ACQUISITION_DT = 0x0008002A


def test_a_value_of_exactly_the_length_limit_is_taken() -> None:
    assert parse(MODALITY, "C" * 1024).equal == "C" * 1024
    with pytest.raises(InvalidValue, match="longer than 1024"):
        parse(MODALITY, "C" * 1025)


def test_exactly_the_wildcard_limit_is_taken_and_both_kinds_count() -> None:
    assert parse(PATIENT_NAME, "a*" * 32 + "?" * 32).wildcard == "a*" * 32 + "?" * 32
    with pytest.raises(InvalidValue, match="more than 64 wildcard"):
        parse(PATIENT_NAME, "a*" * 32 + "?" * 33)


def test_a_uid_list_of_exactly_the_limit_is_taken() -> None:
    uids = [f"1.2.{n}" for n in range(1000)]
    long = 100_000  # past the default length limit
    assert list(parse(STUDY_UID, "\\".join(uids), max_length=long).uid_list.values) == uids
    with pytest.raises(InvalidValue, match="a UID or a list of UIDs"):
        parse(STUDY_UID, "\\".join([*uids, "1.2.1000"]), max_length=long)


def test_a_date_time_with_a_negative_utc_offset_is_one_value_not_a_range() -> None:
    f = parse(ACQUISITION_DT, "20240102101112-0500")
    assert f.WhichOneof("constraint") == "equal" and f.equal == "20240102101112-0500"
    r = parse(ACQUISITION_DT, "20240101-20240102")
    assert (r.range.lower, r.range.upper) == ("20240101", "20240102")
