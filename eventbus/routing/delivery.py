"""Working off the delivery queues: one worker thread per destination, so
that a destination that is down holds up no other, and one thread that
releases quiet studies.

A worker takes the oldest due deliveries of its destination (a batch),
finds each instance in the index (deliveries of deleted instances are
dropped), opens the stored objects where storage grants them and hands
them to its sender. What was delivered leaves the queue; each failure
counts an attempt and waits backoff * 2^(attempts-1) seconds (at most
max_backoff) before it is tried again, and after max_attempts it becomes a
dead letter. When the destination cannot be reached at all the worker
itself waits out that backoff before it tries anything else. Internal
outages (index, storage, the event bus's database) are not the
destination's fault: nothing is counted and the batch is tried again."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from sqlalchemy.exc import SQLAlchemyError

from common import errors
from common.clients import MetadataClient
from common.gen.dicomserver.v1 import dicom_pb2
from eventbus.routing import metrics
from eventbus.routing.config import DicomwebDestination, DimseDestination, Rule
from eventbus.routing.objects import ObjectFiles
from eventbus.routing.queue import DeliveryQueue, Job, Retry, Target
from eventbus.routing.sending import Outcome, Sender

log = logging.getLogger(__name__)

# Seconds an idle worker sleeps unless woken by new work.
IDLE = 5.0
# Seconds between refreshes of the queue gauges.
METRICS_INTERVAL = 5.0
OUTSIDE_WALL = "the destination is not bound to the instance's tenant"


class DestinationWorker:
    def __init__(
        self,
        name: str,
        destination: DimseDestination | DicomwebDestination,
        sender: Sender,
        queue: DeliveryQueue,
        metadata: MetadataClient,
        files: ObjectFiles,
        retry: Retry,
        batch: int,
    ) -> None:
        self.name = name
        self.destination = destination
        self.sender = sender
        self.queue = queue
        self.metadata = metadata
        self.files = files
        self.retry = retry
        self.batch = batch
        self.blocked_until = 0.0  # the destination is down: nothing before this
        self._wake = threading.Event()

    def notify(self) -> None:
        """New deliveries were queued: look now rather than after the idle wait."""
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                wait = self.run_once(stop)
            except (errors.ServiceError, SQLAlchemyError, OSError) as exc:
                # The index, storage or our database is away: nothing is counted, the batch is tried again.
                detail = f": {exc}" if isinstance(exc, errors.ServiceError) else ""
                log.warning("routing to %s paused: %s%s", self.name, type(exc).__name__, detail)
                wait = 2.0
            except Exception:
                log.exception("routing to %s failed; trying again", self.name)
                wait = 5.0
            if wait > 0 and not stop.is_set():
                self._wake.wait(wait)
            self._wake.clear()

    def run_once(self, stop: threading.Event) -> float:
        """Delivers one batch; returns how long to wait before the next (0: at once)."""
        now = time.time()
        if now < self.blocked_until:
            return self.blocked_until - now
        jobs = self.queue.due(self.name, now, self.batch)
        if not jobs:
            nxt = self.queue.next_due(self.name)
            return IDLE if nxt is None else max(0.05, min(IDLE, nxt - now))
        outside = [j for j in jobs if j.tenant not in self.destination.tenants]
        if outside:  # the configuration changed since they were queued
            log.error(
                "routing to %s: %d deliveries of tenants it is not bound to become dead letters",
                self.name,
                len(outside),
            )
            self.queue.dead_letter([(j, OUTSIDE_WALL) for j in outside], now)
            jobs = [j for j in jobs if j.tenant in self.destination.tenants]
        locations = self._locate(jobs)
        gone = [j for j in jobs if (j.tenant, j.sop) not in locations]
        self.queue.skipped(gone)
        jobs = [j for j in jobs if (j.tenant, j.sop) in locations]
        if not jobs:
            return 0.0
        # One object per instance, however often it is queued in this batch.
        unique = list(dict.fromkeys((j.tenant, j.sop) for j in jobs))
        with self.files.open([locations[k] for k in unique]) as objects:
            outcome = self.sender.send(objects, stop)
        return self._record(jobs, locations, outcome, stop)

    def _locate(self, jobs: Sequence[Job]) -> dict[tuple[str, str], dicom_pb2.InstanceLocation]:
        """The current location of each job's instance, by (tenant, SOP Instance UID)."""
        by_tenant: dict[str, list[str]] = {}
        for j in jobs:
            by_tenant.setdefault(j.tenant, []).append(j.sop)
        out = {}
        for tenant, sops in by_tenant.items():
            for loc in self.metadata.locate_each(tenant, list(dict.fromkeys(sops))):
                out[(tenant, loc.ref.sop_instance_uid)] = loc
        return out

    def _record(
        self,
        jobs: Sequence[Job],
        locations: dict[tuple[str, str], dicom_pb2.InstanceLocation],
        outcome: Outcome,
        stop: threading.Event,
    ) -> float:
        delivered: list[Job] = []
        failures: list[tuple[Job, str]] = []
        for job in jobs:
            key = locations[(job.tenant, job.sop)].object_key
            if key in outcome.results:
                error = outcome.results[key]
                if error is None:
                    delivered.append(job)
                else:
                    failures.append((job, error))
            elif outcome.down and not stop.is_set():
                failures.append((job, outcome.down))
        now = time.time()
        self.queue.delivered(delivered)
        dead = self.queue.failed(failures, self.retry, now)
        metrics.SENT.labels(self.name).inc(len(delivered))
        metrics.FAILED.labels(self.name).inc(len(failures))
        if failures:
            log.warning(
                "routing to %s: %d of %d deliveries failed (%s)%s",
                self.name,
                len(failures),
                len(jobs),
                failures[0][1],
                f"; {len(dead)} became dead letters" if dead else "",
            )
        if outcome.down:
            waiting = [j.attempts + 1 for j, _ in failures if j not in dead]
            if waiting:
                self.blocked_until = now + self.retry.delay(min(waiting))
                return self.blocked_until - now
        return 0.0


class QuietStudies:
    """Releases the studies "studies" rules matched once they have been quiet:
    every instance of the study, queued for each of the rule's destinations."""

    def __init__(
        self,
        rules: Iterable[Rule],
        queue: DeliveryQueue,
        metadata: MetadataClient,
        notify: Callable[[Iterable[str]], None],
    ) -> None:
        self.rules = {r.name: r for r in rules if r.send == "studies"}
        self.queue = queue
        self.metadata = metadata
        self.notify = notify
        shortest = min((r.quiet_seconds for r in self.rules.values()), default=IDLE)
        self.interval = min(IDLE, max(0.2, shortest / 4))

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            try:
                self.run_once(time.time())
            except (errors.ServiceError, SQLAlchemyError) as exc:
                log.warning("quiet studies not released yet: %s", type(exc).__name__)
            except Exception:
                log.exception("quiet studies not released")

    def run_once(self, now: float) -> int:
        released = 0
        for study in self.queue.quiet_studies({n: r.quiet_seconds for n, r in self.rules.items()}, now):
            rule = self.rules[study.rule]
            try:
                locations = self.metadata.locate(study.tenant, study.study)
            except errors.NotFound:
                locations = []  # deleted meanwhile: nothing to send
            targets = [
                Target(
                    d,
                    study.tenant,
                    loc.ref.study_instance_uid,
                    loc.ref.series_instance_uid,
                    loc.ref.sop_instance_uid,
                    f"rule:{rule.name}",
                )
                for loc in locations
                for d in rule.destinations
            ]
            if self.queue.release_study(study, targets, time.time()):
                released += 1
                self.notify(rule.destinations)
        return released


def refresh_metrics(queue: DeliveryQueue, names: Iterable[str], now: float) -> None:
    stats = queue.stats()
    for name in names:
        s = stats.get(name)
        metrics.QUEUED.labels(name).set(s.queued if s else 0)
        metrics.DEAD_LETTERS.labels(name).set(s.dead_letters if s else 0)
        oldest = s.oldest_queued_at if s else None
        metrics.LAG.labels(name).set(max(0.0, now - oldest) if oldest is not None else 0.0)


def watch_metrics(
    queue: DeliveryQueue, names: Sequence[str], stop: threading.Event, interval: float = METRICS_INTERVAL
) -> None:
    while True:
        try:
            refresh_metrics(queue, names, time.time())
        except Exception as exc:
            log.debug("routing metrics not refreshed: %s", type(exc).__name__)
        if stop.wait(interval):
            return
