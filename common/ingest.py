"""The ingest pipeline shared by both edges: the bytes are written once,
into a staged object granted by storage (common.blobs), as they arrive;
then the header is parsed, validated, the object committed (fsynced) and
indexed, and a DICOM status reported.

Both C-STORE (ingest_svc) and STOW-RS (dicomweb_gateway) run this in-process;
no object crosses a gRPC stream on its way to storage."""

from __future__ import annotations

import logging
from collections.abc import Hashable
from typing import BinaryIO

from common import errors, observability
from common.blobs import Blobs, StagedObject
from common.clients import MetadataClient, StorageClient
from common.gen.dicomserver.v1 import dicom_pb2
from common.gen.dicomserver.v1 import ingest_service_pb2 as ingest_pb
from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from common.grouping import GroupCall
from common.validation import is_uid
from dicomcore import Header, Rejected, read_header
from dicomcore.status import (
    CANNOT_UNDERSTAND,
    DATASET_MISMATCH,
    DUPLICATE_INSTANCE,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    SUCCESS,
)

log = logging.getLogger(__name__)

__all__ = ["GroupIndexer", "IngestPipeline", "Rejected", "build_record"]

_REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


def build_record(header: Header, tenant: str, size: int) -> md_pb.InstanceRecord:
    """The index record of an object, from one pass over its header
    (dicomcore): its DICOM JSON with every value as it was sent, the
    attributes the index searches, and where its frames lie."""
    t = header.text
    for keyword in _REQUIRED_UIDS:
        value = t(keyword)
        if not value:
            raise Rejected(CANNOT_UNDERSTAND, f"{keyword} is missing")
        if not is_uid(value):
            raise Rejected(CANNOT_UNDERSTAND, f"{keyword} is not a valid UID")
    location = dicom_pb2.InstanceLocation(
        ref=dicom_pb2.InstanceRef(
            tenant=tenant,
            study_instance_uid=t("StudyInstanceUID"),
            series_instance_uid=t("SeriesInstanceUID"),
            sop_instance_uid=t("SOPInstanceUID"),
        ),
        sop_class_uid=t("SOPClassUID"),
        transfer_syntax_uid=header.transfer_syntax,
        size=size,
        number_of_frames=header.frames,
    )
    if header.pixel is not None:
        location.pixel_layout.CopyFrom(header.pixel.to_proto())
    ref = location.ref
    # BulkDataURIs relative to the DICOMweb root, not to the instance: the
    # gateway makes a whole /metadata answer absolute with one replace.
    # (The UIDs were checked above: digits and dots only.)
    header_json = header.json_bytes().replace(
        b'"BulkDataURI":"bulkdata/',
        f'"BulkDataURI":"studies/{ref.study_instance_uid}/series/{ref.series_instance_uid}'
        f"/instances/{ref.sop_instance_uid}/bulkdata/".encode("ascii"),
    )
    return md_pb.InstanceRecord(
        location=location,
        specific_character_set=t("SpecificCharacterSet"),
        patient=md_pb.PatientAttributes(
            patient_id=t("PatientID"),
            patient_name=t("PatientName"),
            patient_birth_date=t("PatientBirthDate"),
            patient_sex=t("PatientSex"),
            issuer_of_patient_id=t("IssuerOfPatientID"),
        ),
        study=md_pb.StudyAttributes(
            study_date=t("StudyDate"),
            study_time=t("StudyTime"),
            accession_number=t("AccessionNumber"),
            study_id=t("StudyID"),
            study_description=t("StudyDescription"),
            referring_physician_name=t("ReferringPhysicianName"),
        ),
        series=md_pb.SeriesAttributes(
            modality=t("Modality"),
            series_number=t("SeriesNumber"),
            series_description=t("SeriesDescription"),
            series_date=t("SeriesDate"),
            series_time=t("SeriesTime"),
            body_part_examined=t("BodyPartExamined"),
        ),
        instance=md_pb.InstanceAttributes(
            instance_number=t("InstanceNumber"),
            rows=header.int("Rows"),
            columns=header.int("Columns"),
            content_date=t("ContentDate"),
            content_time=t("ContentTime"),
        ),
        dicom_json=header_json,
    )


def read_record(f: BinaryIO | bytes, size: int, tenant: str) -> md_pb.InstanceRecord:
    """The index record of a Part 10 object in `f` (or bytes); raises Rejected."""
    try:
        return build_record(read_header(f, size), tenant, size)
    except UnicodeError:
        raise Rejected(CANNOT_UNDERSTAND, "an indexed attribute cannot be decoded with its character set") from None


class GroupIndexer:
    """Group commit of the index: records that concurrent stores index at the
    same time go to metadata_svc in one IndexInstances call (one transaction);
    a failed call is retried record by record to find whose it was."""

    def __init__(self, metadata: MetadataClient, max_batch: int = 64) -> None:
        self._metadata = metadata
        self._group: GroupCall[md_pb.InstanceRecord, md_pb.IndexResult] = GroupCall(self._send, max_batch)

    def index(self, record: md_pb.InstanceRecord, policy: int) -> md_pb.IndexResult:
        return self._group.call(record, key=policy)

    def _send(self, policy: Hashable, records: list[md_pb.InstanceRecord]) -> list[md_pb.IndexResult]:
        return self._metadata.index(records, int(policy))  # type: ignore[call-overload]


class IngestPipeline:
    def __init__(self, storage: StorageClient, metadata: MetadataClient, blobs: Blobs | None = None) -> None:
        self._storage = storage
        self._metadata = metadata
        self._blobs = blobs if blobs is not None else Blobs(storage)
        self._indexer = GroupIndexer(metadata)

    def stage(self) -> StagedObject:
        """Where to write the next object as it arrives. Raises
        common.errors.ServiceError or OSError: the caller answers 'out of
        resources'."""
        return self._blobs.stage()

    def store(
        self,
        staged: StagedObject,
        tenant: str,
        expected_study: str = "",
        policy: int = md_pb.DUPLICATE_POLICY_OVERWRITE,
        expected_sop_class: str = "",
        expected_sop_instance: str = "",
        calling_ae_title: str = "",
    ) -> ingest_pb.InstanceOutcome:
        """Stores one Part 10 object written into `staged`, which is then
        committed or discarded. Never raises for bad input: the outcome
        carries the DICOM status and reason.

        `expected_sop_class` and `expected_sop_instance` are what the request
        said it carries (C-STORE's Affected SOP Class/Instance UID);
        `calling_ae_title` the association's, recorded with the instance's
        events (the compression policy and routing rules match on it)."""
        outcome = ingest_pb.InstanceOutcome()
        size = staged.size
        try:
            staged.file.flush()
            staged.file.seek(0)
            record = read_record(staged.file, size, tenant)
            record.source.calling_ae_title = calling_ae_title
            outcome.ref.CopyFrom(record.location.ref)
            outcome.sop_class_uid = record.location.sop_class_uid
            if expected_study and record.location.ref.study_instance_uid != expected_study:
                raise Rejected(DATASET_MISMATCH, "Study Instance UID differs from the one in the request")
            if expected_sop_class and record.location.sop_class_uid != expected_sop_class:
                raise Rejected(DATASET_MISMATCH, "SOP Class UID of the dataset differs from the request's")
            if expected_sop_instance and record.location.ref.sop_instance_uid != expected_sop_instance:
                raise Rejected(DATASET_MISMATCH, "SOP Instance UID of the dataset differs from the request's")
            self._store_and_index(staged, record, policy, outcome)
        except Rejected as rej:
            outcome.status = ingest_pb.STORE_STATUS_FAILED
            outcome.dicom_status = rej.status
            outcome.reason = rej.reason
        finally:
            staged.discard()  # unless committed: what failed leaves nothing
        observability.INGESTED.labels(ingest_pb.StoreStatus.Name(outcome.status)).inc()
        if outcome.status != ingest_pb.STORE_STATUS_FAILED:
            observability.INGESTED_BYTES.inc(size)
        return outcome

    def _store_and_index(
        self, staged: StagedObject, record: md_pb.InstanceRecord, policy: int, outcome: ingest_pb.InstanceOutcome
    ) -> None:
        try:
            object_key = staged.commit(record.location.ref)
        except errors.InvalidArgument as exc:
            raise Rejected(CANNOT_UNDERSTAND, f"storage refused the object: {exc}") from None
        except errors.NotFound as exc:
            log.warning("storage commit failed: %s", exc)
            raise Rejected(PROCESSING_FAILURE, "storage lost the object before it was committed") from None
        except errors.ServiceError as exc:
            log.warning("storage commit failed: %s", exc)
            raise Rejected(OUT_OF_RESOURCES, "storage is not available") from None
        except OSError as exc:
            log.warning("could not finish writing the object: %s", exc.strerror or exc)
            raise Rejected(OUT_OF_RESOURCES, "the object could not be written (storage full?)") from None
        record.location.object_key = object_key
        try:
            result = self._indexer.index(record, policy)
        except errors.ServiceError as exc:
            log.warning("index failed: %s", exc)
            if isinstance(exc, errors.InvalidArgument):
                self._reclaim(object_key)  # refused: certainly not indexed
            # Otherwise the index may have committed before the answer was
            # lost: deleting could leave a row without its object. If it did
            # not, storage's sweep finds the object unreferenced.
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
