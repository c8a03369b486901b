"""Scale-out: series revisions and precomputed series metadata; prefix
indexes for wildcard matching on PostgreSQL.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# (name, table, columns): btree indexes LIKE 'prefix%' can use whatever the
# database's collation is (text_pattern_ops); SQLite's plain indexes already can.
PREFIX_INDEXES = [
    ("ix_patients_name_prefix", "patients", ["tenant", "patient_name_lower"]),
    ("ix_patients_id_prefix", "patients", ["tenant", "patient_id"]),
    ("ix_studies_accession_prefix", "studies", ["tenant", "accession_number"]),
    ("ix_studies_referring_prefix", "studies", ["tenant", "referring_physician_name_lower"]),
]


def upgrade() -> None:
    op.add_column("series", sa.Column("revision", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "series_metadata",
        sa.Column(
            "series_pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.ForeignKey("series.id", ondelete="CASCADE"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":
        for name, table, columns in PREFIX_INDEXES:
            op.create_index(name, table, columns, postgresql_ops={columns[-1]: "text_pattern_ops"})


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name, table, _ in PREFIX_INDEXES:
            op.drop_index(name, table_name=table)
    op.drop_table("series_metadata")
    # Plain ALTER TABLE (SQLite >= 3.35): a batch copy of the table would
    # trip the foreign keys that point at it.
    op.drop_column("series", "revision")
