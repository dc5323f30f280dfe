"""Bad input answered with a 4xx that always renders.

FastAPI's own answer to a request that fails validation echoes the input, and input
that is not text (bytes that are not UTF-8, a lone surrogate in a JSON string) then
failed to render, turning the 422 into a 500. A JSON string holding a lone surrogate
(``"\\ud800"``, valid JSON, not valid Unicode) also failed later, wherever it was
encoded (a database query, a password hash): :class:`UnicodeJson` refuses it first."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send


async def validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = jsonable_encoder(
        exc.errors(), custom_encoder={bytes: lambda raw: raw.decode("utf-8", "replace")}
    )
    # ASCII JSON: a lone surrogate goes out escaped (\ud800), still valid JSON.
    body = json.dumps({"detail": errors}, ensure_ascii=True)
    return Response(body, status_code=422, media_type="application/json")


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(item) for item in value)
    return False


class UnicodeJson:
    """ASGI middleware: a JSON request body whose strings are not valid Unicode is a
    400; any other body goes on to the app unchanged."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        content_type = next((v for k, v in scope.get("headers", []) if k == b"content-type"), b"")
        if scope["type"] != "http" or not content_type.lower().startswith(b"application/json"):
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message], receive), send)
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        try:
            refused = _has_lone_surrogate(json.loads(body))
        except (ValueError, RecursionError):
            refused = False  # not JSON: the route answers that itself
        if refused:
            detail = b'{"detail": "JSON strings must be valid Unicode (no lone surrogates)"}'
            await Response(detail, status_code=400, media_type="application/json")(
                scope, receive, send
            )
            return
        await self.app(scope, _replay([{"type": "http.request", "body": body}], receive), send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    async def replayed() -> Message:
        return messages.pop(0) if messages else await receive()

    return replayed
