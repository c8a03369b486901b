"""What storage_svc needs of a place to keep objects, and how one is chosen."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

from common.gen.dicomserver.v1 import dicom_pb2
from storage_svc.keys import ObjectInfo, Stored
from storage_svc.settings import StorageSettings


class ObjectStore(Protocol):
    """Missing objects raise FileNotFoundError, malformed keys BadKey."""

    def put(self, ref: dicom_pb2.InstanceRef, chunks: Iterable[bytes], expected_size: int = 0) -> Stored: ...

    def get(self, key: str, offset: int = 0, length: int = 0) -> tuple[int, Iterator[bytes]]: ...

    def stat(self, key: str) -> ObjectInfo: ...

    def delete(self, key: str) -> bool: ...


def open_store(settings: StorageSettings) -> ObjectStore:
    if settings.storage_backend == "s3":
        from storage_svc.s3 import S3Store

        return S3Store(settings)
    from storage_svc.filesystem import FilesystemStore

    return FilesystemStore(settings.objects_dir, settings.fsync)
