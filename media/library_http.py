"""HTTP for the library: JSON under ``/api/library``, files under ``/library/{item_id}/{name}``.

Who is an administrator is not decided here: the app injects ``is_admin``. Non-admins see
only published items; everything else answers 404, as if it did not exist. Files are
served only from an item's own folder: names are checked, then the resolved path (symlinks
followed) must still lie inside it.
"""

# No ``from __future__ import annotations``: FastAPI must see the route annotations as
# objects, and several are local to library_router (they close over its arguments).
import asyncio
import datetime
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, BinaryIO, cast

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException

from media.jobs import Job, JobRunner
from media.library import (
    ITEM_ID,
    ItemStatus,
    ItemUpdate,
    Library,
    LibraryItem,
    SearchQuery,
    Theme,
    new_id,
)
from media.processing import HLS_PLAYLIST, MP4_FILE, POSTER_FILE, ProcessingError, probe

FILE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}")
"""Names the processor writes: no separators, no leading dot, so no ``..``."""

CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".ts": "video/mp2t",
    ".mp4": "video/mp4",
    ".jpg": "image/jpeg",
}
PLAYLIST_CACHE = "public, max-age=60"
"""Short: the playlist is what changes if an item is ever processed again."""
MEDIA_CACHE = "public, max-age=86400"
PRIVATE_CACHE = "private, no-store"
"""Unpublished items, seen by administrators only: no shared cache may keep them."""

UPLOAD_CHUNK = 1024 * 1024
DEFAULT_MAX_UPLOAD = 4 * 1024**3
UPLOADS_PATH = "/api/library/uploads"
UPLOAD_FRAMING = 1024 * 1024
"""What an upload's body may carry beyond its file: the multipart framing and fields."""
"""4 GiB: a long lecture recorded elsewhere at a good bitrate."""


NO_NUL = r"^[^\x00]*$"
"""PostgreSQL text cannot hold NUL: refuse it up front (422) rather than fail (500)."""


class ItemPatch(BaseModel):
    """Metadata an administrator may change; absent fields stay as they are.

    The defaults are never stored (only set fields are applied); they make an explicit
    ``null`` a validation error instead of a value.
    """

    model_config = ConfigDict(extra="forbid")

    title: str = Field(default="", min_length=1, max_length=200, pattern=NO_NUL)
    theme: Theme = Theme.THEORY
    speaker: str = Field(default="", max_length=200, pattern=NO_NUL)
    site: str = Field(default="", max_length=64, pattern=NO_NUL)
    date: datetime.date = datetime.date.min
    tags: list[Annotated[str, Field(min_length=1, max_length=50, pattern=NO_NUL)]] = Field(
        default_factory=list, max_length=30
    )
    description: str = Field(default="", max_length=10_000, pattern=NO_NUL)
    published: bool = False


class UploadForm(ItemPatch):
    """The metadata fields sent with an uploaded file."""

    title: str = Field(min_length=1, max_length=200, pattern=NO_NUL)
    theme: Theme
    date: datetime.date


def item_json(item: LibraryItem) -> dict[str, Any]:
    """An item as the API shows it, with its file URLs once it is ready."""
    base = f"/library/{item.id}"
    ready = item.status == ItemStatus.READY
    return {
        "id": item.id,
        "title": item.title,
        "theme": item.theme.value,
        "theme_label": item.theme.label,
        "speaker": item.speaker,
        "site": item.site,
        "date": item.date.isoformat(),
        "duration": item.duration,
        "tags": item.tags,
        "description": item.description,
        "session_id": item.session_id,
        "views": item.views,
        "published": item.published,
        "status": item.status.value,
        "created_at": item.created_at,
        "hls_url": f"{base}/{HLS_PLAYLIST}" if ready else None,
        "mp4_url": f"{base}/{MP4_FILE}" if ready else None,
        "poster_url": f"{base}/{POSTER_FILE}" if ready else None,
    }


def job_json(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "item_id": job.item_id,
        "kind": job.kind,
        "status": job.status.value,
        "progress": job.progress,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "error": job.error,
    }


def _copy_limited(src: BinaryIO, dst: Path, limit: int) -> bool:
    """Copy an upload to disk; False (and nothing left behind) when it exceeds ``limit``."""
    written = 0
    with dst.open("wb") as out:
        while chunk := src.read(UPLOAD_CHUNK):
            written += len(chunk)
            if written > limit:
                break
            out.write(chunk)
    if written > limit:
        dst.unlink()
        return False
    return True


def _safe_suffix(filename: str | None) -> str:
    suffix = Path(filename or "").suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ".bin"


async def _stage_upload(form: FormData, uploads: Path, limit: int) -> tuple[UploadForm, Path]:
    """Validate an upload form's fields and save its file into ``uploads``."""
    file = form.get("file")
    if not isinstance(file, UploadFile):
        raise HTTPException(422, "the form needs a 'file' part")
    fields: dict[str, Any] = {k: v for k, v in form.items() if isinstance(v, str)}
    if "tags" in fields:
        fields["tags"] = [t.strip() for t in fields["tags"].split(",") if t.strip()]
    try:
        meta = UploadForm.model_validate(fields)
    except ValidationError as e:
        raise HTTPException(422, e.errors(include_url=False)) from e
    staging = uploads / f"incoming-{new_id()}{_safe_suffix(file.filename)}"
    await asyncio.to_thread(uploads.mkdir, parents=True, exist_ok=True)
    if not await asyncio.to_thread(_copy_limited, file.file, staging, limit):
        raise HTTPException(413, f"larger than {limit} bytes")
    return meta, staging


def _media_path(library_dir: Path, item_id: str, name: str) -> Path | None:
    """The file to serve, or None when the name or where it really leads is not allowed."""
    if not FILE_NAME.fullmatch(name) or Path(name).suffix not in CONTENT_TYPES:
        return None
    folder = (library_dir / item_id).resolve()
    path = (folder / name).resolve()
    if path.parent != folder or not path.is_file():
        return None
    return path


def library_router(
    library: Library,
    jobs: JobRunner,
    *,
    library_dir: Path,
    is_admin: Callable[[Request], Awaitable[bool]],
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
) -> APIRouter:
    """The library's routes; mount with ``app.include_router(...)``.

    ``library_dir`` is where files are served from: the Library's own folder.
    """
    if library_dir.resolve() != library.library_dir.resolve():
        raise ValueError(f"library_dir {library_dir} is not the Library's {library.library_dir}")
    router = APIRouter()

    async def admin_flag(request: Request) -> bool:
        return await is_admin(request)

    async def require_admin(request: Request) -> None:
        if not await is_admin(request):
            raise HTTPException(403, "administrators only")

    Admin = Annotated[bool, Depends(admin_flag)]
    AdminOnly = Depends(require_admin)

    async def visible_item(item_id: str, admin: Admin) -> LibraryItem:
        item = await library.get(item_id) if ITEM_ID.fullmatch(item_id) else None
        if item is None or not (item.published or admin):
            raise HTTPException(404, "no such library item")
        return item

    Visible = Annotated[LibraryItem, Depends(visible_item)]

    @router.get("/api/library")
    async def list_items(
        admin: Admin,
        q: Annotated[str | None, Query(max_length=100, pattern=NO_NUL)] = None,
        theme: Theme | None = None,
        site: Annotated[str | None, Query(max_length=64, pattern=NO_NUL)] = None,
        date_from: datetime.date | None = None,
        date_to: datetime.date | None = None,
        page: Annotated[int, Query(ge=1, le=10_000)] = 1,
        page_size: Annotated[int, Query(ge=1, le=100)] = 20,
        include_unpublished: bool = False,
    ) -> dict[str, Any]:
        """Browse and search; ``include_unpublished`` is for administrators."""
        if date_from and date_to and date_from > date_to:
            raise HTTPException(422, "date_from is after date_to")
        if include_unpublished and not admin:
            raise HTTPException(403, "only administrators see unpublished items")
        result = await library.search(
            SearchQuery(
                text=(q or "").strip() or None,
                theme=theme,
                site=site or None,
                date_from=date_from,
                date_to=date_to,
                published_only=not include_unpublished,
                offset=(page - 1) * page_size,
                limit=page_size,
            )
        )
        return {
            "items": [item_json(i) for i in result.items],
            "total": result.total,
            "page": page,
            "page_size": page_size,
        }

    @router.post(UPLOADS_PATH, status_code=202, dependencies=[AdminOnly])
    async def upload(request: Request) -> dict[str, Any]:
        """Multipart: ``file`` plus the metadata fields of :class:`UploadForm`
        (``tags`` comma-separated). The file must hold a video stream. The body is
        counted as it arrives (``web/body_limit.py``): nothing past
        ``max_upload_bytes`` and its framing is read."""
        try:
            async with request.form(max_files=1, max_fields=20) as form:
                meta, staging = await _stage_upload(form, library.uploads_dir, max_upload_bytes)
        except MultiPartException as e:
            raise HTTPException(400, f"not a valid multipart form: {e.message}") from e
        try:
            info = await asyncio.to_thread(probe, staging)
            if info.video_codec is None:
                raise ProcessingError("no video stream in it")
        except ProcessingError as e:
            await asyncio.to_thread(staging.unlink)
            raise HTTPException(415, f"not a video file: {e}") from e
        item = await library.create(
            title=meta.title,
            theme=meta.theme,
            date=meta.date,
            speaker=meta.speaker,
            site=meta.site,
            tags=meta.tags,
            description=meta.description,
            published=meta.published,
        )
        source = library.upload_path(item.id, staging.suffix)
        await asyncio.to_thread(staging.rename, source)
        job = await jobs.submit(item.id, "upload", [source])
        return {"item": item_json(item), "job": job_json(job)}

    @router.get("/api/library/{item_id}")
    async def get_item(item: Visible) -> dict[str, Any]:
        return item_json(item)

    @router.patch("/api/library/{item_id}", dependencies=[AdminOnly])
    async def patch_item(item: Visible, patch: ItemPatch) -> dict[str, Any]:
        """Change metadata, or publish / unpublish with ``{"published": …}``."""
        changes = cast(ItemUpdate, patch.model_dump(exclude_unset=True))
        updated = await library.update(item.id, changes)
        if updated is None:
            raise HTTPException(404, "no such library item")
        return item_json(updated)

    @router.delete("/api/library/{item_id}", status_code=204, dependencies=[AdminOnly])
    async def delete_item(item: Visible) -> None:
        """Remove the item, its files, and stop its processing."""
        await jobs.discard(item.id)
        await library.delete(item.id)

    @router.post("/api/library/{item_id}/views", status_code=204)
    async def count_view(item: Visible) -> None:
        await library.count_view(item.id)

    @router.get("/api/library/{item_id}/job")
    async def item_job(item: Visible) -> dict[str, Any]:
        """The item's latest processing job: status, progress, attempts, error."""
        job = await jobs.latest_for_item(item.id)
        if job is None:
            raise HTTPException(404, "this item has no processing job")
        return job_json(job)

    # One operation in the API description: GET and HEAD in one route share its id.
    @router.get("/library/{item_id}/{name}")
    @router.head("/library/{item_id}/{name}", include_in_schema=False)
    async def media_file(item: Visible, name: str) -> Response:
        """HLS playlist and segments, the MP4 (HTTP Range supported), the poster."""
        path = await asyncio.to_thread(_media_path, library_dir, item.id, name)
        if path is None:
            raise HTTPException(404, "no such file")
        if not item.published:
            cache = PRIVATE_CACHE
        elif path.suffix == ".m3u8":
            cache = PLAYLIST_CACHE
        else:
            cache = MEDIA_CACHE
        return FileResponse(
            path, media_type=CONTENT_TYPES[path.suffix], headers={"Cache-Control": cache}
        )

    return router
