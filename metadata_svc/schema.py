"""Tables of the index. Normalised per level and always scoped by tenant;
portable between SQLite and PostgreSQL (no dialect-specific SQL)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, deferred, mapped_column

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets BIGINT.
PK = BigInteger().with_variant(Integer(), "sqlite")
# UIDs are validated (digits and dots, at most 64) before use; free text is
# Text because real-world values often exceed their VR length.
UID = String(64)
TENANT = String(63)


class Base(DeclarativeBase):
    pass


def _prefix_indexes(table: str, *specs: tuple[str, str]) -> list[Index]:
    """PostgreSQL only: (tenant, column text_pattern_ops), so LIKE 'prefix%'
    uses an index whatever the collation. Migration 0002 creates them."""
    return [
        Index(name, "tenant", column, postgresql_ops={column: "text_pattern_ops"}).ddl_if(dialect="postgresql")
        for name, column in specs
    ]


class Patient(Base):
    __tablename__ = "patients"
    # patient_id is NULL when the instance carries none: NULLs never collide in
    # a unique constraint, so anonymous studies do not merge into one patient.
    __table_args__ = (
        UniqueConstraint("tenant", "patient_id", "issuer_of_patient_id", name="uq_patients_key"),
        Index("ix_patients_name", "tenant", "patient_name_lower"),
        *_prefix_indexes(
            "patients", ("ix_patients_name_prefix", "patient_name_lower"), ("ix_patients_id_prefix", "patient_id")
        ),
    )

    id: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(TENANT)
    patient_id: Mapped[str | None] = mapped_column(Text())
    issuer_of_patient_id: Mapped[str] = mapped_column(Text(), default="")
    patient_name: Mapped[str] = mapped_column(Text(), default="")
    # Lower-cased in Python: SQL lower() is ASCII-only on SQLite.
    patient_name_lower: Mapped[str] = mapped_column(Text(), default="")
    patient_birth_date: Mapped[str] = mapped_column(Text(), default="")
    patient_sex: Mapped[str] = mapped_column(Text(), default="")


class Study(Base):
    __tablename__ = "studies"
    __table_args__ = (
        UniqueConstraint("tenant", "study_instance_uid", name="uq_studies_uid"),
        Index("ix_studies_date", "tenant", "study_date", "study_time"),
        Index("ix_studies_accession", "tenant", "accession_number"),
        Index("ix_studies_referring", "tenant", "referring_physician_name_lower"),
        *_prefix_indexes(
            "studies",
            ("ix_studies_accession_prefix", "accession_number"),
            ("ix_studies_referring_prefix", "referring_physician_name_lower"),
        ),
    )

    id: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(TENANT)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(UID)
    study_date: Mapped[str] = mapped_column(Text(), default="")
    study_time: Mapped[str] = mapped_column(Text(), default="")
    accession_number: Mapped[str] = mapped_column(Text(), default="")
    study_id: Mapped[str] = mapped_column(Text(), default="")
    study_description: Mapped[str] = mapped_column(Text(), default="")
    referring_physician_name: Mapped[str] = mapped_column(Text(), default="")
    referring_physician_name_lower: Mapped[str] = mapped_column(Text(), default="")


class Series(Base):
    __tablename__ = "series"
    __table_args__ = (
        UniqueConstraint("tenant", "series_instance_uid", name="uq_series_uid"),
        Index("ix_series_modality", "tenant", "modality"),
    )

    id: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(TENANT)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    modality: Mapped[str] = mapped_column(Text(), default="")
    series_number: Mapped[str] = mapped_column(Text(), default="")
    # Numeric copy for ordering; NULL when the IS value is absent or malformed.
    series_number_int: Mapped[int | None] = mapped_column(BigInteger)
    series_description: Mapped[str] = mapped_column(Text(), default="")
    series_date: Mapped[str] = mapped_column(Text(), default="")
    series_time: Mapped[str] = mapped_column(Text(), default="")
    body_part_examined: Mapped[str] = mapped_column(Text(), default="")
    # Bumped by every index change of the series, in the same transaction:
    # precomputed metadata is current only while it carries this revision.
    revision: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Instance(Base):
    __tablename__ = "instances"
    __table_args__ = (
        UniqueConstraint("tenant", "sop_instance_uid", name="uq_instances_uid"),
        # ReferencedObjects: storage's sweep asks which keys rows point to.
        Index("ix_instances_object_key", "object_key"),
    )

    id: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(TENANT)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    # Denormalised so study-level counts need no join through series.
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    sop_class_uid: Mapped[str] = mapped_column(UID, default="")
    transfer_syntax_uid: Mapped[str] = mapped_column(UID, default="")
    object_key: Mapped[str] = mapped_column(Text())
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    number_of_frames: Mapped[int] = mapped_column(Integer, default=0)
    instance_number: Mapped[str] = mapped_column(Text(), default="")
    instance_number_int: Mapped[int | None] = mapped_column(BigInteger)
    rows: Mapped[int] = mapped_column(Integer, default=0)
    columns: Mapped[int] = mapped_column(Integer, default=0)
    content_date: Mapped[str] = mapped_column(Text(), default="")
    content_time: Mapped[str] = mapped_column(Text(), default="")
    specific_character_set: Mapped[str] = mapped_column(Text(), default="")
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Deferred: queries load it only when include fields need it.
    dicom_json: Mapped[bytes] = deferred(mapped_column(LargeBinary))
    # A serialized dicom_pb2.PixelLayout, NULL when the record had none (and
    # for every object indexed before 0006). Read only where a location is returned.
    pixel_layout: Mapped[bytes | None] = deferred(mapped_column(LargeBinary, nullable=True))
    # The series' revision this row was written with (0 before 0006): a
    # metadata refresh re-reads only headers newer than what it precomputed.
    revision: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The compression policy: set when the stored object was replaced by a
    # (lossless) conversion after it was received; "" and 0 otherwise.
    original_transfer_syntax_uid: Mapped[str] = mapped_column(UID, default="", server_default="")
    original_size: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class SeriesMetadata(Base):
    """/metadata of a series, precomputed by the metadata consumer: a
    serialized GetMetadataResponse, served while `revision` equals the
    series' own (otherwise the per-instance headers are read)."""

    __tablename__ = "series_metadata"

    series_pk: Mapped[int] = mapped_column(
        ForeignKey("series.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    revision: Mapped[int] = mapped_column(Integer)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    # The SOP Instance UIDs of the payload's headers, in its order, one per
    # line: what lets a refresh keep the headers that did not change. NULL
    # in rows written before 0006 (their next refresh reads every header).
    members: Mapped[str | None] = mapped_column(Text(), nullable=True)


# Kinds of outbox rows: index changes (the change feed) and audit records
# (RecordAudit; only the outbox readers see them).
KIND_INSTANCE = "instance"
KIND_AUDIT = "audit"


class EventRow(Base):
    """The outbox: written in the same transaction as the index change, or
    by RecordAudit (kind "audit", tenant "" when none was known)."""

    __tablename__ = "events"
    # AUTOINCREMENT on SQLite: sequences are never reused, even after deletes.
    # The index serves the change feed: one tenant's instance events in order.
    __table_args__ = (
        Index("ux_events_tenant_feed_sequence", "tenant", "feed_sequence", unique=True),
        # Pruning old audit records.
        Index("ix_events_kind_created", "kind", "created"),
        {"sqlite_autoincrement": True},
    )

    sequence: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(TENANT)
    kind: Mapped[str] = mapped_column(String(16), default=KIND_INSTANCE, server_default=KIND_INSTANCE)
    # The tenant's own count of index changes (1, 2, 3, ...): the change
    # feed's sequence, so that it does not reveal how much other tenants
    # changed meanwhile. Null for audit records.
    feed_sequence: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    study_instance_uid: Mapped[str] = mapped_column(UID)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # A serialized events_pb2.Event; sequence and time are filled on read.
    payload: Mapped[bytes] = mapped_column(LargeBinary)
