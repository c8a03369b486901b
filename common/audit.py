"""Audit records from the edges to the event bus: who did what, when and
from where (events.proto AuditRecord).

An edge creates one `AuditLog` per process and calls `record()` once per
request. `record()` never blocks and never raises: the record goes on a
bounded queue, and a daemon thread sends batches to MetadataService
RecordAudit, which appends them to the outbox. While the metadata service is
away the queue holds at most `queue_size` records; beyond that the oldest
are dropped and counted in `dicomserver_audit_dropped_total`.

The limits below are the contract of RecordAudit: `check()` is what the
metadata service enforces, `sanitize()` is how the edges make a record fit
(a request may name an over-long or malformed UID; its audit record must
still get through)."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter

from common import errors
from common.gen.dicomserver.v1 import events_pb2
from common.validation import InvalidValue, check_tenant

log = logging.getLogger(__name__)

Record = events_pb2.AuditRecord

# Records per RecordAudit call the metadata service accepts.
MAX_RECORDS_PER_CALL = 500
# Characters per string field. UIDs are at most 64 in DICOM.
LIMITS: dict[str, int] = {
    "tenant": 63,
    "subject": 256,
    "source_address": 256,
    "edge": 32,
    "operation": 512,
    "study_instance_uid": 64,
    "series_instance_uid": 64,
    "sop_instance_uid": 64,
    "detail": 1024,
    "request_id": 128,
}
# Tenant of records made before a tenant was known (failed authentication).
NO_TENANT = ""
_ACTIONS = set(Record.Action.values())
_OUTCOMES = set(Record.Outcome.values())
# Timestamp's valid range: 0001-01-01 to 9999-12-31.
_MIN_SECONDS, _MAX_SECONDS = -62135596800, 253402300799
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

DROPPED = Counter("dicomserver_audit_dropped_total", "Audit records given up on before they were delivered", ["reason"])
DELIVERED = Counter("dicomserver_audit_delivered_total", "Audit records the metadata service took")


def check(record: Record) -> None:
    """Raises InvalidValue when the metadata service must refuse the record."""
    if record.tenant != NO_TENANT:
        check_tenant(record.tenant)
    for name, limit in LIMITS.items():
        value = getattr(record, name)
        if len(value) > limit:
            raise InvalidValue(f"audit record {name} is longer than {limit} characters")
        if "\x00" in value:
            raise InvalidValue(f"audit record {name} contains a NUL character")
    if record.action not in _ACTIONS:
        raise InvalidValue("audit record action is not a known action")
    if record.outcome not in _OUTCOMES:
        raise InvalidValue("audit record outcome is not a known outcome")
    if not (_MIN_SECONDS <= record.time.seconds <= _MAX_SECONDS and 0 <= record.time.nanos < 1_000_000_000):
        raise InvalidValue("audit record time is out of range")


def check_batch(records: Sequence[Record]) -> None:
    if len(records) > MAX_RECORDS_PER_CALL:
        raise InvalidValue(f"at most {MAX_RECORDS_PER_CALL} audit records per call")
    for record in records:
        check(record)


def sanitize(record: Record) -> Record:
    """A copy of the record that `check()` accepts: control characters
    replaced, strings cut to their limits, a malformed tenant moved out of
    the tenant field, unknown enum values unspecified, time filled if unset."""
    out = Record()
    out.CopyFrom(record)
    _sanitize(out)
    return out


def _sanitize(out: Record) -> None:
    """sanitize() in place."""
    for name, limit in LIMITS.items():
        value = getattr(out, name)
        if value and (len(value) > limit or _CONTROL.search(value)):
            setattr(out, name, _CONTROL.sub("\ufffd", value)[:limit])
    if out.tenant != NO_TENANT:
        try:
            check_tenant(out.tenant)
        except InvalidValue:
            out.tenant = NO_TENANT
            out.detail = (out.detail + " (the tenant asked for is malformed)").strip()[: LIMITS["detail"]]
    if out.action not in _ACTIONS:
        out.action = Record.ACTION_UNSPECIFIED
    if out.outcome not in _OUTCOMES:
        out.outcome = Record.OUTCOME_UNSPECIFIED
    if not out.HasField("time") or not (
        _MIN_SECONDS <= out.time.seconds <= _MAX_SECONDS and 0 <= out.time.nanos < 1_000_000_000
    ):
        out.time.FromDatetime(datetime.now(UTC))


def _enum(enum: Any, prefix: str, value: Any) -> Any:
    """An enum field's value from a number or a name ("read", "ACTION_READ")."""
    if isinstance(value, str):
        name = value.upper()
        return enum.Value(name if name.startswith(prefix) else prefix + name)
    return value


def build(record: Record | None = None, **fields: Any) -> Record:
    """A record from a message and/or keyword fields. `action` and `outcome`
    take enum numbers or names; `time` takes a datetime."""
    out = Record()
    if record is not None:
        out.CopyFrom(record)
    for name, value in fields.items():
        if value is None:
            continue
        if name == "time":
            if isinstance(value, datetime):
                out.time.FromDatetime(value if value.tzinfo else value.replace(tzinfo=UTC))
            else:
                out.time.CopyFrom(value)
        elif name == "action":
            out.action = _enum(Record.Action, "ACTION_", value)
        elif name == "outcome":
            out.outcome = _enum(Record.Outcome, "OUTCOME_", value)
        else:
            setattr(out, name, value)
    return out


class AuditLog:
    """The edges' way to the audit trail.

        audit = AuditLog(MetadataClient(channel(settings.metadata_addr)), edge="dicomweb",
                         enabled=settings.audit_enabled, queue_size=settings.audit_queue_size)
        audit.record(record)                          # an AuditRecord
        audit.record(action="read", outcome="success", operation="GET /studies", status=200, ...)
        audit.close(settings.shutdown_grace)          # at shutdown: delivers what it can

    Records without `edge` get the log's; records without `time` get the
    time of the record() call."""

    def __init__(
        self,
        client: Any,
        *,
        edge: str = "",
        enabled: bool = True,
        queue_size: int = 10000,
        batch_size: int = 200,
        flush_interval: float = 0.5,
        retry_backoff: float = 0.5,
        max_backoff: float = 5.0,
        call_timeout: float = 10.0,
    ) -> None:
        """`client` is a common.clients.MetadataClient (anything with
        `record_audit(records, timeout=)`)."""
        self._client = client
        self.edge = edge
        self.enabled = enabled
        self.queue_size = max(1, queue_size)
        self.batch_size = max(1, min(batch_size, MAX_RECORDS_PER_CALL))
        self.flush_interval = flush_interval
        self.retry_backoff = retry_backoff
        self.max_backoff = max_backoff
        self.call_timeout = call_timeout
        self._cond = threading.Condition()
        self._queue: deque[Record] = deque()
        self._inflight = 0
        self._oldest_at = 0.0  # monotonic time the oldest queued record arrived
        # flush() callers waiting: while any is, whatever is queued is due now.
        # (A time of 0.0 is no way to say "due now": the monotonic clock
        # starts near zero when the machine boots.)
        self._flushing = 0
        self._closing = False
        self._deadline = 0.0
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._counts = threading.Lock()
        self._warned_at: dict[str, float] = {}
        self.delivered = 0
        self.dropped = 0

    @classmethod
    def from_settings(cls, settings: Any, client: Any, edge: str) -> AuditLog:
        """From CommonSettings: audit_enabled and audit_queue_size."""
        return cls(client, edge=edge, enabled=settings.audit_enabled, queue_size=settings.audit_queue_size)

    # --- the request path -----------------------------------------------------

    def record(self, record: Record | None = None, /, **fields: Any) -> None:
        """Queues a record for delivery. Never blocks, never raises."""
        if not self.enabled:
            return
        try:
            rec = build(record, **fields)
            if not rec.edge:
                rec.edge = self.edge
            _sanitize(rec)  # also gives a record without a time the current one
        except Exception as exc:  # a caller's mistake must not fail the request
            log.warning("audit record not made (%s); dropped", type(exc).__name__)
            self._count_drops("invalid", 1)
            return
        try:
            with self._cond:
                if self._closing:
                    dropped = 1
                else:
                    self._ensure_thread()
                    was_empty = not self._queue
                    if was_empty:
                        self._oldest_at = time.monotonic()
                    self._queue.append(rec)
                    dropped = self._trim()
                    # The sender sleeps without a deadline while the queue is
                    # empty: wake it for the first record, and for a full batch.
                    if was_empty or len(self._queue) >= self.batch_size:
                        self._cond.notify_all()
            if dropped:
                self._count_drops("closed" if self._closing else "queue_full", dropped)
        except Exception as exc:  # never let auditing fail the request
            log.warning("audit record not queued (%s)", type(exc).__name__)

    @property
    def pending(self) -> int:
        """Records queued or being sent."""
        with self._cond:
            return len(self._queue) + self._inflight

    def flush(self, timeout: float) -> bool:
        """Waits until every record queued so far is delivered (or given
        up on); False when that took longer than `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._flushing += 1
            self._cond.notify_all()
            try:
                while self._queue or self._inflight:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._cond.wait(left)
            finally:
                self._flushing -= 1
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Delivers what it can within `timeout` seconds, then stops; records
        still queued then are counted as dropped. Later records are dropped."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._deadline = time.monotonic() + timeout
            thread = self._thread if self._pid == os.getpid() else None
            self._cond.notify_all()
        if thread is not None:
            thread.join(max(0.0, timeout) + 0.5)
        with self._cond:
            left = len(self._queue)
            self._queue.clear()
        if left:
            self._count_drops("shutdown", left)

    # --- internals --------------------------------------------------------------

    def _ensure_thread(self) -> None:
        """Starts the sender in this process (again after a fork). Holds _cond."""
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        self._pid = os.getpid()
        self._inflight = 0
        self._thread = threading.Thread(target=self._run, name="audit-sender", daemon=True)
        self._thread.start()

    def _trim(self) -> int:
        """Drops the oldest records beyond the bound. Holds _cond."""
        dropped = 0
        while len(self._queue) > self.queue_size:
            self._queue.popleft()
            dropped += 1
        return dropped

    def _count_drops(self, reason: str, n: int) -> None:
        """Counts and logs (at most once a minute per reason) records given up on."""
        DROPPED.labels(reason).inc(n)
        now = time.monotonic()
        with self._counts:
            self.dropped += n
            total = self.dropped
            last = self._warned_at.get(reason)
            warn = last is None or now - last >= 60
            if warn:
                self._warned_at[reason] = now
        if warn:
            log.warning("audit: %d records dropped (%s); %d dropped so far", n, reason, total)

    def _next_batch(self) -> list[Record] | None:
        """Waits for a batch that is due; None once closing and empty."""
        with self._cond:
            while True:
                if self._closing:
                    if not self._queue or time.monotonic() >= self._deadline:
                        return None
                    break
                if len(self._queue) >= self.batch_size or (self._queue and self._flushing):
                    break
                if self._queue:
                    due = self._oldest_at + self.flush_interval - time.monotonic()
                    if due <= 0:
                        break
                    self._cond.wait(due)
                else:
                    self._cond.wait()
            batch = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
            self._inflight = len(batch)
            self._oldest_at = time.monotonic()
            return batch

    def _run(self) -> None:
        failures = 0
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._send(batch)
            except _Undelivered as exc:
                failures += 1
                with self._cond:
                    self._queue.extendleft(reversed(exc.records))
                    self._inflight = 0
                    dropped = self._trim()
                    pending = len(self._queue)
                    self._cond.notify_all()
                if dropped:
                    self._count_drops("queue_full", dropped)
                if failures == 1 or failures % 20 == 0:
                    log.warning(
                        "audit: the metadata service did not take %d records (%s); %d pending, retrying",
                        len(exc.records),
                        type(exc.cause).__name__,
                        pending,
                    )
                wait = min(self.max_backoff, self.retry_backoff * 2 ** min(failures - 1, 16))
                with self._cond:
                    end = time.monotonic() + wait
                    if self._closing:
                        end = min(end, self._deadline)
                    while (left := end - time.monotonic()) > 0 and not (self._closing and not self._queue):
                        self._cond.wait(left)
                continue
            if failures:
                log.warning("audit: the metadata service takes records again")
                failures = 0
            with self._cond:
                self._inflight = 0
                self._cond.notify_all()

    def _send(self, batch: list[Record]) -> None:
        """Delivers a batch, or raises _Undelivered with the records not yet
        delivered. A batch the service refuses as invalid (which sanitize()
        should make impossible) is split to find the records at fault; those
        are dropped and the rest delivered."""
        chunks = [batch]
        while chunks:
            chunk = chunks.pop(0)
            timeout = self.call_timeout
            if self._closing:
                timeout = max(0.1, min(timeout, self._deadline - time.monotonic()))
            try:
                self._client.record_audit(chunk, timeout=timeout)
            except errors.InvalidArgument:
                if len(chunk) == 1:
                    log.warning("audit: the metadata service refused a record as invalid; dropped")
                    self._count_drops("refused", 1)
                else:
                    half = len(chunk) // 2
                    chunks[:0] = [chunk[:half], chunk[half:]]
                continue
            except Exception as exc:  # unreachable, unauthenticated, overloaded...: kept and retried
                raise _Undelivered([r for c in [chunk, *chunks] for r in c], exc) from exc
            with self._counts:
                self.delivered += len(chunk)
            DELIVERED.inc(len(chunk))
            log.debug("audit: delivered %d records", len(chunk))


class _Undelivered(Exception):
    def __init__(self, records: list[Record], cause: Exception) -> None:
        super().__init__(str(cause))
        self.records = records
        self.cause = cause
