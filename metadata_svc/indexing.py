"""IndexInstances: a batch of records written in one transaction with
set-based statements.

The records are applied in order to a picture of the rows they touch, read
with multi-row SELECTs (instances by SOP Instance UID; studies with their
patients and series; then only what those did not find), so that a batch
ends as the same calls made one after another would: later records win,
duplicate policies see the batch's earlier records, a study follows its
newest Patient ID, an instance follows its newest series. Then the picture
is written: per table one INSERT of the new rows and one executemany UPDATE
of the changed ones, one UPDATE of the touched series' revisions, pruning
of what the batch emptied, and one INSERT of the outbox rows."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BindParameter, Column, Connection, Row, bindparam, insert, select, update

from common.gen.dicomserver.v1 import events_pb2
from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from common.validation import InvalidValue, check_tenant, check_uid
from metadata_svc import outbox
from metadata_svc.db import CHUNK, chunks
from metadata_svc.deletion import prune
from metadata_svc.headers import bump_revisions
from metadata_svc.schema import Instance, Patient, Series, Study

OVERWRITE = md_pb.DUPLICATE_POLICY_OVERWRITE
_POLICIES = {OVERWRITE, md_pb.DUPLICATE_POLICY_KEEP_FIRST, md_pb.DUPLICATE_POLICY_REJECT}
# The columns a newer record rewrites, per level (identity columns aside).
_PATIENT_COLUMNS = ("patient_name", "patient_name_lower", "patient_birth_date", "patient_sex")
_STUDY_COLUMNS = (
    "patient_pk",
    "study_date",
    "study_time",
    "accession_number",
    "study_id",
    "study_description",
    "referring_physician_name",
    "referring_physician_name_lower",
)
_SERIES_COLUMNS = (
    "study_pk",
    "modality",
    "series_number",
    "series_number_int",
    "series_description",
    "series_date",
    "series_time",
    "body_part_examined",
)
_PATIENT_KEY = ("tenant", "patient_id", "issuer_of_patient_id")


def _columns(model: Any, names: Iterable[str]) -> list[Column[Any]]:
    return [model.__table__.c[name] for name in names]


# Built once: building a statement costs several times what executing it does.
_IN: BindParameter[str] = bindparam("values", expanding=True)
_EXISTING_INSTANCES = (
    select(
        Instance.id,
        Instance.tenant,
        Instance.sop_instance_uid,
        Instance.object_key,
        Series.series_instance_uid,
        Study.study_instance_uid,
    )
    .join(Series, Instance.series_pk == Series.id)
    .join(Study, Instance.study_pk == Study.id)
    .where(Instance.tenant == bindparam("tenant"), Instance.sop_instance_uid.in_(_IN))
)
_PATIENT_READ = _columns(Patient, ("id", *_PATIENT_KEY, *_PATIENT_COLUMNS))
_SERIES_READ = _columns(Series, ("id", "series_instance_uid", *_SERIES_COLUMNS))
# Studies with their patients and, in the same statement, the series asked
# for that they hold: the usual batch (instances of known series) needs no
# other read. Series found nowhere there (new, or of another study) are
# looked for on their own.
_EXISTING_STUDIES = (
    select(
        *_columns(Study, ("id", "study_instance_uid", *_STUDY_COLUMNS)),
        *(c.label(f"p_{c.key}") for c in _PATIENT_READ),
        *(c.label(f"s_{c.key}") for c in _SERIES_READ),
    )
    .join(Patient, Study.patient_pk == Patient.id)
    .outerjoin(
        Series, (Series.study_pk == Study.id) & Series.series_instance_uid.in_(bindparam("series", expanding=True))
    )
    .where(Study.tenant == bindparam("tenant"), Study.study_instance_uid.in_(_IN))
)
_EXISTING_SERIES = select(*_SERIES_READ).where(
    Series.tenant == bindparam("tenant"), Series.series_instance_uid.in_(_IN)
)
_EXISTING_PATIENTS = select(*_PATIENT_READ).where(Patient.tenant == bindparam("tenant"), Patient.patient_id.in_(_IN))
_INSERT = {model: insert(model).returning(model.id, sort_by_parameter_order=True) for model in (Patient, Study, Series)}
_UPDATE = {model: update(model).where(model.id == bindparam("_pk")) for model in (Patient, Study, Series, Instance)}
_INSERT_INSTANCES = insert(Instance)


def check_batch(records: Sequence[md_pb.InstanceRecord], policy: int) -> int:
    """The policy to apply (OVERWRITE when unspecified); InvalidValue for
    an unknown policy or any invalid record."""
    if policy == md_pb.DUPLICATE_POLICY_UNSPECIFIED:
        policy = OVERWRITE
    if policy not in _POLICIES:
        raise InvalidValue("unknown duplicate policy")
    for rec in records:
        _check_record(rec)
    return policy


def _check_record(rec: md_pb.InstanceRecord) -> None:
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


def index_records(conn: Connection, records: Sequence[md_pb.InstanceRecord], policy: int) -> list[md_pb.IndexResult]:
    """Indexes checked records (check_batch) in the open write transaction."""
    outbox.lock(conn)  # first: what is read below stays as read until commit
    batch = _Batch(conn, records)
    results = [batch.apply(rec, policy) for rec in records]
    batch.write()
    return results


def _int_or_none(text: str) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        return None


class _Row:
    """A row of the picture: its id (None until inserted), its columns as
    read (None for a new row) and as the batch leaves them."""

    __slots__ = ("pk", "stored", "values")

    def __init__(self, pk: int | None = None, stored: dict[str, Any] | None = None) -> None:
        self.pk = pk
        self.stored = stored
        self.values: dict[str, Any] = dict(stored) if stored is not None else {}

    @property
    def changed(self) -> bool:
        """True for a row read and changed since."""
        return self.stored is not None and self.values != self.stored


class _Patient(_Row):
    __slots__ = ("identity",)

    def __init__(self, identity: dict[str, Any], pk: int | None = None, stored: dict[str, Any] | None = None) -> None:
        super().__init__(pk, stored)
        self.identity = identity  # tenant, patient_id (None: anonymous), issuer_of_patient_id


class _Study(_Row):
    __slots__ = ("identity", "patient")

    def __init__(
        self, identity: dict[str, Any], patient: _Patient, pk: int | None = None, stored: dict[str, Any] | None = None
    ) -> None:
        super().__init__(pk, stored)
        self.identity = identity
        self.patient = patient


class _Series(_Row):
    __slots__ = ("identity", "study")

    def __init__(
        self,
        identity: dict[str, Any],
        study: _Study | None,
        pk: int | None = None,
        stored: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(pk, stored)
        self.identity = identity
        self.study = study  # None: a study no record of the batch names


class _Instance(_Row):
    __slots__ = ("series", "study", "written")

    def __init__(self, series: _Series, study: _Study, pk: int | None = None) -> None:
        super().__init__(pk)
        self.series = series
        self.study = study
        self.written = False  # by a record of the batch


class _Batch:
    def __init__(self, conn: Connection, records: Sequence[md_pb.InstanceRecord]) -> None:
        self.conn = conn
        self.now = datetime.now(UTC)
        self.patients: dict[tuple[str, str, str], _Patient] = {}  # named ones by key
        self.anonymous: list[_Patient] = []
        self.patients_by_pk: dict[int, _Patient] = {}
        self.studies: dict[tuple[str, str], _Study] = {}
        self.studies_by_pk: dict[int, _Study] = {}
        self.series: dict[tuple[str, str], _Series] = {}
        self.instances: dict[tuple[str, str], _Instance] = {}
        # Rows whose revision goes up; rows an instance or study may have left empty.
        self.touched_series: dict[_Series, None] = {}
        self.left_series: dict[_Series, None] = {}
        self.left_studies: dict[_Study, None] = {}
        self.left_patients: dict[_Patient, None] = {}
        self.changes: list[tuple[events_pb2.Event, str]] = []
        self._load(records)

    # --- reading what exists --------------------------------------------------

    def _load(self, records: Sequence[md_pb.InstanceRecord]) -> None:
        sops: dict[str, set[str]] = {}
        for rec in records:
            sops.setdefault(rec.location.ref.tenant, set()).add(rec.location.ref.sop_instance_uid)
        existing: list[Row[int, str, str, str, str, str]] = []
        for tenant, uids in sops.items():
            for part in chunks(sorted(uids)):
                existing += self.conn.execute(_EXISTING_INSTANCES, {"tenant": tenant, "values": part}).all()
        # The series and studies of existing instances too: they may move.
        study_keys = {(r.location.ref.tenant, r.location.ref.study_instance_uid) for r in records}
        study_keys |= {(row.tenant, row.study_instance_uid) for row in existing}
        series_keys = {(r.location.ref.tenant, r.location.ref.series_instance_uid) for r in records}
        series_keys |= {(row.tenant, row.series_instance_uid) for row in existing}
        self._load_studies(study_keys, series_keys)
        self._load_series({k for k in series_keys if k not in self.series})
        self._load_patients(
            {
                (r.location.ref.tenant, r.patient.patient_id, r.patient.issuer_of_patient_id)
                for r in records
                if r.patient.patient_id
            }
        )
        for row in existing:
            series = self.series[(row.tenant, row.series_instance_uid)]
            study = self.studies[(row.tenant, row.study_instance_uid)]
            inst = _Instance(series, study, pk=row.id)
            inst.values["object_key"] = row.object_key
            self.instances[(row.tenant, row.sop_instance_uid)] = inst

    def _load_studies(self, keys: set[tuple[str, str]], series_keys: set[tuple[str, str]]) -> None:
        series_uids = _by_tenant(series_keys)
        for tenant, uids in _by_tenant(keys).items():
            wanted = series_uids.get(tenant, [])
            wanted = wanted if len(wanted) <= CHUNK else []  # then read on their own
            for part in chunks(uids):
                params = {"tenant": tenant, "values": part, "series": wanted}
                for row in self.conn.execute(_EXISTING_STUDIES, params).mappings():
                    study = self.studies_by_pk.get(row["id"])
                    if study is None:
                        patient = self._known_patient({c.key: row[f"p_{c.key}"] for c in _PATIENT_READ})
                        study = _Study(
                            {"tenant": tenant, "study_instance_uid": row["study_instance_uid"]},
                            patient,
                            pk=row["id"],
                            stored={c: row[c] for c in _STUDY_COLUMNS},
                        )
                        self.studies[(tenant, row["study_instance_uid"])] = study
                        self.studies_by_pk[row["id"]] = study
                    if row["s_id"] is not None:
                        self._known_series(tenant, {c.key: row[f"s_{c.key}"] for c in _SERIES_READ})

    def _load_series(self, keys: set[tuple[str, str]]) -> None:
        for tenant, uids in _by_tenant(keys).items():
            for part in chunks(uids):
                for row in self.conn.execute(_EXISTING_SERIES, {"tenant": tenant, "values": part}).mappings():
                    self._known_series(tenant, row)

    def _known_series(self, tenant: str, row: Any) -> None:
        self.series[(tenant, row["series_instance_uid"])] = _Series(
            {"tenant": tenant, "series_instance_uid": row["series_instance_uid"]},
            self.studies_by_pk.get(row["study_pk"]),
            pk=row["id"],
            stored={c: row[c] for c in _SERIES_COLUMNS},
        )

    def _load_patients(self, keys: set[tuple[str, str, str]]) -> None:
        wanted = {k for k in keys if k not in self.patients}
        for tenant, ids in _by_tenant({(t, pid) for t, pid, _ in wanted}).items():
            for part in chunks(ids):
                for row in self.conn.execute(_EXISTING_PATIENTS, {"tenant": tenant, "values": part}).mappings():
                    self._known_patient(dict(row))

    def _known_patient(self, row: dict[str, Any]) -> _Patient:
        patient = self.patients_by_pk.get(row["id"])
        if patient is None:
            identity = {k: row[k] for k in _PATIENT_KEY}
            patient = _Patient(identity, pk=row["id"], stored={c: row[c] for c in _PATIENT_COLUMNS})
            self.patients_by_pk[row["id"]] = patient
            if row["patient_id"] is not None:
                self.patients[(row["tenant"], row["patient_id"], row["issuer_of_patient_id"])] = patient
        return patient

    # --- applying records in order ---------------------------------------------

    def apply(self, rec: md_pb.InstanceRecord, policy: int) -> md_pb.IndexResult:
        ref, new_key = rec.location.ref, rec.location.object_key
        inst = self.instances.get((ref.tenant, ref.sop_instance_uid))
        if inst is not None and policy != OVERWRITE:
            outcome = (
                md_pb.INDEX_OUTCOME_KEPT_EXISTING
                if policy == md_pb.DUPLICATE_POLICY_KEEP_FIRST
                else md_pb.INDEX_OUTCOME_REJECTED_DUPLICATE
            )
            # A retried call may carry the key the index already holds: never hand it out.
            held = inst.values["object_key"]
            return md_pb.IndexResult(outcome=outcome, unreferenced_object_key="" if held == new_key else new_key)
        study = self._study(rec)
        series = self._series(rec, study)
        replaced = inst is not None
        if inst is None:
            inst = self.instances[(ref.tenant, ref.sop_instance_uid)] = _Instance(series, study)
            old_key = ""
        else:
            old_key = inst.values["object_key"]
            if inst.series is not series:  # the old series' revision goes up too; it may be left empty
                self.touched_series[inst.series] = None
                self.left_series[inst.series] = None
                self.left_studies[inst.study] = None
            inst.series, inst.study = series, study
        inst.values = _instance_values(rec, self.now)
        inst.written = True
        self.touched_series[series] = None
        self.changes.append(
            (
                events_pb2.Event(
                    tenant=ref.tenant,
                    instance_stored=events_pb2.InstanceStored(
                        location=rec.location, replaced=replaced, source=rec.source
                    ),
                ),
                ref.study_instance_uid,
            )
        )
        if not replaced:
            return md_pb.IndexResult(outcome=md_pb.INDEX_OUTCOME_CREATED)
        return md_pb.IndexResult(
            outcome=md_pb.INDEX_OUTCOME_REPLACED, unreferenced_object_key="" if old_key == new_key else old_key
        )

    def _patient(self, rec: md_pb.InstanceRecord, study: _Study | None) -> _Patient:
        tenant, p = rec.location.ref.tenant, rec.patient
        patient: _Patient | None
        if p.patient_id:
            key = (tenant, p.patient_id, p.issuer_of_patient_id)
            patient = self.patients.get(key)
            if patient is None:
                patient = self.patients[key] = _Patient(
                    {"tenant": tenant, "patient_id": p.patient_id, "issuer_of_patient_id": p.issuer_of_patient_id}
                )
        else:
            # No Patient ID: the study's own anonymous patient, never a shared one.
            patient = study.patient if study is not None and study.patient.identity["patient_id"] is None else None
            if patient is None:
                patient = _Patient(
                    {"tenant": tenant, "patient_id": None, "issuer_of_patient_id": p.issuer_of_patient_id}
                )
                self.anonymous.append(patient)
        patient.values.update(
            patient_name=p.patient_name,
            patient_name_lower=p.patient_name.lower(),
            patient_birth_date=p.patient_birth_date,
            patient_sex=p.patient_sex,
        )
        return patient

    def _study(self, rec: md_pb.InstanceRecord) -> _Study:
        ref, a = rec.location.ref, rec.study
        key = (ref.tenant, ref.study_instance_uid)
        study = self.studies.get(key)
        patient = self._patient(rec, study)
        if study is None:
            study = self.studies[key] = _Study(
                {"tenant": ref.tenant, "study_instance_uid": ref.study_instance_uid}, patient
            )
        elif study.patient is not patient:
            # The newest instance names another patient (e.g. a reconciliation): move the study.
            self.left_patients[study.patient] = None
            study.patient = patient
        study.values.update(
            study_date=a.study_date,
            study_time=a.study_time,
            accession_number=a.accession_number,
            study_id=a.study_id,
            study_description=a.study_description,
            referring_physician_name=a.referring_physician_name,
            referring_physician_name_lower=a.referring_physician_name.lower(),
        )
        return study

    def _series(self, rec: md_pb.InstanceRecord, study: _Study) -> _Series:
        ref, a = rec.location.ref, rec.series
        key = (ref.tenant, ref.series_instance_uid)
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = _Series(
                {"tenant": ref.tenant, "series_instance_uid": ref.series_instance_uid}, study
            )
        elif series.study is not study:
            raise InvalidValue("Series Instance UID already belongs to a different study")
        series.values.update(
            modality=a.modality,
            series_number=a.series_number,
            series_number_int=_int_or_none(a.series_number),
            series_description=a.series_description,
            series_date=a.series_date,
            series_time=a.series_time,
            body_part_examined=a.body_part_examined,
        )
        return series

    # --- writing the picture ------------------------------------------------------

    def write(self) -> None:
        patients = list(dict.fromkeys([*self.patients_by_pk.values(), *self.patients.values(), *self.anonymous]))
        self._store(Patient, patients, _PATIENT_COLUMNS)
        for study in self.studies.values():
            study.values["patient_pk"] = study.patient.pk
        self._store(Study, list(self.studies.values()), _STUDY_COLUMNS)
        for series in self.series.values():
            if series.study is not None:  # None: a series no record wrote
                series.values["study_pk"] = series.study.pk
        self._store(Series, list(self.series.values()), _SERIES_COLUMNS)
        revisions, newest_feed = bump_revisions(self.conn, [_pk(s) for s in self.touched_series])
        new: list[_Instance] = []
        replaced: list[_Instance] = []
        for inst in self.instances.values():
            if not inst.written:
                continue
            inst.values.update(
                series_pk=_pk(inst.series), study_pk=_pk(inst.study), revision=revisions[_pk(inst.series)]
            )
            (new if inst.pk is None else replaced).append(inst)
        if new:
            self.conn.execute(_INSERT_INSTANCES, [i.values for i in new])
        if replaced:
            self.conn.execute(_UPDATE[Instance], [{"_pk": i.pk, **i.values} for i in replaced])
        if self.left_series or self.left_studies or self.left_patients:
            prune(
                self.conn,
                [_pk(s) for s in self.left_series],
                [_pk(s) for s in self.left_studies],
                [_pk(p) for p in self.left_patients],
            )
        outbox.append_changes(self.conn, self.changes, self.now, newest_feed)

    def _store(self, model: Any, rows: Sequence[_Patient | _Study | _Series], columns: Sequence[str]) -> None:
        """Inserts the new rows (their ids filled in) and updates the changed ones."""
        changed = [r for r in rows if r.changed]
        new = [r for r in rows if r.pk is None]
        if new:
            result = self.conn.execute(_INSERT[model], [{**r.identity, **r.values} for r in new])
            for row, pk in zip(new, result.scalars(), strict=True):
                row.pk = pk
        if changed:
            self.conn.execute(_UPDATE[model], [{"_pk": r.pk, **{c: r.values[c] for c in columns}} for r in changed])


def _pk(row: _Row) -> int:
    assert row.pk is not None, "written before use"
    return row.pk


def _by_tenant(keys: Iterable[tuple[str, ...]]) -> dict[str, list[str]]:
    out: dict[str, set[str]] = {}
    for tenant, value, *_ in keys:
        out.setdefault(tenant, set()).add(value)
    return {tenant: sorted(values) for tenant, values in out.items()}


def _instance_values(rec: md_pb.InstanceRecord, now: datetime) -> dict[str, Any]:
    loc, a = rec.location, rec.instance
    return {
        "tenant": loc.ref.tenant,
        "sop_instance_uid": loc.ref.sop_instance_uid,
        "sop_class_uid": loc.sop_class_uid,
        "transfer_syntax_uid": loc.transfer_syntax_uid,
        "object_key": loc.object_key,
        "size": loc.size,
        "number_of_frames": loc.number_of_frames,
        "instance_number": a.instance_number,
        "instance_number_int": _int_or_none(a.instance_number),
        "rows": a.rows,
        "columns": a.columns,
        "content_date": a.content_date,
        "content_time": a.content_time,
        "specific_character_set": rec.specific_character_set,
        "updated": now,
        "dicom_json": rec.dicom_json,
        "pixel_layout": loc.pixel_layout.SerializeToString() if loc.HasField("pixel_layout") else None,
    }
