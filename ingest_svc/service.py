"""IngestService: the pipeline for internal gRPC callers.

The instances of one stream are stored at the same time (up to
STREAM_CONCURRENCY each): one's storage commit (an fsync) overlaps the
next's, and their index records share IndexInstances transactions
(common.ingest.GroupIndexer) instead of waiting for each other one by one.
Outcomes still come back in the order the instances were sent."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait

import grpc

from common import errors
from common.blobs import StagedObject
from common.gen.dicomserver.v1 import ingest_service_pb2 as pb
from common.gen.dicomserver.v1 import ingest_service_pb2_grpc as pb_grpc
from common.ingest import IngestPipeline
from common.validation import InvalidValue, check_tenant, check_uid
from ingest_svc.peer_send import PeerSender

# Instances of one stream stored at once, and by all streams together.
STREAM_CONCURRENCY = 16
STORE_THREADS = 32


class IngestService(pb_grpc.IngestServiceServicer):
    def __init__(self, pipeline: IngestPipeline, spool_max_memory: int, sender: PeerSender | None = None) -> None:
        self.pipeline = pipeline
        self.spool_max_memory = spool_max_memory
        self.sender = sender
        self._stores = ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="ingest-store")

    def StoreInstances(
        self, request_iterator: Iterator[pb.StoreInstancesRequest], context: grpc.ServicerContext
    ) -> pb.StoreInstancesResponse:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "options":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be the options")
        assert first is not None  # abort raises
        options = first.options
        try:
            check_tenant(options.tenant)
            if options.study_instance_uid:
                check_uid(options.study_instance_uid, "Study Instance UID")
        except InvalidValue as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        outcomes: list[Future[pb.InstanceOutcome]] = []
        slots = threading.BoundedSemaphore(STREAM_CONCURRENCY)
        staged: StagedObject | None = None
        try:
            for req in request_iterator:
                part = req.WhichOneof("part")
                if part == "chunk":
                    if staged is None:
                        staged = self._stage(context)
                    try:
                        staged.write(req.chunk)
                    except OSError as exc:
                        context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot write the object: {exc.strerror}")
                elif part == "end_of_instance":
                    complete = staged if staged is not None else self._stage(context)
                    staged = None
                    slots.acquire()
                    outcome = self._stores.submit(
                        self.pipeline.store,
                        complete,
                        options.tenant,
                        options.study_instance_uid,
                        options.duplicate_policy,
                    )
                    outcome.add_done_callback(lambda _: slots.release())
                    outcomes.append(outcome)
                else:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "options may only come first")
            if staged is not None and staged.size:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the last instance has no end_of_instance")
        finally:
            if staged is not None:
                staged.discard()
            wait(outcomes)  # each commits or discards its staged object, whatever happens to the call
        return pb.StoreInstancesResponse(outcomes=[o.result() for o in outcomes])

    def _stage(self, context: grpc.ServicerContext) -> StagedObject:
        try:
            return self.pipeline.stage()
        except (errors.ServiceError, OSError) as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"storage is not available: {exc}")
            raise  # unreachable: abort raises

    def ListPeers(self, request: pb.ListPeersRequest, context: grpc.ServicerContext) -> pb.ListPeersResponse:
        if self.sender is None:
            return pb.ListPeersResponse()
        try:
            return pb.ListPeersResponse(peers=self.sender.peers(request.tenant))
        except InvalidValue as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise  # unreachable: abort raises

    def SendToPeer(
        self, request: pb.SendToPeerRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.SendToPeerResponse]:
        if self.sender is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "no such DIMSE peer")
        assert self.sender is not None
        progress = self.sender.send(request)
        try:
            first = next(progress)
        except InvalidValue as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except errors.NotFound as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except errors.ServiceError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"a service is unavailable: {exc}")
        yield first
        yield from progress
