"""Redis cache of hot answers: Query results and /metadata. Optional: with
no redis_url nothing is cached. Redis being down makes answers slower, never
wrong: every failure falls back to the database, and a cache that missed an
invalidation is not read again until a new epoch has orphaned every entry.

Keys carry generations: `gen:<tenant>` (any change in the tenant) for
queries, `gen:<tenant>:<study>` for /metadata. Invalidation increments
them; old entries are never read again and expire by TTL."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import cast

import redis

log = logging.getLogger(__name__)

PREFIX = "dicomserver:md:"


class Cache:
    def __init__(self, url: str, ttl: float = 300, timeout: float = 0.25, retry_after: float = 1.0) -> None:
        self._redis = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry_on_timeout=False
        )
        self.ttl = max(1, int(ttl))
        self.retry_after = retry_after
        self._lock = threading.Lock()
        # While True, Redis missed an invalidation or was unreachable: no reads.
        self._suspect = False
        self._next_try = 0.0
        self.hits = 0
        self.misses = 0

    # --- failure handling ----------------------------------------------------

    def _failed(self, what: str, exc: Exception) -> None:
        with self._lock:
            if not self._suspect:
                log.warning("redis %s failed (%s): serving from the database", what, type(exc).__name__)
            self._suspect = True
            self._next_try = time.monotonic() + self.retry_after

    def _usable(self) -> bool:
        """False while Redis is suspect; after `retry_after`, a new epoch
        (orphaning whatever may have missed an invalidation) makes it usable."""
        suspect = self._suspect  # read without the lock first
        if not suspect:
            return True
        with self._lock:
            if not self._suspect:
                return True
            if time.monotonic() < self._next_try:
                return False
            try:
                self._redis.incr(PREFIX + "epoch")
            except redis.RedisError:
                self._next_try = time.monotonic() + self.retry_after
                return False
            log.warning("redis reachable again: new cache epoch")
            self._suspect = False
            return True

    # --- reads and writes ----------------------------------------------------

    def _key(self, kind: str, tenant: str, study: str, parts: bytes) -> str:
        gens = [PREFIX + "epoch", f"{PREFIX}gen:{tenant}"]
        if study:
            gens.append(f"{PREFIX}gen:{tenant}:{study}")
        # Without decode_responses Redis answers bytes (its types allow str too).
        values = cast("list[bytes | None]", self._redis.mget(gens))
        stamp = ":".join((v or b"0").decode() for v in values)
        digest = hashlib.sha256(parts).hexdigest()[:32]
        return f"{PREFIX}{kind}:{stamp}:{tenant}:{digest}"

    def get_or_compute(self, kind: str, tenant: str, study: str, parts: bytes, compute: Callable[[], bytes]) -> bytes:
        """The cached bytes for (kind, tenant, study, parts), or compute()'s,
        which are then stored. Exceptions from compute() pass through."""
        key: str | None = None
        if self._usable():
            try:
                key = self._key(kind, tenant, study, parts)
                cached = cast("bytes | None", self._redis.get(key))  # bytes: no decode_responses
                if cached is not None:
                    self.hits += 1
                    return bytes(cached)
            except redis.RedisError as exc:
                self._failed("read", exc)
                key = None
        self.misses += 1
        value = compute()
        if key is not None:
            try:
                self._redis.set(key, value, ex=self.ttl)
            except redis.RedisError as exc:
                self._failed("write", exc)
        return value

    def invalidate(self, tenant: str, studies: Iterable[str]) -> None:
        """After a change is committed: drops cached queries of the tenant and
        /metadata of the studies. A failure marks the cache suspect."""
        keys = [f"{PREFIX}gen:{tenant}", *(f"{PREFIX}gen:{tenant}:{s}" for s in set(studies))]
        try:
            pipe = self._redis.pipeline(transaction=False)
            for k in keys:
                pipe.incr(k)
            pipe.execute()
        except redis.RedisError as exc:
            self._failed("invalidation", exc)

    def close(self) -> None:
        self._redis.close()
