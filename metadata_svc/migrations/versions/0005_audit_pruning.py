"""An index for pruning old audit records from the outbox; the (tenant,
kind, sequence) index goes, as nothing reads by it since 0004 and every
audit record paid for it.

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
    op.drop_index("ix_events_tenant_kind_sequence", table_name="events")


def downgrade() -> None:
    op.create_index("ix_events_tenant_kind_sequence", "events", ["tenant", "kind", "sequence"])
    op.drop_index("ix_events_kind_created", table_name="events")
