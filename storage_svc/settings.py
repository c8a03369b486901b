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

    @property
    def objects_dir(self) -> Path:
        return self.storage_dir or self.data_dir / "objects"
