"""Request ids and HTTP metrics as one ASGI middleware.

The id comes from the caller's X-Request-ID when it is sane, else a new one;
it is echoed in the response and rides along every gRPC call the request
makes (common.observability). Metrics are labelled by route template, never
by raw path, so UIDs do not become label values."""

from __future__ import annotations

import re
import time

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common import observability

_SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")

HTTP_REQUESTS = Counter("dicomserver_http_requests_total", "HTTP requests served", ["method", "route", "status"])
HTTP_SECONDS = Histogram(
    "dicomserver_http_request_seconds",
    "Time to the end of an HTTP response",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


class RequestObservability:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _SANE_ID.fullmatch(given) else observability.new_request_id()
        token = observability.request_id.set(rid)
        status = 500
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            HTTP_REQUESTS.labels(scope["method"], route, str(status)).inc()
            HTTP_SECONDS.labels(scope["method"], route).observe(time.perf_counter() - start)
            observability.request_id.reset(token)
