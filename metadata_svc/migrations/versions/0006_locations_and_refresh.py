"""Pixel layouts in locations, an index for ReferencedObjects (storage's
sweep), and what lets a metadata refresh re-read only changed headers: the
series revision each instance was written with and the SOP Instance UIDs
of each precomputed payload.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing rows: no layout (locations without the field), revision 0
    # (not newer than any precomputed payload), no members (the next
    # refresh of their series reads every header once).
    op.add_column("instances", sa.Column("pixel_layout", sa.LargeBinary(), nullable=True))
    op.add_column("instances", sa.Column("revision", sa.Integer(), nullable=False, server_default="0"))
    op.create_index("ix_instances_object_key", "instances", ["object_key"])
    op.add_column("series_metadata", sa.Column("members", sa.Text(), nullable=True))


def downgrade() -> None:
    # Plain ALTER TABLE (SQLite >= 3.35), as in 0002.
    op.drop_column("series_metadata", "members")
    op.drop_index("ix_instances_object_key", table_name="instances")
    op.drop_column("instances", "revision")
    op.drop_column("instances", "pixel_layout")
