"""The data layer without gRPC: SQLite settings, concurrency, limits, the
error mapping, and the helpers that turn user text into SQL."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import text

from common.gen.dicomserver.v1 import dicom_pb2
from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from metadata_svc.attributes import encode
from metadata_svc.db import Database, make_engine
from metadata_svc.filters import wildcard_pattern
from metadata_svc.index import MetadataIndex
from metadata_svc.service import MetadataService
from metadata_svc.settings import MetadataSettings
from testbed.records import make_ds, record, uids
from testbed.servers import new_database


@pytest.fixture(params=["sqlite", "postgresql"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    url = (
        f"sqlite:///{tmp_path / 'sub' / 'index.sqlite3'}"
        if request.param == "sqlite"
        else new_database(request.getfixturevalue("postgres"), "engine")
    )
    db = Database.from_url(url)
    yield MetadataIndex(db, max_query_limit=3)
    db.dispose()


class AbortContext:
    """Enough of grpc.ServicerContext for the error mapping."""

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise RuntimeError(code, details)


def test_sqlite_runs_in_wal_with_full_sync(tmp_path: Path) -> None:
    engine = Database.from_url(f"sqlite:///{tmp_path / 'sub' / 'index.sqlite3'}").engine
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_settings_default_database_under_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOMSERVER_DATA_DIR", str(tmp_path))
    assert MetadataSettings().effective_database_url == f"sqlite:///{tmp_path / 'index.sqlite3'}"
    monkeypatch.setenv("DICOMSERVER_DATABASE_URL", "postgresql://db/index")
    assert MetadataSettings().effective_database_url == "postgresql://db/index"


def test_limit_is_capped_by_max_query_limit(index: MetadataIndex) -> None:
    index.index(
        [record(make_ds(f"1.{n}", f"1.{n}.1", f"1.{n}.1.1", study_date=f"2024010{n}"), "cap") for n in range(1, 6)], 0
    )
    for limit in (0, 10):
        res = index.query(md_pb.QueryRequest(tenant="cap", level=dicom_pb2.QUERY_LEVEL_STUDY, limit=limit))
        assert [m["0020000D"]["Value"][0] for m in res.matches] == ["1.1", "1.2", "1.3"]
        assert res.truncated
    events, latest = index.read_change_feed("cap", 0, 50)
    assert len(events) == 3 and latest == events[-1].sequence + 2


def test_concurrent_writers_into_one_study(index: MetadataIndex) -> None:
    """The gRPC pool runs handlers in parallel: no lost rows, no lock errors."""
    errors: list[BaseException] = []

    def store(n: int) -> None:
        try:
            for k in range(5):
                index.index([record(make_ds("9.9", f"9.9.{n}", f"9.9.{n}.{k}", instance_number=str(k)), "conc")], 0)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=store, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    (study,) = index.query(md_pb.QueryRequest(tenant="conc", level=dicom_pb2.QUERY_LEVEL_STUDY)).matches
    assert study["00201206"]["Value"] == [8] and study["00201208"]["Value"] == [40]
    sequences: list[int] = []
    while True:  # pages of max_query_limit (3)
        events, latest = index.read_change_feed("conc", sequences[-1] if sequences else 0, 1000)
        if not events:
            break
        assert len(events) <= 3
        sequences += [e.sequence for e in events]
    assert len(sequences) == 40 and sequences == sorted(set(sequences)) and latest == sequences[-1]


def test_database_errors_become_unavailable(tmp_path: Path) -> None:
    # A folder where the database file should be: every statement fails to open it.
    service = MetadataService(MetadataIndex(Database(make_engine(f"sqlite:///{tmp_path}"))))
    with pytest.raises(RuntimeError) as err:
        service.Query(md_pb.QueryRequest(tenant="x", level=dicom_pb2.QUERY_LEVEL_STUDY), AbortContext())
    assert err.value.args == (grpc.StatusCode.UNAVAILABLE, "index database unavailable")


def test_person_name_matching_is_unicode_case_insensitive(index: MetadataIndex) -> None:
    index.index([record(make_ds("2.1", "2.1.1", "2.1.1.1", name="ÉLODIE^Żaneta"), "pn")], 0)
    for value in ("élodie^żaneta", "ÉLODIE^ŻANETA"):
        res = index.query(
            md_pb.QueryRequest(
                tenant="pn", level=dicom_pb2.QUERY_LEVEL_STUDY, filters=[md_pb.Filter(tag="00100010", equal=value)]
            )
        )
        assert uids(res.matches, "0020000D") == ["2.1"]
    res = index.query(
        md_pb.QueryRequest(
            tenant="pn", level=dicom_pb2.QUERY_LEVEL_STUDY, filters=[md_pb.Filter(tag="00100010", fuzzy="ża")]
        )
    )
    assert uids(res.matches, "0020000D") == ["2.1"]


def test_hostile_filter_text_is_data(index: MetadataIndex) -> None:
    index.index([record(make_ds("3.1", "3.1.1", "3.1.1.1", description="A'; DROP TABLE studies;--"), "sql")], 0)
    for f in (
        md_pb.Filter(tag="00081030", equal="A'; DROP TABLE studies;--"),
        md_pb.Filter(tag="00081030", wildcard="A'; DROP*"),
    ):
        res = index.query(md_pb.QueryRequest(tenant="sql", level=dicom_pb2.QUERY_LEVEL_STUDY, filters=[f]))
        assert uids(res.matches, "0020000D") == ["3.1"]


@pytest.mark.parametrize(
    ("value", "pattern"),
    [("AB*", "AB%"), ("A?C", "A_C"), ("50%*", "50\\%%"), ("a_b", "a\\_b"), ("x\\y*", "x\\\\y%")],
)
def test_wildcard_pattern_escapes_like_specials(value: str, pattern: str) -> None:
    assert wildcard_pattern(value) == pattern


@pytest.mark.parametrize(
    ("tag", "value", "expected"),
    [
        (
            "00100010",
            "Yamada^Tarou=山田^太郎",
            {"vr": "PN", "Value": [{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎"}]},
        ),
        ("00200011", "7", {"vr": "IS", "Value": [7]}),
        ("00080060", "", {"vr": "CS"}),
        ("00280010", 0, {"vr": "US"}),
        ("00080008", "ORIGINAL\\PRIMARY", {"vr": "CS", "Value": ["ORIGINAL", "PRIMARY"]}),
        ("00081030", "a\\b", {"vr": "LO", "Value": ["a", "b"]}),
    ],
)
def test_encode(tag: str, value: Any, expected: dict[str, Any]) -> None:
    assert encode(tag, value) == expected
    json.dumps(encode(tag, value))
