"""The browser app's pages and static assets, all served by the hub itself.

No CDN, no external fonts or scripts: stations are often on an intranet with no
internet. Assets are served from ``web/static`` by ``/static/{path}``, which
refuses anything that resolves outside that folder.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).parent / "static"

_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".json": "application/json",
}

# Pages change with each release; ``no-cache`` makes browsers revalidate (cheap
# 304s) so a station never runs yesterday's script against today's hub.
_CACHE = {"Cache-Control": "no-cache"}


def _page(name: str) -> FileResponse:
    return FileResponse(STATIC_DIR / name, media_type=_TYPES[".html"], headers=_CACHE)


def resolve_static(path: str, root: Path = STATIC_DIR) -> Path | None:
    """The file under ``root`` that ``path`` names, or None when it does not exist
    or would escape ``root`` (``..``, absolute paths, symlinks out)."""
    if not path or "\x00" in path or "\\" in path:
        return None
    base = root.resolve()
    try:
        candidate = (base / path).resolve()
        if not candidate.is_relative_to(base) or not candidate.is_file():
            return None
    except OSError:  # a name too long for the file system, a loop of links
        return None
    return candidate


def pages_router() -> APIRouter:
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return _page("index.html")

    @router.get("/admin", include_in_schema=False)
    async def admin() -> FileResponse:
        return _page("admin.html")

    @router.get("/console", include_in_schema=False)
    async def console() -> FileResponse:
        return _page("console.html")

    @router.get("/station", include_in_schema=False)
    async def station() -> FileResponse:
        return _page("station.html")

    @router.get("/watch/{room}", include_in_schema=False)
    async def watch(room: str) -> FileResponse:
        return _page("watch.html")

    @router.get("/static/{path:path}", include_in_schema=False)
    async def static(path: str) -> FileResponse:
        file = resolve_static(path)
        if file is None:
            raise HTTPException(status_code=404)
        media_type = _TYPES.get(file.suffix) or mimetypes.guess_type(file.name)[0]
        return FileResponse(file, media_type=media_type, headers=_CACHE)

    return router
