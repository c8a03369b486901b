"""Objects as files: temp file + fsync + rename, so a reader sees either
nothing or the whole object, and an acknowledged object survives a crash.

Edges write new objects into staging files of their own (`.staging/<grant>.part`
in this folder: same filesystem, so committing is a rename) and read
objects straight from their files."""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
import secrets
import stat
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common.gen.dicomserver.v1 import dicom_pb2
from common.validation import InvalidValue
from storage_svc.keys import (
    BadKey,
    ChecksumMismatch,
    CommitRequest,
    ObjectInfo,
    ReadTarget,
    SizeMismatch,
    Stored,
    UnknownGrant,
    WriteTarget,
    check_grant,
    check_key,
    derive_key,
    new_grant_id,
)

log = logging.getLogger(__name__)

READ_CHUNK = 1024 * 1024
STAGING = ".staging"
# Folders of this store that hold no objects (Put's temp files, staged writes).
_WORK_DIRS = (".tmp", STAGING)


class FilesystemStore:
    needs_ref = False

    def __init__(self, root: Path, fsync: bool = True, grant_ttl: float = 600.0) -> None:
        self.root = root.resolve()
        self.fsync = fsync
        self.grant_ttl = grant_ttl
        self.root.mkdir(parents=True, exist_ok=True)
        for work in _WORK_DIRS:
            (self.root / work).mkdir(exist_ok=True)
        self.staging = self.root / STAGING

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

    # --- grants: edges write and read the files themselves ---------------------

    def grant_write(self, count: int, ref: dicom_pb2.InstanceRef | None = None, size: int = 0) -> list[WriteTarget]:
        """Staging files for the caller to create and fill (the name is the
        grant); nothing there is an object until commit_write."""
        expires = time.time() + self.grant_ttl
        return [
            WriteTarget(gid, expires, file_path=str(self.staging / f"{gid}.part"))
            for gid in (new_grant_id() for _ in range(count))
        ]

    def commit_write(
        self,
        grant_id: str,
        ref: dicom_pb2.InstanceRef,
        size: int,
        crc32: int,
        etags: Sequence[str] = (),
        object_key: str = "",
        upload_id: str = "",
    ) -> Stored:
        """Checks a staged file against what its writer says it wrote, makes
        it durable and moves it to its key. A file that does not match is
        removed: the write failed and leaves nothing."""
        (result,) = self.commit_writes([CommitRequest(grant_id, ref, size, crc32)])
        if isinstance(result, Exception):
            raise result
        return result

    def commit_writes(self, requests: Sequence[CommitRequest]) -> list[Stored | Exception]:
        """commit_write for several writes, with their fsyncs issued together
        (the filesystem's journal commits them at once): a result or the
        exception commit_write would raise, for each."""
        checked: list[tuple[int, Path, str, int] | Exception] = []
        for r in requests:
            try:
                checked.append(self._check_staged(r))
            except (UnknownGrant, SizeMismatch, ChecksumMismatch, BadKey, InvalidValue, OSError) as exc:
                checked.append(exc)
        fds = [c[0] for c in checked if not isinstance(c, Exception)]
        try:
            if self.fsync and fds:
                _fsync_all(fds)
        finally:
            for fd in fds:
                os.close(fd)
        results: list[Stored | Exception] = []
        folders: set[Path] = set()
        for c in checked:
            if isinstance(c, Exception):
                results.append(c)
                continue
            _, staging, key, size = c
            try:
                final = self.path(key)
                created = self._make_dirs(final.parent)
                try:
                    os.rename(staging, final)
                except FileNotFoundError:
                    if not staging.exists():
                        raise UnknownGrant("the staged write was swept before its commit") from None
                    created += self._make_dirs(final.parent)  # a delete just removed the emptied folder
                    os.rename(staging, final)
                folders.update({final.parent, *(d.parent for d in created)})
                results.append(Stored(key, size, ""))
            except (UnknownGrant, OSError) as exc:
                results.append(exc)
        if self.fsync and folders:
            # The renames, and each new folder's entry in its parent, must be durable.
            _fsync_all([os.open(folder, os.O_RDONLY) for folder in folders], close=True)
        return results

    def _check_staged(self, r: CommitRequest) -> tuple[int, Path, str, int]:
        """(open fd, staging path, key, size) of a staged file that matches
        its writer's size and CRC-32; one that does not is removed."""
        staging = self.staging / f"{check_grant(r.grant_id)}.part"
        key = derive_key(r.ref)
        try:
            fd = os.open(staging, os.O_RDONLY | os.O_NOFOLLOW)
        except (FileNotFoundError, OSError) as exc:
            if isinstance(exc, FileNotFoundError) or exc.errno == 40:  # ELOOP: a symlink
                raise UnknownGrant("nothing is staged under this grant (never written, or swept)") from None
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise UnknownGrant("the staged write is not a file")
            if st.st_size != r.size:
                raise SizeMismatch(f"staged {st.st_size} bytes, the writer wrote {r.size}")
            if _crc32(fd, r.size) != r.crc32:
                raise ChecksumMismatch("the staged bytes do not match the writer's CRC-32")
        except BaseException as exc:
            os.close(fd)
            if isinstance(exc, (SizeMismatch, ChecksumMismatch, UnknownGrant)):
                staging.unlink(missing_ok=True)
            raise
        return fd, staging, key, r.size

    def grant_read(self, keys: Sequence[str]) -> list[ReadTarget]:
        return [ReadTarget(key, 0.0, file_path=str(self.path(key))) for key in keys]

    # --- the sweep ----------------------------------------------------------------

    def sweep_staging(self, cutoff: float) -> int:
        """Removes staging and temp files untouched since `cutoff` (epoch s)."""
        removed = 0
        for work in _WORK_DIRS:
            with os.scandir(self.root / work) as entries:
                for entry in entries:
                    try:
                        if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                            os.unlink(entry.path)
                            removed += 1
                    except FileNotFoundError:
                        continue
        return removed

    def objects_older_than(self, cutoff: float) -> list[str]:
        return [key for key, mtime in self._walk() if mtime < cutoff]

    def delete_many(self, keys: Sequence[str]) -> int:
        return sum(1 for key in keys if self.delete(key))

    def _walk(self) -> Iterator[tuple[str, float]]:
        """(key, mtime) of every object file, by the key grammar."""
        for dirpath, dirnames, filenames in os.walk(self.root):
            if dirpath == str(self.root):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = os.path.relpath(dirpath, self.root)
            for name in filenames:
                key = name if rel == "." else f"{rel}/{name}".replace(os.sep, "/")
                try:
                    check_key(key)
                    yield key, os.stat(os.path.join(dirpath, name)).st_mtime
                except (BadKey, FileNotFoundError):
                    continue

    @staticmethod
    def _fsync_dir(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# fsyncs issued at once: the journal commits them together.
_FSYNC_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="fsync")


def _fsync_all(fds: list[int], close: bool = False) -> None:
    """fsyncs every descriptor, concurrently when there are several; raises
    the first failure after all are done."""
    try:
        if len(fds) == 1:
            os.fsync(fds[0])
        else:
            for future in [_FSYNC_POOL.submit(os.fsync, fd) for fd in fds]:
                future.result()
    finally:
        if close:
            for fd in fds:
                os.close(fd)


def _crc32(fd: int, size: int) -> int:
    if size == 0:
        return 0
    with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as view:
        return zlib.crc32(view)
