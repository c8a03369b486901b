"""IngestService: the pipeline for internal gRPC callers."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator

import grpc

from common.gen.dicomserver.v1 import ingest_service_pb2 as pb, ingest_service_pb2_grpc as pb_grpc
from common.ingest import IngestPipeline
from common.validation import InvalidValue, check_tenant, check_uid


class IngestService(pb_grpc.IngestServiceServicer):
    def __init__(self, pipeline: IngestPipeline, spool_max_memory: int) -> None:
        self.pipeline = pipeline
        self.spool_max_memory = spool_max_memory

    def StoreInstances(
        self, request_iterator: Iterator[pb.StoreInstancesRequest], context: grpc.ServicerContext
    ) -> pb.StoreInstancesResponse:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "options":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be the options")
        options = first.options
        try:
            check_tenant(options.tenant)
            if options.study_instance_uid:
                check_uid(options.study_instance_uid, "Study Instance UID")
        except InvalidValue as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        outcomes: list[pb.InstanceOutcome] = []
        spool = tempfile.SpooledTemporaryFile(max_size=self.spool_max_memory)
        size = 0
        try:
            for req in request_iterator:
                part = req.WhichOneof("part")
                if part == "chunk":
                    spool.write(req.chunk)
                    size += len(req.chunk)
                elif part == "end_of_instance":
                    outcomes.append(
                        self.pipeline.store(
                            spool, size, options.tenant, options.study_instance_uid, options.duplicate_policy
                        )
                    )
                    spool.close()
                    spool = tempfile.SpooledTemporaryFile(max_size=self.spool_max_memory)
                    size = 0
                else:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "options may only come first")
            if size:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the last instance has no end_of_instance")
        finally:
            spool.close()
        return pb.StoreInstancesResponse(outcomes=outcomes)
