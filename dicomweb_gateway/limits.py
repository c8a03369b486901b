"""Request limits every route shares, checked before anything is read or
authenticated: a query string longer than max_query_string_bytes is a 414,
a declared body (Content-Length) larger than max_request_bytes a 413, and a
body that streams past the limit without declaring it (chunked) a 413 as
soon as it does; each with the JSON error body of every other refusal."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomweb_gateway.errors import ApiError, error_response


class RequestLimits:
    def __init__(self, app: ASGIApp, max_query_string_bytes: int, max_request_bytes: int) -> None:
        self.app = app
        self.max_query = max_query_string_bytes
        self.max_body = max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self._refusal(scope)
            if refusal is not None:
                await error_response(*refusal)(scope, receive, send)
                return
            receive = self._counting(receive)
        await self.app(scope, receive, send)

    def _counting(self, receive: Receive) -> Receive:
        """`receive`, raising a 413 (through the app's error handlers) once
        the body passes the limit."""
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise ApiError(413, f"the request body is larger than {self.max_body} bytes, the most accepted")
            return message

        return limited

    def _refusal(self, scope: Scope) -> tuple[int, str] | None:
        size = len(scope.get("query_string", b""))
        if size > self.max_query:
            return 414, f"the query string has {size} bytes; at most {self.max_query} are accepted"
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            return 413, f"the request body has {declared} bytes; at most {self.max_body} are accepted"
        return None
