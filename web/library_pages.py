"""The digital library's pages: ``/library`` (browse, search, administer) and
``/replay/{item_id}`` (watch one item). Both are static HTML; their scripts read
``/api/library`` and ``/api/me``. Assets come from ``/static`` (no CDN)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from media.library import ITEM_ID
from web.pages import STATIC_DIR

# Revalidated on every load (a cheap 304), as the other pages are: no stale script.
_HEADERS = {"Cache-Control": "no-cache"}


def _page(name: str) -> FileResponse:
    return FileResponse(STATIC_DIR / name, media_type="text/html; charset=utf-8", headers=_HEADERS)


def library_pages_router() -> APIRouter:
    router = APIRouter()

    @router.get("/library", include_in_schema=False)
    async def library() -> FileResponse:
        return _page("library.html")

    @router.get("/replay/{item_id}", include_in_schema=False)
    async def replay(item_id: str) -> FileResponse:
        # Whether the item exists (and may be seen) is the API's answer, shown by the page;
        # what can never be an item id is refused here.
        if not ITEM_ID.fullmatch(item_id):
            raise HTTPException(404, "no such library item")
        return _page("replay.html")

    return router
