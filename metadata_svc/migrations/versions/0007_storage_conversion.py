"""The compression policy: the transfer syntax and size an instance was
received in, kept when its stored object is replaced by a conversion.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing rows were never converted: "" and 0.
    op.add_column(
        "instances", sa.Column("original_transfer_syntax_uid", sa.String(64), nullable=False, server_default="")
    )
    op.add_column("instances", sa.Column("original_size", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    op.drop_column("instances", "original_size")
    op.drop_column("instances", "original_transfer_syntax_uid")
