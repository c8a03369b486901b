"""PS3.15 Annex E Table E.1-1: what the Basic Application Level
Confidentiality Profile does to each attribute, and what the options this
archive offers change.

The Basic Profile column comes from dicom-anonymizer's transcription of the
standard (dicomanonymizer.dicom_anonymization_databases.dicomfields_2026c,
BSD): no maintained library installable here carries the option columns
(idiscore does, but is GPL and pins Pillow < 11; deid and dicognito carry
recipes of their own). The three option columns used here are transcribed
from Table E.1-1: "Retain Patient Characteristics" (the attributes below),
"Retain Longitudinal Temporal Information with Modified Dates" (C for every
date, time and date-time attribute of the table) and "Clean Descriptors"
(the descriptions and comments below)."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from dicomanonymizer.dicom_anonymization_databases import dicomfields_2026c as table
from pydicom.datadict import dictionary_VR


class Option(enum.Enum):
    RETAIN_PATIENT_CHARACTERISTICS = "113108"
    RETAIN_LONGITUDINAL_MODIFIED_DATES = "113107"
    CLEAN_DESCRIPTORS = "113105"


BASIC_PROFILE_CODE = "113100"
OPTION_MEANINGS = {
    BASIC_PROFILE_CODE: "Basic Application Confidentiality Profile",
    Option.RETAIN_PATIENT_CHARACTERISTICS.value: "Retain Patient Characteristics Option",
    Option.RETAIN_LONGITUDINAL_MODIFIED_DATES.value: "Retain Longitudinal Temporal Information Modified Dates Option",
    Option.CLEAN_DESCRIPTORS.value: "Clean Descriptors Option",
}

# Table E.1-1's compound actions, resolved the way this archive applies them
# (it does not know each IOD's attribute types): X/Z and Z/D and X/Z/D
# empty the value, X/D removes it, X/Z/U* remaps UIDs and empties the rest.
_COMPOUND = {"X/Z": "Z", "Z/D": "Z", "X/Z/D": "Z", "X/D": "X", "X/Z/U*": "U"}

_BASIC_LISTS = {
    "D": table.D_TAGS,
    "Z": table.Z_TAGS,
    "X": table.X_TAGS,
    "U": table.U_TAGS,
    "Z/D": table.Z_D_TAGS,
    "X/Z": table.X_Z_TAGS,
    "X/D": table.X_D_TAGS,
    "X/Z/D": table.X_Z_D_TAGS,
    "X/Z/U*": table.X_Z_U_STAR_TAGS,
}

# Retain Patient Characteristics Option column.
PATIENT_CHARACTERISTICS = {
    0x00101010: "K",  # Patient's Age
    0x00100040: "K",  # Patient's Sex
    0x00101020: "K",  # Patient's Size
    0x00101030: "K",  # Patient's Weight
    0x00102160: "K",  # Ethnic Group
    0x001021A0: "K",  # Smoking Status
    0x001021C0: "K",  # Pregnancy Status
    0x00102203: "K",  # Patient's Sex Neutered
    0x00102000: "C",  # Medical Alerts
    0x00102110: "C",  # Allergies
    0x001021B0: "C",  # Additional Patient History
    0x00102180: "C",  # Occupation
    0x00380050: "C",  # Special Needs
    0x00380500: "C",  # Patient State
}
# Clean Descriptors Option column.
DESCRIPTORS = {
    0x00081030,  # Study Description
    0x0008103E,  # Series Description
    0x00081080,  # Admitting Diagnoses Description
    0x00082111,  # Derivation Description
    0x00180010,  # Contrast/Bolus Agent
    0x00181030,  # Protocol Name
    0x00184000,  # Acquisition Comments
    0x00104000,  # Patient Comments
    0x00204000,  # Image Comments
    0x00321030,  # Reason for Study
    0x00321060,  # Requested Procedure Description
    0x00324000,  # Study Comments
    0x00384000,  # Visit Comments
    0x00400007,  # Scheduled Procedure Step Description
    0x00400254,  # Performed Procedure Step Description
    0x00400280,  # Comments on the Performed Procedure Step
    0x00401002,  # Reason for the Requested Procedure
    0x00401400,  # Requested Procedure Comments
    0x00402400,  # Imaging Service Request Comments
    0x4008010C,  # Interpretation Author (retired)
}
_DATE_VRS = {"DA", "DT", "TM"}


@dataclass(frozen=True)
class Masked:
    """A repeating-group row of the table, e.g. (60xx,4000) Overlay Comments."""

    tag: int
    mask: int

    def matches(self, tag: int) -> bool:
        return tag & self.mask == self.tag


def _key(entry: tuple[int, ...]) -> int | Masked:
    if len(entry) == 2:
        return entry[0] << 16 | entry[1]
    group, elem, mgroup, melem = entry
    return Masked(group << 16 | elem, mgroup << 16 | melem)


def _vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return ""


def basic_profile() -> dict[int | Masked, str]:
    """Tag (or repeating group) -> the table's Basic Profile action code."""
    out: dict[int | Masked, str] = {}
    for code, entries in _BASIC_LISTS.items():
        for entry in entries:
            out[_key(entry)] = code
    return out


_BASIC = basic_profile()
_EXACT = {k: v for k, v in _BASIC.items() if isinstance(k, int)}
_MASKED = [(k, v) for k, v in _BASIC.items() if isinstance(k, Masked)]


def table_action(tag: int, options: Iterable[Option] = ()) -> str | None:
    """The table's code for `tag` (compound codes as they are), with the
    options' columns applied; None for an attribute the table does not list."""
    code = _EXACT.get(tag)
    if code is None:
        code = next((c for m, c in _MASKED if m.matches(tag)), None)
    if code is None:
        return None
    options = set(options)
    if Option.RETAIN_LONGITUDINAL_MODIFIED_DATES in options and _vr(tag) in _DATE_VRS:
        code = "C"
    if Option.CLEAN_DESCRIPTORS in options and tag in DESCRIPTORS:
        code = "C"
    if Option.RETAIN_PATIENT_CHARACTERISTICS in options and tag in PATIENT_CHARACTERISTICS:
        code = PATIENT_CHARACTERISTICS[tag]
    return code


def action(tag: int, options: Iterable[Option] = ()) -> str | None:
    """The action applied to `tag`: one of D, Z, X, K, C, U; None when not listed."""
    code = table_action(tag, options)
    return _COMPOUND.get(code, code) if code is not None else None


def listed_tags() -> list[int]:
    """Every single tag the table lists (repeating groups aside)."""
    return sorted(_EXACT)
