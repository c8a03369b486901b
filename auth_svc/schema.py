"""Tables of the auth database. Only hashes of API keys are stored; the
key id is public (it is part of the key and names it in lists and logs).
Names carry an auth_ prefix so that the tables can share a PostgreSQL
database with other services'."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Index, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

KEY_ID_LENGTH = 12


class Base(DeclarativeBase):
    pass


class ApiKeyRow(Base):
    __tablename__ = "auth_api_keys"
    __table_args__ = (Index("ix_auth_api_keys_tenant", "tenant"),)

    key_id: Mapped[str] = mapped_column(String(KEY_ID_LENGTH), primary_key=True)
    # SHA-256 (hex) of the whole key: the key itself is shown once and never stored.
    sha256: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(128))
    tenant: Mapped[str] = mapped_column(String(63))
    # Space-separated, e.g. "read write".
    scopes: Mapped[str] = mapped_column(String(64))
    # UTC.
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
