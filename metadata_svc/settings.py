from __future__ import annotations

from common.settings import CommonSettings


class MetadataSettings(CommonSettings):
    # SQLAlchemy URL; defaults to sqlite:///<data_dir>/index.sqlite3.
    # PostgreSQL: postgresql+psycopg://user:password@host:port/database
    database_url: str | None = None
    # Upper bound for Query and ReadChangeFeed pages; 0 or more is capped to it.
    max_query_limit: int = 1000
    # Redis for hot Query and /metadata answers, e.g. redis://127.0.0.1:6379/0;
    # empty: no cache.
    redis_url: str = ""
    # Seconds a cached answer lives at most (invalidation drops it sooner).
    cache_ttl: float = 300.0
    # Seconds one Redis call may take before the database answers instead.
    redis_timeout: float = 0.25
    # Connections the index keeps per process (PostgreSQL).
    database_pool_size: int = 10
    # Hours audit records stay in the outbox (the audit consumer keeps its own
    # copy); 0 keeps them for ever. Pruning goes by age alone: a relay or audit
    # consumer further behind than this loses the pruned records, so it is off
    # unless set. Pruned every audit_prune_interval seconds.
    audit_outbox_retention_hours: float = 0.0
    audit_prune_interval: float = 600.0

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'index.sqlite3'}"
