"""What storage_svc needs of a place to keep objects, and how one is chosen."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

from common.gen.dicomserver.v1 import dicom_pb2
from storage_svc.keys import CommitRequest, ObjectInfo, ReadTarget, Stored, WriteTarget
from storage_svc.settings import StorageSettings


class ObjectStore(Protocol):
    """Missing objects raise FileNotFoundError, malformed keys BadKey; a
    commit of nothing staged raises UnknownGrant, of the wrong bytes
    SizeMismatch or ChecksumMismatch."""

    # True when writes are granted only for a known ref and size.
    needs_ref: bool

    def put(self, ref: dicom_pb2.InstanceRef, chunks: Iterable[bytes], expected_size: int = 0) -> Stored: ...

    def get(self, key: str, offset: int = 0, length: int = 0) -> tuple[int, Iterator[bytes]]: ...

    def stat(self, key: str) -> ObjectInfo: ...

    def delete(self, key: str) -> bool: ...

    def grant_write(self, count: int, ref: dicom_pb2.InstanceRef | None = None, size: int = 0) -> list[WriteTarget]: ...

    def commit_write(
        self,
        grant_id: str,
        ref: dicom_pb2.InstanceRef,
        size: int,
        crc32: int,
        etags: Sequence[str] = (),
        object_key: str = "",
        upload_id: str = "",
    ) -> Stored: ...

    def commit_writes(self, requests: Sequence[CommitRequest]) -> list[Stored | Exception]: ...

    def grant_read(self, keys: Sequence[str]) -> list[ReadTarget]: ...

    # The sweep's parts (storage_svc.sweeper decides what goes).
    def sweep_staging(self, cutoff: float) -> int: ...

    def objects_older_than(self, cutoff: float) -> list[str]: ...

    def delete_many(self, keys: Sequence[str]) -> int: ...


def open_store(settings: StorageSettings) -> ObjectStore:
    if settings.storage_backend == "s3":
        from storage_svc.s3 import S3Store

        return S3Store(settings)
    from storage_svc.filesystem import FilesystemStore

    return FilesystemStore(settings.objects_dir, settings.fsync, settings.grant_ttl)
