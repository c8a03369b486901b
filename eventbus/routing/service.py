"""RoutingService over the delivery queues: manual sends, destinations and
their queues, dead letters and their replay, each within one tenant.

Callers are internal (the gateway passes the tenant its caller was granted);
a destination not bound to the request's tenant is answered exactly like
one that does not exist."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.exc import OperationalError

from common import errors
from common.clients import MetadataClient
from common.gen.dicomserver.v1 import dicom_pb2
from common.gen.dicomserver.v1 import routing_service_pb2 as pb
from common.gen.dicomserver.v1 import routing_service_pb2_grpc as pb_grpc
from common.validation import InvalidValue, check_tenant, check_uid
from eventbus.routing.config import DicomwebDestination, DimseDestination
from eventbus.routing.queue import DeadDelivery, DeliveryQueue, SendRow, Target

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
NO_DESTINATION = "no such destination"


def _mapped_errors(method: F) -> F:
    @functools.wraps(method)
    def wrapper(self: RoutingService, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except InvalidValue as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except errors.NotFound as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except errors.InvalidArgument as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except (errors.ServiceError, OperationalError) as exc:
            log.warning("%s: %s", method.__name__, type(exc).__name__)
            context.abort(grpc.StatusCode.UNAVAILABLE, "the index or the event bus database is unavailable")

    return wrapper  # type: ignore[return-value]


def _time(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    ts = Timestamp()
    ts.FromMicroseconds(int(seconds * 1e6))
    return ts


def progress(row: SendRow) -> pb.SendProgress:
    return pb.SendProgress(
        id=row.id,
        destination=row.destination,
        study_instance_uid=row.study_instance_uid,
        series_instance_uid=row.series_instance_uid,
        sop_instance_uid=row.sop_instance_uid,
        total=row.total,
        sent=row.sent,
        failed=row.failed,
        skipped=row.skipped,
        created=_time(row.created_at),
    )


def dead_letter(row: DeadDelivery) -> pb.RoutingDeadLetter:
    return pb.RoutingDeadLetter(
        id=row.id,
        destination=row.destination,
        origin=row.origin,
        attempts=row.attempts,
        error=row.error,
        ref=dicom_pb2.InstanceRef(
            tenant=row.tenant,
            study_instance_uid=row.study_instance_uid,
            series_instance_uid=row.series_instance_uid,
            sop_instance_uid=row.sop_instance_uid,
        ),
        queued=_time(row.queued_at),
        failed=_time(row.failed_at),
    )


class RoutingService(pb_grpc.RoutingServiceServicer):
    def __init__(
        self,
        destinations: dict[str, DimseDestination | DicomwebDestination],
        queue: DeliveryQueue,
        metadata: MetadataClient,
        notify: Callable[[Iterable[str]], None],
    ) -> None:
        self.destinations = destinations
        self.queue = queue
        self.metadata = metadata
        self.notify = notify

    def _bound(self, tenant: str) -> list[str]:
        return [name for name, d in self.destinations.items() if tenant in d.tenants]

    @_mapped_errors
    def ListDestinations(
        self, request: pb.ListDestinationsRequest, context: grpc.ServicerContext
    ) -> pb.ListDestinationsResponse:
        tenant = check_tenant(request.tenant)
        stats = self.queue.stats(tenant)
        out = []
        for name in self._bound(tenant):
            dest = self.destinations[name]
            s = stats.get(name)
            out.append(
                pb.RoutingDestination(
                    name=name,
                    address=dest.address,
                    kind=pb.DESTINATION_KIND_DIMSE if dest.type == "dimse" else pb.DESTINATION_KIND_DICOMWEB,
                    queued=s.queued if s else 0,
                    oldest_queued=_time(s.oldest_queued_at if s else None),
                    dead_letters=s.dead_letters if s else 0,
                )
            )
        return pb.ListDestinationsResponse(destinations=out)

    @_mapped_errors
    def Send(self, request: pb.SendRequest, context: grpc.ServicerContext) -> pb.SendResponse:
        tenant = check_tenant(request.tenant)
        if request.destination not in self._bound(tenant):
            raise errors.NotFound(NO_DESTINATION)
        study = check_uid(request.study_instance_uid, "Study Instance UID")
        series = check_uid(request.series_instance_uid, "Series Instance UID") if request.series_instance_uid else ""
        sop = check_uid(request.sop_instance_uid, "SOP Instance UID") if request.sop_instance_uid else ""
        if sop and not series:
            raise InvalidValue("an instance is named with its series")
        try:
            locations = self.metadata.locate(tenant, study, series, sop)
        except errors.NotFound:
            raise errors.NotFound("nothing to send: no such study, series or instance") from None
        origin = "send"  # create_send names it send:<id>
        targets = [
            Target(
                request.destination,
                tenant,
                loc.ref.study_instance_uid,
                loc.ref.series_instance_uid,
                loc.ref.sop_instance_uid,
                origin,
            )
            for loc in locations
        ]
        row = self.queue.create_send(tenant, request.destination, study, series, sop, targets, time.time())
        self.notify([request.destination])
        log.info("send %d: %d instances queued for %s", row.id, len(targets), request.destination)
        return pb.SendResponse(send=progress(row))

    @_mapped_errors
    def GetSend(self, request: pb.GetSendRequest, context: grpc.ServicerContext) -> pb.GetSendResponse:
        row = self.queue.get_send(check_tenant(request.tenant), request.id)
        if row is None:
            raise errors.NotFound("no such send")
        return pb.GetSendResponse(send=progress(row))

    @_mapped_errors
    def ListDeadLetters(
        self, request: pb.ListDeadLettersRequest, context: grpc.ServicerContext
    ) -> pb.ListDeadLettersResponse:
        tenant = check_tenant(request.tenant)
        if not 0 <= request.limit <= MAX_LIMIT:
            raise InvalidValue(f"limit must be from 1 to {MAX_LIMIT}")
        if request.destination and request.destination not in self._bound(tenant):
            raise errors.NotFound(NO_DESTINATION)
        rows, truncated = self.queue.dead_letters(
            tenant, request.destination, request.after_id, request.limit or DEFAULT_LIMIT
        )
        return pb.ListDeadLettersResponse(dead_letters=[dead_letter(r) for r in rows], truncated=truncated)

    @_mapped_errors
    def ReplayDeadLetters(
        self, request: pb.ReplayDeadLettersRequest, context: grpc.ServicerContext
    ) -> pb.ReplayDeadLettersResponse:
        tenant = check_tenant(request.tenant)
        bound = self._bound(tenant)
        if request.destination and request.destination not in bound:
            raise errors.NotFound(NO_DESTINATION)
        if len(request.ids) > MAX_LIMIT:
            raise InvalidValue(f"at most {MAX_LIMIT} ids at once")
        replayed = self.queue.replay(tenant, list(request.ids), request.destination, bound, time.time())
        if replayed:
            self.notify(set(replayed))
            log.info("%d dead letters replayed", len(replayed))
        return pb.ReplayDeadLettersResponse(replayed=len(replayed))
