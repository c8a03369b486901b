"""De-identification of one data set by the profile (deidentify.profile).

The actions, as applied here:
- D: a dummy value of the attribute's VR (sequences: their items de-identified);
- Z: an empty value (Patient's Name and ID: the project's pseudonym, a
  dummy Z allows, so that copies of one patient link up);
- X: removed;
- K: kept;
- C: dates and date-times shifted by the patient's offset (Retain
  Longitudinal Temporal Information with Modified Dates); text with every
  word that appears in an identifying value of the data set removed;
- U: a UID derived from the original and the project key (HMAC-SHA-256 as
  a 2.25 UID): the same within a request and across requests of a project.
Private attributes are removed unless safe-listed; attributes the table
does not list are kept. Pixel data are never decoded or changed."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from deidentify import profile
from deidentify.profile import Option

DEIDENTIFICATION_METHOD = "PS3.15 Annex E Basic Application Level Confidentiality Profile"
# Days a patient's dates move back: between these, from the project key and the original Patient ID.
_MIN_SHIFT_DAYS, _MAX_SHIFT_DAYS = 30, 3650
_WORD = re.compile(r"[\w'-]+", re.UNICODE)
_TEXT_VRS = {"LO", "SH", "LT", "ST", "UT", "UC", "PN", "CS", "AE"}


@dataclass(frozen=True)
class SafePrivate:
    """A private attribute to keep: its private creator, group and element
    offset (the low byte of the element, e.g. 0x10 of (0029,xx10))."""

    creator: str
    group: int
    offset: int


@dataclass
class Request:
    project_key: str
    options: frozenset[Option] = frozenset()
    safe_private: tuple[SafePrivate, ...] = ()


@dataclass
class Result:
    dataset: Dataset
    burned_in: bool
    uids: dict[str, str] = field(default_factory=dict)


class Deidentifier:
    """One request's de-identification: its UID map (consistent for the
    request, stable per project key) and per-patient date shifts."""

    def __init__(self, request: Request) -> None:
        if not request.project_key:
            raise ValueError("a project key is required")
        self.request = request
        self._key = request.project_key.encode()
        self.uids: dict[str, str] = {}

    # --- the stable mappings ------------------------------------------------

    def _digest(self, kind: str, value: str) -> bytes:
        return hmac.new(self._key, f"{kind}\x00{value}".encode(), hashlib.sha256).digest()

    def uid(self, value: str) -> str:
        value = value.strip("\x00 ")
        if not value:
            return value
        mapped = self.uids.get(value)
        if mapped is None:
            mapped = self.uids[value] = "2.25." + str(int.from_bytes(self._digest("uid", value)[:16], "big"))
        return mapped

    def pseudonym(self, patient_id: str) -> str:
        return "ANON" + self._digest("patient", patient_id).hex()[:12].upper()

    def shift_days(self, patient_id: str) -> int:
        span = _MAX_SHIFT_DAYS - _MIN_SHIFT_DAYS
        return _MIN_SHIFT_DAYS + int.from_bytes(self._digest("dates", patient_id)[:4], "big") % span

    # --- one data set ------------------------------------------------------------

    def apply(self, ds: Dataset) -> Result:
        """De-identifies `ds` in place (file meta too); Burned In Annotation
        is reported, not acted on (the caller's policy decides)."""
        patient_id = str(ds.get("PatientID", "") or "")
        burned_in = str(ds.get("BurnedInAnnotation", "") or "").upper() == "YES"
        words = _identifying_words(ds, self.request.options)
        self._walk(ds, patient_id, words)
        ds.PatientIdentityRemoved = "YES"
        ds.PatientID = self.pseudonym(patient_id)
        ds.PatientName = ds.PatientID
        options = sorted(self.request.options, key=lambda o: o.value)
        ds.DeidentificationMethod = "; ".join(
            [DEIDENTIFICATION_METHOD, *(profile.OPTION_MEANINGS[o.value] for o in options)]
        )[:64]
        codes = Sequence()
        for value in [profile.BASIC_PROFILE_CODE, *(o.value for o in options)]:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator = value, "DCM"
            item.CodeMeaning = profile.OPTION_MEANINGS[value]
            codes.append(item)
        ds.DeidentificationMethodCodeSequence = codes
        ds.LongitudinalTemporalInformationModified = (
            "MODIFIED" if Option.RETAIN_LONGITUDINAL_MODIFIED_DATES in self.request.options else "REMOVED"
        )
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            if "MediaStorageSOPInstanceUID" in meta:
                meta.MediaStorageSOPInstanceUID = self.uid(str(meta.MediaStorageSOPInstanceUID))
            for keyword in (
                "SourceApplicationEntityTitle",
                "SendingApplicationEntityTitle",
                "ReceivingApplicationEntityTitle",
                "PrivateInformationCreatorUID",
                "PrivateInformation",
            ):
                if keyword in meta:
                    del meta[keyword]
        return Result(ds, burned_in, dict(self.uids))

    def _walk(self, ds: Dataset, patient_id: str, words: set[str]) -> None:
        creators = _private_creators(ds)
        for elem in list(ds):
            tag = int(elem.tag)
            if elem.tag.is_private:
                if not self._safe_private(elem, creators):
                    del ds[elem.tag]
                elif elem.VR == "SQ":
                    for item in elem.value:
                        self._walk(item, patient_id, words)
                continue
            act = profile.action(tag, self.request.options)
            if act is None or act == "K":
                if elem.VR == "SQ":
                    for item in elem.value:
                        self._walk(item, patient_id, words)
                continue
            if act == "X":
                del ds[elem.tag]
            elif act == "Z":
                elem.value = Sequence() if elem.VR == "SQ" else None
            elif act == "D":
                if elem.VR == "SQ":
                    for item in elem.value:
                        self._walk(item, patient_id, words)
                else:
                    elem.value = _dummy(elem)
            elif act == "U":
                if elem.VR == "UI":
                    elem.value = (
                        [self.uid(str(v)) for v in _values(elem)] if elem.VM > 1 else self.uid(str(elem.value or ""))
                    )
                elif elem.VR == "SQ":
                    for item in elem.value:
                        self._walk(item, patient_id, words)
                else:
                    elem.value = None
            elif act == "C":
                self._clean(ds, elem, patient_id, words)

    def _clean(self, ds: Dataset, elem: DataElement, patient_id: str, words: set[str]) -> None:
        vr = elem.VR
        if vr == "SQ":
            for item in elem.value:
                self._walk(item, patient_id, words)
        elif vr in ("DA", "DT"):
            days = self.shift_days(patient_id)
            elem.value = (
                [_shifted(str(v), vr, days) for v in _values(elem)]
                if elem.VM > 1
                else _shifted(str(elem.value or ""), vr, days)
            )
        elif vr == "TM":
            pass  # dates move by whole days: the time of day stays
        elif vr in _TEXT_VRS:
            elem.value = _cleaned(str(elem.value or ""), words)
        else:
            elem.value = None

    def _safe_private(self, elem: DataElement, creators: dict[tuple[int, int], str]) -> bool:
        tag = int(elem.tag)
        group, element = tag >> 16, tag & 0xFFFF
        if element < 0x1000:
            # A private creator: kept when a safe-listed attribute needs it.
            return any(s.group == group and s.creator == str(elem.value).strip() for s in self.request.safe_private)
        creator = creators.get((group, element >> 8), "")
        return any(
            s.group == group and s.creator == creator and s.offset == element & 0xFF for s in self.request.safe_private
        )


def _values(elem: DataElement) -> list[object]:
    return list(elem.value) if elem.VM > 1 else [elem.value]


def _private_creators(ds: Dataset) -> dict[tuple[int, int], str]:
    out = {}
    for elem in ds:
        tag = int(elem.tag)
        if elem.tag.is_private and 0x0010 <= tag & 0xFFFF <= 0x00FF:
            out[(tag >> 16, tag & 0xFF)] = str(elem.value).strip()
    return out


def _dummy(elem: DataElement) -> object:
    vr = elem.VR
    dummies = {
        "DA": "19000101",
        "DT": "19000101000000",
        "TM": "000000",
        "PN": "ANONYMOUS",
        "CS": "ANONYMOUS",
        "AS": "000D",
        "IS": "0",
        "DS": "0",
        "UI": "2.25.0",
        "AE": "ANONYMOUS",
    }
    if vr in dummies:
        return dummies[vr]
    if vr in ("LO", "SH", "LT", "ST", "UT", "UC", "UR"):
        return "ANONYMIZED"
    if vr in ("US", "SS", "UL", "SL", "FL", "FD", "SV", "UV"):
        return 0
    if vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN"):
        return b"\x00\x00"
    return None


def _shifted(value: str, vr: str, days: int) -> str:
    value = value.strip()
    if len(value) < 8:
        return ""  # not a full date: nothing to keep
    try:
        day = date(int(value[:4]), int(value[4:6]), int(value[6:8])) - timedelta(days=days)
    except ValueError:
        return ""
    return day.strftime("%Y%m%d") + (value[8:] if vr == "DT" else "")


def _identifying_words(ds: Dataset, options: frozenset[Option]) -> set[str]:
    """Words of the values the profile removes or replaces (names, IDs,
    addresses, ...): what cleaning takes out of descriptive text."""
    words: set[str] = set()

    def collect(d: Dataset) -> None:
        for elem in d:
            if elem.VR == "SQ":
                for item in elem.value:
                    collect(item)
                continue
            act = profile.action(int(elem.tag), options)
            if act in ("D", "Z", "X") and elem.VR in _TEXT_VRS and elem.value:
                for word in _WORD.findall(str(elem.value).replace("^", " ")):
                    if len(word) > 1:
                        words.add(word.lower())

    collect(ds)
    return words


def _cleaned(text: str, words: set[str]) -> str:
    """The text without the identifying words, nor numbers of 4 digits or more."""

    def keep(match: re.Match[str]) -> str:
        word = match.group(0)
        if word.lower() in words or (sum(ch.isdigit() for ch in word) >= 4):
            return ""
        return word

    return re.sub(r"\s{2,}", " ", _WORD.sub(keep, text.replace("^", " "))).strip()


def parse_options(names: Iterable[str]) -> frozenset[Option]:
    by_name = {
        "retain_patient_characteristics": Option.RETAIN_PATIENT_CHARACTERISTICS,
        "retain_longitudinal_modified_dates": Option.RETAIN_LONGITUDINAL_MODIFIED_DATES,
        "clean_descriptors": Option.CLEAN_DESCRIPTORS,
    }
    out = set()
    for name in names:
        if name not in by_name:
            raise ValueError(f"unknown option '{name[:60]}' (known: {', '.join(sorted(by_name))})")
        out.add(by_name[name])
    return frozenset(out)
