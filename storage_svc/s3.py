"""Objects in an S3-compatible bucket. A PUT is atomic and durable when
acknowledged; large objects go up as a multipart upload so the stream never
sits in memory whole."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from common.gen.dicomserver.v1 import dicom_pb2
from storage_svc.keys import ObjectInfo, SizeMismatch, Stored, check_key, derive_key
from storage_svc.settings import StorageSettings

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
    def __init__(self, settings: StorageSettings) -> None:
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
            body = self.client.get_object(Bucket=self.bucket, Key=self._name(key), Range=f"bytes={offset}-{end}")["Body"]
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
