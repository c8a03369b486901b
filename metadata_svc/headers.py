"""/metadata: the stored DICOM JSON headers of a study, series or instance
in order, served from each series' precomputed form while it is current,
and the refresh that precomputes it (RefreshMetadata, which the metadata
consumer calls for every index change).

A series' revision is bumped by every change of its instances, in the same
transaction, and each instance row keeps the revision it was written with;
a precomputed form carries the revision it was computed at and the SOP
Instance UIDs of its headers, so that a refresh re-reads only the headers
written since and reuses the others."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import (
    ColumnClause,
    ColumnElement,
    Connection,
    Row,
    bindparam,
    func,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import aliased

from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from common.validation import check_tenant, check_uid
from metadata_svc.db import chunks
from metadata_svc.errors import NotFoundError
from metadata_svc.locations import INSTANCE_ORDER, SERIES_ORDER
from metadata_svc.schema import EventRow, Instance, Series, SeriesMetadata, Study

# The tenant spelled out: SQLAlchemy renders RETURNING columns unqualified
# on SQLite, where a bare "tenant" in the subquery would be the events' own.
_SERIES_TENANT: ColumnClause[str] = literal_column("series.tenant")
_BUMP = (
    update(Series)
    .where(Series.id.in_(bindparam("ids", expanding=True)))
    .values(revision=Series.revision + 1)
    .returning(
        Series.id,
        Series.revision,
        Series.tenant,
        select(func.max(EventRow.feed_sequence)).where(EventRow.tenant == _SERIES_TENANT).scalar_subquery(),
    )
)


def bump_revisions(conn: Connection, series_pks: Sequence[int]) -> tuple[dict[int, int], dict[str, int]]:
    """Increments the revisions of these series (in SQL, not
    read-modify-write: concurrent writers never share a revision); returns
    the new ones and, for each tenant of these series, its newest change
    feed position: read by the same statement, after the outbox lock, to
    save the outbox a round trip (outbox.append_changes)."""
    revisions: dict[int, int] = {}
    newest_feed: dict[str, int] = {}
    for chunk in chunks(sorted(series_pks)):
        for pk, revision, tenant, feed in conn.execute(_BUMP, {"ids": chunk}):
            revisions[pk] = revision
            newest_feed[tenant] = feed or 0
    return revisions, newest_feed


def get_metadata(
    conn: Connection, conds: list[ColumnElement[bool]], tenant: str, study: str, series: str, sop: str
) -> list[bytes]:
    """Headers in /metadata order; a series whose precomputed form is
    current is one row read. `conds` are locations.scope()'s."""
    if sop:
        return _instance_headers(conn, conds)
    where = [Series.tenant == tenant, Study.study_instance_uid == study]
    if series:
        where.append(Series.series_instance_uid == series)
    # Outer join: payload is None where no current precomputed form exists.
    rows = cast(
        "Sequence[Row[int, bytes | None]]",
        conn.execute(
            select(Series.id, SeriesMetadata.payload)
            .join(Study, Series.study_pk == Study.id)
            .outerjoin(
                SeriesMetadata, (SeriesMetadata.series_pk == Series.id) & (SeriesMetadata.revision == Series.revision)
            )
            .where(*where)
            .order_by(*SERIES_ORDER)
        ).all(),
    )
    stale = [pk for pk, payload in rows if payload is None]
    per_series: dict[int, list[bytes]] = {}
    for part in chunks(stale):
        stmt = (
            select(Instance.series_pk, Instance.dicom_json)
            .where(Instance.series_pk.in_(part))
            .order_by(*INSTANCE_ORDER)
        )
        for pk, header in conn.execute(stmt):
            per_series.setdefault(pk, []).append(header)
    headers: list[bytes] = []
    for pk, payload in rows:
        if payload is None:
            headers += per_series.get(pk, [])
        else:
            headers += md_pb.GetMetadataResponse.FromString(payload).instances
    if not headers:
        raise NotFoundError("no matching instances")
    return headers


def _instance_headers(conn: Connection, conds: list[ColumnElement[bool]]) -> list[bytes]:
    stmt = (
        select(Instance.dicom_json)
        .join(Series, Instance.series_pk == Series.id)
        .join(Study, Instance.study_pk == Study.id)
        .where(*conds)
        .order_by(*SERIES_ORDER, *INSTANCE_ORDER)
    )
    headers = list(conn.scalars(stmt))
    if not headers:
        raise NotFoundError("no matching instances")
    return headers


_REVISIONS = (
    select(Series.id, Series.revision)
    .join(Study, Series.study_pk == Study.id)
    .where(Series.tenant == bindparam("tenant"), Study.study_instance_uid == bindparam("study"))
)
_SERIES_REVISION = _REVISIONS.where(Series.series_instance_uid == bindparam("series"))
_STORED = select(
    SeriesMetadata.series_pk, SeriesMetadata.revision, SeriesMetadata.payload, SeriesMetadata.members
).where(SeriesMetadata.series_pk.in_(bindparam("series", expanding=True)))
_ALL_HEADERS = (
    select(Instance.sop_instance_uid, Instance.instance_number_int, Instance.dicom_json)
    .where(Instance.series_pk == bindparam("series"))
    .order_by(*INSTANCE_ORDER)
)
_everyone = aliased(Instance)
_HEADERS_SINCE = (
    select(
        Instance.sop_instance_uid,
        Instance.instance_number_int,
        Instance.dicom_json,
        select(func.count())
        .select_from(_everyone)
        .where(_everyone.series_pk == bindparam("series"))
        .scalar_subquery()
        .label("instances"),
    )
    .where(Instance.series_pk == bindparam("series"), Instance.revision > bindparam("since"))
    .order_by(*INSTANCE_ORDER)
)


def refresh(conn: Connection, tenant: str, study: str, series: str = "") -> list[dict[str, Any]]:
    """The precomputed forms to store for a series, or for every series of a
    study, whose stored form is not current (see upsert()); none for a
    series that no longer exists or has no instances."""
    check_tenant(tenant)
    check_uid(study, "Study Instance UID")
    # Revisions first: instances read after them are at least as new, so a
    # stored revision never claims a state older than its payload.
    if series:
        check_uid(series, "Series Instance UID")
        found = conn.execute(_SERIES_REVISION, {"tenant": tenant, "study": study, "series": series}).all()
    else:
        found = conn.execute(_REVISIONS, {"tenant": tenant, "study": study}).all()
    revisions = dict(found)
    if not revisions:
        return []
    stored = {row.series_pk: row for row in conn.execute(_STORED, {"series": list(revisions)})}
    rows = []
    for pk, revision in revisions.items():
        old = stored.get(pk)
        if old is not None and old.revision == revision:
            continue
        computed = _updated(conn, pk, old) if old is not None and old.members is not None else None
        members, headers = computed if computed is not None else _computed(conn, pk)
        if headers:
            rows.append(
                {
                    "series_pk": pk,
                    "revision": revision,
                    "members": "\n".join(members),
                    "payload": md_pb.GetMetadataResponse(instances=headers).SerializeToString(),
                }
            )
    return rows


def _member(number: int | None, sop: str) -> str:
    """A line of SeriesMetadata.members: the instance's place in the order."""
    return f"{'' if number is None else number} {sop}"


def _computed(conn: Connection, series_pk: int) -> tuple[list[str], list[bytes]]:
    """Every header of the series, read, in order, and the members line of each."""
    rows = conn.execute(_ALL_HEADERS, {"series": series_pk}).all()
    return [_member(number, sop) for sop, number, _ in rows], [header for _, _, header in rows]


def _updated(conn: Connection, series_pk: int, old: Any) -> tuple[list[str], list[bytes]] | None:
    """The stored form `old` brought up to date by reading only the headers
    written since, when they replace headers in place or come after the
    last one (how a series is ingested); None otherwise (an instance left
    the series or moved in the order), and then the series is read whole."""
    changed = conn.execute(_HEADERS_SINCE, {"series": series_pk, "since": old.revision}).all()
    if not changed:  # only removals
        return None
    members = old.members.split("\n") if old.members else []
    headers = list(md_pb.GetMetadataResponse.FromString(old.payload).instances)
    if len(members) != len(headers):
        return None
    last = members[-1].partition(" ")[0] if members else None
    last_number = int(last) if last else None
    for sop, number, header, _ in changed:
        line = _member(number, sop)
        try:
            headers[members.index(line)] = header  # rewritten where it was
        except ValueError:
            if number is None or (members and (last_number is None or number <= last_number)):
                return None
            members.append(line)  # after the last one
            headers.append(header)
            last_number = number
    # Fewer instances than members: one left the series or moved in the order
    # (then it was appended above while its old line stayed).
    if len(members) != changed[0].instances:
        return None
    return members, headers


def _upsert_statement(insert: Any) -> Any:
    stmt = insert(SeriesMetadata)
    excluded = stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=[SeriesMetadata.series_pk],
        set_={"revision": excluded.revision, "payload": excluded.payload, "members": excluded.members},
        where=SeriesMetadata.revision < excluded.revision,
    )


_UPSERT = {"postgresql": _upsert_statement(postgresql.insert), "sqlite": _upsert_statement(sqlite.insert)}


def upsert(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Stores precomputed forms; one never replaces a newer revision."""
    if rows:
        conn.execute(_UPSERT[conn.dialect.name], rows)
