"""Alembic environment: runs on the connection metadata_svc.migrate hands in
(no alembic.ini, no URL of its own)."""

from __future__ import annotations

from alembic import context

from metadata_svc.schema import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata)
with context.begin_transaction():
    context.run_migrations()
