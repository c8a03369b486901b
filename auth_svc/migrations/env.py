"""Alembic environment: runs on the connection auth_svc.migrate hands in (no
alembic.ini, no URL of its own). The version table is auth_svc's own, so the
auth tables may share a database with another service's."""

from __future__ import annotations

from alembic import context

from auth_svc.migrate import VERSION_TABLE
from auth_svc.schema import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
