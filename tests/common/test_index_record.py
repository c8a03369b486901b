"""The index record the ingest pipeline builds from one header pass: every
attribute QIDO and C-FIND search on carries the object's value, BulkDataURIs
point at the instance, and objects without valid identifying UIDs are refused
with 0xC000 and the attribute's name. (Found by python -m bench.mutation:
dropping any of these attributes passed every in-process test.)"""

from __future__ import annotations

import io
import json

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from common.ingest import Rejected, read_record
from dicomcore.status import CANNOT_UNDERSTAND

VALUES = {
    "PatientID": "PID-7",
    "PatientName": "Doe^Jane",
    "PatientBirthDate": "19700101",
    "PatientSex": "F",
    "IssuerOfPatientID": "HOSP",
    "StudyDate": "20240102",
    "StudyTime": "101112",
    "AccessionNumber": "ACC9",
    "StudyID": "S1",
    "StudyDescription": "CT chest",
    "ReferringPhysicianName": "Who^Doctor",
    "Modality": "CT",
    "SeriesNumber": "3",
    "SeriesDescription": "axial",
    "SeriesDate": "20240102",
    "SeriesTime": "101500",
    "BodyPartExamined": "CHEST",
    "InstanceNumber": "12",
    "ContentDate": "20240102",
    "ContentTime": "101600",
    "SpecificCharacterSet": "ISO_IR 192",
}


def part10(**overrides: object) -> bytes:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, "1.2.3.4.5"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", "1.2.3.4"
    for keyword, value in {**VALUES, **overrides}.items():
        if value is None:
            del ds[keyword]
        else:
            setattr(ds, keyword, value)
    ds.Rows, ds.Columns = 2, 3
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = bytes(12)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def test_every_searched_attribute_carries_the_object_s_value() -> None:
    data = part10()
    r = read_record(data, len(data), "t1")
    assert (
        r.location.ref.tenant,
        r.location.ref.study_instance_uid,
        r.location.ref.series_instance_uid,
        r.location.ref.sop_instance_uid,
    ) == ("t1", "1.2.3", "1.2.3.4", "1.2.3.4.5")
    assert (r.location.sop_class_uid, r.location.transfer_syntax_uid, r.location.size) == (
        CTImageStorage,
        ExplicitVRLittleEndian,
        len(data),
    )
    assert r.specific_character_set == "ISO_IR 192"
    got = {
        "PatientID": r.patient.patient_id,
        "PatientName": r.patient.patient_name,
        "PatientBirthDate": r.patient.patient_birth_date,
        "PatientSex": r.patient.patient_sex,
        "IssuerOfPatientID": r.patient.issuer_of_patient_id,
        "StudyDate": r.study.study_date,
        "StudyTime": r.study.study_time,
        "AccessionNumber": r.study.accession_number,
        "StudyID": r.study.study_id,
        "StudyDescription": r.study.study_description,
        "ReferringPhysicianName": r.study.referring_physician_name,
        "Modality": r.series.modality,
        "SeriesNumber": r.series.series_number,
        "SeriesDescription": r.series.series_description,
        "SeriesDate": r.series.series_date,
        "SeriesTime": r.series.series_time,
        "BodyPartExamined": r.series.body_part_examined,
        "InstanceNumber": r.instance.instance_number,
        "ContentDate": r.instance.content_date,
        "ContentTime": r.instance.content_time,
        "SpecificCharacterSet": r.specific_character_set,
    }
    assert got == VALUES
    assert (r.instance.rows, r.instance.columns) == (2, 3)


def test_bulk_data_uris_point_at_the_instance() -> None:
    data = part10()
    r = read_record(data, len(data), "t1")
    pixel = json.loads(r.dicom_json)["7FE00010"]
    assert pixel == {"vr": "OW", "BulkDataURI": "studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5/bulkdata/7FE00010"}


@pytest.mark.parametrize(
    ("keyword", "value", "reason"),
    [
        ("StudyInstanceUID", None, "StudyInstanceUID is missing"),
        ("SeriesInstanceUID", "1.2.abc", "SeriesInstanceUID is not a valid UID"),
        ("SOPInstanceUID", "", "SOPInstanceUID is missing"),
    ],
)
def test_an_object_without_valid_identifying_uids_is_refused(keyword: str, value: str | None, reason: str) -> None:
    data = part10(**{keyword: value})
    with pytest.raises(Rejected) as refused:
        read_record(data, len(data), "t1")
    assert (refused.value.status, refused.value.reason) == (CANNOT_UNDERSTAND, reason)
