"""API keys: made here, stored hashed, looked up on every use.

A key reads `dsk_<key_id>_<secret>`: the key id (12 letters and digits) is
public and names the key in lists; the secret is 32 random bytes
(url-safe base64). Only the SHA-256 of the whole key is stored. Every use
reads the row again, so a revoked key stops working at once, on every
replica that shares the database."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import string
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import sessionmaker

from auth_svc import migrate
from auth_svc.schema import KEY_ID_LENGTH, ApiKeyRow
from common.validation import InvalidValue, check_tenant

log = logging.getLogger(__name__)

PREFIX = "dsk_"
KEY_SCOPES = ("read", "write", "delete", "admin")
DEFAULT_KEY_SCOPES = ("read", "write")
_ALPHABET = string.ascii_letters + string.digits
_KEY_ID = re.compile(rf"[A-Za-z0-9]{{{KEY_ID_LENGTH}}}")
_KEY = re.compile(rf"{PREFIX}(?P<key_id>[A-Za-z0-9]{{{KEY_ID_LENGTH}}})_[A-Za-z0-9_-]{{43}}")
# Compared against when a key id is unknown, so that unknown and wrong keys take alike.
_NO_HASH = "0" * 64


class StoreUnavailable(Exception):
    """The key database did not answer; callers fail closed."""


@contextmanager
def _reachable() -> Iterator[None]:
    try:
        yield
    except IntegrityError:
        raise
    except DBAPIError as exc:
        log.warning("API key database unavailable: %s", type(exc.orig).__name__ if exc.orig else exc)
        raise StoreUnavailable("the API key database is unavailable") from None


def check_subject(value: str) -> str:
    if not value or len(value) > 128 or not value.isprintable():
        raise InvalidValue("subject must be 1-128 printable characters")
    return value


def check_scopes(values: Sequence[str]) -> list[str]:
    """The scopes in their canonical order; none given means read and write."""
    unknown = sorted(set(values) - set(KEY_SCOPES))
    if unknown:
        raise InvalidValue(f"unknown scope '{unknown[0][:32]}': scopes are {', '.join(KEY_SCOPES)}")
    return [s for s in KEY_SCOPES if s in values] if values else list(DEFAULT_KEY_SCOPES)


def check_key_id(value: str) -> str:
    if _KEY_ID.fullmatch(value) is None:
        raise InvalidValue(f"a key id is {KEY_ID_LENGTH} letters and digits")
    return value


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; they were stored as UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    subject: str
    tenant: str
    scopes: list[str]
    created: datetime
    revoked: datetime | None

    @classmethod
    def of(cls, row: ApiKeyRow) -> KeyInfo:
        created = _utc(row.created)
        assert created is not None
        return cls(row.key_id, row.subject, row.tenant, row.scopes.split(), created, _utc(row.revoked))


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=8)
    if parsed.database and parsed.database != ":memory:":
        path = Path(parsed.database)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Readable by its owner only (SQLite gives its -wal and -shm files the same mode).
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")  # a revocation acknowledged is durable
        cur.close()

    return engine


class KeyStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._session = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str) -> KeyStore:
        """The store at `url`, its schema upgraded to the newest revision."""
        engine = make_engine(url)
        migrate.upgrade(engine)
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    def create(self, subject: str, tenant: str, scopes: Sequence[str]) -> tuple[KeyInfo, str]:
        """A new key (shown to the caller once) and what is stored about it.
        Raises InvalidValue for a bad subject, tenant or scope."""
        check_subject(subject)
        check_tenant(tenant)
        scopes = check_scopes(scopes)
        for _attempt in range(3):
            key_id = "".join(secrets.choice(_ALPHABET) for _ in range(KEY_ID_LENGTH))
            key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
            row = ApiKeyRow(
                key_id=key_id,
                sha256=_hash(key),
                subject=subject,
                tenant=tenant,
                scopes=" ".join(scopes),
                created=datetime.now(UTC),
                revoked=None,
            )
            try:
                with _reachable(), self._session.begin() as session:
                    session.add(row)
            except IntegrityError:
                continue  # the key id is taken (62^12 ids): draw again
            return KeyInfo.of(row), key
        raise RuntimeError("could not draw a free key id")

    def find(self, key: str) -> KeyInfo | None:
        """The valid key's info, or None for a malformed, unknown, wrong or revoked key."""
        m = _KEY.fullmatch(key)
        if m is None:
            return None
        with _reachable(), self._session() as session:
            row = session.get(ApiKeyRow, m["key_id"])
            info = KeyInfo.of(row) if row is not None else None
            stored = row.sha256 if row is not None else _NO_HASH
        if not hmac.compare_digest(_hash(key), stored) or info is None or info.revoked is not None:
            return None
        return info

    def get(self, key_id: str) -> KeyInfo | None:
        with _reachable(), self._session() as session:
            row = session.get(ApiKeyRow, key_id)
            return KeyInfo.of(row) if row is not None else None

    def revoke(self, key_id: str, tenants: Sequence[str] | None = None) -> KeyInfo | None:
        """Revokes the key (of one of `tenants`, when given); None when there is
        no such key. Revoking a revoked key keeps its first revocation time."""
        query = update(ApiKeyRow).where(ApiKeyRow.key_id == key_id, ApiKeyRow.revoked.is_(None))
        if tenants is not None:
            query = query.where(ApiKeyRow.tenant.in_(list(tenants)))
        with _reachable(), self._session.begin() as session:
            session.execute(query.values(revoked=datetime.now(UTC)))
        info = self.get(key_id)
        if info is None or (tenants is not None and info.tenant not in tenants):
            return None
        return info

    def list_keys(self, tenants: Sequence[str] | None = None) -> list[KeyInfo]:
        """Every key (of `tenants`, when given), oldest first."""
        query = select(ApiKeyRow).order_by(ApiKeyRow.created, ApiKeyRow.key_id)
        if tenants is not None:
            query = query.where(ApiKeyRow.tenant.in_(list(tenants)))
        with _reachable(), self._session() as session:
            return [KeyInfo.of(row) for row in session.scalars(query)]
