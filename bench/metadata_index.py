"""Index-scale benchmark of the metadata service (not a test):

    .venv/bin/python -m bench.metadata_index [--studies 5000] [--per-study 20] [--ingest-sample 3000]

Starts a durable PostgreSQL 15 (fsync on, as deployed) with tests/backends.py,
measures the single-record ingest rate (one IndexInstances transaction per
instance, as C-STORE and STOW do) on SQLite and on PostgreSQL, loads the
rest of the index in batches, then times study-level queries (QIDO-RS
/studies and C-FIND share this engine) through MetadataService.Query and
prints medians."""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "metadata_svc")]

from backends import Postgres  # noqa: E402
from common.gen.dicomserver.v1 import dicom_pb2, metadata_service_pb2 as md_pb  # noqa: E402
from metadata_helpers import make_ds, record  # noqa: E402
from metadata_svc.db import Database  # noqa: E402
from metadata_svc.index import MetadataIndex  # noqa: E402
from metadata_svc.service import MetadataService  # noqa: E402

LAST = ["SMITH", "JONES", "MULLER", "GARCIA", "ROSSI", "NGUYEN", "KOWALSKI", "DUPONT", "SILVA", "TANAKA"]


class Ctx:
    def abort(self, code: Any, details: str) -> None:
        raise RuntimeError(code, details)


def records(studies: int, per_study: int, tenant: str = "bench") -> list[md_pb.InstanceRecord]:
    rng = random.Random(5)
    out = []
    for s in range(studies):
        name = f"{rng.choice(LAST)}{s % 97}^{rng.choice(['ANNA', 'JOHN', 'MARIA', 'LI'])}"
        date = f"{2010 + s % 15}{1 + s % 12:02d}{1 + s % 28:02d}"
        for i in range(per_study):
            series = i % 4
            ds = make_ds(f"1.2.826.0.1.{s}", f"1.2.826.0.1.{s}.{series}", f"1.2.826.0.1.{s}.{series}.{i}",
                         patient_id=f"P{s // 2}", name=name, study_date=date, study_time="101010",
                         accession=f"A{s}", modality=["CT", "MR", "US", "CR"][series],
                         series_number=str(series + 1), instance_number=str(i + 1))
            out.append(record(ds, tenant))
    return out


def ingest_rate(index: MetadataIndex, recs: list[md_pb.InstanceRecord]) -> float:
    start = time.perf_counter()
    for rec in recs:
        index.index([rec], md_pb.DUPLICATE_POLICY_OVERWRITE)
    return len(recs) / (time.perf_counter() - start)


def load(index: MetadataIndex, recs: list[md_pb.InstanceRecord], batch: int = 500) -> None:
    for i in range(0, len(recs), batch):
        index.index(recs[i:i + batch], md_pb.DUPLICATE_POLICY_OVERWRITE)


def p50(service: MetadataService, req: md_pb.QueryRequest, runs: int) -> tuple[float, int]:
    times, n = [], 0
    for _ in range(runs):
        start = time.perf_counter()
        n = len(service.Query(req, Ctx()).matches)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--studies", type=int, default=5000)
    parser.add_argument("--per-study", type=int, default=20)
    parser.add_argument("--ingest-sample", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    all_recs = records(args.studies, args.per_study)
    sample = all_recs[: args.ingest_sample]
    pg = Postgres(durable=True)
    pg.start()
    tmp = Path(tempfile.mkdtemp(prefix="md-bench-"))
    try:
        sqlite_index = MetadataIndex(Database.from_url(f"sqlite:///{tmp / 'index.sqlite3'}"))
        pg_index = MetadataIndex(Database.from_url(pg.create_database("bench")))
        rate_sqlite = ingest_rate(sqlite_index, sample)
        rate_pg = ingest_rate(pg_index, sample)
        print(f"ingest, one instance per transaction ({len(sample)} instances): "
              f"SQLite {rate_sqlite:.0f}/s, PostgreSQL {rate_pg:.0f}/s, ratio {rate_pg / rate_sqlite:.2f}")
        load(pg_index, all_recs[len(sample):])
        print(f"PostgreSQL index: {len(all_recs)} instances in {args.studies} studies")
        with pg_index.db.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
        service = MetadataService(pg_index)
        level = dicom_pb2.QUERY_LEVEL_STUDY
        queries = {
            "PatientName=SMITH1* limit=100": md_pb.QueryRequest(
                tenant="bench", level=level, limit=100, filters=[md_pb.Filter(tag="00100010", wildcard="SMITH1*")]),
            "StudyDate=20200101-20201231 limit=100": md_pb.QueryRequest(
                tenant="bench", level=level, limit=100,
                filters=[md_pb.Filter(tag="00080020", range=md_pb.Range(lower="20200101", upper="20201231"))]),
            "limit=100": md_pb.QueryRequest(tenant="bench", level=level, limit=100),
            "PatientName=*ANNA limit=100": md_pb.QueryRequest(
                tenant="bench", level=level, limit=100, filters=[md_pb.Filter(tag="00100010", wildcard="*ANNA")]),
        }
        for name, req in queries.items():
            median, n = p50(service, req, args.runs)
            print(f"PostgreSQL study query {name}: p50 {median:.1f} ms ({n} matches)")
        sqlite_index.db.dispose()
        pg_index.db.dispose()
    finally:
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
