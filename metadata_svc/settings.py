from __future__ import annotations

from common.settings import CommonSettings


class MetadataSettings(CommonSettings):
    # SQLAlchemy URL; defaults to sqlite:///<data_dir>/index.sqlite3.
    database_url: str | None = None
    # Upper bound for Query and ReadChangeFeed pages; 0 or more is capped to it.
    max_query_limit: int = 1000

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'index.sqlite3'}"
