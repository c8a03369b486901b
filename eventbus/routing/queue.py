"""The delivery queues, in the event bus's database (SQLite or PostgreSQL):
what is queued survives a restart of the event bus, and the consumer moves
its offset only after its matches are queued here (at-least-once).

- routing_queue: one row per instance to deliver to one destination, with
  its attempts so far and when it may be tried next.
- routing_dead_letters: deliveries that failed max_attempts times, until
  they are replayed (moved back to the queue).
- routing_quiet_studies: studies a "studies" rule matched, with the time of
  their newest event; sent whole once they have been quiet long enough.
- routing_sends: manual sends and their progress.

Times are seconds since the epoch (floats), compared in Python's clock."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

from sqlalchemy import (
    BigInteger,
    Double,
    Index,
    Integer,
    String,
    Table,
    Text,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from eventbus.store import Offset, _insert

_ID = BigInteger().with_variant(Integer(), "sqlite")
# The offsets row that keeps where routing started.
START = "routing:since"


class Base(DeclarativeBase):
    pass


def _table(model: type[Base]) -> Table:
    """A model's Core table (DeclarativeBase types __table__ as any FromClause)."""
    return cast(Table, model.__table__)


class QueuedDelivery(Base):
    __tablename__ = "routing_queue"
    __table_args__ = (
        Index("ix_routing_queue_order", "destination", "id"),
        Index("ix_routing_queue_due", "destination", "next_attempt_at"),
        Index("ix_routing_queue_tenant", "tenant", "destination"),
    )
    id: Mapped[int] = mapped_column(_ID, primary_key=True)
    destination: Mapped[str] = mapped_column(String(64))
    tenant: Mapped[str] = mapped_column(String(63))
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    # "rule:<name>" or "send:<id>".
    origin: Mapped[str] = mapped_column(String(80))
    send_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    queued_at: Mapped[float] = mapped_column(Double)
    next_attempt_at: Mapped[float] = mapped_column(Double)
    last_error: Mapped[str] = mapped_column(Text, default="")


class DeadDelivery(Base):
    __tablename__ = "routing_dead_letters"
    __table_args__ = (Index("ix_routing_dead_letters_tenant", "tenant", "destination", "id"),)
    id: Mapped[int] = mapped_column(_ID, primary_key=True)
    destination: Mapped[str] = mapped_column(String(64))
    tenant: Mapped[str] = mapped_column(String(63))
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    origin: Mapped[str] = mapped_column(String(80))
    send_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer)
    queued_at: Mapped[float] = mapped_column(Double)
    failed_at: Mapped[float] = mapped_column(Double)
    error: Mapped[str] = mapped_column(Text)


class QuietStudy(Base):
    __tablename__ = "routing_quiet_studies"
    rule: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(63), primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_event_at: Mapped[float] = mapped_column(Double)


class SendRow(Base):
    __tablename__ = "routing_sends"
    id: Mapped[int] = mapped_column(_ID, primary_key=True)
    tenant: Mapped[str] = mapped_column(String(63))
    destination: Mapped[str] = mapped_column(String(64))
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    series_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    sop_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    total: Mapped[int] = mapped_column(Integer, default=0)
    sent: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Double)


@dataclass(frozen=True)
class Target:
    """One instance for one destination, on its way into the queue."""

    destination: str
    tenant: str
    study: str
    series: str
    sop: str
    origin: str


@dataclass(frozen=True)
class Job:
    """A queued delivery as a worker takes it."""

    id: int
    destination: str
    tenant: str
    study: str
    series: str
    sop: str
    origin: str
    send_id: int | None
    attempts: int
    queued_at: float


@dataclass(frozen=True)
class Retry:
    """How often and how patiently one destination is tried."""

    max_attempts: int
    backoff: float
    max_backoff: float

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the `attempts`-th failure: doubling from `backoff`, at most `max_backoff`."""
        return float(min(self.max_backoff, self.backoff * 2 ** min(max(attempts - 1, 0), 60)))


@dataclass(frozen=True)
class QueueStats:
    queued: int = 0
    oldest_queued_at: float | None = None
    dead_letters: int = 0


@dataclass(frozen=True)
class Quiet:
    rule: str
    tenant: str
    study: str
    last_event_at: float


def _job(row: QueuedDelivery) -> Job:
    return Job(
        row.id,
        row.destination,
        row.tenant,
        row.study_instance_uid,
        row.series_instance_uid,
        row.sop_instance_uid,
        row.origin,
        row.send_id,
        row.attempts,
        row.queued_at,
    )


def _queued(target: Target, now: float, send_id: int | None = None) -> dict[str, object]:
    return {
        "destination": target.destination,
        "tenant": target.tenant,
        "study_instance_uid": target.study,
        "series_instance_uid": target.series,
        "sop_instance_uid": target.sop,
        "origin": target.origin,
        "send_id": send_id,
        "attempts": 0,
        "queued_at": now,
        "next_attempt_at": now,
        "last_error": "",
    }


class DeliveryQueue:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        Base.metadata.create_all(engine)

    def start_sequence(self, latest: int) -> int:
        """The outbox sequence routing started at: `latest` the first time it
        is asked (the archive's data from before routing was turned on is
        not forwarded), the same value ever after (so that events a stopped
        consumer had not handled yet are not skipped)."""
        with Session(self.engine) as s, s.begin():
            known = s.scalar(select(Offset.sequence).where(Offset.name == START))
            if known is not None:
                return int(known)
            s.add(Offset(name=START, sequence=latest))
        return latest

    # -- filling

    def add(self, targets: Sequence[Target], quiet: Sequence[Quiet] = (), now: float = 0.0) -> None:
        """Queues deliveries and notes matched studies, in one transaction."""
        if not targets and not quiet:
            return
        with Session(self.engine) as s, s.begin():
            if targets:
                s.execute(_table(QueuedDelivery).insert(), [_queued(t, now) for t in targets])
            if quiet:
                insert = _insert(s)
                for q in quiet:
                    stmt = insert(QuietStudy).values(
                        rule=q.rule, tenant=q.tenant, study_instance_uid=q.study, last_event_at=q.last_event_at
                    )
                    newer = func.max if s.get_bind().dialect.name == "sqlite" else func.greatest
                    s.execute(
                        stmt.on_conflict_do_update(
                            index_elements=[QuietStudy.rule, QuietStudy.tenant, QuietStudy.study_instance_uid],
                            set_={"last_event_at": newer(QuietStudy.last_event_at, stmt.excluded.last_event_at)},
                        )
                    )

    def quiet_studies(self, quiet_seconds: dict[str, float], now: float) -> list[Quiet]:
        """Noted studies of these rules whose newest event is at least their rule's quiet time old."""
        out: list[Quiet] = []
        with Session(self.engine) as s:
            for rule, seconds in quiet_seconds.items():
                rows = s.execute(
                    select(QuietStudy).where(QuietStudy.rule == rule, QuietStudy.last_event_at <= now - seconds)
                ).scalars()
                out += [Quiet(r.rule, r.tenant, r.study_instance_uid, r.last_event_at) for r in rows]
        return out

    def release_study(self, study: Quiet, targets: Sequence[Target], now: float) -> bool:
        """Queues a quiet study's deliveries and forgets the study, unless a
        newer event of it arrived meanwhile (then nothing happens: it is
        released when it is quiet again). Returns whether it was released."""
        with Session(self.engine) as s, s.begin():
            gone = s.execute(
                delete(QuietStudy).where(
                    QuietStudy.rule == study.rule,
                    QuietStudy.tenant == study.tenant,
                    QuietStudy.study_instance_uid == study.study,
                    QuietStudy.last_event_at == study.last_event_at,
                )
            )
            if gone.rowcount != 1:  # type: ignore[attr-defined]
                return False
            if targets:
                s.execute(_table(QueuedDelivery).insert(), [_queued(t, now) for t in targets])
        return True

    def forget_studies(self, rules: Iterable[str]) -> int:
        """Drops noted studies of rules that are no longer configured."""
        keep = list(rules)
        with Session(self.engine) as s, s.begin():
            result = s.execute(delete(QuietStudy).where(QuietStudy.rule.not_in(keep)))
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def create_send(
        self, tenant: str, destination: str, study: str, series: str, sop: str, targets: Sequence[Target], now: float
    ) -> SendRow:
        """A manual send and its deliveries, in one transaction."""
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            row = SendRow(
                tenant=tenant,
                destination=destination,
                study_instance_uid=study,
                series_instance_uid=series,
                sop_instance_uid=sop,
                total=len(targets),
                sent=0,
                failed=0,
                skipped=0,
                created_at=now,
            )
            s.add(row)
            s.flush()
            origin = f"send:{row.id}"
            s.execute(
                _table(QueuedDelivery).insert(),
                [
                    _queued(Target(t.destination, t.tenant, t.study, t.series, t.sop, origin), now, row.id)
                    for t in targets
                ],
            )
        return row

    def get_send(self, tenant: str, send_id: int) -> SendRow | None:
        with Session(self.engine, expire_on_commit=False) as s:
            return s.scalar(select(SendRow).where(SendRow.id == send_id, SendRow.tenant == tenant))

    # -- working off

    def due(self, destination: str, now: float, limit: int) -> list[Job]:
        """The oldest deliveries of a destination that may be tried now."""
        with Session(self.engine) as s:
            rows = s.execute(
                select(QueuedDelivery)
                .where(
                    QueuedDelivery.destination == destination,
                    QueuedDelivery.next_attempt_at <= now,
                )
                .order_by(QueuedDelivery.id)
                .limit(limit)
            ).scalars()
            return [_job(r) for r in rows]

    def next_due(self, destination: str) -> float | None:
        with Session(self.engine) as s:
            return s.scalar(
                select(func.min(QueuedDelivery.next_attempt_at)).where(QueuedDelivery.destination == destination)
            )

    def delivered(self, jobs: Sequence[Job]) -> None:
        self._finish(jobs, "sent")

    def skipped(self, jobs: Sequence[Job]) -> None:
        """Deliveries of instances that no longer exist."""
        self._finish(jobs, "skipped")

    def _finish(self, jobs: Sequence[Job], counter: str) -> None:
        if not jobs:
            return
        with Session(self.engine) as s, s.begin():
            s.execute(delete(QueuedDelivery).where(QueuedDelivery.id.in_([j.id for j in jobs])))
            self._count(s, jobs, counter, +1)

    @staticmethod
    def _count(s: Session, jobs: Iterable[Job], counter: str, step: int) -> None:
        """Moves a progress counter ("sent", "failed", "skipped") of the jobs' sends."""
        per_send: dict[int, int] = {}
        for j in jobs:
            if j.send_id is not None:
                per_send[j.send_id] = per_send.get(j.send_id, 0) + step
        column = getattr(SendRow, counter)
        for send_id, n in per_send.items():
            s.execute(update(SendRow).where(SendRow.id == send_id).values({counter: column + n}))

    def failed(self, failures: Sequence[tuple[Job, str]], retry: Retry, now: float) -> list[Job]:
        """Counts a failed attempt of each; those that reached max_attempts
        become dead letters (returned), the others wait their backoff."""
        dead: list[tuple[Job, str]] = []
        with Session(self.engine) as s, s.begin():
            for job, error in failures:
                attempts = job.attempts + 1
                if attempts >= retry.max_attempts:
                    dead.append((job, error))
                    continue
                s.execute(
                    update(QueuedDelivery)
                    .where(QueuedDelivery.id == job.id)
                    .values(attempts=attempts, next_attempt_at=now + retry.delay(attempts), last_error=error[:2000])
                )
            self._bury(s, dead, now, extra_attempt=True)
        return [job for job, _ in dead]

    def dead_letter(self, failures: Sequence[tuple[Job, str]], now: float) -> None:
        """Makes deliveries dead letters at once (they can never succeed as they are)."""
        with Session(self.engine) as s, s.begin():
            self._bury(s, failures, now, extra_attempt=False)

    def _bury(self, s: Session, failures: Sequence[tuple[Job, str]], now: float, extra_attempt: bool) -> None:
        if not failures:
            return
        s.execute(
            _table(DeadDelivery).insert(),
            [
                {
                    "destination": j.destination,
                    "tenant": j.tenant,
                    "study_instance_uid": j.study,
                    "series_instance_uid": j.series,
                    "sop_instance_uid": j.sop,
                    "origin": j.origin,
                    "send_id": j.send_id,
                    "attempts": j.attempts + (1 if extra_attempt else 0),
                    "queued_at": j.queued_at,
                    "failed_at": now,
                    "error": error[:2000],
                }
                for j, error in failures
            ],
        )
        s.execute(delete(QueuedDelivery).where(QueuedDelivery.id.in_([j.id for j, _ in failures])))
        self._count(s, (j for j, _ in failures), "failed", +1)

    # -- looking and replaying

    def stats(self, tenant: str | None = None) -> dict[str, QueueStats]:
        """Per destination: queued deliveries, the oldest one's time, dead letters (of one tenant, or all)."""
        with Session(self.engine) as s:
            q = select(QueuedDelivery.destination, func.count(), func.min(QueuedDelivery.queued_at))
            d = select(DeadDelivery.destination, func.count())
            if tenant is not None:
                q = q.where(QueuedDelivery.tenant == tenant)
                d = d.where(DeadDelivery.tenant == tenant)
            queued = {name: (n, oldest) for name, n, oldest in s.execute(q.group_by(QueuedDelivery.destination))}
            dead = {name: n for name, n in s.execute(d.group_by(DeadDelivery.destination))}
        return {
            name: QueueStats(queued.get(name, (0, None))[0], queued.get(name, (0, None))[1], dead.get(name, 0))
            for name in set(queued) | set(dead)
        }

    def dead_letters(self, tenant: str, destination: str, after_id: int, limit: int) -> tuple[list[DeadDelivery], bool]:
        with Session(self.engine, expire_on_commit=False) as s:
            stmt = select(DeadDelivery).where(DeadDelivery.tenant == tenant, DeadDelivery.id > after_id)
            if destination:
                stmt = stmt.where(DeadDelivery.destination == destination)
            rows = list(s.execute(stmt.order_by(DeadDelivery.id).limit(limit + 1)).scalars())
        return rows[:limit], len(rows) > limit

    def replay(
        self, tenant: str, ids: Sequence[int], destination: str, destinations: Iterable[str], now: float
    ) -> list[str]:
        """Moves the tenant's dead letters (these ids, or all of `destination`,
        or all) back to the end of their queues, if their destination is one
        of `destinations`; returns the destination of each replayed one."""
        allowed = list(destinations)
        with Session(self.engine) as s, s.begin():
            stmt = select(DeadDelivery).where(DeadDelivery.tenant == tenant, DeadDelivery.destination.in_(allowed))
            if ids:
                stmt = stmt.where(DeadDelivery.id.in_(list(ids)))
            elif destination:
                stmt = stmt.where(DeadDelivery.destination == destination)
            rows = list(s.execute(stmt.order_by(DeadDelivery.id).with_for_update()).scalars())
            if not rows:
                return []
            s.execute(
                _table(QueuedDelivery).insert(),
                [
                    _queued(
                        Target(
                            r.destination,
                            r.tenant,
                            r.study_instance_uid,
                            r.series_instance_uid,
                            r.sop_instance_uid,
                            r.origin,
                        ),
                        now,
                        r.send_id,
                    )
                    for r in rows
                ],
            )
            s.execute(delete(DeadDelivery).where(DeadDelivery.id.in_([r.id for r in rows])))
            self._count(
                s,
                (Job(r.id, r.destination, r.tenant, "", "", "", r.origin, r.send_id, 0, 0.0) for r in rows),
                "failed",
                -1,
            )
            return [r.destination for r in rows]
