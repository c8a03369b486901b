"""DICOM JSON (PS3.18 F.2) from pydicom datasets, without bulk data values."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

log = logging.getLogger(__name__)

# Binary values larger than this become a BulkDataURI instead of inline data.
BULK_THRESHOLD = 1024


PIXEL_DATA = "7FE00010"


def bulk_uri(tag: str) -> str:
    # Relative to the instance URL; the gateway makes it absolute.
    return f"bulkdata/{tag}"


def _bulk_uri(elem: DataElement) -> str:
    return bulk_uri(f"{elem.tag:08X}")


def _nest_bulk_uris(attrs: dict[str, Any], path: str) -> None:
    """Gives bulk data inside sequences a path of its own
    ("bulkdata/00880200/0/7FE00010": sequence tag, item index, tag), so
    every URI names exactly one value."""
    for tag, attr in attrs.items():
        if path and attr.get("BulkDataURI") == bulk_uri(tag):
            attr["BulkDataURI"] = bulk_uri(f"{path}{tag}")
        if attr.get("vr") == "SQ":
            for i, item in enumerate(attr.get("Value") or []):
                if isinstance(item, dict):
                    _nest_bulk_uris(item, f"{path}{tag}/{i}/")


# JSON has no NaN or infinities; FL/FD (and DS beyond a double) may hold them.
# They travel as strings, spelled as dicom-rs and CP-2275 spell them.
_NON_FINITE = {"nan": "NaN", "inf": "inf", "-inf": "-inf"}


def _finite_values(attrs: dict[str, Any]) -> None:
    for attr in attrs.values():
        values = attr.get("Value")
        if not isinstance(values, list):
            continue
        for i, v in enumerate(values):
            if isinstance(v, float) and not math.isfinite(v):
                values[i] = _NON_FINITE[repr(v)]
            elif isinstance(v, dict) and attr.get("vr") == "SQ":
                _finite_values(v)


def _person_name(value: PersonName) -> dict[str, str] | None:
    """One PN value; an empty one in a multi-valued PN is null (PS3.18 F.2.5)."""
    groups = value.components
    if not groups:
        return None
    return dict(zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False))


def _element(elem: DataElement) -> dict[str, Any]:
    if elem.VR == "SQ":
        return {"vr": "SQ", "Value": [_attributes(item, top_level=False) for item in elem.value]}
    if elem.VR == "PN" and not elem.is_empty:
        values = elem.value if elem.VM > 1 else [elem.value]
        return {"vr": "PN", "Value": [_person_name(v) for v in values]}
    return elem.to_json_dict(bulk_data_element_handler=_bulk_uri, bulk_data_threshold=BULK_THRESHOLD)


def _attributes(ds: Dataset, top_level: bool = True) -> dict[str, Any]:
    """pydicom's Dataset.to_json_dict(suppress_invalid_tags=True): a top-level
    element that cannot be converted (anything inside it included) is left
    out, and the ingest pipeline reports it (0xB006). Unlike pydicom, empty
    values among PN values are kept (pydicom raises IndexError on them)."""
    attrs: dict[str, Any] = {}
    for tag in ds.keys():
        key = f"{tag:08X}"
        if not top_level:
            attrs[key] = _element(ds[tag])
            continue
        try:
            attrs[key] = _element(ds[tag])
        except Exception as exc:  # pydicom raises many types on odd values
            log.warning("DICOM JSON: element %s left out (%s)", key, type(exc).__name__)
    return attrs


def dataset_to_json(ds: Dataset) -> dict[str, Any]:
    with config.strict_reading():  # a value that does not parse is left out, not guessed
        attrs = _attributes(ds)
    _nest_bulk_uris(attrs, "")
    _finite_values(attrs)
    return attrs


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return _NON_FINITE[repr(obj)]
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def dumps(obj: Any) -> bytes:
    """Strict JSON in UTF-8: a non-finite number (say, from a record indexed
    before they were written as strings) becomes its string, a lone surrogate '?'."""
    try:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        text = json.dumps(_finite(obj), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8", errors="replace")


def first_value(attrs: dict[str, Any], tag: str) -> Any:
    """The first value of an attribute in a DICOM JSON object, or None."""
    values = attrs.get(tag, {}).get("Value")
    return values[0] if values else None
