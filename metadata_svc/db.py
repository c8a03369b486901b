"""Engine, connections and sessions. One engine per process, one
connection or session per call, so the gRPC thread pool never shares a
connection between threads."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import Session, sessionmaker

from metadata_svc import migrate

T = TypeVar("T")
# Bound parameters per IN list, well under SQLite's and PostgreSQL's limits.
CHUNK = 500

# Execution option asking SQLite for BEGIN IMMEDIATE: a write transaction
# takes the write lock up front instead of failing with SQLITE_BUSY when a
# read snapshot cannot be upgraded (the busy timeout does not cover that).
_IMMEDIATE = "metadata_svc_immediate"


def make_engine(url: str, pool_size: int = 10) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=pool_size)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" hook emit BEGIN itself (pysqlite's own
        # transaction handling would defer it and ignore IMMEDIATE).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")  # acknowledged means durable
        cur.execute("PRAGMA foreign_keys=ON")
        # LIKE must be case-sensitive as on PostgreSQL; names use lower-cased columns.
        cur.execute("PRAGMA case_sensitive_like=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(_IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class Database:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._read = sessionmaker(engine, expire_on_commit=False)
        self._write_engine = engine.execution_options(**{_IMMEDIATE: True})
        self._write = sessionmaker(self._write_engine, expire_on_commit=False)

    @classmethod
    def from_url(cls, url: str, pool_size: int = 10) -> Database:
        db = cls(make_engine(url, pool_size))
        migrate.upgrade(db.engine)
        return db

    def reader(self) -> Session:
        return self._read()

    def writer(self) -> Session:
        return self._write()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection in a read transaction (Core statements, no ORM)."""
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A connection in a write transaction (BEGIN IMMEDIATE on SQLite),
        committed when the block ends without an exception."""
        with self._write_engine.connect() as conn, conn.begin():
            yield conn

    def dispose(self) -> None:
        self.engine.dispose()


def chunks(items: Sequence[T]) -> list[Sequence[T]]:
    """`items` in slices of at most CHUNK, for IN lists."""
    return [items[i : i + CHUNK] for i in range(0, len(items), CHUNK)]
