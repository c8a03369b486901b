"""Building the STOW-RS response dataset and status from outcomes."""

from __future__ import annotations

from common.gen.dicomserver.v1 import dicom_pb2
from common.gen.dicomserver.v1 import ingest_service_pb2 as ingest_pb
from dicomcore.status import CANNOT_UNDERSTAND, DATASET_MISMATCH
from dicomweb_gateway import stow_result
from dicomweb_gateway.context import Urls

URLS = Urls("http://h/dicomweb/")
CT = "1.2.840.10008.5.1.4.1.1.2"


def stored(
    study: str, sop: str, status: int = ingest_pb.STORE_STATUS_STORED, code: int = 0, reason: str = ""
) -> ingest_pb.InstanceOutcome:
    return ingest_pb.InstanceOutcome(
        status=status,
        ref=dicom_pb2.InstanceRef(tenant="t", study_instance_uid=study, series_instance_uid="9", sop_instance_uid=sop),
        sop_class_uid=CT,
        dicom_status=code,
        reason=reason,
    )


def failed(code: int, reason: str, sop: str = "") -> ingest_pb.InstanceOutcome:
    outcome = stow_result.failure(code, reason)
    if sop:
        outcome.ref.sop_instance_uid = sop
        outcome.sop_class_uid = CT
    return outcome


def test_all_stored() -> None:
    result = stow_result.build([stored("1", "1.1"), stored("1", "1.2")], URLS)
    assert result.status_code == 200
    assert result.reasons == []
    assert result.dataset == {
        "00081190": {"vr": "UR", "Value": ["http://h/dicomweb/studies/1"]},
        "00081199": {
            "vr": "SQ",
            "Value": [
                {
                    "00081150": {"vr": "UI", "Value": [CT]},
                    "00081155": {"vr": "UI", "Value": [sop]},
                    "00081190": {"vr": "UR", "Value": [f"http://h/dicomweb/studies/1/series/9/instances/{sop}"]},
                }
                for sop in ("1.1", "1.2")
            ],
        },
    }


def test_some_failed() -> None:
    result = stow_result.build(
        [stored("1", "1.1"), failed(CANNOT_UNDERSTAND, "not DICOM"), failed(DATASET_MISMATCH, "other study", "2.1")],
        URLS,
    )
    assert result.status_code == 202
    first, second = result.dataset["00081198"]["Value"]
    assert first == {"00081197": {"vr": "US", "Value": [0xC000]}}
    assert second["00081155"] == {"vr": "UI", "Value": ["2.1"]}
    assert second["00081150"] == {"vr": "UI", "Value": [CT]}
    assert second["00081197"] == {"vr": "US", "Value": [0xA900]}
    assert result.reasons == ["part 2: not DICOM", "part 3: other study"]


def test_all_failed_is_409_and_keeps_the_url_study() -> None:
    result = stow_result.build([failed(CANNOT_UNDERSTAND, "x")], URLS, study="5.5")
    assert result.status_code == 409
    assert result.dataset["00081190"]["Value"] == ["http://h/dicomweb/studies/5.5"]
    assert "00081199" not in result.dataset


def test_several_studies_have_no_study_url() -> None:
    result = stow_result.build([stored("1", "1.1"), stored("2", "2.1")], URLS)
    assert "00081190" not in result.dataset


def test_warning_is_202_with_warning_reason() -> None:
    result = stow_result.build(
        [stored("1", "1.1", ingest_pb.STORE_STATUS_STORED_WITH_WARNING, 0xB000, "coerced")], URLS
    )
    assert result.status_code == 202
    (item,) = result.dataset["00081199"]["Value"]
    assert item["00081196"] == {"vr": "US", "Value": [0xB000]}
    assert result.reasons == ["part 1: coerced"]


def test_reasons_are_capped_and_ascii() -> None:
    outcomes = [failed(CANNOT_UNDERSTAND, f"bad ü {i}") for i in range(30)]
    result = stow_result.build(outcomes, URLS)
    assert len(result.reasons) == stow_result.MAX_WARNING_TEXTS
    assert result.reasons[0] == "part 1: bad ? 0"


def test_warning_header_quotes() -> None:
    header = stow_result.warning_header(['a "quoted" \\ text', "b"], "host:8080")
    assert header == '299 host:8080: "a \\"quoted\\" \\\\ text", 299 host:8080: "b"'
