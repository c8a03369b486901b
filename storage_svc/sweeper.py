"""The sweep, on demand and on a timer: staged writes that were never
committed (an edge died mid-write, or gave up), and objects no index row
points to (an edge died between commit and index, or before reclaiming a
replaced object). Which objects the index holds is asked of metadata_svc."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from common import errors
from common.clients import MetadataClient
from storage_svc.backend import ObjectStore
from storage_svc.keys import SweepReport
from storage_svc.settings import StorageSettings

log = logging.getLogger(__name__)


def sweep(
    store: ObjectStore,
    min_age: float,
    referenced: Callable[[list[str]], set[str]] | None,
    batch: int = 1000,
    max_orphan_share: float = 0.5,
) -> SweepReport:
    """Removes staged writes untouched for `min_age` seconds and, when
    `referenced` says which keys the index holds, objects at least that old
    that no index row points to. Removes no object when most of them look
    orphaned: an index that does not belong to this store (an operator who
    moved one of them) must not cost the objects."""
    cutoff = time.time() - min_age
    report = SweepReport(staging_removed=store.sweep_staging(cutoff))
    if referenced is None:
        return report
    old = store.objects_older_than(cutoff)
    report.scanned = len(old)
    orphans: list[str] = []
    for i in range(0, len(old), batch):
        keys = old[i : i + batch]
        known = referenced(keys)
        orphans += [k for k in keys if k not in known]
    if len(old) >= 20 and len(orphans) > max_orphan_share * len(old):
        log.error(
            "sweep: %d of %d objects are not in the index; not removing any (is this the index of this storage?)",
            len(orphans),
            len(old),
        )
        return report
    report.orphans_removed = store.delete_many(orphans)
    if orphans:
        log.warning("sweep: removed %d objects no index row points to", report.orphans_removed)
    return report


class Sweeper:
    def __init__(self, store: ObjectStore, metadata: MetadataClient | None, settings: StorageSettings) -> None:
        self._store = store
        self._metadata = metadata if settings.sweep_orphans else None
        self._settings = settings
        self._lock = threading.Lock()  # one sweep at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep(self, min_age: float = 0.0) -> SweepReport:
        """One sweep; `min_age` 0 means the configured minimum age. Objects
        are left alone while metadata_svc cannot say which it holds."""
        age = min_age or self._settings.effective_sweep_min_age
        with self._lock:
            try:
                return sweep(self._store, age, self._referenced if self._metadata is not None else None)
            except errors.ServiceError as exc:
                log.warning("sweep: the metadata service did not answer (%s); objects left alone", exc)
                return sweep(self._store, age, None)

    def _referenced(self, keys: list[str]) -> set[str]:
        assert self._metadata is not None
        return set(self._metadata.referenced_objects(keys))

    def start(self) -> None:
        if self._settings.sweep_interval <= 0:
            return
        self._thread = threading.Thread(target=self._run, name="sweeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._settings.sweep_interval):
            try:
                report = self.sweep()
            except OSError as exc:
                log.warning("sweep failed: %s", exc)
                continue
            if report.orphans_removed or report.staging_removed:
                log.info(
                    "sweep: %d staged writes and %d orphaned objects removed (%d objects checked)",
                    report.staging_removed,
                    report.orphans_removed,
                    report.scanned,
                )
