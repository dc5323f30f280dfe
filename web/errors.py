"""A 422 that always renders: FastAPI's own answer to a request that fails
validation echoes the input, and input that is not text (bytes that are not UTF-8,
a lone surrogate in a JSON string) then failed to render, turning the 422 into a 500."""

from __future__ import annotations

import json

from fastapi import Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError


async def validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = jsonable_encoder(
        exc.errors(), custom_encoder={bytes: lambda raw: raw.decode("utf-8", "replace")}
    )
    # ASCII JSON: a lone surrogate goes out escaped (\ud800), still valid JSON.
    body = json.dumps({"detail": errors}, ensure_ascii=True)
    return Response(body, status_code=422, media_type="application/json")
