"""Request ids cross gRPC hops; every call is counted and timed."""

from __future__ import annotations

import grpc
from prometheus_client import REGISTRY

from common import observability
from common.clients import channel
from common.grpc_server import build_server


def _echo_request_id(request: bytes, context: grpc.ServicerContext) -> bytes:
    return observability.request_id.get().encode()


def _fail(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort(grpc.StatusCode.NOT_FOUND, "nothing here")


def _register(server: grpc.Server) -> None:
    handlers = {
        "RequestId": grpc.unary_unary_rpc_method_handler(_echo_request_id),
        "Fail": grpc.unary_unary_rpc_method_handler(_fail),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Probe", handlers),))


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_request_id_follows_the_call_and_calls_are_counted() -> None:
    # Counted from here: the registry is the process's, and may hold earlier runs.
    ok_before = _sample("dicomserver_grpc_requests_total", service="test.Probe", method="RequestId", code="OK")
    fail_before = _sample("dicomserver_grpc_requests_total", service="test.Probe", method="Fail", code="NOT_FOUND")
    timed_before = _sample("dicomserver_grpc_request_seconds_count", service="test.Probe", method="RequestId")
    server, _, port = build_server(_register, ["test.Probe"], "127.0.0.1:0")
    try:
        ch = channel(f"127.0.0.1:{port}")
        token = observability.request_id.set("rid-123")
        try:
            assert ch.unary_unary("/test.Probe/RequestId")(b"") == b"rid-123"
        finally:
            observability.request_id.reset(token)
        # Without one, the server makes its own.
        assert len(ch.unary_unary("/test.Probe/RequestId")(b"")) == 32
        try:
            ch.unary_unary("/test.Probe/Fail")(b"")
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.NOT_FOUND
        ok = _sample("dicomserver_grpc_requests_total", service="test.Probe", method="RequestId", code="OK")
        assert ok - ok_before == 2
        failed = _sample("dicomserver_grpc_requests_total", service="test.Probe", method="Fail", code="NOT_FOUND")
        assert failed - fail_before == 1
        timed = _sample("dicomserver_grpc_request_seconds_count", service="test.Probe", method="RequestId")
        assert timed - timed_before == 2
    finally:
        server.stop(None)
