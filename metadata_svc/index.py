"""The data layer behind MetadataService: indexing with the outbox in one
transaction, lookups by UID, deletion, the change feed and queries."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, delete, func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from common import audit
from common.gen.dicomserver.v1 import dicom_pb2, events_pb2, metadata_service_pb2 as md_pb
from common.validation import InvalidValue, check_tenant, check_uid
from metadata_svc.db import Database
from metadata_svc.query import QueryEngine, QueryResult
from metadata_svc.schema import KIND_AUDIT, KIND_INSTANCE, EventRow, Instance, Patient, Series, SeriesMetadata, Study

log = logging.getLogger(__name__)

DEFAULT_FEED_LIMIT = 100
# Concurrent first-time inserts of the same study/series can collide on a
# unique key (PostgreSQL); the loser retries and then finds the rows.
_WRITE_ATTEMPTS = 3
# Bound parameters per IN list, well under SQLite's and PostgreSQL's limits.
_CHUNK = 500
_POLICIES = {
    md_pb.DUPLICATE_POLICY_OVERWRITE, md_pb.DUPLICATE_POLICY_KEEP_FIRST, md_pb.DUPLICATE_POLICY_REJECT,
}
T = TypeVar("T")
# PostgreSQL: writers take this transaction lock before their first outbox
# row, so sequences are handed out in commit order and a reader that has
# seen sequence N has seen every event before N (the relay and the embedded
# event log read by sequence). SQLite serializes writers anyway.
_OUTBOX_LOCK = 0x6F7574  # "out"
# The instance order of /metadata (series, then instances, by number then UID).
_SERIES_ORDER = (Series.series_number_int.nulls_last(), Series.series_instance_uid)
_INSTANCE_ORDER = (Instance.instance_number_int.nulls_last(), Instance.sop_instance_uid)


class NotFoundError(LookupError):
    """Nothing in the index matches the request."""


def _int_or_none(text: str) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        return None


def _validate_record(rec: md_pb.InstanceRecord) -> None:
    loc, ref = rec.location, rec.location.ref
    check_tenant(ref.tenant)
    check_uid(ref.study_instance_uid, "Study Instance UID")
    check_uid(ref.series_instance_uid, "Series Instance UID")
    check_uid(ref.sop_instance_uid, "SOP Instance UID")
    check_uid(loc.sop_class_uid, "SOP Class UID")
    check_uid(loc.transfer_syntax_uid, "Transfer Syntax UID")
    if not loc.object_key:
        raise InvalidValue("object_key is required")
    try:
        header = json.loads(rec.dicom_json)
    except (ValueError, UnicodeDecodeError):
        raise InvalidValue("dicom_json is not valid JSON") from None
    if not isinstance(header, dict):
        raise InvalidValue("dicom_json must be a DICOM JSON object")


def _scope(tenant: str, study: str, series: str, sop: str) -> list[ColumnElement[bool]]:
    """Conditions selecting instances of a study, a series or one instance."""
    check_tenant(tenant)
    conds = [Instance.tenant == tenant, Study.study_instance_uid == check_uid(study, "Study Instance UID")]
    if series:
        conds.append(Series.series_instance_uid == check_uid(series, "Series Instance UID"))
    if sop:
        conds.append(Instance.sop_instance_uid == check_uid(sop, "SOP Instance UID"))
    return conds


def _instances_in_scope(conds: list[ColumnElement[bool]]) -> Select[Any]:
    return (
        select(Instance, Series.series_instance_uid, Study.study_instance_uid)
        .join(Series, Instance.series_pk == Series.id)
        .join(Study, Instance.study_pk == Study.id)
        .where(*conds)
        .order_by(Series.series_number_int.nulls_last(), Series.series_instance_uid,
                  Instance.instance_number_int.nulls_last(), Instance.sop_instance_uid)
    )


def _location(inst: Instance, series_uid: str, study_uid: str) -> dicom_pb2.InstanceLocation:
    return dicom_pb2.InstanceLocation(
        ref=dicom_pb2.InstanceRef(
            tenant=inst.tenant, study_instance_uid=study_uid, series_instance_uid=series_uid,
            sop_instance_uid=inst.sop_instance_uid,
        ),
        object_key=inst.object_key,
        sop_class_uid=inst.sop_class_uid,
        transfer_syntax_uid=inst.transfer_syntax_uid,
        size=inst.size,
        number_of_frames=inst.number_of_frames,
    )


def _chunks(ids: Sequence[T]) -> list[Sequence[T]]:
    return [ids[i:i + _CHUNK] for i in range(0, len(ids), _CHUNK)]


class MetadataIndex:
    def __init__(self, db: Database, max_query_limit: int = 1000) -> None:
        self.db = db
        self.max_limit = max(1, max_query_limit)
        self._query = QueryEngine(self.max_limit)

    # --- writes -------------------------------------------------------------

    def index(self, records: Sequence[md_pb.InstanceRecord], policy: int) -> list[md_pb.IndexResult]:
        if policy == md_pb.DUPLICATE_POLICY_UNSPECIFIED:
            policy = md_pb.DUPLICATE_POLICY_OVERWRITE
        if policy not in _POLICIES:
            raise InvalidValue("unknown duplicate policy")
        for rec in records:
            _validate_record(rec)
        if not records:
            return []
        return self._write(lambda s: [_Indexer(s).index(rec, policy) for rec in records])

    def delete(self, tenant: str, study: str, series: str = "", sop: str = "") -> list[dicom_pb2.InstanceLocation]:
        conds = _scope(tenant, study, series, sop)
        return self._write(lambda s: _delete(s, tenant, conds))

    def record_audit(self, records: Sequence[events_pb2.AuditRecord]) -> None:
        """Appends audit records to the outbox in one transaction, each as an
        Event of the record's tenant ("" when none was known). Only the outbox
        readers see them: the change feed shows index changes only."""
        audit.check_batch(records)
        if not records:
            return
        now = datetime.now(timezone.utc)

        def append(session: Session) -> None:
            for rec in records:
                event = events_pb2.Event(tenant=rec.tenant, audit=rec)
                if not rec.HasField("time"):
                    event.audit.time.FromDatetime(now)
                _add_event(session, event, rec.study_instance_uid, now)

        self._write(append)

    def prune_audit(self, older_than: datetime) -> int:
        """Deletes audit records written to the outbox before `older_than`;
        returns how many. Index changes stay (the change feed keeps them all).
        The audit consumer keeps its own copy; a relay further behind than
        the retention would miss the pruned records."""
        def prune(session: Session) -> int:
            result = session.execute(
                delete(EventRow).where(EventRow.kind == KIND_AUDIT, EventRow.created < older_than))
            return int(getattr(result, "rowcount", 0) or 0)

        return self._write(prune)

    def _write(self, work: Callable[[Session], T]) -> T:
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            try:
                with self.db.writer() as session, session.begin():
                    return work(session)
            except IntegrityError:
                if attempt == _WRITE_ATTEMPTS:
                    raise
                log.info("index write conflicted with a concurrent one; retrying (%d)", attempt)
        raise AssertionError("unreachable")

    # --- reads --------------------------------------------------------------

    def query(self, request: md_pb.QueryRequest) -> QueryResult:
        with self.db.reader() as session, session.begin():
            return self._query.run(session, request)

    def locate(self, tenant: str, study: str, series: str = "", sop: str = "") -> list[dicom_pb2.InstanceLocation]:
        conds = _scope(tenant, study, series, sop)
        with self.db.reader() as session, session.begin():
            rows = session.execute(_instances_in_scope(conds)).all()
        if not rows:
            raise NotFoundError("no matching instances")
        return [_location(*row) for row in rows]

    def locate_each(self, tenant: str, sop_uids: Sequence[str]) -> list[dicom_pb2.InstanceLocation]:
        """The instances among `sop_uids` that exist, in any study."""
        check_tenant(tenant)
        uids = [check_uid(u, "SOP Instance UID") for u in sop_uids]
        found: list[dicom_pb2.InstanceLocation] = []
        with self.db.reader() as session, session.begin():
            for ids in _chunks(uids):
                conds = [Instance.tenant == tenant, Instance.sop_instance_uid.in_(ids)]
                found += [_location(*row) for row in session.execute(_instances_in_scope(conds)).all()]
        return found

    def get_metadata(self, tenant: str, study: str, series: str = "", sop: str = "") -> list[bytes]:
        """Headers of a study, series or instance in /metadata order; a series
        whose precomputed form is current is one row read."""
        conds = _scope(tenant, study, series, sop)
        if sop:
            return self._instance_headers(conds)
        scope = [Series.tenant == tenant, Study.study_instance_uid == study]
        if series:
            scope.append(Series.series_instance_uid == series)
        with self.db.reader() as session, session.begin():
            rows = session.execute(
                select(Series.id, SeriesMetadata.payload)
                .join(Study, Series.study_pk == Study.id)
                .outerjoin(SeriesMetadata, (SeriesMetadata.series_pk == Series.id)
                           & (SeriesMetadata.revision == Series.revision))
                .where(*scope)
                .order_by(*_SERIES_ORDER)
            ).all()
            stale = [pk for pk, payload in rows if payload is None]
            per_series: dict[int, list[bytes]] = {}
            if stale:
                stmt = (select(Instance.series_pk, Instance.dicom_json).where(Instance.series_pk.in_(stale))
                        .order_by(*_INSTANCE_ORDER))
                for pk, header in session.execute(stmt):
                    per_series.setdefault(pk, []).append(header)
        headers: list[bytes] = []
        for pk, payload in rows:
            if payload is None:
                headers += per_series.get(pk, [])
            else:
                headers += md_pb.GetMetadataResponse.FromString(payload).instances
        if not headers:
            raise NotFoundError("no matching instances")
        return headers

    def _instance_headers(self, conds: list[ColumnElement[bool]]) -> list[bytes]:
        stmt = (
            select(Instance.dicom_json)
            .join(Series, Instance.series_pk == Series.id)
            .join(Study, Instance.study_pk == Study.id)
            .where(*conds)
            .order_by(Series.series_number_int.nulls_last(), Series.series_instance_uid,
                      Instance.instance_number_int.nulls_last(), Instance.sop_instance_uid)
        )
        with self.db.reader() as session, session.begin():
            headers = list(session.scalars(stmt))
        if not headers:
            raise NotFoundError("no matching instances")
        return headers

    def refresh_metadata(self, tenant: str, study: str, series: str = "") -> int:
        """Precomputes /metadata of a series, or of every series of a study,
        from the index. Idempotent: a series that no longer exists is
        skipped, and a newer precomputed revision is never overwritten."""
        check_tenant(tenant)
        check_uid(study, "Study Instance UID")
        scope = [Series.tenant == tenant, Study.study_instance_uid == study]
        if series:
            scope.append(Series.series_instance_uid == check_uid(series, "Series Instance UID"))
        with self.db.reader() as session, session.begin():
            # Revisions first: instances read after them are at least as new,
            # so a stored revision never claims a state older than its payload.
            revisions = dict(session.execute(
                select(Series.id, Series.revision).join(Study, Series.study_pk == Study.id).where(*scope)
            ).all())
            done = dict(session.execute(
                select(SeriesMetadata.series_pk, SeriesMetadata.revision)
                .where(SeriesMetadata.series_pk.in_(list(revisions)))
            ).all()) if revisions else {}
            todo = [pk for pk, rev in revisions.items() if done.get(pk) != rev]
            payloads: dict[int, list[bytes]] = {pk: [] for pk in todo}
            if todo:
                stmt = (select(Instance.series_pk, Instance.dicom_json).where(Instance.series_pk.in_(todo))
                        .order_by(*_INSTANCE_ORDER))
                for pk, header in session.execute(stmt):
                    payloads[pk].append(header)
        if not todo:
            return 0
        rows = [{"series_pk": pk, "revision": revisions[pk],
                 "payload": md_pb.GetMetadataResponse(instances=payloads[pk]).SerializeToString()}
                for pk in todo if payloads[pk]]
        if rows:
            self._write(lambda s: _upsert_series_metadata(s, rows))
        return len(rows)

    def read_outbox(self, after_sequence: int, limit: int) -> tuple[list[events_pb2.Event], int]:
        """Events of every tenant after a sequence, in order: what the relay
        publishes and what embedded-log consumers read."""
        limit = DEFAULT_FEED_LIMIT if limit <= 0 else min(limit, self.max_limit)
        with self.db.reader() as session, session.begin():
            rows = session.scalars(
                select(EventRow).where(EventRow.sequence > after_sequence).order_by(EventRow.sequence).limit(limit)
            ).all()
            latest = session.scalar(select(func.max(EventRow.sequence))) or 0
        return [_event_from_row(row) for row in rows], max(latest, rows[-1].sequence if rows else 0)

    def read_change_feed(self, tenant: str, after_sequence: int, limit: int) -> tuple[list[events_pb2.Event], int]:
        """The tenant's index changes after a position, in order, and the
        newest position. Positions are the tenant's own count of changes
        (feed_sequence), never the outbox's global sequence; audit records
        are not changes."""
        check_tenant(tenant)
        limit = DEFAULT_FEED_LIMIT if limit <= 0 else min(limit, self.max_limit)
        with self.db.reader() as session, session.begin():
            rows = session.scalars(
                select(EventRow)
                .where(EventRow.tenant == tenant, EventRow.feed_sequence > after_sequence)
                .order_by(EventRow.feed_sequence)
                .limit(limit)
            ).all()
            latest = session.scalar(select(func.max(EventRow.feed_sequence)).where(EventRow.tenant == tenant)) or 0
        events = []
        for row in rows:
            event = _event_from_row(row)
            event.sequence = row.feed_sequence or 0
            events.append(event)
        return events, max(latest, events[-1].sequence if events else 0)


def _event_from_row(row: EventRow) -> events_pb2.Event:
    event = events_pb2.Event.FromString(row.payload)
    event.sequence = row.sequence
    created = row.created if row.created.tzinfo else row.created.replace(tzinfo=timezone.utc)  # SQLite drops tz
    event.time.FromDatetime(created)
    return event


def _upsert_series_metadata(session: Session, rows: list[dict[str, Any]]) -> None:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    for row in rows:
        stmt = insert(SeriesMetadata).values(**row)
        excluded = stmt.excluded
        session.execute(stmt.on_conflict_do_update(
            index_elements=[SeriesMetadata.series_pk],
            set_={"revision": excluded.revision, "payload": excluded.payload},
            where=SeriesMetadata.revision < excluded.revision,
        ))


def _bump_revisions(session: Session, series_pks: Sequence[int]) -> None:
    for chunk in _chunks(list(series_pks)):
        session.execute(update(Series).where(Series.id.in_(chunk)).values(revision=Series.revision + 1)
                        .execution_options(synchronize_session=False))


def _add_event(session: Session, event: events_pb2.Event, study_uid: str, now: datetime) -> None:
    if not session.info.get("outbox_locked") and session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _OUTBOX_LOCK})
        session.info["outbox_locked"] = True
    if event.HasField("audit"):
        session.add(EventRow(tenant=event.tenant, kind=KIND_AUDIT, study_instance_uid=study_uid, created=now,
                             payload=event.SerializeToString()))
        return
    # Writers are serialized (the outbox lock; SQLite has one writer), so the
    # tenant's next feed number is its newest one plus one.
    feeds: dict[str, int] = session.info.setdefault("feed_sequences", {})
    if event.tenant not in feeds:
        feeds[event.tenant] = session.scalar(
            select(func.max(EventRow.feed_sequence)).where(EventRow.tenant == event.tenant)) or 0
    feeds[event.tenant] += 1
    session.add(EventRow(tenant=event.tenant, kind=KIND_INSTANCE, feed_sequence=feeds[event.tenant],
                         study_instance_uid=study_uid, created=now, payload=event.SerializeToString()))


class _Indexer:
    """Indexes records inside one open write transaction."""

    def __init__(self, session: Session) -> None:
        self.s = session
        self.now = datetime.now(timezone.utc)

    def index(self, rec: md_pb.InstanceRecord, policy: int) -> md_pb.IndexResult:
        ref = rec.location.ref
        existing = self.s.scalars(
            select(Instance).where(Instance.tenant == ref.tenant, Instance.sop_instance_uid == ref.sop_instance_uid)
        ).one_or_none()
        new_key = rec.location.object_key
        if existing is not None and policy != md_pb.DUPLICATE_POLICY_OVERWRITE:
            outcome = (md_pb.INDEX_OUTCOME_KEPT_EXISTING if policy == md_pb.DUPLICATE_POLICY_KEEP_FIRST
                       else md_pb.INDEX_OUTCOME_REJECTED_DUPLICATE)
            # A retried call may carry the key the index already holds: never hand it out.
            return md_pb.IndexResult(outcome=outcome, unreferenced_object_key="" if existing.object_key == new_key
                                     else new_key)
        study = self._study(rec)
        series = self._series(rec, study)
        if existing is None:
            inst = Instance(tenant=ref.tenant, sop_instance_uid=ref.sop_instance_uid)
            self.s.add(inst)
            old_key, old_series, old_study = "", None, None
        else:
            inst = existing
            old_key, old_series, old_study = existing.object_key, existing.series_pk, existing.study_pk
        self._fill_instance(inst, rec, series, study)
        self.s.flush()
        # In SQL, not read-modify-write: concurrent writers never share a revision.
        _bump_revisions(self.s, [series.id] if old_series in (None, series.id) else [series.id, old_series])
        if old_series is not None and old_series != series.id:
            _prune(self.s, [old_series], [old_study] if old_study is not None else [])
        _add_event(self.s, events_pb2.Event(
            tenant=ref.tenant,
            instance_stored=events_pb2.InstanceStored(location=rec.location, replaced=existing is not None),
        ), ref.study_instance_uid, self.now)
        if existing is None:
            return md_pb.IndexResult(outcome=md_pb.INDEX_OUTCOME_CREATED)
        return md_pb.IndexResult(outcome=md_pb.INDEX_OUTCOME_REPLACED,
                                 unreferenced_object_key="" if old_key == new_key else old_key)

    def _patient(self, rec: md_pb.InstanceRecord, study: Study | None) -> Patient:
        tenant, p = rec.location.ref.tenant, rec.patient
        patient: Patient | None
        if p.patient_id:
            patient = self.s.scalars(select(Patient).where(
                Patient.tenant == tenant, Patient.patient_id == p.patient_id,
                Patient.issuer_of_patient_id == p.issuer_of_patient_id,
            )).one_or_none()
        else:
            # No Patient ID: the study's own anonymous patient, never a shared one.
            patient = None
            if study is not None:
                current = self.s.get(Patient, study.patient_pk)
                if current is not None and current.patient_id is None:
                    patient = current
        if patient is None:
            patient = Patient(tenant=tenant, patient_id=p.patient_id or None,
                              issuer_of_patient_id=p.issuer_of_patient_id)
            self.s.add(patient)
        patient.patient_name = p.patient_name
        patient.patient_name_lower = p.patient_name.lower()
        patient.patient_birth_date = p.patient_birth_date
        patient.patient_sex = p.patient_sex
        self.s.flush()
        return patient

    def _study(self, rec: md_pb.InstanceRecord) -> Study:
        ref, a = rec.location.ref, rec.study
        study = self.s.scalars(select(Study).where(
            Study.tenant == ref.tenant, Study.study_instance_uid == ref.study_instance_uid
        )).one_or_none()
        patient = self._patient(rec, study)
        if study is None:
            study = Study(tenant=ref.tenant, study_instance_uid=ref.study_instance_uid, patient_pk=patient.id)
            self.s.add(study)
        elif study.patient_pk != patient.id:
            # The newest instance names another patient (e.g. a reconciliation): move the study.
            old_patient = study.patient_pk
            study.patient_pk = patient.id
            self.s.flush()
            _prune_patients(self.s, [old_patient])
        study.study_date = a.study_date
        study.study_time = a.study_time
        study.accession_number = a.accession_number
        study.study_id = a.study_id
        study.study_description = a.study_description
        study.referring_physician_name = a.referring_physician_name
        study.referring_physician_name_lower = a.referring_physician_name.lower()
        self.s.flush()
        return study

    def _series(self, rec: md_pb.InstanceRecord, study: Study) -> Series:
        ref, a = rec.location.ref, rec.series
        series = self.s.scalars(select(Series).where(
            Series.tenant == ref.tenant, Series.series_instance_uid == ref.series_instance_uid
        )).one_or_none()
        if series is None:
            series = Series(tenant=ref.tenant, series_instance_uid=ref.series_instance_uid, study_pk=study.id)
            self.s.add(series)
        elif series.study_pk != study.id:
            raise InvalidValue("Series Instance UID already belongs to a different study")
        series.modality = a.modality
        series.series_number = a.series_number
        series.series_number_int = _int_or_none(a.series_number)
        series.series_description = a.series_description
        series.series_date = a.series_date
        series.series_time = a.series_time
        series.body_part_examined = a.body_part_examined
        self.s.flush()
        return series

    def _fill_instance(self, inst: Instance, rec: md_pb.InstanceRecord, series: Series, study: Study) -> None:
        loc, a = rec.location, rec.instance
        inst.series_pk = series.id
        inst.study_pk = study.id
        inst.sop_class_uid = loc.sop_class_uid
        inst.transfer_syntax_uid = loc.transfer_syntax_uid
        inst.object_key = loc.object_key
        inst.size = loc.size
        inst.number_of_frames = loc.number_of_frames
        inst.instance_number = a.instance_number
        inst.instance_number_int = _int_or_none(a.instance_number)
        inst.rows = a.rows
        inst.columns = a.columns
        inst.content_date = a.content_date
        inst.content_time = a.content_time
        inst.specific_character_set = rec.specific_character_set
        inst.updated = self.now
        inst.dicom_json = rec.dicom_json


def _delete(session: Session, tenant: str, conds: list[ColumnElement[bool]]) -> list[dicom_pb2.InstanceLocation]:
    rows = session.execute(_instances_in_scope(conds)).all()
    if not rows:
        raise NotFoundError("no matching instances")
    now = datetime.now(timezone.utc)
    removed = [_location(*row) for row in rows]
    ids = [inst.id for inst, _, _ in rows]
    series_pks = sorted({inst.series_pk for inst, _, _ in rows})
    study_pks = sorted({inst.study_pk for inst, _, _ in rows})
    session.expunge_all()  # rows go by bulk DELETE; keep stale objects out of the session
    for chunk in _chunks(ids):
        session.execute(delete(Instance).where(Instance.id.in_(chunk)))
    _bump_revisions(session, series_pks)
    _prune(session, series_pks, study_pks)
    for loc in removed:
        _add_event(session, events_pb2.Event(
            tenant=tenant, instance_deleted=events_pb2.InstanceDeleted(location=loc),
        ), loc.ref.study_instance_uid, now)
    return removed


def _prune(session: Session, series_pks: Sequence[int], study_pks: Sequence[int]) -> None:
    """Deletes series, studies and patients left without children."""
    for chunk in _chunks(list(series_pks)):
        session.execute(delete(Series).where(
            Series.id.in_(chunk), ~select(Instance.id).where(Instance.series_pk == Series.id).exists()
        ))
    patient_pks: set[int] = set()
    for chunk in _chunks(list(study_pks)):
        patient_pks.update(session.scalars(select(Study.patient_pk).where(Study.id.in_(chunk))))
        session.execute(delete(Study).where(
            Study.id.in_(chunk), ~select(Series.id).where(Series.study_pk == Study.id).exists()
        ))
    _prune_patients(session, sorted(patient_pks))


def _prune_patients(session: Session, patient_pks: Sequence[int]) -> None:
    for chunk in _chunks(list(patient_pks)):
        session.execute(delete(Patient).where(
            Patient.id.in_(chunk), ~select(Study.id).where(Study.patient_pk == Patient.id).exists()
        ))
