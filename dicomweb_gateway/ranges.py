"""Range requests on DICOMweb routes are ignored, consistently, as RFC 9110
section 14.2 allows: the answer is the whole representation with 200, and
says `Accept-Ranges: none` so that clients stop asking. Multipart answers
carry a fresh boundary each time, so a byte range of one could not be
joined to a range of the next; frames and bulk data have routes of their own
for partial retrieval. (The console's static files keep Starlette's own
range support.)"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class NoRanges:
    def __init__(self, app: ASGIApp, base_path: str) -> None:
        self.app = app
        self.prefix = base_path.rstrip("/") + "/" if base_path else "/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return

        async def advertised(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"accept-ranges" for name, _ in headers):
                    headers.append((b"accept-ranges", b"none"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, advertised)
