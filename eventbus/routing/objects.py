"""Stored objects as files to send, read where storage grants them
(ARCHITECTURE.md, "Bytes take the shortest path"): the object's own file
in the objects folder, opened once and sent through its /proc/self/fd
entry (so a delete meanwhile cannot cut it short), or, on a bucket, a
spool file downloaded from its presigned URL. Never a gRPC stream."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from common import errors
from common.blobs import BlobReader
from common.clients import StorageClient
from common.gen.dicomserver.v1 import dicom_pb2

log = logging.getLogger(__name__)
_FD_PATH = "/proc/self/fd/{}" if os.path.isdir("/proc/self/fd") else ""


@dataclass
class ObjectFile:
    """A stored object ready to send: its file (None when it cannot be read, and why)."""

    location: dicom_pb2.InstanceLocation
    path: str | None
    size: int = 0
    error: str = ""


class _Reader(BlobReader):
    def file_path(self, key: str) -> str | None:
        grant = self._grant(key)
        return grant.file_path if grant.WhichOneof("location") == "file_path" else None


class ObjectFiles:
    def __init__(self, storage: StorageClient, spool_dir: str | None = None) -> None:
        self._reader = _Reader(storage)
        self._spool_dir = spool_dir

    @contextlib.contextmanager
    def open(self, locations: Sequence[dicom_pb2.InstanceLocation]) -> Iterator[list[ObjectFile]]:
        """The objects, in order, as files until the block ends (spool files are
        then removed). Raises common.errors.Unavailable when storage grants nothing."""
        fds: list[int] = []
        spools: list[str] = []
        try:
            self._reader.prepare([loc.object_key for loc in locations])
            yield [self._open(loc, fds, spools) for loc in locations]
        finally:
            for fd in fds:
                os.close(fd)
            for spool in spools:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(spool)

    def _open(self, location: dicom_pb2.InstanceLocation, fds: list[int], spools: list[str]) -> ObjectFile:
        try:
            path = self._reader.file_path(location.object_key)
            if path is not None:
                fd = os.open(path, os.O_RDONLY)
                fds.append(fd)
                return ObjectFile(location, _FD_PATH.format(fd) if _FD_PATH else path, os.fstat(fd).st_size)
            fd, spool = tempfile.mkstemp(suffix=".dcm", dir=self._spool_dir)
            spools.append(spool)
            size = 0
            with os.fdopen(fd, "wb") as f:
                for chunk in self._reader.get(location.object_key):
                    f.write(chunk)
                    size += len(chunk)
            return ObjectFile(location, spool, size)
        except errors.Unavailable:
            raise
        except (errors.ServiceError, OSError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            log.warning("a stored object cannot be read for routing (%s): %s", type(exc).__name__, reason)
            return ObjectFile(location, None, error=f"the stored object cannot be read ({type(exc).__name__})")
