"""The first index: patients, studies, series, instances and the outbox.

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

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UID = sa.String(64)
TENANT = sa.String(63)


def _text(name: str) -> sa.Column[str]:
    return sa.Column(name, sa.Text(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "patients",
        sa.Column("id", PK, primary_key=True, autoincrement=True),
        sa.Column("tenant", TENANT, nullable=False),
        sa.Column("patient_id", sa.Text(), nullable=True),
        *(
            _text(n)
            for n in ("issuer_of_patient_id", "patient_name", "patient_name_lower", "patient_birth_date", "patient_sex")
        ),
        sa.UniqueConstraint("tenant", "patient_id", "issuer_of_patient_id", name="uq_patients_key"),
    )
    op.create_index("ix_patients_name", "patients", ["tenant", "patient_name_lower"])
    op.create_table(
        "studies",
        sa.Column("id", PK, primary_key=True, autoincrement=True),
        sa.Column("tenant", TENANT, nullable=False),
        sa.Column("patient_pk", PK, sa.ForeignKey("patients.id"), nullable=False),
        sa.Column("study_instance_uid", UID, nullable=False),
        *(
            _text(n)
            for n in (
                "study_date",
                "study_time",
                "accession_number",
                "study_id",
                "study_description",
                "referring_physician_name",
                "referring_physician_name_lower",
            )
        ),
        sa.UniqueConstraint("tenant", "study_instance_uid", name="uq_studies_uid"),
    )
    op.create_index("ix_studies_patient_pk", "studies", ["patient_pk"])
    op.create_index("ix_studies_date", "studies", ["tenant", "study_date", "study_time"])
    op.create_index("ix_studies_accession", "studies", ["tenant", "accession_number"])
    op.create_index("ix_studies_referring", "studies", ["tenant", "referring_physician_name_lower"])
    op.create_table(
        "series",
        sa.Column("id", PK, primary_key=True, autoincrement=True),
        sa.Column("tenant", TENANT, nullable=False),
        sa.Column("study_pk", PK, sa.ForeignKey("studies.id"), nullable=False),
        sa.Column("series_instance_uid", UID, nullable=False),
        _text("modality"),
        _text("series_number"),
        sa.Column("series_number_int", sa.BigInteger(), nullable=True),
        *(_text(n) for n in ("series_description", "series_date", "series_time", "body_part_examined")),
        sa.UniqueConstraint("tenant", "series_instance_uid", name="uq_series_uid"),
    )
    op.create_index("ix_series_study_pk", "series", ["study_pk"])
    op.create_index("ix_series_modality", "series", ["tenant", "modality"])
    op.create_table(
        "instances",
        sa.Column("id", PK, primary_key=True, autoincrement=True),
        sa.Column("tenant", TENANT, nullable=False),
        sa.Column("series_pk", PK, sa.ForeignKey("series.id"), nullable=False),
        sa.Column("study_pk", PK, sa.ForeignKey("studies.id"), nullable=False),
        sa.Column("sop_instance_uid", UID, nullable=False),
        sa.Column("sop_class_uid", UID, nullable=False),
        sa.Column("transfer_syntax_uid", UID, nullable=False),
        _text("object_key"),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("number_of_frames", sa.Integer(), nullable=False),
        _text("instance_number"),
        sa.Column("instance_number_int", sa.BigInteger(), nullable=True),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("columns", sa.Integer(), nullable=False),
        _text("content_date"),
        _text("content_time"),
        _text("specific_character_set"),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("dicom_json", sa.LargeBinary(), nullable=True),
        sa.UniqueConstraint("tenant", "sop_instance_uid", name="uq_instances_uid"),
    )
    op.create_index("ix_instances_study_pk", "instances", ["study_pk"])
    op.create_index("ix_instances_series_pk", "instances", ["series_pk"])
    op.create_table(
        "events",
        sa.Column("sequence", PK, primary_key=True, autoincrement=True),
        sa.Column("tenant", TENANT, nullable=False),
        sa.Column("study_instance_uid", UID, nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_events_tenant_sequence", "events", ["tenant", "sequence"])


def downgrade() -> None:
    for table in ("events", "instances", "series", "studies", "patients"):
        op.drop_table(table)
