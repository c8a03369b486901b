"""Logs, metrics and request ids, the same in every service.

A request id enters at an edge (HTTP header X-Request-ID, or a new one per
DIMSE operation), rides along every gRPC call as `x-request-id` metadata and
appears in every log line. Prometheus metrics are served on metrics_port."""

from __future__ import annotations

import contextvars
import logging
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from prometheus_client import Counter, Histogram, start_http_server
from pythonjsonlogger.json import JsonFormatter

REQUEST_ID_KEY = "x-request-id"
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

RPC_REQUESTS = Counter("dicomserver_grpc_requests_total", "gRPC calls served", ["service", "method", "code"])
RPC_SECONDS = Histogram(
    "dicomserver_grpc_request_seconds",
    "Time to serve a gRPC call",
    ["service", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
INGESTED = Counter("dicomserver_ingest_instances_total", "Instances through the ingest pipeline", ["status"])
INGESTED_BYTES = Counter("dicomserver_ingest_bytes_total", "Bytes of instances stored")


def new_request_id() -> str:
    return uuid.uuid4().hex


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


def configure_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s", rename_fields={"levelname": "level"}
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pydicom quotes element values (patient names, IDs) in its warnings
    # about invalid values; below DEBUG only its errors are kept.
    quiet = logging.getLevelName(level.upper()) != logging.DEBUG
    logging.getLogger("pydicom").setLevel(logging.ERROR if quiet else logging.NOTSET)
    if quiet:  # the same text also goes out as Python warnings, on stderr
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom\.")


def start_metrics_server(port: int, host: str = "127.0.0.1") -> None:
    """Serves /metrics on host:port when port is set (Kubernetes scrapes it)."""
    if port:
        start_http_server(port, addr=host)


def _split(method: str) -> tuple[str, str]:
    # "/dicomserver.v1.StorageService/Put" -> ("dicomserver.v1.StorageService", "Put")
    _, service, name = method.split("/", 2) if method.count("/") == 2 else ("", "", method)
    return service, name


class ServerInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]  # grpc ships no type stubs
    """Times every call, counts it by status code and adopts the caller's request id."""

    def intercept_service(self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        service, method = _split(details.method)
        rid = dict(details.invocation_metadata or ()).get(REQUEST_ID_KEY) or new_request_id()

        def observed(fn: Callable[..., Any], streaming_response: bool) -> Callable[..., Any]:
            def unary(req: Any, ctx: grpc.ServicerContext) -> Any:
                token = request_id.set(str(rid))
                start, failed = time.perf_counter(), True
                try:
                    result = fn(req, ctx)
                    failed = False
                    return result
                finally:
                    _record(service, method, ctx, start, failed)
                    request_id.reset(token)

            def streaming(req: Any, ctx: grpc.ServicerContext) -> Iterator[Any]:
                token = request_id.set(str(rid))
                start, failed = time.perf_counter(), True
                try:
                    yield from fn(req, ctx)
                    failed = False
                finally:
                    _record(service, method, ctx, start, failed)
                    request_id.reset(token)

            return streaming if streaming_response else unary

        if handler.unary_unary:
            return handler._replace(unary_unary=observed(handler.unary_unary, False))
        if handler.unary_stream:
            return handler._replace(unary_stream=observed(handler.unary_stream, True))
        if handler.stream_unary:
            return handler._replace(stream_unary=observed(handler.stream_unary, False))
        return handler._replace(stream_stream=observed(handler.stream_stream, True))


def _record(service: str, method: str, ctx: grpc.ServicerContext, start: float, failed: bool) -> None:
    code = ctx.code()
    name = code.name if isinstance(code, grpc.StatusCode) else ("UNKNOWN" if failed else "OK")
    RPC_REQUESTS.labels(service, method, name).inc()
    RPC_SECONDS.labels(service, method).observe(time.perf_counter() - start)


class _ClientCallDetails(grpc.ClientCallDetails):  # type: ignore[misc]  # grpc ships no type stubs
    def __init__(self, base: grpc.ClientCallDetails, metadata: list[tuple[str, str]]) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = base.wait_for_ready
        self.compression = base.compression


# grpc ships no type stubs: its base classes are Any.
class ClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Sends the current request id with every outgoing call."""

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [m for m in (details.metadata or ()) if m[0] != REQUEST_ID_KEY]
        rid = request_id.get()
        if rid != "-":
            metadata.append((REQUEST_ID_KEY, rid))
        return _ClientCallDetails(details, metadata)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(details), request_iterator)
