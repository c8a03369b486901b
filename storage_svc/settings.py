from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import SecretStr

from common.settings import CommonSettings


class StorageSettings(CommonSettings):
    storage_backend: Literal["filesystem", "s3"] = "filesystem"
    # filesystem: defaults to <data_dir>/objects.
    storage_dir: Path | None = None
    # filesystem: fsync files and their folders before acknowledging a Put.
    fsync: bool = True
    # s3: any S3-compatible service; an empty endpoint means AWS.
    s3_endpoint_url: str = ""
    s3_bucket: str = "dicomserver"
    s3_region: str = "us-east-1"
    # Keys inside the bucket start with this prefix.
    s3_prefix: str = ""
    # Empty credentials fall back to boto3's chain (env, instance role, ...).
    s3_access_key_id: str = ""
    s3_secret_access_key: SecretStr | None = None
    s3_create_bucket: bool = False
    # Seconds a write or read grant is valid (presigned URLs expire then).
    grant_ttl: float = 600.0
    # The sweep: every sweep_interval seconds (0: never on its own), staging
    # writes and objects no index row points to, untouched for at least
    # sweep_min_age seconds, are removed (objects only with sweep_orphans).
    sweep_interval: float = 3600.0
    sweep_min_age: float = 3600.0
    sweep_orphans: bool = True

    @property
    def objects_dir(self) -> Path:
        return self.storage_dir or self.data_dir / "objects"

    @property
    def effective_sweep_min_age(self) -> float:
        # Never below a grant's life: a write may start any time before its grant expires.
        return max(self.sweep_min_age, self.grant_ttl + 60)
