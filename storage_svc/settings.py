from __future__ import annotations

from pathlib import Path

from common.settings import CommonSettings


class StorageSettings(CommonSettings):
    # Defaults to <data_dir>/objects.
    storage_dir: Path | None = None
    # fsync files and their folders before acknowledging a Put.
    fsync: bool = True

    @property
    def objects_dir(self) -> Path:
        return self.storage_dir or self.data_dir / "objects"
