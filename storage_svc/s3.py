"""Objects in an S3-compatible bucket. A PUT is atomic and durable when
acknowledged; large objects go up as a multipart upload so the stream never
sits in memory whole."""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from common.gen.dicomserver.v1 import dicom_pb2
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
    check_key,
    derive_key,
    new_grant_id,
)
from storage_svc.settings import StorageSettings

log = logging.getLogger(__name__)

# S3 parts must be at least 5 MiB, except the last.
PART_SIZE = 8 * 1024 * 1024
READ_CHUNK = 1024 * 1024


def _missing(err: ClientError) -> bool:
    return err.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}


F = TypeVar("F", bound=Callable[..., Any])


def _as_os_errors(fn: F) -> F:
    """S3 failures become OSError, which the service reports as unavailable."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ClientError as err:
            if _missing(err):
                raise FileNotFoundError(str(err)) from None
            raise OSError(f"S3: {err.response.get('Error', {}).get('Code', 'error')}") from None
        except BotoCoreError as err:
            raise OSError(f"S3: {type(err).__name__}") from None

    return wrapper  # type: ignore[return-value]


class S3Store:
    # A presigned upload goes straight to the object's key: the writer spools
    # the object, then asks with its ref and size.
    needs_ref = True

    def __init__(self, settings: StorageSettings) -> None:
        self.grant_ttl = settings.grant_ttl
        secret = settings.s3_secret_access_key.get_secret_value() if settings.s3_secret_access_key else None
        self.client: Any = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url or None,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id or None,
            aws_secret_access_key=secret,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=32),
        )
        self.bucket = settings.s3_bucket
        self.prefix = settings.s3_prefix.strip("/") + "/" if settings.s3_prefix.strip("/") else ""
        if settings.s3_create_bucket:
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except ClientError:
                self.client.create_bucket(Bucket=self.bucket)

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    @_as_os_errors
    def put(self, ref: dicom_pb2.InstanceRef, chunks: Iterable[bytes], expected_size: int = 0) -> Stored:
        key = derive_key(ref)
        name = self._name(key)
        digest = hashlib.sha256()
        size = 0
        buffer = bytearray()
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        try:
            for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                buffer += chunk
                if len(buffer) >= PART_SIZE:
                    if upload_id is None:
                        upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=name)["UploadId"]
                    parts.append(self._part(name, upload_id, len(parts) + 1, bytes(buffer)))
                    buffer.clear()
            if expected_size and size != expected_size:
                raise SizeMismatch(f"received {size} bytes, expected {expected_size}")
            if upload_id is None:
                self.client.put_object(Bucket=self.bucket, Key=name, Body=bytes(buffer))
            else:
                if buffer:
                    parts.append(self._part(name, upload_id, len(parts) + 1, bytes(buffer)))
                self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=name, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
        except BaseException:
            if upload_id is not None:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload_id)
            raise
        return Stored(key, size, digest.hexdigest())

    def _part(self, name: str, upload_id: str, number: int, data: bytes) -> dict[str, Any]:
        resp = self.client.upload_part(Bucket=self.bucket, Key=name, UploadId=upload_id, PartNumber=number, Body=data)
        return {"PartNumber": number, "ETag": resp["ETag"]}

    @_as_os_errors
    def get(self, key: str, offset: int = 0, length: int = 0) -> tuple[int, Iterator[bytes]]:
        total = self.stat(key).size
        if offset < 0 or length < 0 or offset > total:
            raise ValueError(f"range starts at {offset}, object has {total} bytes")
        end = total - 1 if length == 0 else min(offset + length, total) - 1
        if end < offset:
            return total, iter(())
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._name(key), Range=f"bytes={offset}-{end}")[
                "Body"
            ]
        except ClientError as err:
            if _missing(err):
                raise FileNotFoundError(key) from None
            raise

        def chunks() -> Iterator[bytes]:
            with body:
                yield from body.iter_chunks(READ_CHUNK)

        return total, chunks()

    @_as_os_errors
    def stat(self, key: str) -> ObjectInfo:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._name(key))
        except ClientError as err:
            if _missing(err):
                raise FileNotFoundError(key) from None
            raise
        return ObjectInfo(int(head["ContentLength"]), int(head["LastModified"].timestamp() * 1e9))

    @_as_os_errors
    def delete(self, key: str) -> bool:
        try:
            self.stat(key)
        except FileNotFoundError:
            return False
        self.client.delete_object(Bucket=self.bucket, Key=self._name(key))
        return True

    # --- grants: edges upload and download with presigned URLs -----------------

    def _presign(self, method: str, params: dict[str, Any]) -> str:
        return str(
            self.client.generate_presigned_url(
                method, Params={"Bucket": self.bucket, **params}, ExpiresIn=int(self.grant_ttl)
            )
        )

    @_as_os_errors
    def grant_write(self, count: int, ref: dicom_pb2.InstanceRef | None = None, size: int = 0) -> list[WriteTarget]:
        if ref is None:
            return []
        key = derive_key(ref)
        name = self._name(key)
        expires = time.time() + self.grant_ttl
        if size <= PART_SIZE:
            return [
                WriteTarget(new_grant_id(), expires, object_key=key, url=self._presign("put_object", {"Key": name}))
            ]
        upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=name)["UploadId"]
        parts = (size + PART_SIZE - 1) // PART_SIZE
        urls = tuple(
            self._presign("upload_part", {"Key": name, "UploadId": upload_id, "PartNumber": n})
            for n in range(1, parts + 1)
        )
        return [WriteTarget(upload_id, expires, object_key=key, part_urls=urls, part_size=PART_SIZE)]

    @_as_os_errors
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
        """Completes a multipart upload, then checks that the object has the
        size its writer sent and the ETag the bucket gave the writer. An
        upload that does not match is removed."""
        try:
            key = check_key(object_key)
        except BadKey:
            raise UnknownGrant("the commit names no object key of a granted upload") from None
        if derive_key(ref).rsplit("_", 1)[0] != key.rsplit("_", 1)[0]:
            raise UnknownGrant("the object key was granted for another instance")
        name = self._name(key)
        if not etags:
            raise ChecksumMismatch("the commit carries no ETag of the upload")
        if upload_id:
            parts = [{"PartNumber": n, "ETag": tag} for n, tag in enumerate(etags, 1)]
            try:
                self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=name, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") in {"NoSuchUpload", "InvalidPart", "InvalidPartOrder"}:
                    self._abort(name, upload_id)
                    raise ChecksumMismatch(
                        f"the upload cannot be completed ({err.response['Error']['Code']})"
                    ) from None
                raise
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=name)
        except ClientError as err:
            if _missing(err):
                raise UnknownGrant("nothing was uploaded under this grant") from None
            raise
        stored_size = int(head["ContentLength"])
        try:
            if stored_size != size:
                raise SizeMismatch(f"uploaded {stored_size} bytes, the writer wrote {size}")
            if not upload_id and head.get("ETag", "").strip('"') != etags[0].strip('"'):
                raise ChecksumMismatch("the uploaded object is not the one its writer sent")
        except (SizeMismatch, ChecksumMismatch):
            self.client.delete_object(Bucket=self.bucket, Key=name)
            raise
        return Stored(key, size, "")

    def commit_writes(self, requests: Sequence[CommitRequest]) -> list[Stored | Exception]:
        results: list[Stored | Exception] = []
        for r in requests:
            try:
                results.append(
                    self.commit_write(r.grant_id, r.ref, r.size, r.crc32, r.etags, r.object_key, r.upload_id)
                )
            except (UnknownGrant, SizeMismatch, ChecksumMismatch, BadKey, OSError) as exc:
                results.append(exc)
        return results

    def _abort(self, name: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload_id)
        except ClientError:
            pass

    @_as_os_errors
    def grant_read(self, keys: Sequence[str]) -> list[ReadTarget]:
        expires = time.time() + self.grant_ttl
        return [ReadTarget(key, expires, url=self._presign("get_object", {"Key": self._name(key)})) for key in keys]

    # --- the sweep ----------------------------------------------------------------

    @_as_os_errors
    def sweep_staging(self, cutoff: float) -> int:
        """Aborts multipart uploads started before `cutoff` (epoch s)."""
        aborted = 0
        for page in self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        ):
            for upload in page.get("Uploads", []):
                if upload["Initiated"].timestamp() < cutoff:
                    self._abort(upload["Key"], upload["UploadId"])
                    aborted += 1
        return aborted

    @_as_os_errors
    def objects_older_than(self, cutoff: float) -> list[str]:
        old: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"][len(self.prefix) :]
                try:
                    check_key(key)
                except BadKey:
                    continue
                if obj["LastModified"].timestamp() < cutoff:
                    old.append(key)
        return old

    @_as_os_errors
    def delete_many(self, keys: Sequence[str]) -> int:
        for i in range(0, len(keys), 1000):
            chunk = keys[i : i + 1000]
            self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": self._name(k)} for k in chunk], "Quiet": True}
            )
        return len(keys)
