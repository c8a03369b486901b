"""EventBusService: what the event bus knows, for the console. The readers'
lag (the same measure as the dicomserver_outbox_lag_events gauge) and
counts over the audit log the audit consumer keeps, scoped to the tenants
asked for. Records name AE titles, addresses and UIDs, never patient data."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime, timedelta

import grpc
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from common import errors
from common.clients import MetadataClient
from common.gen.dicomserver.v1 import eventbus_service_pb2 as pb
from common.gen.dicomserver.v1 import eventbus_service_pb2_grpc as pb_grpc
from common.validation import InvalidValue, check_tenant
from eventbus.store import AuditEntry, DeadLetter, Store

log = logging.getLogger(__name__)

DEFAULT_DAYS, MAX_DAYS = 30, 366
DEFAULT_TOP, MAX_TOP = 10, 100
MAX_TENANTS = 100
# Rows of the period read for the per-host counts (addresses carry a port each).
MAX_SOURCE_ROWS = 200_000


def source_host(address: str) -> str:
    """'10.0.0.5:4242' -> '10.0.0.5'; '::1:4242' and '[::1]:4242' -> '::1'."""
    host = address.rsplit(":", 1)[0] if ":" in address else address
    return host.strip("[]")


class EventBusService(pb_grpc.EventBusServiceServicer):
    def __init__(
        self, store: Store, metadata: MetadataClient, transport: str, consumers: list[str], readers: list[str]
    ) -> None:
        self.store = store
        self.metadata = metadata
        self.transport = transport
        self.consumers = consumers
        self.readers = readers

    def GetStatus(self, request: pb.GetStatusRequest, context: grpc.ServicerContext) -> pb.GetStatusResponse:
        try:
            latest = self.metadata.read_outbox_latest()
        except errors.ServiceError as exc:
            log.debug("outbox position not read: %s", exc)
            latest = 0
        try:
            readers = []
            for reader in self.readers:
                position = self.store.offset(reader)
                readers.append(
                    pb.ReaderLag(reader=reader, position=position, lag=max(0, latest - position) if latest else 0)
                )
            with Session(self.store.engine) as s:
                dead = int(s.scalar(select(func.count()).select_from(DeadLetter)) or 0)
        except SQLAlchemyError as exc:
            log.warning("event bus database unavailable: %s", type(exc).__name__)
            context.abort(grpc.StatusCode.UNAVAILABLE, "the event bus database is unavailable")
        return pb.GetStatusResponse(
            transport=self.transport, consumers=self.consumers, readers=readers, outbox_latest=latest, dead_letters=dead
        )

    def GetAuditStatistics(
        self, request: pb.GetAuditStatisticsRequest, context: grpc.ServicerContext
    ) -> pb.GetAuditStatisticsResponse:
        try:
            tenants = list(dict.fromkeys(request.tenants))
            if not tenants or len(tenants) > MAX_TENANTS:
                raise InvalidValue(f"name between 1 and {MAX_TENANTS} tenants")
            for tenant in tenants:
                check_tenant(tenant)
            days = request.days or DEFAULT_DAYS
            top = request.top or DEFAULT_TOP
            if not 1 <= days <= MAX_DAYS or not 1 <= top <= MAX_TOP:
                raise InvalidValue(f"days must be 1-{MAX_DAYS} and top 1-{MAX_TOP}")
        except InvalidValue as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        since = datetime.now(UTC) - timedelta(days=days)
        try:
            return self._audit_statistics(tenants, since, top)
        except SQLAlchemyError as exc:
            log.warning("event bus database unavailable: %s", type(exc).__name__)
            context.abort(grpc.StatusCode.UNAVAILABLE, "the event bus database is unavailable")
            raise  # unreachable: abort raises

    def _audit_statistics(self, tenants: list[str], since: datetime, top: int) -> pb.GetAuditStatisticsResponse:
        audit = AuditEntry
        scoped = (audit.kind == "audit", audit.tenant.in_(tenants), audit.event_time >= since)
        with Session(self.store.engine) as s:
            records = int(s.scalar(select(func.count()).select_from(audit).where(*scoped)) or 0)
            n = func.count().label("n")
            ae_rows = s.execute(
                select(audit.subject, n)
                .where(*scoped, audit.edge == "dimse", audit.subject.like("ae:%"))
                .group_by(audit.subject)
                .order_by(n.desc(), audit.subject)
                .limit(top)
            )
            calling = [pb.KeyCount(key=subject.removeprefix("ae:"), count=c) for subject, c in ae_rows]
            read_rows = s.execute(
                select(audit.study_instance_uid, n)
                .where(*scoped, audit.action == "read", audit.outcome == "success", audit.study_instance_uid != "")
                .group_by(audit.study_instance_uid)
                .order_by(n.desc(), audit.study_instance_uid)
                .limit(top)
            )
            reads = [pb.KeyCount(key=study, count=c) for study, c in read_rows]
            hosts: Counter[str] = Counter()
            stmt = (
                select(audit.source_address, n)
                .where(*scoped, audit.source_address != "")
                .group_by(audit.source_address)
                .limit(MAX_SOURCE_ROWS)
            )
            for address, c in s.execute(stmt):
                hosts[source_host(address)] += c
        sources = [pb.KeyCount(key=h, count=c) for h, c in sorted(hosts.items(), key=lambda i: (-i[1], i[0]))[:top]]
        return pb.GetAuditStatisticsResponse(
            calling_ae_titles=calling, sources=sources, study_reads=reads, records=records
        )
