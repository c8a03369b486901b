"""QIDO-RS matching, table-driven, against the running server (PS3.18 10.6,
PS3.4 C.2.2.2): single value, wildcards, UID lists, ranges, empty values, case
insensitive and UTF-8 person names, fuzzy matching, computed attributes,
includefield, limit/offset and 400s naming the parameter.

Every query is scoped by a PatientID prefix unique to this run, so the shared
archive's other content never shows up."""

from __future__ import annotations

import io
import secrets
from collections.abc import Iterator

import httpx
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from tests.support import Archive

RUN = secrets.token_hex(4)
SCOPE = f"PatientID={RUN}-*"

# label: patient name, study date, time, accession, description, referring, modalities (one series each)
STUDIES = {
    "A": ("Müller^Jürgen", "20240102", "101500", "ACC-A1", "Chest CT", "Doe^John", ["CT"]),
    "B": ("MÜLLER^ANNA", "20240315", "235959", "ACC-B2", "Brain MR", "Roe^Jane", ["MR"]),
    "C": ("Yamada^Tarou=山田^太郎=やまだ^たろう", "20231231", "080000", "", "", "", ["CT", "SR"]),
    "D": ("O'Brien^Seán", "20240102", "120000", "ACC-D4", "Abdomen", "", ["US"]),
}


def part10(label: str, study_uid: str, series_uid: str, modality: str) -> bytes:
    name, date, time, accession, description, referring, _ = STUDIES[label]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.PatientName, ds.PatientID = name, f"{RUN}-{label}"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = date, time, accession
    ds.StudyDescription, ds.ReferringPhysicianName = description, referring
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 1, 1
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture(scope="module")
def stored(archive: Archive) -> Iterator[dict[str, str]]:
    """label -> Study Instance UID, stored over STOW-RS."""
    uids = {label: generate_uid() for label in STUDIES}
    with httpx.Client(base_url=archive.dicomweb) as http:
        for label, spec in STUDIES.items():
            for modality in spec[6]:
                r = http.post(
                    "/studies",
                    content=part10(label, uids[label], generate_uid(), modality),
                    headers={"Content-Type": "application/dicom"},
                )
                assert r.status_code == 200, r.text
        yield uids
        for uid in uids.values():
            http.delete(f"/studies/{uid}")


def labels_of(matches: list[dict[str, dict[str, list[str]]]]) -> set[str]:
    return {m["00100020"]["Value"][0].split("-", 1)[1] for m in matches}


STUDY_CASES = [
    # single value, UTF-8, case-insensitive person names
    ("PatientName=Müller^Jürgen", {"A"}),
    ("PatientName=müller^jürgen", {"A"}),
    ("PatientName=O'Brien^Seán", {"D"}),
    # wildcards
    ("PatientName=MÜLLER*", {"A", "B"}),
    ("PatientName=M?ller^*", {"A", "B"}),
    ("PatientName=*brien*", {"D"}),
    ("PatientName=Yamada*", {"C"}),
    ("StudyDescription=*MR", {"B"}),
    ("AccessionNumber=ACC-*", {"A", "B", "D"}),
    ("AccessionNumber=ACC-A1", {"A"}),
    ("ReferringPhysicianName=doe^john", {"A"}),
    # fuzzy person names
    ("PatientName=anna&fuzzymatching=true", {"B"}),
    ("PatientName=müll&fuzzymatching=true", {"A", "B"}),
    # dates and times: single, ranges closed and open
    ("StudyDate=20240102", {"A", "D"}),
    ("StudyDate=20240101-20240131", {"A", "D"}),
    ("StudyDate=-20231231", {"C"}),
    ("StudyDate=20240301-", {"B"}),
    ("StudyTime=100000-130000", {"A", "D"}),
    ("StudyDate=20240102&StudyTime=110000-", {"D"}),
    # empty value: universal matching
    ("AccessionNumber=", {"A", "B", "C", "D"}),
    ("StudyDescription=", {"A", "B", "C", "D"}),
    # computed attribute
    ("ModalitiesInStudy=SR", {"C"}),
    ("ModalitiesInStudy=CT", {"A", "C"}),
    ("ModalitiesInStudy=CT&PatientName=Müller*", {"A"}),
]


@pytest.mark.parametrize("query, expected", STUDY_CASES, ids=[q for q, _ in STUDY_CASES])
def test_study_matching(archive: Archive, stored: dict[str, str], query: str, expected: set[str]) -> None:
    r = httpx.get(f"{archive.dicomweb}/studies?{SCOPE}&{query}")
    assert r.status_code == 200, r.text
    assert labels_of(r.json()) == expected


def test_uid_lists(archive: Archive, stored: dict[str, str]) -> None:
    uids = f"{stored['A']}\\{stored['C']}"
    r = httpx.get(f"{archive.dicomweb}/studies", params={"StudyInstanceUID": uids})
    assert labels_of(r.json()) == {"A", "C"}
    r = httpx.get(f"{archive.dicomweb}/studies", params={"StudyInstanceUID": f"{stored['B']},{stored['D']}"})
    assert labels_of(r.json()) == {"B", "D"}


def test_series_and_instance_levels(archive: Archive, stored: dict[str, str]) -> None:
    base = archive.dicomweb
    series = httpx.get(f"{base}/series?{SCOPE}&Modality=CT").json()
    assert sorted(s["0020000D"]["Value"][0] for s in series) == sorted([stored["A"], stored["C"]])
    nested = httpx.get(f"{base}/studies/{stored['C']}/series").json()
    assert sorted(s["00080060"]["Value"][0] for s in nested) == ["CT", "SR"]
    assert all(s["00201209"]["Value"] == [1] for s in nested)
    sr = next(s for s in nested if s["00080060"]["Value"] == ["SR"])["0020000E"]["Value"][0]
    instances = httpx.get(f"{base}/studies/{stored['C']}/series/{sr}/instances").json()
    assert len(instances) == 1
    sop = instances[0]["00080018"]["Value"][0]
    assert httpx.get(f"{base}/instances?SOPInstanceUID={sop}").json()[0]["0020000E"]["Value"] == [sr]
    assert httpx.get(f"{base}/studies/{stored['C']}/instances?InstanceNumber=1&Modality=SR").json()[0]["00080018"][
        "Value"
    ] == [sop]


def test_computed_attributes_and_includefield(archive: Archive, stored: dict[str, str]) -> None:
    (c,) = httpx.get(f"{archive.dicomweb}/studies?StudyInstanceUID={stored['C']}").json()
    assert c["00080061"]["Value"] == ["CT", "SR"]
    assert c["00201206"]["Value"] == [2] and c["00201208"]["Value"] == [2]
    (a,) = httpx.get(
        f"{archive.dicomweb}/studies?StudyInstanceUID={stored['A']}&includefield=00080090"
        f"&includefield=IssuerOfPatientID,StudyID"
    ).json()
    assert a["00080090"]["Value"][0]["Alphabetic"] == "Doe^John"
    (full,) = httpx.get(f"{archive.dicomweb}/studies?StudyInstanceUID={stored['A']}&includefield=all").json()
    assert full["00081030"]["Value"] == ["Chest CT"]


def test_limit_offset_and_warning(archive: Archive, stored: dict[str, str]) -> None:
    base = f"{archive.dicomweb}/studies?{SCOPE}"
    everything = labels_of(httpx.get(base).json())
    assert everything == set(STUDIES)
    pages = []
    for offset in range(0, 4, 2):
        r = httpx.get(f"{base}&limit=2&offset={offset}")
        pages.append(labels_of(r.json()))
        assert len(pages[-1]) == 2
    assert pages[0] | pages[1] == everything and not pages[0] & pages[1]
    assert "Warning" in httpx.get(f"{base}&limit=3").headers
    assert "Warning" not in httpx.get(f"{base}&limit=4").headers


@pytest.mark.parametrize(
    "query, parameter",
    [
        ("StudyDate=2024-01", "StudyDate"),
        ("StudyDate=20240101-20240199x", "StudyDate"),
        ("limit=abc", "limit"),
        ("limit=0", "limit"),
        ("offset=-1", "offset"),
        ("limit=99999999999", "limit"),
        ("includefield=NoSuchKeyword", "includefield"),
        ("fuzzymatching=maybe", "fuzzymatching"),
        ("NoSuchKeyword=1", "NoSuchKeyword"),
        ("StudyInstanceUID=1.2.abc", "StudyInstanceUID"),
    ],
)
def test_malformed_values_are_400_naming_the_parameter(archive: Archive, query: str, parameter: str) -> None:
    r = httpx.get(f"{archive.dicomweb}/studies?{query}")
    assert r.status_code == 400
    assert parameter in r.json()["error"]


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="metadata_svc matches a person name as one string: no per-group "
    "(alphabetic/ideographic/phonetic) matching yet",
)
@pytest.mark.parametrize("query", ["PatientName=山田^太郎", "PatientName=やまだ^たろう", "PatientName=Yamada^Tarou"])
def test_ideographic_and_phonetic_groups(archive: Archive, stored: dict[str, str], query: str) -> None:
    r = httpx.get(f"{archive.dicomweb}/studies?{SCOPE}&{query}")
    r.raise_for_status()  # an error answer is not the expected failure (HTTPStatusError is no AssertionError)
    assert labels_of(r.json()) == {"C"}
