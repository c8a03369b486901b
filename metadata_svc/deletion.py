"""DeleteInstances, and pruning: the series, studies and patients that an
index change left without children go, in the same transaction."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, Connection, delete, select

from common.gen.dicomserver.v1 import dicom_pb2, events_pb2
from metadata_svc import outbox
from metadata_svc.db import chunks
from metadata_svc.errors import NotFoundError
from metadata_svc.headers import bump_revisions
from metadata_svc.locations import instances_in_scope, location
from metadata_svc.schema import Instance, Patient, Series, Study


def delete_instances(
    conn: Connection, tenant: str, conds: list[ColumnElement[bool]]
) -> list[dicom_pb2.InstanceLocation]:
    """Deletes the instances matching `conds` (locations.scope()); returns
    their locations, each also an InstanceDeleted event."""
    outbox.lock(conn)
    rows = conn.execute(instances_in_scope(conds)).all()
    if not rows:
        raise NotFoundError("no matching instances")
    now = datetime.now(UTC)
    removed = [location(row) for row in rows]
    for chunk in chunks([row.id for row in rows]):
        conn.execute(delete(Instance).where(Instance.id.in_(chunk)))
    series_pks = {row.series_pk for row in rows}
    _, newest_feed = bump_revisions(conn, list(series_pks))
    prune(conn, series_pks, {row.study_pk for row in rows})
    outbox.append_changes(
        conn,
        [
            (
                events_pb2.Event(tenant=tenant, instance_deleted=events_pb2.InstanceDeleted(location=loc)),
                loc.ref.study_instance_uid,
            )
            for loc in removed
        ],
        now,
        newest_feed,
    )
    return removed


def prune(
    conn: Connection, series_pks: Iterable[int], study_pks: Iterable[int], patient_pks: Iterable[int] = ()
) -> None:
    """Deletes those of these series, studies and patients (and the patients
    of these studies) left without children."""
    for chunk in chunks(sorted(series_pks)):
        conn.execute(
            delete(Series).where(
                Series.id.in_(chunk), ~select(Instance.id).where(Instance.series_pk == Series.id).exists()
            )
        )
    patients = set(patient_pks)
    for chunk in chunks(sorted(study_pks)):
        patients.update(conn.scalars(select(Study.patient_pk).where(Study.id.in_(chunk))))
        conn.execute(
            delete(Study).where(Study.id.in_(chunk), ~select(Series.id).where(Series.study_pk == Study.id).exists())
        )
    for chunk in chunks(sorted(patients)):
        conn.execute(
            delete(Patient).where(
                Patient.id.in_(chunk), ~select(Study.id).where(Study.patient_pk == Patient.id).exists()
            )
        )
