"""DeidentifyService: de-identified copies into a target tenant, run where
the ingest pipeline is (ingest_svc hosts it), audited."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import grpc

from common import errors
from common.blobs import BlobReader
from common.clients import MetadataClient
from common.gen.dicomserver.v1 import deidentify_service_pb2 as pb
from common.gen.dicomserver.v1 import deidentify_service_pb2_grpc as pb_grpc
from common.gen.dicomserver.v1 import events_pb2
from common.ingest import IngestPipeline
from common.validation import InvalidValue, check_tenant
from deidentify.copy import Report, copy_into, deidentified_objects, studies_of
from deidentify.dataset import Request, SafePrivate
from deidentify.profile import Option

log = logging.getLogger(__name__)
OPTIONS = {
    pb.DEIDENTIFY_OPTION_RETAIN_PATIENT_CHARACTERISTICS: Option.RETAIN_PATIENT_CHARACTERISTICS,
    pb.DEIDENTIFY_OPTION_RETAIN_LONGITUDINAL_MODIFIED_DATES: Option.RETAIN_LONGITUDINAL_MODIFIED_DATES,
    pb.DEIDENTIFY_OPTION_CLEAN_DESCRIPTORS: Option.CLEAN_DESCRIPTORS,
}


def options_of(values: Iterable[pb.DeidentifyOption.ValueType]) -> frozenset[Option]:
    try:
        return frozenset(OPTIONS[v] for v in values)
    except KeyError:
        raise InvalidValue("unknown de-identification option") from None


def request_of(req: pb.DeidentifyRequest) -> Request:
    if not req.project_key:
        raise InvalidValue("project_key is required")
    return Request(
        req.project_key,
        options_of(req.options),
        tuple(SafePrivate(s.creator, s.group, s.element_offset) for s in req.safe_private_tags),
    )


def audit(
    metadata: MetadataClient,
    tenant: str,
    target: str,
    subject: str,
    edge: str,
    source: str,
    report: Report | None,
    detail: str = "",
) -> None:
    """One record in each tenant: read from the source, written to the target."""
    outcome = events_pb2.AuditRecord.OUTCOME_SUCCESS if report is not None else events_pb2.AuditRecord.OUTCOME_FAILURE
    summary = detail or (
        f"de-identified copy: {report.copied} copied, {report.failed} failed, "
        f"{len(report.refused_burned_in)} refused (burned-in annotation)"
        if report
        else ""
    )
    records = [
        events_pb2.AuditRecord(
            tenant=t,
            subject=subject[:128],
            source_address=source,
            edge=edge,
            action=a,
            operation="DEIDENTIFY",
            outcome=outcome,
            detail=(summary + f"; {what}")[:500],
        )
        for t, a, what in (
            (tenant, events_pb2.AuditRecord.ACTION_READ, f"copied to tenant {target}"),
            (target, events_pb2.AuditRecord.ACTION_WRITE, f"copied from tenant {tenant}"),
        )
        if t
    ]
    try:
        metadata.record_audit(records)
    except errors.ServiceError as exc:
        log.warning("de-identification audit records not written: %s", exc)


def run(
    pipeline: IngestPipeline, metadata: MetadataClient, reader: BlobReader, req: pb.DeidentifyRequest
) -> pb.DeidentifyResponse:
    check_tenant(req.tenant)
    check_tenant(req.target_tenant)
    if req.target_tenant == req.tenant:
        raise InvalidValue("the target tenant must differ from the source tenant")
    request = request_of(req)
    studies = studies_of(metadata, req.tenant, list(req.study_instance_uids), list(req.filters))
    report = Report()
    copy_into(
        pipeline,
        req.target_tenant,
        deidentified_objects(metadata, reader, req.tenant, studies, request, req.allow_burned_in_annotation, report),
        report,
    )
    return pb.DeidentifyResponse(
        studies=[pb.StudyCopy(study_instance_uid=k, copy_study_instance_uid=v) for k, v in report.studies.items()],
        copied=report.copied,
        failed=report.failed,
        refused_burned_in=report.refused_burned_in,
        flagged_burned_in=report.flagged_burned_in,
    )


class DeidentifyService(pb_grpc.DeidentifyServiceServicer):
    def __init__(self, pipeline: IngestPipeline, metadata: MetadataClient, reader: BlobReader) -> None:
        self.pipeline, self.metadata, self.reader = pipeline, metadata, reader

    def Deidentify(self, request: pb.DeidentifyRequest, context: grpc.ServicerContext) -> pb.DeidentifyResponse:
        try:
            response = run(self.pipeline, self.metadata, self.reader, request)
        except (InvalidValue, ValueError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except errors.NotFound as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except errors.ServiceError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        report = Report(
            copied=response.copied, failed=response.failed, refused_burned_in=list(response.refused_burned_in)
        )
        audit(
            self.metadata,
            request.tenant,
            request.target_tenant,
            request.subject or "grpc",
            "grpc",
            context.peer(),
            report,
        )
        return response
