"""The STOW-RS response (PS3.18 10.5.3): a DICOM JSON dataset listing what was
stored and what failed, and the HTTP status that summarizes it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from common.gen.dicomserver.v1 import ingest_service_pb2 as ingest_pb
from dicomweb_gateway.context import Urls

RETRIEVE_URL = "00081190"
FAILED_SOP_SEQUENCE = "00081198"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_CLASS_UID = "00081150"
REFERENCED_SOP_INSTANCE_UID = "00081155"

# How many distinct failure texts go into the Warning header.
MAX_WARNING_TEXTS = 10

_STORED = (ingest_pb.STORE_STATUS_STORED, ingest_pb.STORE_STATUS_STORED_WITH_WARNING)


@dataclass(frozen=True)
class StowResult:
    status_code: int
    dataset: dict[str, Any]
    # Human-readable reasons (ASCII), one per distinct failure or warning.
    reasons: list[str]


def _attr(vr: str, value: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": [value]}


def _sop_ids(outcome: ingest_pb.InstanceOutcome) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if outcome.sop_class_uid:
        item[REFERENCED_SOP_CLASS_UID] = _attr("UI", outcome.sop_class_uid)
    if outcome.ref.sop_instance_uid:
        item[REFERENCED_SOP_INSTANCE_UID] = _attr("UI", outcome.ref.sop_instance_uid)
    return item


def failure(status: int, reason: str) -> ingest_pb.InstanceOutcome:
    """An outcome for a part the gateway refused before the pipeline saw it."""
    return ingest_pb.InstanceOutcome(status=ingest_pb.STORE_STATUS_FAILED, dicom_status=status, reason=reason)


def build(outcomes: Sequence[ingest_pb.InstanceOutcome], urls: Urls, study: str = "") -> StowResult:
    """`study` is the one named in the request URL, if any."""
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    reasons: list[str] = []
    stored_studies: set[str] = set()
    warned = False
    for number, outcome in enumerate(outcomes, start=1):
        item = _sop_ids(outcome)
        if outcome.status in _STORED:
            ref = outcome.ref
            stored_studies.add(ref.study_instance_uid)
            item[RETRIEVE_URL] = _attr(
                "UR", urls.instance(ref.study_instance_uid, ref.series_instance_uid, ref.sop_instance_uid)
            )
            if outcome.status == ingest_pb.STORE_STATUS_STORED_WITH_WARNING:
                warned = True
                item[WARNING_REASON] = _attr("US", outcome.dicom_status)
            referenced.append(item)
        else:
            item[FAILURE_REASON] = _attr("US", outcome.dicom_status)
            failed.append(item)
        # Reasons of plain successes too: "the existing instance was kept" matters.
        if outcome.reason and len(reasons) < MAX_WARNING_TEXTS:
            text = f"part {number}: {outcome.reason}"
            reasons.append(text.encode("ascii", "replace").decode("ascii"))

    dataset: dict[str, Any] = {}
    # The study's RetrieveURL only when the request is about exactly one study.
    retrieve_study = study or (next(iter(stored_studies)) if len(stored_studies) == 1 else "")
    if retrieve_study:
        dataset[RETRIEVE_URL] = _attr("UR", urls.study(retrieve_study))
    if failed:
        dataset[FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": failed}
    if referenced:
        dataset[REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": referenced}

    if not referenced:
        status = 409
    elif failed or warned:
        status = 202
    else:
        status = 200
    return StowResult(status, dataset, reasons)


def warning_header(reasons: Sequence[str], agent: str) -> str:
    """Warning header values in the form PS3.18 uses: 299 {agent}: "text"."""

    def quote(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    return ", ".join(f"299 {agent}: {quote(r)}" for r in reasons)
