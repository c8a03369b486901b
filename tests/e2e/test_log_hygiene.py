"""No patient data in the logs at INFO: every service of a launched archive
logs at INFO while objects naming a patient are stored, searched for,
retrieved, refused and deleted over both edges; the names and IDs never
appear in what the services printed."""

from __future__ import annotations

import io

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from tests.support import Archive, small_ct

NAME, GIVEN, PATIENT_ID = "Quixotezz", "Zebulonne", "PIDZQ77310"
SECRETS = (NAME, GIVEN, PATIENT_ID)
DICOM = "application/dicom"


def instance(study: str) -> bytes:
    return small_ct(study, PatientName=f"{NAME}^{GIVEN}", PatientID=PATIENT_ID)[1]


def stow(base: str, parts: list[bytes]) -> httpx.Response:
    body = b"".join(b"--xx\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n" for p in parts) + b"--xx--\r\n"
    return httpx.post(
        f"{base}/studies",
        content=body,
        headers={"Content-Type": f'multipart/related; type="{DICOM}"; boundary=xx'},
        timeout=30,
    )


@pytest.mark.timeout(300)
def test_patient_data_never_reaches_info_logs(tmp_path_factory: pytest.TempPathFactory) -> None:
    server = Archive(tmp_path_factory.mktemp("log-hygiene"), extra_env={"DICOMSERVER_LOG_LEVEL": "INFO"})
    server.start()
    try:
        base = server.dicomweb
        study = generate_uid()
        good = instance(study)
        assert stow(base, [good]).status_code == 200
        # Refused objects that carry the patient's name: truncated, and one
        # whose study differs from the path's.
        assert stow(base, [good[: len(good) - 40]]).status_code in (400, 409)
        body = b"--xx\r\nContent-Type: application/dicom\r\n\r\n" + instance(generate_uid()) + b"\r\n--xx--\r\n"
        r = httpx.post(
            f"{base}/studies/{study}",
            content=body,
            headers={"Content-Type": f'multipart/related; type="{DICOM}"; boundary=xx'},
        )
        assert r.status_code == 409
        for query in (
            f"PatientName={NAME}*",
            f"PatientID={PATIENT_ID}",
            f"PatientName={NAME}&NoSuchKey={NAME}",
            f"PatientBirthDate={NAME}",
            f"fuzzymatching=true&PatientName={GIVEN}",
        ):
            assert httpx.get(f"{base}/studies?{query}").status_code in (200, 204, 400)
        assert httpx.get(f"{base}/studies/{study}/metadata").status_code == 200

        ae = AE(ae_title="HYGIENE")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title=server.ae_title)
        assert assoc.is_established
        assert assoc.send_c_store(pydicom.dcmread(io.BytesIO(instance(study)))).Status == 0
        for level, key in (("STUDY", "PatientName"), ("STUDY", "PatientID"), ("STUDY", "PatientBirthDate")):
            query = Dataset()
            query.QueryRetrieveLevel = level
            setattr(query, key, f"{NAME}*" if key != "PatientID" else PATIENT_ID)
            statuses = [s.Status for s, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)]
            assert statuses[-1] in (0x0000, 0xA900, 0xC000)
        assoc.release()
        assert httpx.delete(f"{base}/studies/{study}").status_code == 204
    finally:
        code = server.stop()
    logs = "".join(server.output)
    assert code == 0, logs
    assert " INFO " in logs or '"INFO"' in logs, "the services did not log at INFO"
    leaked = [s for s in SECRETS if s in logs]
    assert not leaked, f"patient data {leaked} in the logs:\n" + "\n".join(
        line for line in logs.splitlines() if any(s in line for s in SECRETS)
    )
