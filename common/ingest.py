"""The ingest pipeline shared by both edges: parse the header, validate,
stream the bytes to storage once, index, and report a DICOM status.

Both C-STORE (ingest_svc) and STOW-RS (dicomweb_gateway) run this in-process
so the object crosses exactly one gRPC hop on its way to storage."""

from __future__ import annotations

import json
import logging
import struct
import threading
from dataclasses import dataclass, field
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import DeflatedExplicitVRLittleEndian

from common import dicom_json, errors, observability
from common.clients import MetadataClient, StorageClient, read_chunks
from common.gen.dicomserver.v1 import dicom_pb2, ingest_service_pb2 as ingest_pb, metadata_service_pb2 as md_pb
from common.validation import is_uid

log = logging.getLogger(__name__)

# DICOM status codes (PS3.4 Annex B, PS3.18 Table 10.5.3-2).
SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
DUPLICATE_INSTANCE = 0x0111
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
ELEMENTS_DISCARDED = 0xB006

_PIXEL_DATA = 0x7FE00010


class Rejected(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


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
        if isinstance(raw, RawDataElement) and raw.value is not None and raw.length != 0xFFFFFFFF \
                and len(raw.value) < raw.length:
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
            f, header_end, size, little_endian=ts.is_little_endian if ts.is_transfer_syntax else True,
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
        header_json = dicom_json.dataset_to_json(ds)
    except Exception as exc:
        raise Rejected(CANNOT_UNDERSTAND, f"header cannot be converted to DICOM JSON ({type(exc).__name__})") from None
    if frames:
        # The header was read without pixels; /metadata still lists them.
        ts = ds.file_meta.TransferSyntaxUID
        vr = "OB" if (ts.is_transfer_syntax and ts.is_compressed) or _int(ds, "BitsAllocated") <= 8 else "OW"
        header_json[dicom_json.PIXEL_DATA] = {"vr": vr, "BulkDataURI": dicom_json.bulk_uri(dicom_json.PIXEL_DATA)}
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
        dicom_json=dicom_json.dumps(header_json),
    )


@dataclass(eq=False)
class _Waiting:
    record: md_pb.InstanceRecord
    policy: int
    wake: threading.Event = field(default_factory=threading.Event)
    lead: bool = False
    done: bool = False
    result: md_pb.IndexResult | None = None
    error: Exception | None = None


class GroupIndexer:
    """Group commit: records that concurrent stores index at the same time go
    to metadata_svc in one IndexInstances call (one transaction). Nothing
    waits for company: a lone store is indexed at once; while a call is in
    flight, the next ones queue up and the first of them sends them all."""

    def __init__(self, metadata: MetadataClient, max_batch: int = 64) -> None:
        self._metadata = metadata
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._queue: list[_Waiting] = []
        self._busy = False

    def index(self, record: md_pb.InstanceRecord, policy: int) -> md_pb.IndexResult:
        me = _Waiting(record, policy)
        with self._lock:
            self._queue.append(me)
            if not self._busy:
                self._busy = me.lead = True
        while not me.done:
            if me.lead:
                self._run_batch()
            else:
                me.wake.wait()
                me.wake.clear()
        if me.error is not None:
            raise me.error
        assert me.result is not None
        return me.result

    def _run_batch(self) -> None:
        with self._lock:
            policy = self._queue[0].policy
            batch: list[_Waiting] = []
            for w in self._queue:
                if w.policy != policy or len(batch) == self._max_batch:
                    break
                batch.append(w)
            del self._queue[: len(batch)]
        try:
            results = self._metadata.index([w.record for w in batch], policy)
            for w, r in zip(batch, results, strict=True):
                w.result = r
        except Exception as exc:
            if len(batch) == 1:
                batch[0].error = exc
            else:  # find out whose record it was: one call each
                for w in batch:
                    try:
                        (w.result,) = self._metadata.index([w.record], policy)
                    except Exception as one:
                        w.error = one
        with self._lock:
            for w in batch:
                w.done, w.lead = True, False
                w.wake.set()
            if self._queue:
                self._queue[0].lead = True
                self._queue[0].wake.set()
            else:
                self._busy = False


class IngestPipeline:
    def __init__(self, storage: StorageClient, metadata: MetadataClient) -> None:
        self._storage = storage
        self._metadata = metadata
        self._indexer = GroupIndexer(metadata)

    def store(
        self,
        f: BinaryIO,
        size: int,
        tenant: str,
        expected_study: str = "",
        policy: int = md_pb.DUPLICATE_POLICY_OVERWRITE,
        expected_sop_class: str = "",
        expected_sop_instance: str = "",
    ) -> ingest_pb.InstanceOutcome:
        """Stores one Part 10 object read from `f` (`size` bytes). Never raises
        for bad input: the outcome carries the DICOM status and reason.

        `expected_sop_class` and `expected_sop_instance` are what the request
        said it carries (C-STORE's Affected SOP Class/Instance UID)."""
        outcome = ingest_pb.InstanceOutcome()
        try:
            ds, frames = parse_header(f, size)
            record = build_record(ds, tenant, size, frames)
            outcome.ref.CopyFrom(record.location.ref)
            outcome.sop_class_uid = record.location.sop_class_uid
            if expected_study and record.location.ref.study_instance_uid != expected_study:
                raise Rejected(DATASET_MISMATCH, "Study Instance UID differs from the one in the request")
            if expected_sop_class and record.location.sop_class_uid != expected_sop_class:
                raise Rejected(DATASET_MISMATCH, "SOP Class UID of the dataset differs from the request's")
            if expected_sop_instance and record.location.ref.sop_instance_uid != expected_sop_instance:
                raise Rejected(DATASET_MISMATCH, "SOP Instance UID of the dataset differs from the request's")
            self._store_and_index(f, size, record, policy, outcome)
            if outcome.status == ingest_pb.STORE_STATUS_STORED and (dropped := unindexed_tags(ds, record)):
                outcome.status = ingest_pb.STORE_STATUS_STORED_WITH_WARNING
                outcome.dicom_status = ELEMENTS_DISCARDED
                outcome.reason = (
                    "stored as sent, but these elements have invalid values and are not in the index or the "
                    "metadata: " + ", ".join(dropped[:20])
                )
        except Rejected as rej:
            outcome.status = ingest_pb.STORE_STATUS_FAILED
            outcome.dicom_status = rej.status
            outcome.reason = rej.reason
        observability.INGESTED.labels(ingest_pb.StoreStatus.Name(outcome.status)).inc()
        if outcome.status != ingest_pb.STORE_STATUS_FAILED:
            observability.INGESTED_BYTES.inc(size)
        return outcome

    def _store_and_index(
        self, f: BinaryIO, size: int, record: md_pb.InstanceRecord, policy: int, outcome: ingest_pb.InstanceOutcome
    ) -> None:
        f.seek(0)
        try:
            put = self._storage.put(record.location.ref, read_chunks(f), expected_size=size)
        except errors.InvalidArgument as exc:
            raise Rejected(CANNOT_UNDERSTAND, f"storage refused the object: {exc}") from None
        except errors.ServiceError as exc:
            log.warning("storage put failed: %s", exc)
            raise Rejected(OUT_OF_RESOURCES, "storage is not available") from None
        record.location.object_key = put.object_key
        try:
            result = self._indexer.index(record, policy)
        except errors.ServiceError as exc:
            log.warning("index failed: %s", exc)
            self._reclaim(put.object_key)
            status = OUT_OF_RESOURCES if isinstance(exc, errors.Unavailable) else PROCESSING_FAILURE
            raise Rejected(status, "the index did not accept the instance") from None
        if result.unreferenced_object_key:
            self._reclaim(result.unreferenced_object_key)
        outcome.index_outcome = result.outcome
        if result.outcome == md_pb.INDEX_OUTCOME_REJECTED_DUPLICATE:
            raise Rejected(DUPLICATE_INSTANCE, "an instance with this SOP Instance UID already exists")
        outcome.status = ingest_pb.STORE_STATUS_STORED
        outcome.dicom_status = SUCCESS
        if result.outcome == md_pb.INDEX_OUTCOME_KEPT_EXISTING:
            outcome.reason = "duplicate SOP Instance UID: the existing instance was kept"
        elif result.outcome == md_pb.INDEX_OUTCOME_REPLACED:
            outcome.reason = "duplicate SOP Instance UID: the existing instance was replaced"

    def _reclaim(self, object_key: str) -> None:
        try:
            self._storage.delete(object_key)
        except errors.ServiceError as exc:
            # Unreferenced bytes are garbage, not data loss; a sweeper can find them.
            log.warning("could not delete unreferenced object: %s", exc)
