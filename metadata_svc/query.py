"""The query engine behind QIDO-RS and C-FIND: one SELECT for the page of
matches, then a fixed number of grouped queries for counts, modalities and
representative headers (never one query per match)."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.orm import Session

from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from common.validation import InvalidValue, check_tenant, check_uid
from metadata_svc import attributes as at
from metadata_svc.attributes import ATTRS, Level
from metadata_svc.filters import condition, modalities_in_study
from metadata_svc.schema import Instance, Patient, Series, Study

_MODELS: dict[Level, Any] = {Level.PATIENT: Patient, Level.STUDY: Study, Level.SERIES: Series, Level.INSTANCE: Instance}
# Join condition from each level to its parent.
_LINK: dict[Level, ColumnElement[bool]] = {
    Level.STUDY: Study.patient_pk == Patient.id,
    Level.SERIES: Series.study_pk == Study.id,
    Level.INSTANCE: Instance.series_pk == Series.id,
}
_ORDER: dict[Level, tuple[Any, ...]] = {
    Level.PATIENT: (Patient.patient_name, Patient.patient_id, Patient.id),
    Level.STUDY: (Study.study_date, Study.study_time, Study.study_instance_uid),
    Level.SERIES: (
        Study.study_date,
        Study.study_instance_uid,
        Series.series_number_int.nulls_last(),
        Series.series_instance_uid,
    ),
    Level.INSTANCE: (
        Study.study_date,
        Study.study_instance_uid,
        Series.series_number_int.nulls_last(),
        Series.series_instance_uid,
        Instance.instance_number_int.nulls_last(),
        Instance.sop_instance_uid,
    ),
}
_TAG = re.compile(r"[0-9A-Fa-f]{8}")


@dataclass
class QueryResult:
    matches: list[dict[str, Any]]
    truncated: bool


def normalize_tag(tag: str) -> str:
    if _TAG.fullmatch(tag) is None:
        raise InvalidValue(f"'{tag[:16]}' is not a tag of eight hex digits")
    return tag.upper()


def _levels_down_from(level: Level) -> list[Level]:
    return [Level(v) for v in range(level, Level.PATIENT - 1, -1)]


def _base(level: Level) -> Select[Any]:
    stmt = select(*(_MODELS[lv] for lv in _levels_down_from(level)))
    for lv in _levels_down_from(level)[:-1]:
        stmt = stmt.join(_MODELS[Level(lv - 1)], _LINK[lv])
    return stmt


def _descendant_exists(level: Level, conds: dict[Level, list[ColumnElement[bool]]]) -> ColumnElement[bool]:
    """Filters on finer levels: some descendant row must match them all."""
    deepest = max(conds)
    first = Level(level + 1)
    sub = select(_MODELS[first].id)
    for lv in range(first + 1, deepest + 1):
        sub = sub.join(_MODELS[Level(lv)], _LINK[Level(lv)])
    sub = sub.where(_LINK[first], *(c for cs in conds.values() for c in cs))
    return sub.exists()


class QueryEngine:
    def __init__(self, max_limit: int) -> None:
        self.max_limit = max_limit

    def run(self, session: Session, req: md_pb.QueryRequest) -> QueryResult:
        check_tenant(req.tenant)
        if req.level not in {lv.value for lv in Level}:
            raise InvalidValue("query level must be PATIENT, STUDY, SERIES or INSTANCE")
        level = Level(req.level)
        if req.offset < 0:
            raise InvalidValue("offset must not be negative")
        limit = req.limit if 0 < req.limit <= self.max_limit else self.max_limit

        stmt, extra_tags = self._filtered(level, req)
        stmt = stmt.order_by(*_ORDER[level]).limit(limit + 1).offset(req.offset)
        rows = [dict(zip(_levels_down_from(level), row, strict=False)) for row in session.execute(stmt).all()]
        truncated = len(rows) > limit
        rows = rows[:limit]

        wanted = list(dict.fromkeys([*at.DEFAULTS[level], *extra_tags, *map(normalize_tag, req.include_fields)]))
        ids = [r[level].id for r in rows]
        computed = self._computed(session, level, ids)
        available = {*at.COLUMN_TAGS[level], *at.COMPUTED[level], at.SPECIFIC_CHARACTER_SET}
        needs_json = bool(ids) and (req.include_all_fields or any(t not in available for t in wanted))
        headers = self._representatives(session, level, ids) if needs_json else {}
        matches = [
            self._result(
                level, r, computed.get(r[level].id, {}), headers.get(r[level].id), wanted, req.include_all_fields
            )
            for r in rows
        ]
        return QueryResult(matches, truncated)

    def _filtered(self, level: Level, req: md_pb.QueryRequest) -> tuple[Select[Any], list[str]]:
        stmt = _base(level).where(_MODELS[level].tenant == req.tenant)
        extra: list[str] = []
        below: dict[Level, list[ColumnElement[bool]]] = defaultdict(list)
        for f in req.filters:
            tag = normalize_tag(f.tag)
            extra.append(tag)  # matching keys are returned too (PS3.4 C.2.2.1)
            if tag == at.MODALITIES_IN_STUDY:
                attr_level, cond = Level.STUDY, modalities_in_study(f)
            elif tag in ATTRS:
                attr_level, cond = ATTRS[tag].level, condition(ATTRS[tag], f)
            elif f.WhichOneof("constraint") in (None, "universal"):
                continue  # returned from the stored header, not filtered
            else:
                raise InvalidValue(f"cannot filter on {at.name_of(tag)} ({tag}): not an indexed attribute")
            if cond is None:
                continue
            if attr_level <= level:
                stmt = stmt.where(cond)
            else:
                below[attr_level].append(cond)
        if below:
            stmt = stmt.where(_descendant_exists(level, below))
        if req.study_instance_uid:
            if level < Level.STUDY:
                raise InvalidValue("study_instance_uid cannot scope a patient-level query")
            stmt = stmt.where(Study.study_instance_uid == check_uid(req.study_instance_uid, "Study Instance UID"))
        if req.series_instance_uid:
            if level < Level.SERIES:
                raise InvalidValue("series_instance_uid scopes only instance and series queries")
            stmt = stmt.where(Series.series_instance_uid == check_uid(req.series_instance_uid, "Series Instance UID"))
        return stmt, extra

    def _computed(self, session: Session, level: Level, ids: list[int]) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = defaultdict(dict)
        if not ids:
            return out

        def counts(tag: str, key: Any, source: Any, *join: Any) -> None:
            stmt = select(key, func.count()).select_from(source)
            if join:
                stmt = stmt.join(*join)
            for pk, n in session.execute(stmt.where(key.in_(ids)).group_by(key)):
                out[pk][tag] = n

        if level == Level.STUDY:
            counts(at.STUDY_SERIES_COUNT, Series.study_pk, Series)
            counts(at.STUDY_INSTANCE_COUNT, Instance.study_pk, Instance)
            modalities: dict[int, set[str]] = defaultdict(set)
            stmt = select(Series.study_pk, Series.modality).where(Series.study_pk.in_(ids), Series.modality != "")
            for pk, modality in session.execute(stmt.distinct()):
                modalities[pk].update(m for m in modality.split("\\") if m)
            for pk in ids:
                out[pk][at.MODALITIES_IN_STUDY] = sorted(modalities.get(pk, ()))
        elif level == Level.SERIES:
            counts(at.SERIES_INSTANCE_COUNT, Instance.series_pk, Instance)
        elif level == Level.PATIENT:
            counts(at.PATIENT_STUDY_COUNT, Study.patient_pk, Study)
            counts(at.PATIENT_SERIES_COUNT, Study.patient_pk, Series, Study, Series.study_pk == Study.id)
            counts(at.PATIENT_INSTANCE_COUNT, Study.patient_pk, Instance, Study, Instance.study_pk == Study.id)
        return out

    def _representatives(self, session: Session, level: Level, ids: list[int]) -> dict[int, dict[str, Any]]:
        """The stored header of the first instance of each match."""
        if level == Level.INSTANCE:
            pairs = [(pk, pk) for pk in ids]
        else:
            key = {Level.PATIENT: Study.patient_pk, Level.STUDY: Instance.study_pk, Level.SERIES: Instance.series_pk}[
                level
            ]
            stmt = select(key, func.min(Instance.id)).select_from(Instance)
            if level == Level.PATIENT:
                stmt = stmt.join(Study, Instance.study_pk == Study.id)
            pairs = list(session.execute(stmt.where(key.in_(ids)).group_by(key)).all())
        by_instance = dict(
            session.execute(
                select(Instance.id, Instance.dicom_json).where(Instance.id.in_([i for _, i in pairs]))
            ).all()
        )
        return {pk: json.loads(by_instance[i]) for pk, i in pairs if i in by_instance}

    @staticmethod
    def _result(
        level: Level,
        row: dict[Level, Any],
        computed: dict[str, Any],
        header: dict[str, Any] | None,
        wanted: list[str],
        include_all: bool,
    ) -> dict[str, Any]:
        values = at.column_values(level, row)
        values.update(computed)
        values[at.SPECIFIC_CHARACTER_SET] = at.UTF8
        result: dict[str, Any] = {}
        if include_all and header:
            result.update((t, v) for t, v in header.items() if not at.belongs_below(t, level))
        for tag in wanted:
            if tag not in values:
                result[tag] = (header or {}).get(tag) or {"vr": at.vr_of(tag)}
        # The index (newest instance, computed counts) wins over a stored header.
        for tag in list(result) + wanted:
            if tag in values:
                result[tag] = at.encode(tag, values[tag])
        return dict(sorted(result.items()))
