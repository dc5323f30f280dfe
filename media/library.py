"""The digital library's catalog: items and processing jobs in SQL (SQLite or PostgreSQL).

This package owns its tables (its own ``MetaData``); ``create_tables(engine)`` makes them.
Files live under ``<library_dir>/<item_id>/`` (``index.m3u8`` + segments, ``video.mp4``,
``poster.jpg``), uploads wait in ``<library_dir>/uploads/``; deleting an item removes its files.
"""

from __future__ import annotations

import asyncio
import datetime
import enum
import json
import re
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine


class Theme(enum.StrEnum):
    """The five platforms every session and library item belongs to."""

    THEORY = "theory"
    EDUCATION = "education"
    CULTURE = "culture"
    SCIENCE = "science"
    FITNESS = "fitness"

    @property
    def label(self) -> str:
        """The Chinese name the county uses."""
        return _THEME_LABELS[self]


_THEME_LABELS = {
    Theme.THEORY: "理论宣讲",
    Theme.EDUCATION: "教育服务",
    Theme.CULTURE: "文化服务",
    Theme.SCIENCE: "科技科普",
    Theme.FITNESS: "健身体育",
}


class ItemStatus(enum.StrEnum):
    PROCESSING = "processing"
    READY = "ready"
    FAILED = "failed"


ITEM_ID = re.compile(r"[0-9a-f]{32}")
"""Item ids are uuid4 hex: also the folder name, so nothing else may pass for one."""


def new_id() -> str:
    return uuid.uuid4().hex


class _Tags(sa.types.TypeDecorator[list[str]]):
    """A list of tags as JSON text, non-ASCII kept as is so LIKE finds Chinese tags
    (SQLite's JSON type would store ``\\uXXXX`` escapes)."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: list[str] | None, dialect: Dialect) -> str:
        return json.dumps(list(value or []), ensure_ascii=False)

    def process_result_value(self, value: str | None, dialect: Dialect) -> list[str]:
        return list(json.loads(value)) if value else []


metadata = sa.MetaData()

items_table = sa.Table(
    "library_items",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("title", sa.String(200), nullable=False),
    sa.Column("theme", sa.String(16), nullable=False, index=True),
    sa.Column("speaker", sa.String(200), nullable=False, default=""),
    sa.Column("site", sa.String(64), nullable=False, default="", index=True),
    sa.Column("date", sa.Date, nullable=False, index=True),
    sa.Column("duration", sa.Float, nullable=True),
    sa.Column("tags", _Tags, nullable=False),
    sa.Column("description", sa.Text, nullable=False, default=""),
    sa.Column("session_id", sa.String(64), nullable=True),
    sa.Column("views", sa.Integer, nullable=False, default=0),
    sa.Column("published", sa.Boolean, nullable=False, default=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

jobs_table = sa.Table(
    "library_jobs",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("item_id", sa.String(32), nullable=False, index=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("layout", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("progress", sa.Float, nullable=False, default=0.0),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("run_after", sa.Float, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)


async def create_tables(engine: AsyncEngine) -> None:
    """Create the library's tables if they do not exist."""
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)


@dataclass(frozen=True, slots=True)
class LibraryItem:
    """One entry of the library, as stored."""

    id: str
    title: str
    theme: Theme
    speaker: str
    site: str
    """The host site's code."""
    date: datetime.date
    duration: float | None
    """Seconds; known once processing is done."""
    tags: list[str]
    description: str
    session_id: str | None
    """The session it was recorded from; None for an upload."""
    views: int
    published: bool
    status: ItemStatus
    created_at: float
    """``time.time()`` when the item was created."""


class ItemUpdate(TypedDict, total=False):
    """Metadata an administrator may change."""

    title: str
    theme: Theme
    speaker: str
    site: str
    date: datetime.date
    tags: list[str]
    description: str
    published: bool


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """Browse and search parameters; every filter is optional."""

    text: str | None = None
    """Substring of the title, description or a tag (case-insensitive)."""
    theme: Theme | None = None
    site: str | None = None
    date_from: datetime.date | None = None
    date_to: datetime.date | None = None
    """Inclusive."""
    published_only: bool = True
    """Only what the public may watch: published and ready (a published item still
    processing appears once it plays)."""
    offset: int = 0
    limit: int = 20


@dataclass(frozen=True, slots=True)
class Page:
    items: list[LibraryItem]
    total: int
    """How many items match, over all pages."""


def like_pattern(text: str) -> str:
    """A LIKE pattern matching ``text`` anywhere, its ``%``, ``_`` and ``\\`` taken literally.

    Substring matching is the right search for Chinese, which has no word boundaries.
    """
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _item(row: sa.Row[Any]) -> LibraryItem:
    m = row._mapping
    return LibraryItem(
        id=m["id"],
        title=m["title"],
        theme=Theme(m["theme"]),
        speaker=m["speaker"],
        site=m["site"],
        date=m["date"],
        duration=m["duration"],
        tags=m["tags"],
        description=m["description"],
        session_id=m["session_id"],
        views=m["views"],
        published=m["published"],
        status=ItemStatus(m["status"]),
        created_at=m["created_at"],
    )


class Library:
    """Queries and changes to the catalog. Files are under ``library_dir``."""

    def __init__(self, engine: AsyncEngine, library_dir: Path) -> None:
        self.engine = engine
        self.library_dir = library_dir

    def item_dir(self, item_id: str) -> Path:
        if not ITEM_ID.fullmatch(item_id):
            raise ValueError(f"not an item id: {item_id!r}")
        return self.library_dir / item_id

    @property
    def uploads_dir(self) -> Path:
        """Uploaded files wait here for their job (outside any served item folder)."""
        return self.library_dir / "uploads"

    def upload_path(self, item_id: str, suffix: str) -> Path:
        return self.uploads_dir / f"{self.item_dir(item_id).name}{suffix}"

    async def create(
        self,
        *,
        title: str,
        theme: Theme,
        date: datetime.date,
        speaker: str = "",
        site: str = "",
        tags: Sequence[str] = (),
        description: str = "",
        session_id: str | None = None,
        published: bool = False,
    ) -> LibraryItem:
        """Add an item in status ``processing``; a job makes it ``ready``."""
        values = {
            "id": new_id(),
            "title": title,
            "theme": Theme(theme).value,
            "speaker": speaker,
            "site": site,
            "date": date,
            "duration": None,
            "tags": list(tags),
            "description": description,
            "session_id": session_id,
            "views": 0,
            "published": published,
            "status": ItemStatus.PROCESSING.value,
            "created_at": time.time(),
        }
        async with self.engine.begin() as conn:
            await conn.execute(items_table.insert().values(values))
        item = await self.get(str(values["id"]))
        assert item is not None
        return item

    async def get(self, item_id: str) -> LibraryItem | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(items_table.select().where(items_table.c.id == item_id))
            ).first()
        return None if row is None else _item(row)

    async def search(self, query: SearchQuery) -> Page:
        """Matching items, newest date first, one page of them plus the total."""
        t = items_table
        where: list[sa.ColumnElement[bool]] = []
        if query.published_only:
            where.append(t.c.published.is_(True))
            where.append(t.c.status == ItemStatus.READY.value)
        if query.theme is not None:
            where.append(t.c.theme == query.theme.value)
        if query.site:
            where.append(t.c.site == query.site)
        if query.date_from is not None:
            where.append(t.c.date >= query.date_from)
        if query.date_to is not None:
            where.append(t.c.date <= query.date_to)
        if query.text:
            pattern = like_pattern(query.text)
            # As plain text: the pattern must not go through the tags' JSON encoding.
            tags = sa.type_coerce(t.c.tags, sa.Text)
            where.append(
                sa.or_(*(c.ilike(pattern, escape="\\") for c in (t.c.title, t.c.description, tags)))
            )
        async with self.engine.connect() as conn:
            total = (
                await conn.execute(sa.select(sa.func.count()).select_from(t).where(*where))
            ).scalar_one()
            rows = await conn.execute(
                t.select()
                .where(*where)
                .order_by(t.c.date.desc(), t.c.created_at.desc(), t.c.id)
                .offset(query.offset)
                .limit(query.limit)
            )
            return Page(items=[_item(r) for r in rows], total=total)

    async def update(self, item_id: str, changes: ItemUpdate) -> LibraryItem | None:
        """Change metadata (including ``published``); None when there is no such item."""
        values: dict[str, object] = dict(changes)
        if "theme" in values:
            values["theme"] = Theme(changes["theme"]).value
        if values:
            await self._set(item_id, values)
        return await self.get(item_id)

    async def mark_ready(self, item_id: str, duration: float) -> None:
        await self._set(item_id, {"status": ItemStatus.READY.value, "duration": duration})

    async def mark_failed(self, item_id: str) -> None:
        await self._set(item_id, {"status": ItemStatus.FAILED.value})

    async def count_view(self, item_id: str) -> None:
        """One more view; an SQL increment so concurrent viewers are all counted."""
        await self._set(item_id, {"views": items_table.c.views + 1})

    async def delete(self, item_id: str) -> bool:
        """Remove the item, its job rows and its files; False when there was no such item."""
        async with self.engine.begin() as conn:
            result = await conn.execute(items_table.delete().where(items_table.c.id == item_id))
            await conn.execute(jobs_table.delete().where(jobs_table.c.item_id == item_id))
        if result.rowcount == 0:
            return False
        await asyncio.to_thread(self._remove_files, item_id)
        return True

    def _remove_files(self, item_id: str) -> None:
        folder = self.item_dir(item_id)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(folder.with_name(f"{item_id}.partial"), ignore_errors=True)
        for upload in self.uploads_dir.glob(f"{item_id}*"):
            upload.unlink(missing_ok=True)

    async def _set(self, item_id: str, values: dict[str, object]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                items_table.update().where(items_table.c.id == item_id).values(values)
            )
