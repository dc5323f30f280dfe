"""The catalog, run against both SQLite and the real PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from media.jobs import JobRunner, JobStatus
from media.library import (
    ItemStatus,
    Library,
    LibraryItem,
    SearchQuery,
    Theme,
    create_tables,
    like_pattern,
)
from media.processing import Processor
from tests.helpers import wait_until
from tests.test_processing import make_recording

DAY = datetime.date(2026, 5, 1)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """A fresh database: an SQLite file, or a PostgreSQL schema of its own dropped afterwards."""
    if request.param == "sqlite":
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'library.sqlite3'}")
        await create_tables(engine)
        yield engine
        await engine.dispose()
        return
    url = request.getfixturevalue("postgres_url")
    schema = f"library_test_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(url)
    async with admin.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = create_async_engine(url, connect_args={"options": f"-csearch_path={schema}"})
    try:
        await create_tables(engine)
        yield engine
    finally:
        await engine.dispose()
        async with admin.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await admin.dispose()


@pytest.fixture
def library(engine: AsyncEngine, tmp_path: Path) -> Library:
    return Library(engine, tmp_path / "library")


async def add(library: Library, title: str, **fields: object) -> LibraryItem:
    """A published item, processed (ready) unless ``ready=False``."""
    ready = fields.pop("ready", True)
    values: dict[str, object] = {"theme": Theme.THEORY, "date": DAY, "published": True}
    values.update(fields)
    item = await library.create(title=title, **values)  # type: ignore[arg-type]
    if ready:
        await library.mark_ready(item.id, 60.0)
    return item


async def titles(library: Library, **query: object) -> list[str]:
    page = await library.search(SearchQuery(**query))  # type: ignore[arg-type]
    return [i.title for i in page.items]


def test_themes_carry_the_countys_names() -> None:
    assert [t.label for t in Theme] == ["理论宣讲", "教育服务", "文化服务", "科技科普", "健身体育"]


def test_like_pattern_takes_wildcards_literally() -> None:
    assert like_pattern("100%_a\\b") == "%100\\%\\_a\\\\b%"


async def test_an_item_round_trips_with_chinese_tags(library: Library) -> None:
    item = await library.create(
        title="乡村振兴政策解读",
        theme=Theme.THEORY,
        date=DAY,
        speaker="王老师",
        site="C01",
        tags=["乡村振兴", "政策"],
        description="面向全县各站点",
        session_id="s-42",
    )
    assert item.status == ItemStatus.PROCESSING and not item.published and item.views == 0
    assert await library.get(item.id) == item
    assert item.tags == ["乡村振兴", "政策"] and item.date == DAY


async def test_create_tables_twice_is_harmless(engine: AsyncEngine) -> None:
    await create_tables(engine)


async def test_search_finds_chinese_substrings_in_title_description_and_tags(
    library: Library,
) -> None:
    await add(library, "乡村振兴政策解读", description="讲解土地流转")
    await add(library, "太极拳入门", tags=["健身", "老年人"])
    await add(library, "防诈骗知识讲座", description="识别电信诈骗")
    assert await titles(library, text="振兴") == ["乡村振兴政策解读"]
    assert await titles(library, text="土地") == ["乡村振兴政策解读"]
    assert await titles(library, text="老年") == ["太极拳入门"]
    assert await titles(library, text="诈骗") == ["防诈骗知识讲座"]
    assert await titles(library, text="不存在") == []


async def test_search_escapes_like_wildcards_and_ignores_case(library: Library) -> None:
    await add(library, "满分100%的秘诀")
    await add(library, "100分钟")
    await add(library, "a_b 课程")
    await add(library, "axb 课程")
    await add(library, "Python Basics")
    assert await titles(library, text="100%") == ["满分100%的秘诀"]
    assert await titles(library, text="a_b") == ["a_b 课程"]
    assert await titles(library, text="python") == ["Python Basics"]


async def test_browse_by_theme_site_and_date_range(library: Library) -> None:
    await add(library, "早", theme=Theme.FITNESS, site="S1", date=datetime.date(2026, 1, 1))
    await add(library, "中", theme=Theme.FITNESS, site="S2", date=datetime.date(2026, 3, 1))
    await add(library, "晚", theme=Theme.CULTURE, site="S1", date=datetime.date(2026, 6, 1))
    assert await titles(library, theme=Theme.FITNESS) == ["中", "早"]
    assert await titles(library, site="S1") == ["晚", "早"]
    assert await titles(
        library, date_from=datetime.date(2026, 3, 1), date_to=datetime.date(2026, 6, 1)
    ) == ["晚", "中"]


async def test_pages_of_results_with_the_total(library: Library) -> None:
    for day in range(1, 6):
        await add(library, f"第{day}讲", date=datetime.date(2026, 5, day))
    page = await library.search(SearchQuery(offset=2, limit=2))
    assert [i.title for i in page.items] == ["第3讲", "第2讲"] and page.total == 5


async def test_unpublished_items_are_hidden_until_published(library: Library) -> None:
    item = await add(library, "草稿", published=False)
    assert await titles(library) == []
    assert await titles(library, published_only=False) == ["草稿"]
    await library.update(item.id, {"published": True})
    assert await titles(library) == ["草稿"]


async def test_the_public_sees_published_items_once_they_play(library: Library) -> None:
    item = await add(library, "处理中", ready=False)
    assert await titles(library) == []
    assert await titles(library, published_only=False) == ["处理中"]
    await library.mark_ready(item.id, 60.0)
    assert await titles(library) == ["处理中"]


async def test_update_changes_metadata(library: Library) -> None:
    item = await add(library, "旧标题")
    updated = await library.update(
        item.id, {"title": "新标题", "theme": Theme.SCIENCE, "tags": ["科普"]}
    )
    assert updated is not None
    assert (updated.title, updated.theme, updated.tags) == ("新标题", Theme.SCIENCE, ["科普"])
    assert await library.update("f" * 32, {"title": "x"}) is None


async def test_concurrent_views_are_all_counted(library: Library) -> None:
    item = await add(library, "热门")
    await asyncio.gather(*(library.count_view(item.id) for _ in range(20)))
    counted = await library.get(item.id)
    assert counted is not None and counted.views == 20


async def test_ready_and_failed(library: Library) -> None:
    item = await add(library, "处理中", ready=False)
    await library.mark_ready(item.id, 3600.5)
    ready = await library.get(item.id)
    assert ready is not None and (ready.status, ready.duration) == (ItemStatus.READY, 3600.5)
    await library.mark_failed(item.id)
    failed = await library.get(item.id)
    assert failed is not None and failed.status == ItemStatus.FAILED


async def test_delete_removes_the_row_and_every_file(library: Library) -> None:
    item = await add(library, "要删除")
    folder = library.item_dir(item.id)
    folder.mkdir(parents=True)
    (folder / "video.mp4").write_bytes(b"x")
    folder.with_name(f"{item.id}.partial").mkdir()
    upload = library.upload_path(item.id, ".mp4")
    upload.parent.mkdir()
    upload.write_bytes(b"x")
    other = await add(library, "保留")
    kept = library.upload_path(other.id, ".mp4")
    kept.write_bytes(b"x")
    assert await library.delete(item.id) is True
    assert await library.get(item.id) is None
    assert not folder.exists() and not folder.with_name(f"{item.id}.partial").exists()
    assert not upload.exists() and kept.exists()
    assert await library.delete(item.id) is False


def test_item_ids_are_checked_before_becoming_paths(library: Library) -> None:
    with pytest.raises(ValueError, match="not an item id"):
        library.item_dir("../etc")


async def test_a_job_runs_on_this_database(
    engine: AsyncEngine, library: Library, tmp_path: Path
) -> None:
    recording = make_recording(tmp_path / "rec")
    item = await add(library, "录像")
    jobs = JobRunner(engine, library, Processor(library.library_dir), poll_interval=0.2)
    job = await jobs.submit(item.id, "recording", [recording])

    async def done() -> str | None:
        current = await jobs.get(job.id)
        assert current is not None
        return None if current.status == JobStatus.DONE else f"{current.status} {current.error}"

    await jobs.start()
    try:
        await wait_until(done, timeout=30)
    finally:
        await jobs.close()
    latest = await jobs.latest_for_item(item.id)
    assert latest is not None and latest.id == job.id and latest.progress == 100.0
    ready = await library.get(item.id)
    assert ready is not None and ready.status == ItemStatus.READY
    await jobs.discard(item.id)
    assert await jobs.latest_for_item(item.id) is None
