"""Alembic migrations on SQLite and PostgreSQL: from an empty database to
head (matching the models exactly), from earlier revisions with data in
them, down and up again, and a first-release database without a revision
table."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from common.gen.dicomserver.v1 import dicom_pb2, events_pb2
from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from metadata_svc import migrate
from metadata_svc.db import Database, make_engine
from metadata_svc.index import MetadataIndex
from metadata_svc.schema import Base
from testbed.records import make_ds, record
from testbed.servers import new_database

HEAD = "0007"


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    url = (
        f"sqlite:///{tmp_path / 'index.sqlite3'}"
        if request.param == "sqlite"
        else new_database(request.getfixturevalue("postgres"), "mig")
    )
    eng = make_engine(url)
    yield eng
    eng.dispose()


def _differences(engine: Engine) -> list[Any]:
    dialect = engine.dialect.name

    def include(obj: Any, name: Any, type_: str, reflected: bool, compare_to: Any) -> bool:
        # Indexes declared for another dialect only (ddl_if) are not expected here.
        ddl_if = getattr(obj, "_ddl_if", None)
        return ddl_if is None or ddl_if.dialect in (None, dialect)

    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"include_object": include, "compare_type": True})
        return list(compare_metadata(ctx, Base.metadata))


def _insert_first_release_rows(engine: Engine) -> None:
    """A study as revision 0001 stored it, written with that schema's columns."""
    now = datetime.now(UTC)
    header = json.dumps({"00080018": {"vr": "UI", "Value": ["1.2.3.1"]}}).encode()
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO patients (tenant, patient_id, issuer_of_patient_id, patient_name, patient_name_lower,"
                " patient_birth_date, patient_sex) VALUES ('m', 'P1', '', 'Old^Row', 'old^row', '', '')"
            )
        )
        pid = conn.execute(text("SELECT id FROM patients")).scalar_one()
        conn.execute(
            text(
                "INSERT INTO studies (tenant, patient_pk, study_instance_uid, study_date, study_time, accession_number,"
                " study_id, study_description, referring_physician_name, referring_physician_name_lower)"
                " VALUES ('m', :p, '1.2', '20200101', '', '', '', '', '', '')"
            ),
            {"p": pid},
        )
        sid = conn.execute(text("SELECT id FROM studies")).scalar_one()
        conn.execute(
            text(
                "INSERT INTO series (tenant, study_pk, series_instance_uid, modality, series_number, series_number_int,"
                " series_description, series_date, series_time, body_part_examined)"
                " VALUES ('m', :s, '1.2.3', 'CT', '1', 1, '', '', '', '')"
            ),
            {"s": sid},
        )
        seid = conn.execute(text("SELECT id FROM series")).scalar_one()
        conn.execute(
            text(
                "INSERT INTO instances (tenant, series_pk, study_pk, sop_instance_uid, sop_class_uid,"
                " transfer_syntax_uid, object_key, size, number_of_frames, instance_number, instance_number_int, rows,"
                " columns, content_date, content_time, specific_character_set, updated, dicom_json)"
                " VALUES ('m', :se, :s, '1.2.3.1', '1.2.840.10008.5.1.4.1.1.2', '1.2.840.10008.1.2.1', 'k1', 10, 0,"
                " '1', 1, 4, 4, '', '', '', :now, :h)"
            ),
            {"se": seid, "s": sid, "now": now, "h": header},
        )


def test_upgrade_from_empty_matches_the_models(engine: Engine) -> None:
    assert migrate.current(engine) is None
    migrate.upgrade(engine)
    assert migrate.current(engine) == HEAD
    assert _differences(engine) == []
    indexes = {ix["name"] for ix in inspect(engine).get_indexes("patients")}
    assert ("ix_patients_name_prefix" in indexes) == (engine.dialect.name == "postgresql")


def test_upgrade_from_previous_revision_keeps_data(engine: Engine) -> None:
    migrate.upgrade(engine, "0001")
    _insert_first_release_rows(engine)
    migrate.upgrade(engine)
    assert migrate.current(engine) == HEAD
    assert _differences(engine) == []
    index = MetadataIndex(Database(engine))
    assert [json.loads(h)["00080018"]["Value"] for h in index.get_metadata("m", "1.2")] == [["1.2.3.1"]]
    # The old series takes new instances and its metadata can be precomputed.
    index.index(
        [record(make_ds("1.2", "1.2.3", "1.2.3.2", patient_id="P1", name="Old^Row", instance_number="2"), "m")], 0
    )
    assert index.refresh_metadata("m", "1.2") == 1
    assert len(index.get_metadata("m", "1.2", "1.2.3")) == 2
    (study,) = index.query(md_pb.QueryRequest(tenant="m", level=dicom_pb2.QUERY_LEVEL_STUDY)).matches
    assert study["00201208"]["Value"] == [2]


def test_downgrade_to_the_first_release_and_up_again(engine: Engine) -> None:
    migrate.upgrade(engine, "0001")
    _insert_first_release_rows(engine)
    migrate.upgrade(engine)
    MetadataIndex(Database(engine)).refresh_metadata("m", "1.2")
    migrate.downgrade(engine, "0001")
    assert migrate.current(engine) == "0001"
    tables = set(inspect(engine).get_table_names())
    assert "series_metadata" not in tables and {"patients", "studies", "series", "instances", "events"} <= tables
    assert "revision" not in {c["name"] for c in inspect(engine).get_columns("series")}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM instances")).scalar_one() == 1
    migrate.upgrade(engine)
    assert _differences(engine) == []
    assert len(MetadataIndex(Database(engine)).get_metadata("m", "1.2")) == 1


def test_first_release_database_without_revision_table(engine: Engine) -> None:
    migrate.upgrade(engine, "0001")
    _insert_first_release_rows(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
    db = Database.from_url(engine.url.render_as_string(hide_password=False))
    try:
        assert migrate.current(db.engine) == HEAD
        assert len(MetadataIndex(db).get_metadata("m", "1.2")) == 1
    finally:
        db.dispose()


def _insert_outbox_row(engine: Engine, sequence_uid: str) -> None:
    """An index change as revisions 0001 and 0002 wrote it (no kind)."""
    event = events_pb2.Event(
        tenant="m",
        instance_stored=events_pb2.InstanceStored(
            location=dicom_pb2.InstanceLocation(
                ref=dicom_pb2.InstanceRef(
                    tenant="m", study_instance_uid="1.2", series_instance_uid="1.2.3", sop_instance_uid=sequence_uid
                ),
                object_key="k",
            )
        ),
    )
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO events (tenant, study_instance_uid, created, payload) VALUES ('m', '1.2', :now, :p)"),
            {"now": datetime.now(UTC), "p": event.SerializeToString()},
        )


def test_outbox_kinds_from_0002_down_and_up(engine: Engine) -> None:
    """Events written before 0003 stay in the change feed; audit records
    never enter it; going back to 0002 takes the audit records out of the
    outbox (older code would read them as index changes)."""
    migrate.upgrade(engine, "0002")
    _insert_first_release_rows(engine)
    _insert_outbox_row(engine, "1.2.3.1")
    migrate.upgrade(engine)
    assert _differences(engine) == []
    index = MetadataIndex(Database(engine))
    index.record_audit([events_pb2.AuditRecord(tenant="m", subject="alice", operation="GET /studies")])
    (old,), latest = index.read_change_feed("m", 0, 10)
    assert old.instance_stored.location.ref.sop_instance_uid == "1.2.3.1" and latest == old.sequence
    outbox, _ = index.read_outbox(0, 10)
    assert [e.WhichOneof("kind") for e in outbox] == ["instance_stored", "audit"]

    migrate.downgrade(engine, "0002")
    assert migrate.current(engine) == "0002"
    assert "kind" not in {c["name"] for c in inspect(engine).get_columns("events")}
    with engine.connect() as conn:
        payloads = list(conn.execute(text("SELECT payload FROM events ORDER BY sequence")).scalars())
    assert [events_pb2.Event.FromString(p).WhichOneof("kind") for p in payloads] == ["instance_stored"]
    migrate.upgrade(engine)
    assert _differences(engine) == []
    assert [e.sequence for e in index.read_change_feed("m", 0, 10)[0]] == [old.sequence]


def _insert_tenant_outbox_row(engine: Engine, tenant: str, sop: str) -> None:
    """An index change as revision 0003 wrote it (a kind, no feed number)."""
    event = events_pb2.Event(
        tenant=tenant,
        instance_stored=events_pb2.InstanceStored(
            location=dicom_pb2.InstanceLocation(
                ref=dicom_pb2.InstanceRef(
                    tenant=tenant, study_instance_uid="1.2", series_instance_uid="1.2.3", sop_instance_uid=sop
                ),
                object_key="k",
            )
        ),
    )
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO events (tenant, kind, study_instance_uid, created, payload)"
                " VALUES (:t, 'instance', '1.2', :now, :p)"
            ),
            {"t": tenant, "now": datetime.now(UTC), "p": event.SerializeToString()},
        )


def test_feed_positions_per_tenant_from_0003(engine: Engine) -> None:
    """0004 numbers each tenant's existing changes 1, 2, ... in outbox order;
    new changes continue each tenant's count; down one step and up again."""
    migrate.upgrade(engine, "0003")
    for tenant, sop in [("a", "1.1"), ("b", "2.1"), ("b", "2.2"), ("a", "1.2"), ("b", "2.3")]:
        _insert_tenant_outbox_row(engine, tenant, sop)
    migrate.upgrade(engine)
    assert _differences(engine) == []
    index = MetadataIndex(Database(engine))
    index.record_audit([events_pb2.AuditRecord(tenant="a", subject="alice", operation="GET /studies")])
    _insert_outbox_row(engine, "9.9")  # tenant "m", written by hand: no feed number yet
    feed_a, latest_a = index.read_change_feed("a", 0, 10)
    assert [(e.sequence, e.instance_stored.location.ref.sop_instance_uid) for e in feed_a] == [(1, "1.1"), (2, "1.2")]
    assert latest_a == 2
    feed_b, latest_b = index.read_change_feed("b", 1, 10)
    assert [e.sequence for e in feed_b] == [2, 3] and latest_b == 3
    migrate.downgrade(engine, "0003")
    assert "feed_sequence" not in {c["name"] for c in inspect(engine).get_columns("events")}
    migrate.upgrade(engine)
    assert [e.sequence for e in index.read_change_feed("a", 0, 10)[0]] == [1, 2]


def test_upgrade_from_0005_with_rows(engine: Engine) -> None:
    """0006 on an index with rows: their locations have no pixel layout,
    their keys are referenced, a payload precomputed before is served until
    the series changes, and the next refresh reads that series whole."""
    migrate.upgrade(engine, "0005")
    _insert_first_release_rows(engine)
    with engine.begin() as conn:
        series_pk = conn.execute(text("SELECT id FROM series")).scalar_one()
        old_header = conn.execute(text("SELECT dicom_json FROM instances")).scalar_one()
        conn.execute(
            text("INSERT INTO series_metadata (series_pk, revision, payload) VALUES (:s, 0, :p)"),
            {"s": series_pk, "p": md_pb.GetMetadataResponse(instances=[old_header]).SerializeToString()},
        )
    migrate.upgrade(engine)
    assert migrate.current(engine) == HEAD
    assert _differences(engine) == []
    index = MetadataIndex(Database(engine))
    (loc,) = index.locate("m", "1.2")
    assert loc.object_key == "k1" and not loc.HasField("pixel_layout")
    assert index.referenced_objects(["k2", "k1"]) == ["k1"]
    assert index.get_metadata("m", "1.2") == [old_header]

    new = record(
        make_ds("1.2", "1.2.3", "1.2.3.2", patient_id="P1", name="Old^Row", instance_number="2"), "m", key="k2"
    )
    new.location.pixel_layout.value_offset = 1024
    index.index([new], 0)
    assert index.refresh_metadata("m", "1.2") == 1
    assert [json.loads(h)["00080018"]["Value"] for h in index.get_metadata("m", "1.2")] == [["1.2.3.1"], ["1.2.3.2"]]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT sop_instance_uid, revision FROM instances ORDER BY id")).all() == [
            ("1.2.3.1", 0),
            ("1.2.3.2", 1),
        ]
        assert conn.execute(text("SELECT members FROM series_metadata")).scalar_one() == "1 1.2.3.1\n2 1.2.3.2"
    assert [loc.pixel_layout.value_offset for loc in index.locate("m", "1.2")] == [0, 1024]
    assert index.referenced_objects(["k2", "k1"]) == ["k2", "k1"]

    migrate.downgrade(engine, "0005")
    columns = {c["name"] for c in inspect(engine).get_columns("instances")}
    assert not {"pixel_layout", "revision"} & columns
    assert "members" not in {c["name"] for c in inspect(engine).get_columns("series_metadata")}
    migrate.upgrade(engine)
    assert _differences(engine) == []
    assert len(MetadataIndex(Database(engine)).locate("m", "1.2")) == 2
