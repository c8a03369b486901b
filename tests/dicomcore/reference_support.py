"""The pydicom path the ingest pipeline took before dicomcore: dcmread of the
header, pydicom's value conversion, dicomcore.dataset_json.dataset_to_json. Kept
as the independent oracle dicomcore is compared with (tests, bench.header);
nothing in the archive runs it."""

from __future__ import annotations

import json
import struct
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import DeflatedExplicitVRLittleEndian

from common.gen.dicomserver.v1 import dicom_pb2
from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from common.validation import is_uid
from dicomcore import dataset_json
from dicomcore.status import CANNOT_UNDERSTAND, Rejected

_PIXEL_DATA = 0x7FE00010


def _text(ds: Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword)
        if value is None:
            return ""
        if isinstance(value, MultiValue):
            return "\\".join(str(v) for v in value)
        return str(value)
    except Exception:  # pydicom raises many types on values it cannot decode
        raise Rejected(CANNOT_UNDERSTAND, f"{keyword} cannot be decoded") from None


def _int(ds: Dataset, keyword: str) -> int:
    try:
        return int(ds.get(keyword) or 0)
    except (TypeError, ValueError):
        return 0


def _pixel_data_complete(f: BinaryIO, header_end: int, size: int, little_endian: bool, implicit: bool) -> bool | None:
    """Checks the pixel data element after the header reaches its stated end.

    Returns None when there is no pixel data, else whether it is complete.
    Reads only the element header and, for encapsulated data, the file's tail."""
    f.seek(header_end)
    head = f.read(12)
    if len(head) < 8:
        return None
    endian = "<" if little_endian else ">"
    group, elem = struct.unpack(endian + "HH", head[:4])
    if (group << 16 | elem) != _PIXEL_DATA:
        return None
    if implicit:
        (length,) = struct.unpack(endian + "L", head[4:8])
        value_start = header_end + 8
    else:
        if len(head) < 12:
            return False
        (length,) = struct.unpack(endian + "L", head[8:12])
        value_start = header_end + 12
    if length != 0xFFFFFFFF:
        return value_start + length <= size
    # Encapsulated: the sequence delimiter must be present near the end.
    tail_start = max(value_start, size - 4096)
    f.seek(tail_start)
    return b"\xfe\xff\xdd\xe0\x00\x00\x00\x00" in f.read()


def _cut_short(ds: Dataset) -> bool:
    """True when an element's value is shorter than its stated length: pydicom
    reads what is there without complaint, so a truncated object would be
    indexed with cut-off values (a Series Instance UID cut to a valid prefix)."""
    for tag in ds.keys():
        raw = ds.get_item(tag)
        if (
            isinstance(raw, RawDataElement)
            and raw.value is not None
            and raw.length != 0xFFFFFFFF
            and len(raw.value) < raw.length
        ):
            return True
    return False


def parse_header(f: BinaryIO, size: int) -> tuple[Dataset, int]:
    """Reads the header without pixel data; returns it with the frame count
    (0 when the object has no pixel data)."""
    f.seek(0)
    try:
        ds = dcmread(f, stop_before_pixels=True)
        header_end = f.tell()
    except Exception as exc:  # pydicom raises many types on garbage input
        raise Rejected(CANNOT_UNDERSTAND, f"not a readable DICOM Part 10 object ({type(exc).__name__})") from None
    if _cut_short(ds):
        raise Rejected(CANNOT_UNDERSTAND, "object is truncated: an element ends before its stated length")
    meta = ds.file_meta
    ts = getattr(meta, "TransferSyntaxUID", None)
    if not ts:
        raise Rejected(CANNOT_UNDERSTAND, "file meta information has no Transfer Syntax UID")
    if ts == DeflatedExplicitVRLittleEndian:
        complete = None  # positions in the file are not positions in the dataset
    else:
        complete = _pixel_data_complete(
            f,
            header_end,
            size,
            little_endian=ts.is_little_endian if ts.is_transfer_syntax else True,
            implicit=ts.is_implicit_VR if ts.is_transfer_syntax else False,
        )
    if complete is False:
        raise Rejected(CANNOT_UNDERSTAND, "object is truncated: pixel data ends before its stated length")
    # Images without NumberOfFrames have one frame (deflated ones included).
    frames = _int(ds, "NumberOfFrames") or (1 if complete or "Rows" in ds else 0)
    return ds, frames


def unindexed_tags(ds: Dataset, record: md_pb.InstanceRecord) -> list[str]:
    """Top-level elements whose values could not be read into the index (and
    so are missing from the metadata), e.g. an IS value that is not a number."""
    indexed = json.loads(record.dicom_json)
    return [f"{int(tag):08X}" for tag in ds.keys() if f"{int(tag):08X}" not in indexed]


def build_record(ds: Dataset, tenant: str, size: int, frames: int) -> md_pb.InstanceRecord:
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = _text(ds, keyword)
        if not value:
            raise Rejected(CANNOT_UNDERSTAND, f"{keyword} is missing")
        if not is_uid(value):
            raise Rejected(CANNOT_UNDERSTAND, f"{keyword} is not a valid UID")
    ref = dicom_pb2.InstanceRef(
        tenant=tenant,
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
    )
    try:
        header_json = dataset_json.dataset_to_json(ds)
    except Exception as exc:
        raise Rejected(CANNOT_UNDERSTAND, f"header cannot be converted to DICOM JSON ({type(exc).__name__})") from None
    if frames:
        # The header was read without pixels; /metadata still lists them.
        ts = ds.file_meta.TransferSyntaxUID
        vr = "OB" if (ts.is_transfer_syntax and ts.is_compressed) or _int(ds, "BitsAllocated") <= 8 else "OW"
        header_json[dataset_json.PIXEL_DATA] = {"vr": vr, "BulkDataURI": dataset_json.bulk_uri(dataset_json.PIXEL_DATA)}
    return md_pb.InstanceRecord(
        location=dicom_pb2.InstanceLocation(
            ref=ref,
            sop_class_uid=_text(ds, "SOPClassUID"),
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
            size=size,
            number_of_frames=frames,
        ),
        specific_character_set=_text(ds, "SpecificCharacterSet"),
        patient=md_pb.PatientAttributes(
            patient_id=_text(ds, "PatientID"),
            patient_name=_text(ds, "PatientName"),
            patient_birth_date=_text(ds, "PatientBirthDate"),
            patient_sex=_text(ds, "PatientSex"),
            issuer_of_patient_id=_text(ds, "IssuerOfPatientID"),
        ),
        study=md_pb.StudyAttributes(
            study_date=_text(ds, "StudyDate"),
            study_time=_text(ds, "StudyTime"),
            accession_number=_text(ds, "AccessionNumber"),
            study_id=_text(ds, "StudyID"),
            study_description=_text(ds, "StudyDescription"),
            referring_physician_name=_text(ds, "ReferringPhysicianName"),
        ),
        series=md_pb.SeriesAttributes(
            modality=_text(ds, "Modality"),
            series_number=_text(ds, "SeriesNumber"),
            series_description=_text(ds, "SeriesDescription"),
            series_date=_text(ds, "SeriesDate"),
            series_time=_text(ds, "SeriesTime"),
            body_part_examined=_text(ds, "BodyPartExamined"),
        ),
        instance=md_pb.InstanceAttributes(
            instance_number=_text(ds, "InstanceNumber"),
            rows=_int(ds, "Rows"),
            columns=_int(ds, "Columns"),
            content_date=_text(ds, "ContentDate"),
            content_time=_text(ds, "ContentTime"),
        ),
        dicom_json=dataset_json.dumps(header_json),
    )
