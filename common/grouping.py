"""Group calls: what concurrent threads ask of a service at the same moment
goes out as one call (one transaction, one round of fsyncs). Nothing waits
for company: a lone request is sent at once; while a call is in flight the
next requests queue up, and the first of them sends them all."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Req = TypeVar("Req")
Res = TypeVar("Res")


@dataclass(eq=False)
class _Waiting(Generic[Req, Res]):
    request: Req
    key: Hashable
    wake: threading.Event = field(default_factory=threading.Event)
    lead: bool = False
    done: bool = False
    result: Res | None = None
    error: Exception | None = None


class GroupCall(Generic[Req, Res]):
    """`send` takes the requests of one group (all with the same key) and
    returns one result per request, in order: a result, or the exception
    that request's caller gets. When `send` itself raises, the requests of
    that group are sent again one by one (to find whose it was) if
    `retry_alone`, else every caller gets the exception."""

    def __init__(
        self,
        send: Callable[[Hashable, list[Req]], Sequence[Res | Exception]],
        max_batch: int = 64,
        retry_alone: bool = True,
    ) -> None:
        self._send = send
        self._max_batch = max_batch
        self._retry_alone = retry_alone
        self._lock = threading.Lock()
        self._queue: list[_Waiting[Req, Res]] = []
        self._busy = False

    def call(self, request: Req, key: Hashable = None) -> Res:
        me: _Waiting[Req, Res] = _Waiting(request, key)
        with self._lock:
            self._queue.append(me)
            if not self._busy:
                self._busy = me.lead = True
        while not me.done:
            if me.lead:
                self._run_batch()
            else:
                me.wake.wait()
                me.wake.clear()
        if me.error is not None:
            raise me.error
        return me.result  # type: ignore[return-value]

    def _run_batch(self) -> None:
        with self._lock:
            key = self._queue[0].key
            batch: list[_Waiting[Req, Res]] = []
            for w in self._queue:
                if w.key != key or len(batch) == self._max_batch:
                    break
                batch.append(w)
            del self._queue[: len(batch)]
        try:
            self._settle(batch, self._send(key, [w.request for w in batch]))
        except Exception as exc:
            if len(batch) == 1 or not self._retry_alone:
                for w in batch:
                    w.error = exc
            else:
                for w in batch:
                    try:
                        self._settle([w], self._send(key, [w.request]))
                    except Exception as one:
                        w.error = one
        with self._lock:
            for w in batch:
                w.done, w.lead = True, False
                w.wake.set()
            if self._queue:
                self._queue[0].lead = True
                self._queue[0].wake.set()
            else:
                self._busy = False

    @staticmethod
    def _settle(batch: list[_Waiting[Req, Res]], results: Sequence[Res | Exception]) -> None:
        if len(results) != len(batch):
            raise RuntimeError(f"{len(results)} results for {len(batch)} requests")
        for w, r in zip(batch, results, strict=False):
            if isinstance(r, Exception):
                w.error = r
            else:
                w.result = r
