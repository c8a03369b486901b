"""StorageService over the filesystem store."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from common.gen.dicomserver.v1 import storage_service_pb2 as pb, storage_service_pb2_grpc as pb_grpc
from common.validation import InvalidValue
from storage_svc.backend import ObjectStore
from storage_svc.keys import BadKey, SizeMismatch

MAX_CHUNK = 1024 * 1024


class StorageService(pb_grpc.StorageServiceServicer):
    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def Put(self, request_iterator: Iterator[pb.PutRequest], context: grpc.ServicerContext) -> pb.PutResponse:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be the header")

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
            return pb.DeleteResponse(deleted=self.store.delete(request.object_key))
        except BadKey as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except OSError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot delete object: {exc.strerror or exc}")
