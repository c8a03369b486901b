"""The edges' side of storage grants: object bytes go between an edge and
the blob store directly, never through a gRPC stream (ARCHITECTURE.md,
"Bytes take the shortest path").

Writing: `Blobs.stage()` hands out a StagedObject to write the bytes into
as they arrive. On the filesystem backend that is the granted staging file
itself, so committing is storage_svc's fsync and rename; on a bucket it is
a local spool file, uploaded with the presigned URLs granted once the
object's UIDs and size are known. Nothing is visible before commit()."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterator
from types import TracebackType
from typing import BinaryIO

import urllib3

from common import errors
from common.clients import StorageClient
from common.gen.dicomserver.v1 import dicom_pb2
from common.gen.dicomserver.v1 import storage_service_pb2 as st_pb
from common.grouping import GroupCall

log = logging.getLogger(__name__)

# Staging files granted per GrantWrite call, and how long before its
# expiry a grant is no longer handed out (a write may take that long).
GRANT_BATCH = 16
EXPIRY_MARGIN = 120.0
_COMMIT_ERRORS: dict[int, type[errors.ServiceError]] = {
    st_pb.COMMIT_FAILURE_NOT_FOUND: errors.NotFound,
    st_pb.COMMIT_FAILURE_INVALID: errors.InvalidArgument,
    st_pb.COMMIT_FAILURE_UNAVAILABLE: errors.Unavailable,
}
_HTTP = urllib3.PoolManager(maxsize=16, retries=urllib3.Retry(total=2, connect=2, read=0, status=0))


class StagedObject:
    """One object on its way into storage. Write it, read it back if need
    be (`file`), then commit() or discard(); as a context manager it is
    discarded unless committed."""

    def __init__(
        self, file: BinaryIO, path: str, grant_id: str, blobs: Blobs, refused: errors.ServiceError | None = None
    ) -> None:
        self.file = file
        # Storage granted nothing: the object is spooled so that its failure
        # can be reported with its UIDs, and commit() raises this.
        self._refused = refused
        self.path = path  # the staging or spool file
        self.size = 0
        self.crc32 = 0
        self._grant_id = grant_id
        self._blobs = blobs
        self._done = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.file.write(data)
        self.size += len(data)
        self.crc32 = zlib.crc32(data, self.crc32)

    def commit(self, ref: dicom_pb2.InstanceRef) -> str:
        """Makes the object durable and visible under a key storage derives
        from `ref`; returns the key. Raises common.errors.ServiceError
        (InvalidArgument when storage refuses the bytes)."""
        if self._done:
            raise RuntimeError("a staged object is committed or discarded once")
        self._done = True
        try:
            if self._refused is not None:
                raise self._refused
            self.file.flush()
            if self._grant_id:
                self.file.close()
                return self._blobs.commit_staged(
                    st_pb.CommitWriteRequest(grant_id=self._grant_id, ref=ref, size=self.size, crc32=self.crc32)
                )
            return self._blobs.upload(self, ref)
        finally:
            self._close_and_remove()

    def discard(self) -> None:
        if not self._done:
            self._done = True
            self._close_and_remove()

    # File-like, for writers that take a file: close() without commit() discards.
    close = discard

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self.file.seek(offset, whence)

    def read(self, n: int = -1) -> bytes:
        return self.file.read(n)

    def _close_and_remove(self) -> None:
        try:
            self.file.close()
        except OSError:
            pass
        try:
            os.unlink(self.path)  # committed staging files have moved: nothing to remove
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove a staged object's file: %s", exc.strerror)

    def __enter__(self) -> StagedObject:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.discard()


class Blobs:
    def __init__(self, storage: StorageClient, spool_dir: str | None = None) -> None:
        self.storage = storage
        self.spool_dir = spool_dir
        self._lock = threading.Lock()
        self._grants: deque[tuple[str, str, float]] = deque()  # (grant id, path, expires)
        self._needs_ref: bool | None = None  # learnt from the first GrantWrite
        self._refilling = False
        # Commits of concurrent stores go to storage together (their fsyncs at once).
        self._commits: GroupCall[st_pb.CommitWriteRequest, str] = GroupCall(self._commit_group, retry_alone=False)

    def stage(self) -> StagedObject:
        """Somewhere to write a new object. When storage grants nothing, a
        local spool whose commit() raises why (so the caller can still read
        and report the object); OSError when no file can be made."""
        refused: errors.ServiceError | None = None
        try:
            grant = self._next_grant()
        except errors.ServiceError as exc:
            log.warning("storage granted no write: %s", exc)
            grant, refused = None, exc
        if grant is None:
            fd, path = tempfile.mkstemp(suffix=".dcm", dir=self.spool_dir)
            return StagedObject(os.fdopen(fd, "w+b"), path, "", self, refused)
        grant_id, path = grant
        return StagedObject(open(path, "xb+"), path, grant_id, self)

    def _next_grant(self) -> tuple[str, str] | None:
        with self._lock:
            if self._needs_ref:
                return None
            now = time.time()
            while self._grants and self._grants[0][2] - EXPIRY_MARGIN < now:
                self._grants.popleft()
            if not self._grants:
                resp = self.storage.grant_write(GRANT_BATCH)
                self._add_grants(resp)  # sets _needs_ref from resp
                if resp.needs_ref:
                    return None
            grant_id, path, _ = self._grants.popleft()
            # Refill ahead, off the caller's thread (the gateway calls this on its event loop).
            if len(self._grants) <= GRANT_BATCH // 2 and not self._refilling:
                self._refilling = True
                threading.Thread(target=self._refill, name="grant-refill", daemon=True).start()
            return grant_id, path

    def _add_grants(self, resp: st_pb.GrantWriteResponse) -> None:
        """Holds _lock."""
        self._needs_ref = resp.needs_ref
        now = time.time()
        for g in resp.grants:
            if g.WhichOneof("target") != "file_path":
                raise errors.ServiceError("storage granted no staging file")
            self._grants.append((g.grant_id, g.file_path, g.expires.ToSeconds() or now + 600))

    def _refill(self) -> None:
        try:
            resp = self.storage.grant_write(GRANT_BATCH)
            with self._lock:
                self._add_grants(resp)
        except errors.ServiceError as exc:
            log.debug("grant refill failed: %s", exc)  # the next stage() asks again
        finally:
            with self._lock:
                self._refilling = False

    def commit_staged(self, request: st_pb.CommitWriteRequest) -> str:
        """Commits a staging file (with whatever other stores commit at the
        same moment); its object key. Raises common.errors.ServiceError."""
        return self._commits.call(request)

    def _commit_group(self, _key: object, requests: list[st_pb.CommitWriteRequest]) -> list[str | Exception]:
        if len(requests) == 1:
            return [self.storage.commit_write(requests[0]).object_key]
        out: list[str | Exception] = []
        for result in self.storage.commit_writes(requests):
            if result.HasField("committed"):
                out.append(result.committed.object_key)
            else:
                out.append(_COMMIT_ERRORS.get(result.failure, errors.ServiceError)(result.reason))
        return out

    def upload(self, staged: StagedObject, ref: dicom_pb2.InstanceRef) -> str:
        """Puts a spooled object into the bucket at presigned URLs, then commits it."""
        resp = self.storage.grant_write(ref=ref, size=staged.size)
        if not resp.grants or resp.grants[0].WhichOneof("target") != "upload":
            raise errors.ServiceError("storage granted no upload for the object")
        grant = resp.grants[0]
        up = grant.upload
        f = staged.file
        etags: list[str] = []
        if up.part_urls:
            for n, url in enumerate(up.part_urls):
                f.seek(n * up.part_size)
                etags.append(_put(url, f.read(up.part_size)))
        else:
            f.seek(0)
            etags.append(_put(up.url, f, staged.size))
        commit = self.storage.commit_write(
            st_pb.CommitWriteRequest(
                grant_id=grant.grant_id,
                ref=ref,
                size=staged.size,
                crc32=staged.crc32,
                etags=etags,
                object_key=up.object_key,
                upload_id=up.upload_id,
            )
        )
        return commit.object_key


def _put(url: str, body: BinaryIO | bytes, size: int | None = None) -> str:
    """PUTs to a presigned URL; returns the ETag the store gave the bytes."""
    length = len(body) if isinstance(body, bytes) else size
    try:
        resp = _HTTP.request(
            "PUT",
            url,
            body=body,
            headers={"Content-Length": str(length)},
            preload_content=True,
            timeout=urllib3.Timeout(connect=10, read=120),
        )
    except urllib3.exceptions.HTTPError as exc:
        raise errors.Unavailable(f"object store upload failed ({type(exc).__name__})") from None
    if resp.status >= 300:
        raise errors.Unavailable(f"object store refused the upload (HTTP {resp.status})")
    etag = resp.headers.get("ETag", "")
    if not etag:
        raise errors.Unavailable("object store gave the upload no ETag")
    return etag


class BlobReader:
    """Reads stored objects where storage grants: the object's file, or a
    presigned URL of the bucket (ranges with HTTP Range). Grants are kept
    per key (an object never changes under its key) until they expire.

    `get` has the shape of StorageClient.get, so readers of either kind are
    interchangeable; missing objects raise common.errors.NotFound."""

    MAX_GRANTS = 100_000

    def __init__(self, storage: StorageClient) -> None:
        self.storage = storage
        self._lock = threading.Lock()
        self._grants: dict[str, st_pb.ReadGrant] = {}

    def prepare(self, keys: list[str]) -> None:
        """Asks for the grants of many keys in one call (a series, a study)."""
        now = time.time()
        with self._lock:
            missing = [k for k in dict.fromkeys(keys) if not self._usable(self._grants.get(k), now)]
        if not missing:
            return
        grants = self.storage.grant_read(missing)
        with self._lock:
            if len(self._grants) + len(grants) > self.MAX_GRANTS:
                self._grants.clear()
            for g in grants:
                self._grants[g.object_key] = g

    @staticmethod
    def _usable(grant: st_pb.ReadGrant | None, now: float) -> bool:
        if grant is None:
            return False
        expires = grant.expires.ToSeconds()
        return expires == 0 or expires - EXPIRY_MARGIN > now

    def _grant(self, key: str) -> st_pb.ReadGrant:
        with self._lock:
            grant = self._grants.get(key)
        if not self._usable(grant, time.time()):
            self.prepare([key])
            with self._lock:
                grant = self._grants[key]
        assert grant is not None
        return grant

    def remote(self, key: str) -> bool:
        """Whether the object is read over HTTP (a bucket) rather than from a file."""
        return self._grant(key).WhichOneof("location") != "file_path"

    def size(self, key: str) -> int:
        grant = self._grant(key)
        if grant.WhichOneof("location") == "file_path":
            try:
                return os.stat(grant.file_path).st_size
            except FileNotFoundError:
                raise errors.NotFound("no such object") from None
        resp = self._http("HEAD", grant.url)
        return int(resp.headers.get("Content-Length", "0"))

    def read(self, key: str, offset: int = 0, length: int = 0) -> bytes:
        """`length` bytes from `offset` (0: to the end); fewer at the end."""
        grant = self._grant(key)
        if grant.WhichOneof("location") == "file_path":
            try:
                fd = os.open(grant.file_path, os.O_RDONLY)
            except FileNotFoundError:
                raise errors.NotFound("no such object") from None
            try:
                if length <= 0:
                    length = max(0, os.fstat(fd).st_size - offset)
                return _pread_all(fd, length, offset)
            finally:
                os.close(fd)
        if length <= 0 and offset == 0:
            return self._http("GET", grant.url).data
        end = "" if length <= 0 else str(offset + length - 1)
        return self._http("GET", grant.url, {"Range": f"bytes={offset}-{end}"}).data

    def get(self, key: str, offset: int = 0, length: int = 0, chunk: int = 4 * 1024 * 1024) -> Iterator[bytes]:
        """The object's bytes (or a range) in chunks; errors surface on first iteration."""
        grant = self._grant(key)
        if grant.WhichOneof("location") == "file_path":
            try:
                f = open(grant.file_path, "rb", buffering=0)
            except FileNotFoundError:
                raise errors.NotFound("no such object") from None
            with f:
                remaining = (os.fstat(f.fileno()).st_size - offset) if length <= 0 else length
                pos = offset
                while remaining > 0:
                    data = os.pread(f.fileno(), min(chunk, remaining), pos)
                    if not data:
                        return
                    pos += len(data)
                    remaining -= len(data)
                    yield data
            return
        end = "" if length <= 0 else str(offset + length - 1)
        headers = {"Range": f"bytes={offset}-{end}"} if offset or length > 0 else {}
        resp = self._http("GET", grant.url, headers, stream=True)
        try:
            yield from resp.stream(chunk)
        finally:
            resp.release_conn()

    def _http(
        self, method: str, url: str, headers: dict[str, str] | None = None, stream: bool = False
    ) -> urllib3.BaseHTTPResponse:
        try:
            resp = _HTTP.request(
                method, url, headers=headers, preload_content=not stream, timeout=urllib3.Timeout(connect=10, read=120)
            )
        except urllib3.exceptions.HTTPError as exc:
            raise errors.Unavailable(f"object store read failed ({type(exc).__name__})") from None
        if resp.status == 404:
            raise errors.NotFound("no such object")
        if resp.status == 416:
            raise errors.InvalidArgument("range outside the object")
        if resp.status >= 300:
            raise errors.Unavailable(f"object store refused the read (HTTP {resp.status})")
        return resp


def _pread_all(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) == length or not data:
        return data
    parts = [data]
    got = len(data)
    while got < length:
        more = os.pread(fd, length - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)
