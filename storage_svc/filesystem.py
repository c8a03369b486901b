"""Objects as files: temp file + fsync + rename, so a reader sees either
nothing or the whole object, and an acknowledged object survives a crash."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path

from common.gen.dicomserver.v1 import dicom_pb2
from storage_svc.keys import ObjectInfo, SizeMismatch, Stored, check_key, derive_key

READ_CHUNK = 1024 * 1024


class FilesystemStore:
    def __init__(self, root: Path, fsync: bool = True) -> None:
        self.root = root.resolve()
        self.fsync = fsync
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / ".tmp").mkdir(exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, ref: dicom_pb2.InstanceRef, chunks: Iterable[bytes], expected_size: int = 0) -> Stored:
        key = derive_key(ref)
        final = self.path(key)
        digest = hashlib.sha256()
        size = 0
        tmp = self.root / ".tmp" / f"{secrets.token_hex(12)}.part"
        try:
            with open(tmp, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                if expected_size and size != expected_size:
                    raise SizeMismatch(f"received {size} bytes, expected {expected_size}")
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            created = self._make_dirs(final.parent)
            try:
                os.replace(tmp, final)
            except FileNotFoundError:  # a delete just removed the emptied folder
                created += self._make_dirs(final.parent)
                os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if self.fsync:
            # The rename, and each new folder's entry in its parent, must be durable.
            for folder in {final.parent, *(d.parent for d in created)}:
                self._fsync_dir(folder)
        return Stored(key, size, digest.hexdigest())

    def _make_dirs(self, folder: Path) -> list[Path]:
        """Creates `folder` and missing parents; returns the ones it created."""
        missing = []
        while not folder.is_dir():
            missing.append(folder)
            folder = folder.parent
        for d in reversed(missing):
            d.mkdir(exist_ok=True)
        return missing

    def get(self, key: str, offset: int = 0, length: int = 0) -> tuple[int, Iterator[bytes]]:
        """Total size and an iterator over the requested range."""
        path = self.path(key)
        f = open(path, "rb")  # FileNotFoundError propagates: the caller maps it
        total = os.fstat(f.fileno()).st_size
        if offset < 0 or length < 0 or offset > total:
            f.close()
            raise ValueError(f"range starts at {offset}, object has {total} bytes")
        remaining = (total - offset) if length == 0 else min(length, total - offset)

        def chunks() -> Iterator[bytes]:
            nonlocal remaining
            with f:
                f.seek(offset)
                while remaining > 0:
                    data = f.read(min(READ_CHUNK, remaining))
                    if not data:
                        break
                    remaining -= len(data)
                    yield data

        return total, chunks()

    def stat(self, key: str) -> ObjectInfo:
        st = self.path(key).stat()
        return ObjectInfo(st.st_size, st.st_mtime_ns)

    def delete(self, key: str) -> bool:
        path = self.path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        # Empty series and study folders go; the tenant folder and root stay.
        parent = path.parent
        for _ in range(2):
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
        return True

    @staticmethod
    def _fsync_dir(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
