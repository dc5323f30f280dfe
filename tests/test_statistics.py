"""Statistics: activities per theme, site and month; site joins; library replays;
attendance rate per institute; the CSV export (SQLite and PostgreSQL)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from media.library import Library
from media.library import Theme as LibraryTheme
from media.library import create_tables as create_library_tables
from scheduler.attendance import AttendanceRecorder
from scheduler.recurrence import LOCAL_ZONE, Recurrence, Repeat
from scheduler.schedule import Audience, AudienceKind, Theme, room_name
from scheduler.sites import Sites
from scheduler.statistics import statistics
from scheduler.tables import create_tables as create_scheduler_tables
from tests.test_attendance import (  # noqa: F401  (fixture import)
    command_engine_fixture,
    live_session,
)
from tests.test_sites import engine_fixture  # noqa: F401  (fixture import)

NOW = datetime(2026, 5, 20, 12, 0, tzinfo=LOCAL_ZONE)


async def test_activities_joins_and_attendance_rates(command_engine: AsyncEngine) -> None:
    engine = command_engine
    weekly = Recurrence(Repeat.WEEKLY, frozenset({0}), count=3)
    march = datetime(2026, 3, 2, 9, 0, tzinfo=LOCAL_ZONE)  # Mondays 2, 9, 16 March
    lectures = await live_session(engine, march, recurrence=weekly)
    await live_session(
        engine,
        datetime(2026, 4, 8, 15, 0, tzinfo=LOCAL_ZONE),
        title="广场舞",
        theme=Theme.FITNESS,
        host="I02",
        audience=Audience(AudienceKind.SITES, ("I02-S001", "I02-S002")),
    )
    await live_session(engine, NOW + timedelta(days=1), title="明天的课")  # not yet held
    recorder = AttendanceRecorder(engine, bus=None)  # type: ignore[arg-type]
    first_room = room_name(lectures.id, lectures.start)
    for site in ("I01-S001", "I01-S002"):
        at = lectures.start.timestamp() + 60
        await recorder.record_presence(
            {"room": first_room, "identity": site, "here": True, "at": at}
        )
    # Households watching the first lecture: the peak counts, not each report.
    for households in (3, 40, 25):
        await recorder.record_viewers({"room": first_room, "households": households})
    tree = await Sites(engine).tree()

    stats = await statistics(engine, tree, NOW.astimezone(UTC), days=365)
    data = stats.to_json(tree)
    per_theme = {row["theme"]: row["count"] for row in data["per_theme"]}
    assert per_theme == {"theory": 3, "education": 0, "culture": 0, "science": 0, "fitness": 1}
    assert {r["site"]: r["count"] for r in data["per_site"]} == {"C": 3, "I02": 1}
    assert data["per_month"] == [{"month": "2026-03", "count": 3}, {"month": "2026-04", "count": 1}]
    assert data["participants"]["site_joins"] == 2
    assert data["participants"]["household_viewers"] == 40
    rates = {r["institute"]: r["rate"] for r in data["attendance"]}
    # I01's subtree (institute + 2 stations) expected 3 times, 2 joins once: 2/9.
    assert rates["I01"] == 2 / 9 and rates["I02"] == 0.0

    inst1 = await statistics(engine, tree, NOW.astimezone(UTC), visible=set(tree.subtree("I01")))
    assert inst1.per_theme == {"theory": 3} and set(inst1.attendance) == {"I01"}

    rows = list(csv.reader(io.StringIO(stats.to_csv(tree).decode("utf-8-sig"))))
    assert stats.to_csv(tree).startswith(b"\xef\xbb\xbf")
    assert rows[0] == ["section", "key", "label", "value"]
    assert ["theme", "theory", "理论宣讲", "3"] in rows
    assert ["participants", "household_viewers", "群众直播观看", "40"] in rows
    assert ["attendance_rate", "I01", tree.get("I01").name, f"{2 / 9:.3f}"] in rows


async def test_library_replays_come_from_the_catalog_views(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'lib.sqlite3'}")
    try:
        await create_scheduler_tables(engine)
        tree = await Sites(engine).tree()
        assert (await statistics(engine, tree, NOW)).library_replays is None  # no library
        await create_library_tables(engine)
        library = Library(engine, tmp_path / "library")
        item = await library.create(title="讲座", theme=LibraryTheme.SCIENCE, date=NOW.date())
        for _ in range(3):
            await library.count_view(item.id)
        assert (await statistics(engine, tree, NOW)).library_replays == {"science": 3}
    finally:
        await engine.dispose()
