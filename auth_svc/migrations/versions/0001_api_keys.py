"""API keys, stored as SHA-256 hashes, each scoped to one tenant.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "auth_api_keys",
        sa.Column("key_id", sa.String(12), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(128), nullable=False),
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("scopes", sa.String(64), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_auth_api_keys_tenant", "auth_api_keys", ["tenant"])


def downgrade() -> None:
    op.drop_index("ix_auth_api_keys_tenant", table_name="auth_api_keys")
    op.drop_table("auth_api_keys")
