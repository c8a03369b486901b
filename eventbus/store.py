"""The event bus's own database: embedded-log offsets and the relay
position, the audit log, and dead letters of the embedded log.

Tables are made by create_all; columns added since are added to an older
database on start (each new column has a server default)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    select,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.schema import CreateColumn

from common.audit import LIMITS
from common.gen.dicomserver.v1 import events_pb2

Record = events_pb2.AuditRecord


class Base(DeclarativeBase):
    pass


class Offset(Base):
    """Position of a reader of the outbox: every event up to `sequence` is done."""

    __tablename__ = "offsets"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    sequence: Mapped[int] = mapped_column(BigInteger)


def _text(name: str) -> Mapped[str]:
    return mapped_column(String(LIMITS[name]), default="", server_default="")


class AuditEntry(Base):
    """One line per event; `deliveries` counts how often it was handed over
    (at-least-once), while the entry itself exists once.

    kind "instance_stored" / "instance_deleted": an index change (tenant,
    UIDs, event_time = when it was committed). kind "audit": a request at an
    edge: who (subject, tenant; both empty when authentication failed), from
    where (source_address, edge), what (action, operation, UIDs), how it
    ended (outcome, status, detail), request_id, and event_time = when the
    edge saw it. action and outcome are enum names in lower case ("read",
    "denied")."""

    __tablename__ = "audit_log"
    __table_args__ = (
        UniqueConstraint("sequence", name="uq_audit_sequence"),
        # The questions an audit trail answers: who touched this study, what did this subject do.
        Index("ix_audit_tenant_study_time", "tenant", "study_instance_uid", "event_time"),
        Index("ix_audit_subject_time", "subject", "event_time"),
    )
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    sequence: Mapped[int] = mapped_column(BigInteger)
    tenant: Mapped[str] = mapped_column(String(63))
    kind: Mapped[str] = mapped_column(String(40))
    subject: Mapped[str] = _text("subject")
    source_address: Mapped[str] = _text("source_address")
    edge: Mapped[str] = _text("edge")
    action: Mapped[str] = mapped_column(String(32), default="", server_default="")
    operation: Mapped[str] = _text("operation")
    outcome: Mapped[str] = mapped_column(String(32), default="", server_default="")
    status: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = _text("detail")
    request_id: Mapped[str] = _text("request_id")
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
    return _dialect_insert(session.get_bind().dialect.name)


def _dialect_insert(dialect: str) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    return insert


def _add_missing_columns(engine: Engine) -> None:
    """Adds the model's columns and indexes an older database lacks (the
    columns all have server defaults, so existing rows get them)."""
    insp = inspect(engine)
    with engine.begin() as conn:
        for table in Base.metadata.sorted_tables:
            have = {c["name"] for c in insp.get_columns(table.name)}
            for column in table.columns:
                if column.name not in have:
                    ddl = CreateColumn(column).compile(dialect=engine.dialect)
                    conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {ddl}")
            indexes = {i["name"] for i in insp.get_indexes(table.name)}
            for index in table.indexes:
                if index.name not in indexes:
                    index.create(conn)


def _enum_name(enum: Any, prefix: str, value: int) -> str:
    try:
        return str(enum.Name(value)).removeprefix(prefix).lower()
    except ValueError:  # a newer producer's value
        return str(value)


def _cut(value: str, limit: int) -> str:
    """What fits the column (the metadata service enforces the limits; an
    event from elsewhere must not become a poison message)."""
    return value.replace("\x00", "\ufffd")[:limit]


def _audit_values(ev: events_pb2.Event) -> dict[str, Any]:
    """The row of an event: an index change or an audit record."""
    kind = ev.WhichOneof("kind") or "unknown"
    values: dict[str, Any] = {"sequence": ev.sequence, "tenant": _cut(ev.tenant, 63), "kind": kind}
    when = ev.time
    if kind == "audit":
        rec = ev.audit
        values.update({name: _cut(getattr(rec, name), limit) for name, limit in LIMITS.items() if name != "tenant"})
        values.update(
            action=_enum_name(Record.Action, "ACTION_", rec.action),
            outcome=_enum_name(Record.Outcome, "OUTCOME_", rec.outcome),
            status=rec.status,
        )
        if rec.HasField("time"):
            when = rec.time
    elif kind in ("instance_stored", "instance_deleted", "instance_converted"):
        ref = getattr(ev, kind).location.ref
        values.update(
            study_instance_uid=ref.study_instance_uid,
            series_instance_uid=ref.series_instance_uid,
            sop_instance_uid=ref.sop_instance_uid,
        )
    for uid in ("study_instance_uid", "series_instance_uid", "sop_instance_uid"):
        values.setdefault(uid, "")
    values["event_time"] = when.ToDatetime(tzinfo=UTC)
    return values


AUDIT_CHUNK = 20
# Every row of one executemany names the same columns: the model's defaults
# fill what an event of its kind does not carry.
_AUDIT_DEFAULTS: dict[str, Any] = {
    c.key: c.default.arg for c in AuditEntry.__table__.columns if c.default is not None and not callable(c.default.arg)
}


class Store:
    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        table = AuditEntry.__table__
        stmt = _dialect_insert(self.engine.dialect.name)(table)
        self._audit_upsert = stmt.on_conflict_do_update(
            index_elements=[table.c.sequence], set_={"deliveries": table.c.deliveries + stmt.excluded.deliveries}
        )
        Base.metadata.create_all(self.engine)
        _add_missing_columns(self.engine)

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
        self.audit_many([ev])

    def audit_many(self, events: list[events_pb2.Event]) -> None:
        """Records events, each once however often delivered, in transactions
        of up to AUDIT_CHUNK events: one commit (one fsync) per chunk rather
        than per event, without holding SQLite's one write lock for a whole
        batch (offsets and the relay's position wait for it). Each chunk is one
        executemany of a statement built once: building and caching an ORM
        statement per event was three quarters of the event bus's CPU."""
        now = datetime.now(UTC)
        upsert = self._audit_upsert
        for i in range(0, len(events), AUDIT_CHUNK):
            rows: dict[int, dict[str, Any]] = {}
            for ev in events[i : i + AUDIT_CHUNK]:
                if ev.sequence in rows:  # delivered twice in one batch: one row, both deliveries counted
                    rows[ev.sequence]["deliveries"] += 1
                else:
                    rows[ev.sequence] = {**_AUDIT_DEFAULTS, **_audit_values(ev), "recorded": now, "deliveries": 1}
            with self.engine.begin() as conn:
                conn.execute(upsert, list(rows.values()))

    def dead_letter(self, consumer: str, sequence: int, error: str, payload: bytes) -> None:
        with Session(self.engine) as s, s.begin():
            s.add(
                DeadLetter(
                    consumer=consumer,
                    sequence=sequence,
                    error=error[:2000],
                    payload=payload,
                    recorded=datetime.now(UTC),
                )
            )

    def dispose(self) -> None:
        self.engine.dispose()
