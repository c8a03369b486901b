"""Which DICOM attributes live in which column, and how column values become
DICOM JSON. The single map both filtering and result building read."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag
from sqlalchemy.orm import InstrumentedAttribute

from common.gen.dicomserver.v1 import dicom_pb2
from metadata_svc.schema import Instance, Patient, Series, Study


class Level(IntEnum):
    PATIENT = dicom_pb2.QUERY_LEVEL_PATIENT
    STUDY = dicom_pb2.QUERY_LEVEL_STUDY
    SERIES = dicom_pb2.QUERY_LEVEL_SERIES
    INSTANCE = dicom_pb2.QUERY_LEVEL_INSTANCE


@dataclass(frozen=True)
class Attr:
    tag: str
    level: Level
    # The column the value is read from.
    column: InstrumentedAttribute[Any]
    # The column filters run on: the lower-cased copy for person names, the
    # numeric copy for IS values.
    match: InstrumentedAttribute[Any]
    # Integer matching (US and IS columns); 0 in an integer column means absent.
    numeric: bool = False

    @property
    def vr(self) -> str:
        return vr_of(self.tag)


def vr_of(tag: str) -> str:
    try:
        return str(dictionary_VR(int(tag, 16)))
    except KeyError:
        return "UN"


def name_of(tag: str) -> str:
    return keyword_for_tag(int(tag, 16)) or tag


def _a(
    tag: str,
    level: Level,
    column: InstrumentedAttribute[Any],
    match: InstrumentedAttribute[Any] | None = None,
    numeric: bool = False,
) -> Attr:
    return Attr(tag, level, column, match if match is not None else column, numeric)


P, S, SE, I = Level.PATIENT, Level.STUDY, Level.SERIES, Level.INSTANCE  # noqa: E741 (level names of the table below)
ATTRS: dict[str, Attr] = {
    a.tag: a
    for a in (
        _a("00100010", P, Patient.patient_name, Patient.patient_name_lower),
        _a("00100020", P, Patient.patient_id),
        _a("00100021", P, Patient.issuer_of_patient_id),
        _a("00100030", P, Patient.patient_birth_date),
        _a("00100040", P, Patient.patient_sex),
        _a("0020000D", S, Study.study_instance_uid),
        _a("00080020", S, Study.study_date),
        _a("00080030", S, Study.study_time),
        _a("00080050", S, Study.accession_number),
        _a("00200010", S, Study.study_id),
        _a("00081030", S, Study.study_description),
        _a("00080090", S, Study.referring_physician_name, Study.referring_physician_name_lower),
        _a("0020000E", SE, Series.series_instance_uid),
        _a("00080060", SE, Series.modality),
        _a("00200011", SE, Series.series_number, Series.series_number_int, numeric=True),
        _a("0008103E", SE, Series.series_description),
        _a("00080021", SE, Series.series_date),
        _a("00080031", SE, Series.series_time),
        _a("00180015", SE, Series.body_part_examined),
        _a("00080018", I, Instance.sop_instance_uid),
        _a("00080016", I, Instance.sop_class_uid),
        _a("00200013", I, Instance.instance_number, Instance.instance_number_int, numeric=True),
        _a("00280010", I, Instance.rows, numeric=True),
        _a("00280011", I, Instance.columns, numeric=True),
        _a("00280008", I, Instance.number_of_frames, numeric=True),
        _a("00080023", I, Instance.content_date),
        _a("00080033", I, Instance.content_time),
        _a("00083002", I, Instance.transfer_syntax_uid),
    )
}

SPECIFIC_CHARACTER_SET = "00080005"
MODALITIES_IN_STUDY = "00080061"
STUDY_SERIES_COUNT, STUDY_INSTANCE_COUNT = "00201206", "00201208"
SERIES_INSTANCE_COUNT = "00201209"
PATIENT_STUDY_COUNT, PATIENT_SERIES_COUNT, PATIENT_INSTANCE_COUNT = "00201200", "00201202", "00201204"
# Results are built from UTF-8 JSON whatever the stored character set was.
UTF8 = "ISO_IR 192"

DEFAULTS: dict[Level, tuple[str, ...]] = {
    Level.PATIENT: (
        SPECIFIC_CHARACTER_SET,
        "00100010",
        "00100020",
        "00100030",
        "00100040",
        PATIENT_STUDY_COUNT,
        PATIENT_SERIES_COUNT,
        PATIENT_INSTANCE_COUNT,
    ),
    Level.STUDY: (
        SPECIFIC_CHARACTER_SET,
        "00080020",
        "00080030",
        "00080050",
        MODALITIES_IN_STUDY,
        "00080090",
        "00100010",
        "00100020",
        "00100030",
        "00100040",
        "0020000D",
        "00200010",
        "00081030",
        STUDY_SERIES_COUNT,
        STUDY_INSTANCE_COUNT,
    ),
    Level.SERIES: (
        SPECIFIC_CHARACTER_SET,
        "00080060",
        "0020000E",
        "00200011",
        "0008103E",
        SERIES_INSTANCE_COUNT,
        "0020000D",
    ),
    Level.INSTANCE: (
        SPECIFIC_CHARACTER_SET,
        "00080016",
        "00080018",
        "00200013",
        "00280010",
        "00280011",
        "00280008",
        "0020000D",
        "0020000E",
        "00083002",
    ),
}

COMPUTED: dict[Level, tuple[str, ...]] = {
    Level.PATIENT: (PATIENT_STUDY_COUNT, PATIENT_SERIES_COUNT, PATIENT_INSTANCE_COUNT),
    Level.STUDY: (MODALITIES_IN_STUDY, STUDY_SERIES_COUNT, STUDY_INSTANCE_COUNT),
    Level.SERIES: (SERIES_INSTANCE_COUNT,),
    Level.INSTANCE: (),
}
# Tags a row at each level reads from its own and its parents' columns.
COLUMN_TAGS: dict[Level, frozenset[str]] = {lv: frozenset(t for t, a in ATTRS.items() if a.level <= lv) for lv in Level}

# Attributes that describe something below a level: never copied from the
# representative instance into a study/series/patient result.
_COMPUTED_LEVEL = {
    MODALITIES_IN_STUDY: S,
    STUDY_SERIES_COUNT: S,
    STUDY_INSTANCE_COUNT: S,
    SERIES_INSTANCE_COUNT: SE,
    PATIENT_STUDY_COUNT: P,
    PATIENT_SERIES_COUNT: P,
    PATIENT_INSTANCE_COUNT: P,
}


def belongs_below(tag: str, level: Level) -> bool:
    """True when a stored attribute is finer-grained than `level`."""
    if level == Level.INSTANCE:
        return False
    attr = ATTRS.get(tag)
    if attr is not None:
        return attr.level > level
    if tag in _COMPUTED_LEVEL:
        return _COMPUTED_LEVEL[tag] > level
    # Image pixel description, overlays, pixel data: per instance.
    return tag[:4] in {"0028", "6000", "7FE0"} or (level < Level.SERIES and tag[:4] == "0020")


def column_values(level: Level, entities: dict[Level, Any]) -> dict[str, Any]:
    """Every mapped attribute available for a row at `level`."""
    out: dict[str, Any] = {}
    for tag, attr in ATTRS.items():
        if attr.level <= level:
            out[tag] = getattr(entities[attr.level], attr.column.key)
    return out


_UNSPLIT_VRS = {"LT", "ST", "UT", "UR"}
_INT_VRS = {"IS", "US", "UL", "SS", "SL", "SV", "UV"}


def _person_name(value: str) -> dict[str, str]:
    groups = value.split("=")
    return {k: g for k, g in zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False) if g}


def _to_int(value: str) -> int | None:
    try:
        return int(value.strip())
    except ValueError:
        try:
            return int(float(value))
        except ValueError:
            return None


def encode(tag: str, value: Any) -> dict[str, Any]:
    """A DICOM JSON attribute from a column value (str, int or list of str).
    Empty values become an attribute without Value (zero length)."""
    vr = vr_of(tag)
    element: dict[str, Any] = {"vr": vr}
    if value is None or value == "" or value == []:
        return element
    if isinstance(value, int):
        if value == 0 and vr in {"US", "IS"}:  # 0 is how the record says "absent"
            return element
        element["Value"] = [value]
        return element
    values = value if isinstance(value, list) else ([value] if vr in _UNSPLIT_VRS else value.split("\\"))
    if vr == "PN":
        encoded: list[Any] = [_person_name(v) for v in values]
    elif vr in _INT_VRS:
        encoded = [n for n in (_to_int(v) for v in values if v.strip()) if n is not None]
    else:
        encoded = values
    if encoded:
        element["Value"] = encoded
    return element
