"""Builders for instance records: the real ingest code over real pydicom
test files or small headers with chosen values."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from common.ingest import read_record

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def make_ds(
    study: str,
    series: str,
    sop: str,
    *,
    patient_id: str = "P1",
    name: str = "Doe^John",
    study_date: str = "",
    study_time: str = "",
    accession: str = "",
    modality: str = "CT",
    series_number: str = "1",
    instance_number: str = "1",
    referring: str = "",
    description: str = "",
    model: str = "ScannerX",
) -> Dataset:
    """A small header with chosen values, as a modality would send it."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CT_STORAGE
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.PatientID = patient_id
    ds.PatientName = name
    ds.StudyDate = study_date
    ds.StudyTime = study_time
    ds.AccessionNumber = accession
    ds.ReferringPhysicianName = referring
    ds.StudyDescription = description
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.ManufacturerModelName = model
    ds.Rows = 4
    ds.Columns = 4
    return ds


def record(ds: Dataset, tenant: str, key: str | None = None, size: int = 100) -> md_pb.InstanceRecord:
    """The record the ingest pipeline makes of `ds` (as Part 10 bytes)."""
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    rec = read_record(buf.getvalue(), len(buf.getvalue()), tenant)
    rec.location.size = size
    rec.location.object_key = key or f"{tenant}/{ds.SOPInstanceUID}/0000000000000000.dcm"
    return rec


def sample_record(name: str, tenant: str, key: str | None = None) -> md_pb.InstanceRecord:
    path = get_testdata_file(name, download=False)
    assert path is not None, name
    ds = dcmread(path, stop_before_pixels=True)
    return record(ds, tenant, key, size=Path(path).stat().st_size)


def uids(matches: Any, tag: str) -> list[str]:
    """The first value of `tag` of each DICOM JSON match, in order."""
    out = []
    for raw in matches:
        obj = json.loads(raw) if isinstance(raw, bytes) else raw
        out.append(obj[tag]["Value"][0])
    return out
