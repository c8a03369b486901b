"""MetadataService over the SQL index: request validation and error mapping."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from common.gen.dicomserver.v1 import metadata_service_pb2 as pb
from common.gen.dicomserver.v1 import metadata_service_pb2_grpc as pb_grpc
from common.validation import InvalidValue
from dicomcore import dataset_json
from metadata_svc.cache import Cache
from metadata_svc.errors import NotFoundError
from metadata_svc.index import MetadataIndex
from metadata_svc.statistics import statistics

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


def _mapped_errors(method: F) -> F:
    """Domain and database errors to gRPC status codes. Messages never carry
    patient data; database details go to the log at WARNING without values."""

    @functools.wraps(method)
    def wrapper(self: MetadataService, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except InvalidValue as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except NotFoundError as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except OperationalError as exc:
            log.warning("%s: database unavailable (%s)", method.__name__, type(exc.orig).__name__)
            context.abort(grpc.StatusCode.UNAVAILABLE, "index database unavailable")
        except IntegrityError:
            log.warning("%s: write kept conflicting with concurrent writes", method.__name__)
            context.abort(grpc.StatusCode.ABORTED, "conflicting concurrent index update; retry")
        except DBAPIError as exc:
            log.error("%s: database error (%s)", method.__name__, type(exc.orig).__name__)
            context.abort(grpc.StatusCode.INTERNAL, "index database error")

    return wrapper  # type: ignore[return-value]


class MetadataService(pb_grpc.MetadataServiceServicer):
    def __init__(self, index: MetadataIndex, cache: Cache | None = None) -> None:
        self.index = index
        self.cache = cache

    def _invalidate(self, tenant: str, studies: list[str]) -> None:
        if self.cache is not None and studies:
            self.cache.invalidate(tenant, studies)

    @_mapped_errors
    def IndexInstances(
        self, request: pb.IndexInstancesRequest, context: grpc.ServicerContext
    ) -> pb.IndexInstancesResponse:
        results = self.index.index(list(request.records), request.duplicate_policy)
        log.debug("indexed %d records", len(results))
        by_tenant: dict[str, list[str]] = {}
        for rec in request.records:
            by_tenant.setdefault(rec.location.ref.tenant, []).append(rec.location.ref.study_instance_uid)
        for tenant, studies in by_tenant.items():
            self._invalidate(tenant, studies)
        return pb.IndexInstancesResponse(results=results)

    @_mapped_errors
    def Query(self, request: pb.QueryRequest, context: grpc.ServicerContext) -> pb.QueryResponse:
        def compute() -> bytes:
            result = self.index.query(request)
            return pb.QueryResponse(
                matches=[dataset_json.dumps(m) for m in result.matches], truncated=result.truncated
            ).SerializeToString()

        if self.cache is None:
            return pb.QueryResponse.FromString(compute())
        raw = self.cache.get_or_compute("q", request.tenant, "", request.SerializeToString(deterministic=True), compute)
        return pb.QueryResponse.FromString(raw)

    @_mapped_errors
    def GetMetadata(self, request: pb.GetMetadataRequest, context: grpc.ServicerContext) -> pb.GetMetadataResponse:
        def compute() -> bytes:
            headers = self.index.get_metadata(
                request.tenant, request.study_instance_uid, request.series_instance_uid, request.sop_instance_uid
            )
            return pb.GetMetadataResponse(instances=headers).SerializeToString()

        if self.cache is None or not request.study_instance_uid:
            return pb.GetMetadataResponse.FromString(compute())
        raw = self.cache.get_or_compute(
            "m", request.tenant, request.study_instance_uid, request.SerializeToString(deterministic=True), compute
        )
        return pb.GetMetadataResponse.FromString(raw)

    @_mapped_errors
    def LocateInstances(
        self, request: pb.LocateInstancesRequest, context: grpc.ServicerContext
    ) -> pb.LocateInstancesResponse:
        if request.sop_instance_uids:
            return pb.LocateInstancesResponse(
                locations=self.index.locate_each(request.tenant, request.sop_instance_uids)
            )
        locations = self.index.locate(
            request.tenant, request.study_instance_uid, request.series_instance_uid, request.sop_instance_uid
        )
        return pb.LocateInstancesResponse(locations=locations)

    @_mapped_errors
    def DeleteInstances(
        self, request: pb.DeleteInstancesRequest, context: grpc.ServicerContext
    ) -> pb.DeleteInstancesResponse:
        removed = self.index.delete(
            request.tenant, request.study_instance_uid, request.series_instance_uid, request.sop_instance_uid
        )
        log.info("deleted %d instances from the index (tenant %s)", len(removed), request.tenant)
        self._invalidate(request.tenant, [request.study_instance_uid])
        return pb.DeleteInstancesResponse(removed=removed)

    @_mapped_errors
    def RecordAudit(self, request: pb.RecordAuditRequest, context: grpc.ServicerContext) -> pb.RecordAuditResponse:
        # No cache invalidation: an audit record changes nothing that is cached.
        self.index.record_audit(list(request.records))
        log.debug("recorded %d audit records", len(request.records))
        return pb.RecordAuditResponse()

    @_mapped_errors
    def ReadChangeFeed(
        self, request: pb.ReadChangeFeedRequest, context: grpc.ServicerContext
    ) -> pb.ReadChangeFeedResponse:
        events, latest = self.index.read_change_feed(request.tenant, request.after_sequence, request.limit)
        return pb.ReadChangeFeedResponse(events=events, latest_sequence=latest)

    @_mapped_errors
    def ReadOutbox(self, request: pb.ReadOutboxRequest, context: grpc.ServicerContext) -> pb.ReadOutboxResponse:
        events, latest = self.index.read_outbox(request.after_sequence, request.limit)
        return pb.ReadOutboxResponse(events=events, latest_sequence=latest)

    @_mapped_errors
    def RefreshMetadata(
        self, request: pb.RefreshMetadataRequest, context: grpc.ServicerContext
    ) -> pb.RefreshMetadataResponse:
        refreshed = self.index.refresh_metadata(request.tenant, request.study_instance_uid, request.series_instance_uid)
        # Also for events whose change was committed while Redis missed it.
        self._invalidate(request.tenant, [request.study_instance_uid])
        return pb.RefreshMetadataResponse(series_refreshed=refreshed)

    @_mapped_errors
    def ReferencedObjects(
        self, request: pb.ReferencedObjectsRequest, context: grpc.ServicerContext
    ) -> pb.ReferencedObjectsResponse:
        return pb.ReferencedObjectsResponse(object_keys=self.index.referenced_objects(request.object_keys))

    @_mapped_errors
    def GetStatistics(
        self, request: pb.GetStatisticsRequest, context: grpc.ServicerContext
    ) -> pb.GetStatisticsResponse:
        return statistics(self.index.db, request)

    def ReplaceObject(
        self, request: pb.ReplaceObjectRequest, context: grpc.ServicerContext
    ) -> pb.ReplaceObjectResponse:
        response = self.index.replace_object(request)
        if response.replaced:
            ref = request.record.location.ref
            self._invalidate(ref.tenant, [ref.study_instance_uid])
        return response
