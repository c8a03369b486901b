"""DICOM JSON (PS3.18 F.2) from pydicom datasets, without bulk data values."""

from __future__ import annotations

import json
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

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


def dataset_to_json(ds: Dataset) -> dict[str, Any]:
    attrs = ds.to_json_dict(
        bulk_data_threshold=BULK_THRESHOLD,
        bulk_data_element_handler=_bulk_uri,
        suppress_invalid_tags=True,
    )
    _nest_bulk_uris(attrs, "")
    return attrs


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def first_value(attrs: dict[str, Any], tag: str) -> Any:
    """The first value of an attribute in a DICOM JSON object, or None."""
    values = attrs.get(tag, {}).get("Value")
    return values[0] if values else None
