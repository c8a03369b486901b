"""StorageService over the filesystem store."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from common.gen.dicomserver.v1 import storage_service_pb2 as pb
from common.gen.dicomserver.v1 import storage_service_pb2_grpc as pb_grpc
from common.validation import InvalidValue
from storage_svc.backend import ObjectStore
from storage_svc.keys import (
    BadKey,
    ChecksumMismatch,
    CommitRequest,
    SizeMismatch,
    SweepReport,
    UnknownGrant,
)

MAX_CHUNK = 1024 * 1024
# Per call: staging files granted at once, keys granted for reading.
MAX_GRANTS = 64
MAX_READ_GRANTS = 10000


def _timestamp(epoch: float) -> Timestamp:
    ts = Timestamp()
    if epoch:
        ts.FromNanoseconds(int(epoch * 1e9))
    return ts


class StorageService(pb_grpc.StorageServiceServicer):
    def __init__(self, store: ObjectStore, sweep: Callable[[float], SweepReport] | None = None) -> None:
        self.store = store
        # Runs a sweep with a minimum age (0: the configured one).
        self._sweep = sweep

    def Put(self, request_iterator: Iterator[pb.PutRequest], context: grpc.ServicerContext) -> pb.PutResponse:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be the header")
        assert first is not None  # abort raises

        def chunks() -> Iterator[bytes]:
            for req in request_iterator:
                if req.WhichOneof("part") != "chunk":
                    raise InvalidValue("only chunks may follow the header")
                if len(req.chunk) > MAX_CHUNK:
                    raise InvalidValue("chunks must be at most 1 MiB")
                yield req.chunk

        try:
            stored = self.store.put(first.header.ref, chunks(), first.header.expected_size)
        except (InvalidValue, SizeMismatch) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except OSError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot write object: {exc.strerror or exc}")
        return pb.PutResponse(object_key=stored.key, size=stored.size, sha256=stored.sha256)

    def Get(self, request: pb.GetRequest, context: grpc.ServicerContext) -> Iterator[pb.GetResponse]:
        try:
            total, chunks = self.store.get(request.object_key, request.offset, request.length)
        except BadKey as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except FileNotFoundError:
            context.abort(grpc.StatusCode.NOT_FOUND, "no such object")
        except ValueError as exc:
            context.abort(grpc.StatusCode.OUT_OF_RANGE, str(exc))
        except OSError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot read object: {exc.strerror or exc}")
        first = True
        for chunk in chunks:
            yield pb.GetResponse(chunk=chunk, total_size=total if first else 0)
            first = False
        if first:  # empty range or empty object: still report the size
            yield pb.GetResponse(total_size=total)

    def Stat(self, request: pb.StatRequest, context: grpc.ServicerContext) -> pb.StatResponse:
        try:
            st = self.store.stat(request.object_key)
        except BadKey as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except FileNotFoundError:
            context.abort(grpc.StatusCode.NOT_FOUND, "no such object")
        except OSError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot stat object: {exc.strerror or exc}")
        modified = Timestamp()
        modified.FromNanoseconds(st.modified_ns)
        return pb.StatResponse(object_key=request.object_key, size=st.size, modified=modified)

    def Delete(self, request: pb.DeleteRequest, context: grpc.ServicerContext) -> pb.DeleteResponse:
        try:
            deleted = self.store.delete(request.object_key)
        except BadKey as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except OSError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot delete object: {exc.strerror or exc}")
        return pb.DeleteResponse(deleted=deleted)

    def GrantWrite(self, request: pb.GrantWriteRequest, context: grpc.ServicerContext) -> pb.GrantWriteResponse:
        has_ref = request.HasField("ref")
        if self.store.needs_ref and not has_ref:
            return pb.GrantWriteResponse(needs_ref=True)
        count = 1 if has_ref else request.count
        if not 1 <= count <= MAX_GRANTS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"count must be 1 to {MAX_GRANTS}")
        if request.size < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "size must not be negative")
        try:
            targets = self.store.grant_write(count, request.ref if has_ref else None, request.size)
        except InvalidValue as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except OSError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot grant a write: {exc.strerror or exc}")
        grants = []
        for t in targets:
            grant = pb.WriteGrant(grant_id=t.grant_id, expires=_timestamp(t.expires))
            if t.file_path:
                grant.file_path = t.file_path
            else:
                grant.upload.CopyFrom(
                    pb.UploadTarget(
                        object_key=t.object_key,
                        url=t.url,
                        part_urls=t.part_urls,
                        part_size=t.part_size,
                        upload_id=t.grant_id if t.part_urls else "",
                    )
                )
            grants.append(grant)
        return pb.GrantWriteResponse(grants=grants, needs_ref=self.store.needs_ref)

    def CommitWrite(self, request: pb.CommitWriteRequest, context: grpc.ServicerContext) -> pb.CommitWriteResponse:
        try:
            stored = self.store.commit_write(
                request.grant_id,
                request.ref,
                request.size,
                request.crc32,
                list(request.etags),
                request.object_key,
                request.upload_id,
            )
        except UnknownGrant as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except (InvalidValue, SizeMismatch, ChecksumMismatch) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except OSError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot commit object: {exc.strerror or exc}")
        return pb.CommitWriteResponse(object_key=stored.key, size=stored.size)

    def CommitWrites(self, request: pb.CommitWritesRequest, context: grpc.ServicerContext) -> pb.CommitWritesResponse:
        if len(request.writes) > MAX_GRANTS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_GRANTS} commits per call")
        requests = [
            CommitRequest(w.grant_id, w.ref, w.size, w.crc32, tuple(w.etags), w.object_key, w.upload_id)
            for w in request.writes
        ]
        try:
            outcomes = self.store.commit_writes(requests)
        except OSError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot commit objects: {exc.strerror or exc}")
        results = []
        for out in outcomes:
            if isinstance(out, Exception):
                failure = (
                    pb.COMMIT_FAILURE_NOT_FOUND
                    if isinstance(out, UnknownGrant)
                    else pb.COMMIT_FAILURE_UNAVAILABLE
                    if isinstance(out, OSError)
                    else pb.COMMIT_FAILURE_INVALID
                )
                reason = out.strerror if isinstance(out, OSError) and out.strerror else str(out)
                results.append(pb.CommitResult(failure=failure, reason=reason))
            else:
                results.append(pb.CommitResult(committed=pb.CommitWriteResponse(object_key=out.key, size=out.size)))
        return pb.CommitWritesResponse(results=results)

    def GrantRead(self, request: pb.GrantReadRequest, context: grpc.ServicerContext) -> pb.GrantReadResponse:
        if len(request.object_keys) > MAX_READ_GRANTS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_READ_GRANTS} keys per call")
        try:
            targets = self.store.grant_read(list(request.object_keys))
        except BadKey as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except OSError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot grant a read: {exc.strerror or exc}")
        grants = []
        for t in targets:
            grant = pb.ReadGrant(object_key=t.key, expires=_timestamp(t.expires))
            if t.file_path:
                grant.file_path = t.file_path
            else:
                grant.url = t.url
            grants.append(grant)
        return pb.GrantReadResponse(grants=grants)

    def Sweep(self, request: pb.SweepRequest, context: grpc.ServicerContext) -> pb.SweepResponse:
        if self._sweep is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this storage service does not sweep")
        assert self._sweep is not None  # abort raises
        if request.min_age_seconds < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "min_age_seconds must not be negative")
        try:
            report = self._sweep(float(request.min_age_seconds))
        except OSError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot sweep: {exc.strerror or exc}")
        return pb.SweepResponse(
            objects_scanned=report.scanned,
            orphans_removed=report.orphans_removed,
            staging_removed=report.staging_removed,
        )
