"""An index for pruning old audit records from the outbox.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_events_kind_created", "events", ["kind", "created"])


def downgrade() -> None:
    op.drop_index("ix_events_kind_created", table_name="events")
