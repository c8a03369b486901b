"""C-FIND responses built straight from DICOM JSON matches: every VR comes
back as pydicom reads it, in each uncompressed transfer syntax, and what a
find used to answer through Dataset.from_json is answered byte for byte."""

from __future__ import annotations

import io
import json

import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from ingest_svc.queries import build_query, response

SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]

MATCH = {
    "00100010": {
        "vr": "PN",
        "Value": [{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}],
    },
    "00080090": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Jürgen"}, {"Alphabetic": "Roe"}]},
    "00100020": {"vr": "LO", "Value": ["PID-1"]},
    "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
    "00080061": {"vr": "CS", "Value": ["CT", "MR"]},
    "00201208": {"vr": "IS", "Value": [42]},
    "00280030": {"vr": "DS", "Value": [0.9765625, -0.0, 2]},
    "00280010": {"vr": "US", "Value": [512]},
    "00209165": {"vr": "AT", "Value": ["00100010", "7FE00010"]},
    "00189089": {"vr": "FD", "Value": [1.5, -2.25]},
    "00081110": {"vr": "SQ", "Value": [{"00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]}}]},
    "00081030": {"vr": "LO"},
    "00100030": {"vr": "DA", "Value": ["19700101"]},  # not requested
}


def query() -> object:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for keyword in (
        "PatientName",
        "ReferringPhysicianName",
        "PatientID",
        "StudyInstanceUID",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedInstances",
        "PixelSpacing",
        "Rows",
        "DimensionIndexPointer",
        "DiffusionGradientOrientation",
        "StudyDescription",
        "AccessionNumber",
    ):
        setattr(ds, keyword, None)
    ds.ReferencedStudySequence = []
    ds.ProcedureCodeSequence = []
    return build_query(ds, "default", StudyRootQueryRetrieveInformationModelFind)


@pytest.mark.parametrize("syntax", SYNTAXES, ids=lambda s: UID(s).name)
def test_values_come_back_as_pydicom_reads_them(syntax: UID) -> None:
    ds = response(query(), json.dumps(MATCH).encode(), syntax)
    data = encode(ds, syntax.is_implicit_VR, syntax.is_little_endian)
    got = read_dataset(io.BytesIO(data), syntax.is_implicit_VR, syntax.is_little_endian)
    assert got.SpecificCharacterSet == "ISO_IR 192" and got.QueryRetrieveLevel == "STUDY"
    assert str(got.PatientName) == "Yamada^Tarou=山田^太郎=やまだ^たろう"
    assert [str(n) for n in got.ReferringPhysicianName] == ["Müller^Jürgen", "Roe"]
    assert got.PatientID == "PID-1" and got.StudyInstanceUID == "1.2.3"
    assert list(got.ModalitiesInStudy) == ["CT", "MR"]
    assert got.NumberOfStudyRelatedInstances == 42
    assert [float(v) for v in got.PixelSpacing] == [0.9765625, 0.0, 2.0]
    assert got.Rows == 512
    assert list(got.DimensionIndexPointer) == [0x00100010, 0x7FE00010]
    assert list(got.DiffusionGradientOrientation) == [1.5, -2.25]
    assert got.ReferencedStudySequence[0].ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert len(got.ProcedureCodeSequence) == 0
    assert got["StudyDescription"].is_empty and got["AccessionNumber"].is_empty  # empty, and absent
    assert "PatientBirthDate" not in got  # not requested
    assert len(data) % 2 == 0


def test_values_are_handed_to_pydicom_encoded() -> None:
    ds = response(query(), json.dumps(MATCH).encode(), ExplicitVRLittleEndian)
    raw = {int(tag) for tag in ds.keys() if isinstance(ds.get_item(tag), RawDataElement)}
    assert {0x00080005, 0x00080052, 0x00100010, 0x00280030, 0x00280010, 0x00209165} <= raw
    assert 0x00081110 not in raw  # sequences take the pydicom path


def test_a_value_pydicom_would_write_too_long_is_written_as_valid_ds() -> None:
    match = json.dumps({"00280030": {"vr": "DS", "Value": [123456789.123456789, 1e-20]}}).encode()
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PixelSpacing = None
    got = response(build_query(ds, "default", StudyRootQueryRetrieveInformationModelFind), match)
    assert all(len(str(v)) <= 16 for v in got.PixelSpacing)
