"""The API's description, for center administrators only: ``/openapi.json`` and
``/docs``, a plain page listing every route (no script from outside: Swagger UI
would come from a CDN)."""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse

from scheduler.accounts import Auth
from scheduler.permissions import Role

_METHODS = ("get", "post", "put", "patch", "delete")


def api_docs_router(auth: Auth, schema: Callable[[], dict[str, Any]]) -> APIRouter:
    router = APIRouter()

    async def administrator(request: Request) -> None:
        account = await auth.current_account(request)  # 401 for a stranger
        if account.role != Role.CENTER_ADMIN:
            raise HTTPException(403, "the API description is for center administrators")

    @router.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> JSONResponse:
        await administrator(request)
        return JSONResponse(schema())

    @router.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        await administrator(request)
        described = schema()
        rows = "".join(
            f"<tr><td>{method.upper()}</td><td><code>{html.escape(path)}</code></td>"
            f"<td>{html.escape(operation.get('summary', ''))}</td></tr>"
            for path, operations in described.get("paths", {}).items()
            for method, operation in operations.items()
            if method in _METHODS
        )
        title = html.escape(described.get("info", {}).get("title", "API"))
        return HTMLResponse(
            f'<!doctype html><html lang="en"><meta charset="utf-8"><title>{title}</title>'
            f'<link rel="stylesheet" href="/static/css/app.css"><h1>{title}</h1>'
            '<p><a href="/openapi.json">/openapi.json</a> (OpenAPI 3)</p>'
            f"<table><thead><tr><th>method</th><th>path</th><th>summary</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></html>"
        )

    return router
