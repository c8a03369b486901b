"""Audit records in the outbox: a kind per event, so that the change feed
shows index changes only.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every event so far is an index change.
    op.add_column("events", sa.Column("kind", sa.String(16), nullable=False, server_default="instance"))
    op.create_index("ix_events_tenant_kind_sequence", "events", ["tenant", "kind", "sequence"])
    op.drop_index("ix_events_tenant_sequence", table_name="events")


def downgrade() -> None:
    # The previous code reads every event as an index change: audit records
    # leave the outbox (relayed or not).
    op.execute(sa.text("DELETE FROM events WHERE kind <> 'instance'"))
    op.create_index("ix_events_tenant_sequence", "events", ["tenant", "sequence"])
    op.drop_index("ix_events_tenant_kind_sequence", table_name="events")
    # Plain ALTER TABLE (SQLite >= 3.35), as in 0002.
    op.drop_column("events", "kind")
