"""Request bodies are counted while they arrive, so none is read past its limit.

A declared ``Content-Length`` over the limit is refused before the app runs; a body
that streams (chunked, or lying about its length) is cut off at the limit with a 413.
Everything but a library upload has a small limit: JSON, CSV, SDP.

Cut off mid-stream, a body is drained (read and dropped) for at most
:data:`LINGER_SECONDS` and :data:`LINGER_BYTES` before the 413: a hub that closed with
the client's bytes unread would reset the connection, and the client would lose the
answer that says why (nginx's lingering close, done the only way ASGI allows)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LINGER_SECONDS = 1.0
LINGER_BYTES = 4 * 1024 * 1024


class BodyTooLarge(HTTPException):
    """Raised from ``receive``: FastAPI and the routes let an HTTPException through
    (anything else reading the body becomes their 400), so the client gets the 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")


class BodyLimit:
    """ASGI middleware. ``limits`` are (method, path, bytes) for the routes that take
    more than ``default`` (the library's uploads)."""

    def __init__(self, app: ASGIApp, default: int, limits: Sequence[tuple[str, str, int]] = ()):
        self.app = app
        self.default = default
        self.limits = {(method, path): size for method, path, size in limits}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.get((scope["method"], scope["path"]), self.default)
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            status, reason = (
                (413, BodyTooLarge(limit).detail)
                if declared.isdigit()
                else (400, "Content-Length must be a number")
            )
            await _answer(send, status, reason)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    if message.get("more_body"):
                        await _linger(receive)
                    raise BodyTooLarge(limit)
            return message

        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge as exc:
            # Reached here when no route turned it into an answer (a middleware read).
            if not started:
                await _answer(send, 413, str(exc.detail))


async def _linger(receive: Receive) -> None:
    """Drop what more of the body arrives, within the linger bounds."""
    deadline = time.monotonic() + LINGER_SECONDS
    dropped = 0
    while dropped < LINGER_BYTES:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        try:
            message = await asyncio.wait_for(receive(), left)
        except TimeoutError:
            return
        if message["type"] != "http.request":
            return
        dropped += len(message.get("body", b""))
        if not message.get("more_body"):
            return


async def _answer(send: Send, status: int, reason: str) -> None:
    body = json.dumps({"detail": reason}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                # The rest of the body is not read: the connection cannot be reused.
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
