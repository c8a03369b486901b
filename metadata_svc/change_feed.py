"""Reading the outbox: every event in outbox order (the relay and the
embedded event log's consumers) and one tenant's change feed (index changes
numbered per tenant, ReadChangeFeed)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Select, bindparam, func, select, true

from common.gen.dicomserver.v1 import events_pb2
from common.validation import check_tenant
from metadata_svc.schema import EventRow

DEFAULT_FEED_LIMIT = 100
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAIVE_EPOCH = datetime(1970, 1, 1)


def _page_with_newest(position: Any, *where: Any) -> Select[Any]:
    """One statement per call (every consumer of the embedded log polls
    several times a second): the newest position, joined to the page of
    events after `after` (no event: one row whose event columns are NULL)."""
    newest = select(func.max(position).label("newest")).where(*where).subquery()
    page = (
        select(position.label("position"), EventRow.created, EventRow.payload)
        .where(*where, position > bindparam("after"))
        .order_by(position)
        .limit(bindparam("limit"))
        .subquery()
    )
    return (
        select(newest.c.newest, page.c.position, page.c.created, page.c.payload)
        .select_from(newest.outerjoin(page, true()))
        .order_by(page.c.position)
    )


_OUTBOX_PAGE = _page_with_newest(EventRow.sequence)
_FEED_PAGE = _page_with_newest(EventRow.feed_sequence, EventRow.tenant == bindparam("tenant"))


def page_limit(limit: int, max_limit: int) -> int:
    return DEFAULT_FEED_LIMIT if limit <= 0 else min(limit, max_limit)


def _read(conn: Connection, statement: Select[Any], params: dict[str, Any]) -> tuple[list[events_pb2.Event], int]:
    events, newest = [], 0
    for newest, position, created, payload in conn.execute(statement, params).all():  # noqa: B007 (the last row's, read after the loop)
        if position is not None:
            event = events_pb2.Event.FromString(payload)
            event.sequence = position
            # As Timestamp.FromDatetime, without its per-call Python work (a
            # page is read several times a second). SQLite returns naive UTC.
            since = created - (_EPOCH if created.tzinfo else _NAIVE_EPOCH)
            event.time.seconds = since.days * 86400 + since.seconds
            event.time.nanos = since.microseconds * 1000
            events.append(event)
    return events, max(newest or 0, events[-1].sequence if events else 0)


def read_outbox(conn: Connection, after_sequence: int, limit: int) -> tuple[list[events_pb2.Event], int]:
    """Events of every tenant after a sequence, in order, and the newest sequence."""
    return _read(conn, _OUTBOX_PAGE, {"after": after_sequence, "limit": limit})


def read_change_feed(
    conn: Connection, tenant: str, after_sequence: int, limit: int
) -> tuple[list[events_pb2.Event], int]:
    """The tenant's index changes after a position, in order, and the newest
    position. Positions are the tenant's own count of changes
    (feed_sequence), never the outbox's global sequence; audit records are
    not changes."""
    check_tenant(tenant)
    return _read(conn, _FEED_PAGE, {"tenant": tenant, "after": after_sequence, "limit": limit})
