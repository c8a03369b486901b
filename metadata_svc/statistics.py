"""GetStatistics: counts the console shows, answered from the index alone
(no table of their own): what each tenant holds, what was written per day
and per modality, and how many instances arrived in the last minute and
hour. Every statement is scoped to the requested tenants.

"Per day" is by when an instance row was last written (`instances.updated`,
UTC): the day it arrived, or was replaced."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, distinct, func, select

from common.gen.dicomserver.v1 import metadata_service_pb2 as pb
from common.validation import InvalidValue, check_tenant
from metadata_svc.db import Database
from metadata_svc.schema import Instance, Patient, Series, Study

DEFAULT_DAYS = 30
MAX_DAYS = 366
MAX_TENANTS = 100


def _checked(request: pb.GetStatisticsRequest) -> tuple[list[str], int]:
    tenants = list(dict.fromkeys(request.tenants))
    if not tenants:
        raise InvalidValue("name at least one tenant")
    if len(tenants) > MAX_TENANTS:
        raise InvalidValue(f"at most {MAX_TENANTS} tenants at once")
    for tenant in tenants:
        check_tenant(tenant)
    days = request.days or DEFAULT_DAYS
    if not 1 <= days <= MAX_DAYS:
        raise InvalidValue(f"days must be between 1 and {MAX_DAYS}")
    return tenants, days


def _day(conn: Connection) -> Any:
    """The UTC day of instances.updated as YYYY-MM-DD text, in this dialect."""
    if conn.dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", Instance.updated), "YYYY-MM-DD")
    # SQLite keeps DateTime as UTC text; date() reads its first part.
    return func.date(Instance.updated)


def _usage(conn: Connection, tenants: list[str]) -> list[pb.TenantUsage]:
    usage = {t: pb.TenantUsage(tenant=t) for t in tenants}
    for model, field in ((Patient, "patients"), (Study, "studies"), (Series, "series")):
        stmt = select(model.tenant, func.count()).where(model.tenant.in_(tenants)).group_by(model.tenant)
        for tenant, n in conn.execute(stmt):
            setattr(usage[tenant], field, n)
    totals = (
        select(Instance.tenant, func.count(), func.coalesce(func.sum(Instance.size), 0))
        .where(Instance.tenant.in_(tenants))
        .group_by(Instance.tenant)
    )
    for tenant, n, size in conn.execute(totals):
        usage[tenant].instances = n
        usage[tenant].bytes = int(size)
    return [usage[t] for t in tenants]


def _days(conn: Connection, tenants: list[str], days: int, now: datetime) -> list[pb.DayCount]:
    first = now.date() - timedelta(days=days - 1)
    since = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
    day = _day(conn).label("day")
    stmt = (
        select(day, func.count(distinct(Instance.study_pk)), func.count(), func.coalesce(func.sum(Instance.size), 0))
        .where(Instance.tenant.in_(tenants), Instance.updated >= since)
        .group_by(day)
    )
    found = {str(d): (s, n, int(b)) for d, s, n, b in conn.execute(stmt)}
    out = []
    for i in range(days):
        key = (first + timedelta(days=i)).isoformat()
        studies, instances, size = found.get(key, (0, 0, 0))
        out.append(pb.DayCount(date=key, studies=studies, instances=instances, bytes=size))
    return out


def _modalities(conn: Connection, tenants: list[str]) -> list[pb.ModalityCount]:
    stmt = (
        select(
            Series.modality,
            func.count(distinct(Series.study_pk)),
            func.count(distinct(Series.id)),
            func.count(Instance.id),
        )
        .select_from(Series)
        .outerjoin(Instance, Instance.series_pk == Series.id)
        .where(Series.tenant.in_(tenants))
        .group_by(Series.modality)
    )
    rows = [pb.ModalityCount(modality=m or "", studies=s, series=se, instances=i) for m, s, se, i in conn.execute(stmt)]
    return sorted(rows, key=lambda r: (-r.instances, r.modality))


def _recent(conn: Connection, tenants: list[str], since: datetime) -> int:
    stmt = select(func.count()).select_from(Instance).where(Instance.tenant.in_(tenants), Instance.updated >= since)
    return int(conn.execute(stmt).scalar_one())


def statistics(db: Database, request: pb.GetStatisticsRequest, now: datetime | None = None) -> pb.GetStatisticsResponse:
    """Raises InvalidValue for a request without tenants or out of range."""
    tenants, days = _checked(request)
    now = now or datetime.now(UTC)
    with db.read() as conn:
        return pb.GetStatisticsResponse(
            tenants=_usage(conn, tenants),
            days=_days(conn, tenants, days, now),
            modalities=_modalities(conn, tenants),
            instances_last_minute=_recent(conn, tenants, now - timedelta(minutes=1)),
            instances_last_hour=_recent(conn, tenants, now - timedelta(hours=1)),
        )
