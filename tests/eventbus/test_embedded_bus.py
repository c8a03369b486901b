"""The consumer loop on the embedded event log (the outbox read through
MetadataService), in process: both consumers apply every event once,
retries and dead letters, and an outage that waits instead of discarding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import select

from common import errors
from common.clients import channel
from common.gen.dicomserver.v1 import events_pb2
from eventbus.consumer import ConsumerLoop
from eventbus.handlers import audit_sink, metadata_precompute
from eventbus.store import AuditEntry, DeadLetter, Store
from eventbus.transports import EmbeddedLog
from metadata_svc.schema import SeriesMetadata
from tests.eventbus.bus_support import index_study, metadata_sops

MetadataServer = Any  # tests/eventbus/conftest.py


def drain(*loops: ConsumerLoop) -> None:
    while sum(loop.run_once() for loop in loops):
        pass


@pytest.fixture(params=["sqlite", "postgresql"])
def metadata(request: pytest.FixtureRequest) -> MetadataServer:
    return request.getfixturevalue(f"metadata_{'pg' if request.param == 'postgresql' else 'sqlite'}")


def test_both_consumers_apply_every_event_once(metadata: MetadataServer, tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'bus.sqlite3'}")
    ch = channel(metadata.addr)
    loops = [
        ConsumerLoop("metadata", EmbeddedLog("metadata", ch, store), metadata_precompute(ch), batch=4),
        ConsumerLoop("audit", EmbeddedLog("audit", ch, store), audit_sink(store), batch=4),
    ]
    sops = index_study(metadata.index, "a", "1.1", 2, 3) + index_study(metadata.index, "b", "1.2", 1, 2)
    drain(*loops)
    with store.engine.connect() as conn:
        audit = conn.execute(
            select(AuditEntry.sequence, AuditEntry.sop_instance_uid, AuditEntry.deliveries).order_by(
                AuditEntry.sequence
            )
        ).all()
    assert [sop for _, sop, _ in audit] == sops and {d for _, _, d in audit} == {1}
    # Every series precomputed, current, and what /metadata serves.
    assert metadata.index.refresh_metadata("a", "1.1") == 0 and metadata.index.refresh_metadata("b", "1.2") == 0
    with metadata.index.db.reader() as s:
        assert len(s.scalars(select(SeriesMetadata)).all()) == 3
    assert metadata_sops(metadata.index, "a", "1.1") == sops[:6]
    # More events later: only those are read (offsets were stored).
    more = index_study(metadata.index, "a", "1.3", 1, 1)
    fresh = [ConsumerLoop("audit", EmbeddedLog("audit", ch, store), audit_sink(store))]
    drain(*fresh)
    assert fresh[0].handled == 1
    with store.engine.connect() as conn:
        assert conn.execute(select(AuditEntry.sop_instance_uid).order_by(AuditEntry.sequence.desc())).first() == (
            more[0],
        )
    store.dispose()


def test_failing_event_is_retried_then_dead_lettered(metadata_sqlite: MetadataServer, tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'bus.sqlite3'}")
    ch = channel(metadata_sqlite.addr)
    sops = index_study(metadata_sqlite.index, "c", "2.1", 1, 3)
    attempts: dict[str, int] = {}
    audit = audit_sink(store)

    def handler(event: events_pb2.Event) -> None:
        """The audit sink, where one event always fails and one fails once."""
        sop = event.instance_stored.location.ref.sop_instance_uid
        attempts[sop] = attempts.get(sop, 0) + 1
        if sop == sops[1] or (sop == sops[2] and attempts[sop] == 1):
            raise ValueError("cannot handle this one")
        audit(event)

    loop = ConsumerLoop("audit", EmbeddedLog("audit", ch, store), handler, max_attempts=3, backoff=0)
    drain(loop)
    assert attempts == {sops[0]: 1, sops[1]: 3, sops[2]: 2}
    with store.engine.connect() as conn:
        assert [r for (r,) in conn.execute(select(AuditEntry.sop_instance_uid).order_by(AuditEntry.sequence))] == [
            sops[0],
            sops[2],
        ]
        (dead,) = conn.execute(select(DeadLetter.consumer, DeadLetter.error, DeadLetter.payload)).all()
    assert dead[0] == "audit" and "cannot handle this one" in dead[1]
    assert events_pb2.Event.FromString(dead[2]).instance_stored.location.ref.sop_instance_uid == sops[1]
    assert store.offset("consumer:audit") > 0
    store.dispose()


def test_an_outage_is_waited_out_not_dead_lettered(metadata_sqlite: MetadataServer, tmp_path: Path) -> None:
    """The metadata service stops answering mid-stream: the batch is kept
    (offset unmoved, nothing dead-lettered) and handled once it is back."""
    store = Store(f"sqlite:///{tmp_path / 'bus.sqlite3'}")
    ch = channel(metadata_sqlite.addr)
    index_study(metadata_sqlite.index, "d", "3.1", 1, 2)
    down = grpc.insecure_channel("127.0.0.1:9")  # nothing listens there
    loop = ConsumerLoop("metadata", EmbeddedLog("metadata", ch, store), metadata_precompute(down), backoff=0)
    with pytest.raises(errors.Unavailable):
        loop.run_once()
    loop.transport.rewind()
    assert loop.dead_lettered == 0 and store.offset("consumer:metadata") == 0
    loop.handler = metadata_precompute(ch)
    drain(loop)
    assert loop.handled == 2 and store.offset("consumer:metadata") > 0
    assert metadata_sqlite.index.refresh_metadata("d", "3.1") == 0
    store.dispose()


def test_outbox_lag_gauge_counts_what_each_reader_has_not_handled(
    metadata_sqlite: MetadataServer, tmp_path: Path
) -> None:
    import threading
    import time

    from prometheus_client import REGISTRY

    from eventbus import lag

    store = Store(f"sqlite:///{tmp_path / 'bus.sqlite3'}")
    ch = channel(metadata_sqlite.addr)
    index_study(metadata_sqlite.index, "a", "5.1", 1, 4)
    audit = ConsumerLoop("audit", EmbeddedLog("audit", ch, store), audit_sink(store), batch=3)
    audit.run_once()  # handles 3 of the 4 events

    stop = threading.Event()
    watcher = threading.Thread(target=lag.watch, args=(ch, store, ["consumer:audit", "consumer:idle"], 0.05, stop))
    watcher.start()
    try:

        def gauge(reader: str) -> float | None:
            return REGISTRY.get_sample_value("dicomserver_outbox_lag_events", {"reader": reader})

        deadline = time.monotonic() + 10
        while gauge("consumer:idle") is None and time.monotonic() < deadline:
            stop.wait(0.05)
        assert gauge("consumer:audit") == 1
        assert gauge("consumer:idle") == 4
    finally:
        stop.set()
        watcher.join()
        store.dispose()


def test_metadata_refresh_runs_once_per_series_per_batch(metadata_sqlite: MetadataServer, tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'bus.sqlite3'}")
    ch = channel(metadata_sqlite.addr)
    refreshed: list[tuple[str, str]] = []
    real = metadata_precompute(ch)

    def counting(event: events_pb2.Event) -> None:
        ref = event.instance_stored.location.ref
        refreshed.append((ref.study_instance_uid, ref.series_instance_uid))
        real(event)

    counting.coalesce = real.coalesce  # type: ignore[attr-defined]
    sops = index_study(metadata_sqlite.index, "a", "6.1", 2, 5)  # 2 series of 5
    loop = ConsumerLoop("metadata", EmbeddedLog("metadata", ch, store), counting, batch=100)
    assert loop.run_once() == 10
    assert sorted(refreshed) == sorted(set(refreshed)) and len(refreshed) == 2
    # Both series are precomputed and current: what /metadata serves is complete.
    assert metadata_sqlite.index.refresh_metadata("a", "6.1") == 0
    assert metadata_sops(metadata_sqlite.index, "a", "6.1") == sops
    store.dispose()
