"""The event bus's own database: embedded-log offsets and the relay
position, the audit log, and dead letters of the embedded log."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, DateTime, Integer, LargeBinary, String, Text, UniqueConstraint, create_engine, \
    event, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from common.gen.dicomserver.v1 import events_pb2


class Base(DeclarativeBase):
    pass


class Offset(Base):
    """Position of a reader of the outbox: every event up to `sequence` is done."""

    __tablename__ = "offsets"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    sequence: Mapped[int] = mapped_column(BigInteger)


class AuditEntry(Base):
    """One line per event; `deliveries` counts how often it was handed over
    (at-least-once), while the entry itself exists once."""

    __tablename__ = "audit_log"
    __table_args__ = (UniqueConstraint("sequence", name="uq_audit_sequence"),)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    sequence: Mapped[int] = mapped_column(BigInteger)
    tenant: Mapped[str] = mapped_column(String(63))
    kind: Mapped[str] = mapped_column(String(40))
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    event_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    recorded: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    deliveries: Mapped[int] = mapped_column(Integer, default=1)


class DeadLetter(Base):
    __tablename__ = "dead_letters"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    consumer: Mapped[str] = mapped_column(String(100))
    sequence: Mapped[int] = mapped_column(BigInteger)
    error: Mapped[str] = mapped_column(Text())
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    recorded: Mapped[datetime] = mapped_column(DateTime(timezone=True))


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.close()

    return engine


def _insert(session: Session) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    return insert


class Store:
    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        Base.metadata.create_all(self.engine)

    def offset(self, name: str) -> int:
        with Session(self.engine) as s:
            return s.scalar(select(Offset.sequence).where(Offset.name == name)) or 0

    def commit_offset(self, name: str, sequence: int) -> None:
        with Session(self.engine) as s, s.begin():
            insert = _insert(s)
            stmt = insert(Offset).values(name=name, sequence=sequence)
            s.execute(stmt.on_conflict_do_update(index_elements=[Offset.name], set_={"sequence": sequence}))

    def audit(self, ev: events_pb2.Event) -> None:
        """Records an event once, however often it is delivered."""
        kind = ev.WhichOneof("kind") or "unknown"
        ref = getattr(ev, kind).location.ref if kind in ("instance_stored", "instance_deleted") else None
        with Session(self.engine) as s, s.begin():
            insert = _insert(s)
            stmt = insert(AuditEntry).values(
                sequence=ev.sequence, tenant=ev.tenant, kind=kind,
                study_instance_uid=ref.study_instance_uid if ref else "",
                series_instance_uid=ref.series_instance_uid if ref else "",
                sop_instance_uid=ref.sop_instance_uid if ref else "",
                event_time=ev.time.ToDatetime(tzinfo=timezone.utc), recorded=datetime.now(timezone.utc),
                deliveries=1,
            )
            s.execute(stmt.on_conflict_do_update(index_elements=[AuditEntry.sequence],
                                                 set_={"deliveries": AuditEntry.deliveries + 1}))

    def dead_letter(self, consumer: str, sequence: int, error: str, payload: bytes) -> None:
        with Session(self.engine) as s, s.begin():
            s.add(DeadLetter(consumer=consumer, sequence=sequence, error=error[:2000], payload=payload,
                             recorded=datetime.now(timezone.utc)))

    def dispose(self) -> None:
        self.engine.dispose()
