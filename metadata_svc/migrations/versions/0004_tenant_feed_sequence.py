"""Per-tenant change feed positions: each tenant's index changes are numbered
1, 2, 3, ... so that its change feed does not reveal how many changes other
tenants made (the global outbox sequence did).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("events", sa.Column("feed_sequence", sa.BigInteger(), nullable=True))
    # Existing changes get their numbers in outbox order (window functions:
    # SQLite >= 3.25, PostgreSQL).
    op.execute(sa.text(
        "UPDATE events SET feed_sequence = ("
        " SELECT n FROM (SELECT sequence AS s, ROW_NUMBER() OVER (PARTITION BY tenant ORDER BY sequence) AS n"
        " FROM events WHERE kind = 'instance') AS numbered WHERE numbered.s = events.sequence)"
        " WHERE kind = 'instance'"
    ))
    op.create_index("ux_events_tenant_feed_sequence", "events", ["tenant", "feed_sequence"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_events_tenant_feed_sequence", table_name="events")
    op.drop_column("events", "feed_sequence")
