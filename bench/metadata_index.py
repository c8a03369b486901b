"""Index-scale benchmark of the metadata service (not a test):

    .venv/bin/python -m bench.metadata_index [--studies 5000] [--per-study 20] [--ingest-sample 3000]
        [--batch 64] [--series-size 500] [--no-queries]

Starts a durable PostgreSQL 15 (fsync on, as deployed) with testbed/servers.py
and, on SQLite and on PostgreSQL, measures in this process (CPU is
time.process_time, so SQLite's own work counts and the PostgreSQL server's
does not):

- ingest, one IndexInstances transaction per instance (a lone C-STORE or
  STOW) and in calls of --batch records (what GroupIndexer sends when
  stores run concurrently): instances per second and CPU per instance;
- RefreshMetadata as the metadata consumer calls it while a series of
  --series-size instances is ingested one by one (a refresh after each
  instance, the worst case): CPU per refresh, overall and over the last
  tenth of the series;
- ReadOutbox as the embedded log's consumers call it: pages of 100 events
  and polls with nothing new, CPU per call.

Then it loads the rest of the index into PostgreSQL in batches and times
study-level queries (QIDO-RS /studies and C-FIND share this engine)
through MetadataService.Query, printing medians."""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.gen.dicomserver.v1 import dicom_pb2
from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from metadata_svc.db import Database
from metadata_svc.index import MetadataIndex
from metadata_svc.service import MetadataService
from testbed.records import make_ds, record
from testbed.servers import Postgres

LAST = ["SMITH", "JONES", "MULLER", "GARCIA", "ROSSI", "NGUYEN", "KOWALSKI", "DUPONT", "SILVA", "TANAKA"]
OUTBOX_PAGE = 100  # what an embedded-log consumer asks for (eventbus ConsumerLoop.batch)


class Ctx:
    def abort(self, code: Any, details: str) -> None:
        raise RuntimeError(code, details)


def records(studies: int, per_study: int, tenant: str = "bench", first: int = 0) -> list[md_pb.InstanceRecord]:
    rng = random.Random(5 + first)
    out = []
    for s in range(first, first + studies):
        name = f"{rng.choice(LAST)}{s % 97}^{rng.choice(['ANNA', 'JOHN', 'MARIA', 'LI'])}"
        date = f"{2010 + s % 15}{1 + s % 12:02d}{1 + s % 28:02d}"
        for i in range(per_study):
            series = i % 4
            ds = make_ds(
                f"1.2.826.0.1.{s}",
                f"1.2.826.0.1.{s}.{series}",
                f"1.2.826.0.1.{s}.{series}.{i}",
                patient_id=f"P{s // 2}",
                name=name,
                study_date=date,
                study_time="101010",
                accession=f"A{s}",
                modality=["CT", "MR", "US", "CR"][series],
                series_number=str(series + 1),
                instance_number=str(i + 1),
            )
            out.append(record(ds, tenant))
    return out


def one_series(size: int, tenant: str = "bench-series") -> list[md_pb.InstanceRecord]:
    return [
        record(
            make_ds("1.2.826.0.2", "1.2.826.0.2.1", f"1.2.826.0.2.1.{i}", patient_id="S1", instance_number=str(i + 1)),
            tenant,
        )
        for i in range(size)
    ]


def timed(work: Callable[[], object]) -> tuple[float, float]:
    """Wall and CPU seconds of work()."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def ingest(index: MetadataIndex, recs: list[md_pb.InstanceRecord], batch: int) -> tuple[float, float]:
    """Instances per second and CPU milliseconds per instance."""

    def run() -> None:
        for i in range(0, len(recs), batch):
            index.index(recs[i : i + batch], md_pb.DUPLICATE_POLICY_OVERWRITE)

    wall, cpu = timed(run)
    return len(recs) / wall, cpu / len(recs) * 1000


def ingest_with_refresh(index: MetadataIndex, recs: list[md_pb.InstanceRecord]) -> str:
    """Each instance indexed, then its series refreshed (CPU of the refreshes only)."""
    costs = []
    for rec in recs:
        index.index([rec], md_pb.DUPLICATE_POLICY_OVERWRITE)
        ref = rec.location.ref

        def refresh(ref: dicom_pb2.InstanceRef = ref) -> object:
            return index.refresh_metadata(ref.tenant, ref.study_instance_uid, ref.series_instance_uid)

        _, cpu = timed(refresh)
        costs.append(cpu)
    tail = costs[-max(1, len(costs) // 10) :]
    return (
        f"CPU {statistics.mean(costs) * 1000:.2f} ms/refresh, {statistics.mean(tail) * 1000:.2f} ms over the "
        f"last tenth, {sum(costs):.2f} s for the series of {len(recs)}"
    )


def outbox_reads(index: MetadataIndex) -> str:
    pages, events, after = 0, 0, 0

    def page_through() -> None:
        nonlocal pages, events, after
        while True:
            got, _ = index.read_outbox(after, OUTBOX_PAGE)
            if not got:
                return
            pages, events, after = pages + 1, events + len(got), got[-1].sequence

    _, cpu = timed(page_through)
    idle_calls = 200
    _, idle = timed(lambda: [index.read_outbox(after, OUTBOX_PAGE) for _ in range(idle_calls)])
    return (
        f"CPU {cpu / pages * 1000:.2f} ms per page of {OUTBOX_PAGE} ({events} events), "
        f"{idle / idle_calls * 1000:.3f} ms per poll with nothing new"
    )


def p50(service: MetadataService, req: md_pb.QueryRequest, runs: int) -> tuple[float, int]:
    times, n = [], 0
    for _ in range(runs):
        start = time.perf_counter()
        n = len(service.Query(req, Ctx()).matches)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), n


def queries(pg_index: MetadataIndex, runs: int) -> None:
    with pg_index.db.engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    service = MetadataService(pg_index)
    level = dicom_pb2.QUERY_LEVEL_STUDY
    requests = {
        "PatientName=SMITH1* limit=100": md_pb.QueryRequest(
            tenant="bench", level=level, limit=100, filters=[md_pb.Filter(tag="00100010", wildcard="SMITH1*")]
        ),
        "StudyDate=20200101-20201231 limit=100": md_pb.QueryRequest(
            tenant="bench",
            level=level,
            limit=100,
            filters=[md_pb.Filter(tag="00080020", range=md_pb.Range(lower="20200101", upper="20201231"))],
        ),
        "limit=100": md_pb.QueryRequest(tenant="bench", level=level, limit=100),
        "PatientName=*ANNA limit=100": md_pb.QueryRequest(
            tenant="bench", level=level, limit=100, filters=[md_pb.Filter(tag="00100010", wildcard="*ANNA")]
        ),
    }
    for name, req in requests.items():
        median, n = p50(service, req, runs)
        print(f"PostgreSQL study query {name}: p50 {median:.1f} ms ({n} matches)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--studies", type=int, default=5000)
    parser.add_argument("--per-study", type=int, default=20)
    parser.add_argument("--ingest-sample", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--series-size", type=int, default=500)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--no-queries", action="store_true", help="skip loading the index and the queries")
    args = parser.parse_args()
    all_recs = records(args.studies, args.per_study)
    sample = all_recs[: args.ingest_sample]
    sample_studies = -(-args.ingest_sample // args.per_study)
    # Other studies than the single-record sample's, so that both measure creation.
    batched = records(sample_studies, args.per_study, tenant="bench-batched")[: args.ingest_sample]
    series = one_series(args.series_size)
    pg = Postgres(durable=True)
    pg.start()
    tmp = Path(tempfile.mkdtemp(prefix="md-bench-"))
    try:
        indexes = {
            "SQLite": MetadataIndex(Database.from_url(f"sqlite:///{tmp / 'index.sqlite3'}")),
            "PostgreSQL": MetadataIndex(Database.from_url(pg.create_database("bench"))),
        }
        rates: dict[str, float] = {}
        for name, index in indexes.items():
            rates[name], cpu = ingest(index, sample, 1)
            print(
                f"{name} ingest, one instance per call ({len(sample)}): {rates[name]:.0f}/s, CPU {cpu:.2f} ms/instance",
                flush=True,
            )
            rate, cpu = ingest(index, batched, args.batch)
            print(
                f"{name} ingest, {args.batch} instances per call ({len(batched)}): {rate:.0f}/s, "
                f"CPU {cpu:.2f} ms/instance",
                flush=True,
            )
            print(f"{name} refresh while a series is ingested: {ingest_with_refresh(index, series)}", flush=True)
            print(f"{name} outbox reads: {outbox_reads(index)}", flush=True)
        print(f"single-record ingest rate PostgreSQL/SQLite: {rates['PostgreSQL'] / rates['SQLite']:.2f}")
        if not args.no_queries:
            pg_index = indexes["PostgreSQL"]
            ingest(pg_index, all_recs[len(sample) :], 500)
            print(f"PostgreSQL index: {len(all_recs)} instances in {args.studies} studies", flush=True)
            queries(pg_index, args.runs)
        for index in indexes.values():
            index.db.dispose()
    finally:
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
