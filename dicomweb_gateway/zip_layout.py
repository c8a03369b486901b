"""The folder layout of a zip download: readable names without a DICOMDIR,

    Patient name (ID)/Study date description/Series number modality description/instance number.dcm

made safe for every common file system (Windows, macOS, Linux) and unique
within their folder, so that two series of the same number and description,
or two instances of the same number, never overwrite each other on unzip.

Names come from the index (patient, study, series and instance attributes);
a missing value falls back to a generic word, and an instance without a
number to its SOP Instance UID. No value ever becomes a path element as it
was sent: separators, control characters, reserved names and trailing dots
are removed, and components are cut to a length every system takes."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dicomcore.dataset_json import first_value

# Tags the layout reads (instance-level query, include fields).
PATIENT_NAME, PATIENT_ID = "00100010", "00100020"
STUDY_DATE, STUDY_DESCRIPTION = "00080020", "00081030"
SERIES_NUMBER, MODALITY, SERIES_DESCRIPTION = "00200011", "00080060", "0008103E"
INSTANCE_NUMBER = "00200013"
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
TAGS = (
    PATIENT_NAME,
    PATIENT_ID,
    STUDY_DATE,
    STUDY_DESCRIPTION,
    SERIES_NUMBER,
    MODALITY,
    SERIES_DESCRIPTION,
    INSTANCE_NUMBER,
)

# Windows refuses these as names, with or without an extension.
_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
)
# Path separators, characters Windows forbids, and control characters.
_FORBIDDEN = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')
# A component at most this long (characters, and UTF-8 bytes: ext4 and
# most others allow 255 bytes per name), so that a whole path stays under
# Windows' 260 characters.
MAX_CHARS = 64
MAX_BYTES = 180


def safe_name(text: str, fallback: str) -> str:
    """`text` as one path component every common file system accepts."""
    text = unicodedata.normalize("NFC", text)
    text = " ".join(text.split())  # tabs, newlines, runs of spaces
    text = _FORBIDDEN.sub("_", text)
    text = text[:MAX_CHARS]
    while len(text.encode("utf-8")) > MAX_BYTES:
        text = text[:-1]
    # Windows drops trailing dots and spaces; a leading dot hides the entry
    # (and "." or ".." would climb out of the folder).
    text = text.strip(" .")
    if not text:
        text = fallback
    if text.split(".")[0].upper() in _RESERVED:
        text = "_" + text
    return text


def person_name(value: Any) -> str:
    """The alphabetic group of a DICOM JSON person name, components spaced."""
    if isinstance(value, dict):
        value = value.get("Alphabetic", "")
    if not isinstance(value, str):
        return ""
    return " ".join(part for part in value.split("=")[0].split("^") if part.strip())


def _text(attrs: dict[str, Any], tag: str) -> str:
    value = first_value(attrs, tag)
    if value is None:
        return ""
    if tag == PATIENT_NAME:
        return person_name(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _date(value: str) -> str:
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if re.fullmatch(r"\d{8}", value) else value


@dataclass(frozen=True)
class Entry:
    """One instance and where it goes in the zip."""

    sop_instance_uid: str
    path: str


class _Folder:
    """Names handed out in one folder, each to one owner (a UID, or a
    patient's name and ID), compared as case-insensitive file systems do."""

    def __init__(self) -> None:
        self.children: dict[object, tuple[str, _Folder]] = {}
        self.taken: set[str] = set()

    def child(self, owner: object, name: str, suffix: str = "") -> tuple[str, _Folder]:
        found = self.children.get(owner)
        if found is not None:
            return found
        candidate, n = name + suffix, 1
        while candidate.casefold() in self.taken:
            n += 1
            candidate = f"{name} ({n}){suffix}"
        self.taken.add(candidate.casefold())
        self.children[owner] = (candidate, _Folder())
        return self.children[owner]


def _number(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def layout(matches: Iterable[dict[str, Any]]) -> list[Entry]:
    """Where each instance (an instance-level query match) goes, in the
    order of folders and instance numbers."""
    rows = []
    for attrs in matches:
        sop = _text(attrs, SOP_UID)
        if not sop:
            continue
        rows.append((attrs, sop))

    def order(row: tuple[dict[str, Any], str]) -> tuple[Any, ...]:
        attrs, sop = row
        series_no = _number(_text(attrs, SERIES_NUMBER))
        inst_no = _number(_text(attrs, INSTANCE_NUMBER))
        return (
            _text(attrs, PATIENT_NAME),
            _text(attrs, PATIENT_ID),
            _text(attrs, STUDY_DATE),
            _text(attrs, STUDY_UID),
            series_no is None,
            series_no or 0,
            _text(attrs, SERIES_UID),
            inst_no is None,
            inst_no or 0,
            sop,
        )

    root = _Folder()
    out: list[Entry] = []
    for attrs, sop in sorted(rows, key=order):
        name, pid = _text(attrs, PATIENT_NAME), _text(attrs, PATIENT_ID)
        patient = f"{name} ({pid})" if name and pid else name or (f"({pid})" if pid else "")
        p_name, p_folder = root.child(("patient", name, pid), safe_name(patient, "Unknown patient"))

        study = " ".join(v for v in (_date(_text(attrs, STUDY_DATE)), _text(attrs, STUDY_DESCRIPTION)) if v)
        s_name, s_folder = p_folder.child(_text(attrs, STUDY_UID), safe_name(study, "Study"))

        series = " ".join(
            v for v in (_text(attrs, SERIES_NUMBER), _text(attrs, MODALITY), _text(attrs, SERIES_DESCRIPTION)) if v
        )
        se_name, se_folder = s_folder.child(_text(attrs, SERIES_UID), safe_name(series, "Series"))

        number = _number(_text(attrs, INSTANCE_NUMBER))
        stem = f"{number:04d}" if number is not None and number >= 0 else safe_name(sop, "instance")
        i_name, _ = se_folder.child(sop, stem, ".dcm")
        out.append(Entry(sop, f"{p_name}/{s_name}/{se_name}/{i_name}"))
    return out
