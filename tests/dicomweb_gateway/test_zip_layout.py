"""The zip download's folder names: readable, safe on every common file
system, unique in their folder."""

from __future__ import annotations

from typing import Any

import pytest

from dicomweb_gateway import zip_layout
from dicomweb_gateway.zip_layout import layout, safe_name


def match(sop: str, study: str = "1.2.1", series: str = "1.2.1.1", **values: Any) -> dict[str, Any]:
    """An instance-level query match (DICOM JSON) with the layout's attributes."""
    tags = {
        "name": zip_layout.PATIENT_NAME,
        "pid": zip_layout.PATIENT_ID,
        "date": zip_layout.STUDY_DATE,
        "study_desc": zip_layout.STUDY_DESCRIPTION,
        "series_no": zip_layout.SERIES_NUMBER,
        "modality": zip_layout.MODALITY,
        "series_desc": zip_layout.SERIES_DESCRIPTION,
        "number": zip_layout.INSTANCE_NUMBER,
    }
    out: dict[str, Any] = {
        zip_layout.SOP_UID: {"vr": "UI", "Value": [sop]},
        zip_layout.STUDY_UID: {"vr": "UI", "Value": [study]},
        zip_layout.SERIES_UID: {"vr": "UI", "Value": [series]},
    }
    for key, value in values.items():
        if key == "name":
            value = {"Alphabetic": value}
        out[tags[key]] = {"Value": [value]}
    return out


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Doe: John/Jane", "Doe_ John_Jane"),
        ('a<b>c"d\\e|f?g*h', "a_b_c_d_e_f_g_h"),
        ("tab\there\nnewline", "tab here newline"),
        ("  trailing dots...  ", "trailing dots"),
        ("..", "fallback"),
        (".hidden", "hidden"),
        ("CON", "_CON"),
        ("lpt1.txt", "_lpt1.txt"),
        ("", "fallback"),
        ("e\u0301", "\u00e9"),  # NFC, as macOS and Windows compare names
    ],
)
def test_safe_name(raw: str, expected: str) -> None:
    assert safe_name(raw, "fallback") == expected


def test_long_names_are_cut_to_what_every_system_takes() -> None:
    name = safe_name("Ø" * 200, "x")
    assert len(name) <= zip_layout.MAX_CHARS and len(name.encode()) <= zip_layout.MAX_BYTES


def test_the_readable_layout() -> None:
    entries = layout(
        [
            match(
                "9.2",
                name="Müller^Anna^^Dr",
                pid="PID1",
                date="20240131",
                study_desc="CT Thorax",
                series_no=2,
                modality="CT",
                series_desc="Lung 1mm",
                number=12,
            ),
            match(
                "9.1",
                name="Müller^Anna^^Dr",
                pid="PID1",
                date="20240131",
                study_desc="CT Thorax",
                series_no=2,
                modality="CT",
                series_desc="Lung 1mm",
                number=3,
            ),
        ]
    )
    assert [e.path for e in entries] == [
        "Müller Anna Dr (PID1)/2024-01-31 CT Thorax/2 CT Lung 1mm/0003.dcm",
        "Müller Anna Dr (PID1)/2024-01-31 CT Thorax/2 CT Lung 1mm/0012.dcm",
    ]


def test_names_are_unique_in_their_folder() -> None:
    entries = layout(
        [
            # Two series with the same number and description, in a study without date or description.
            match("9.1", series="1.1", series_no=1, modality="MR", number=1),
            match("9.2", series="1.2", series_no=1, modality="MR", number=1),
            # The same instance number twice in one series, and none at all.
            match("9.3", series="1.2", series_no=1, modality="MR", number=1),
            match("9.4", series="1.2", series_no=1, modality="MR"),
            # Patients whose folders differ only in case.
            match("9.5", study="1.3", name="DOE^JOHN"),
            match("9.6", study="1.4", name="Doe^John"),
        ]
    )
    paths = {e.sop_instance_uid: e.path for e in entries}
    assert paths["9.1"] == "Unknown patient/Study/1 MR/0001.dcm"
    assert paths["9.2"] == "Unknown patient/Study/1 MR (2)/0001.dcm"
    assert paths["9.3"] == "Unknown patient/Study/1 MR (2)/0001 (2).dcm"
    assert paths["9.4"] == "Unknown patient/Study/1 MR (2)/9.4.dcm"
    assert {paths["9.5"].split("/")[0], paths["9.6"].split("/")[0]} == {"DOE JOHN", "Doe John (2)"}
    assert len({p.casefold() for p in paths.values()}) == len(paths)


def test_a_hostile_name_stays_inside_its_folder() -> None:
    (entry,) = layout([match("9.1", name="../../etc^passwd", pid="/root", study_desc="..", series_desc="a/../b")])
    parts = entry.path.split("/")
    assert len(parts) == 4 and not any(p in ("", ".", "..") for p in parts)
    assert parts[0] == "_.._etc passwd (_root)"
