"""The request body size limit: 413 (OpenAI's error shape) for bodies over ``max_bytes``.

A ``Content-Length`` over the limit is refused before any of the body is read; a body without
one (chunked) is counted while it streams in and refused as soon as it passes the limit, so a
100 MB body never reaches the JSON parser or the tokenizer.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lexlora.serve.errors import body_too_large


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            error = body_too_large(self.max_bytes)
            await send(
                {
                    "type": "http.response.start",
                    "status": error.status,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
                }
            )
            await send({"type": "http.response.body", "body": error.json_bytes()})
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # raised inside the route: answered as a 413
                    raise body_too_large(self.max_bytes)
            return message

        await self.app(scope, counted, send)
