"""Statistics for the dashboard: activities per theme, per site and per month;
participants; attendance rate per institute. Also as CSV (UTF-8 with a BOM, for Excel).

Household live viewers are the sum, over the activities, of the most households that
watched each at once (WHEP viewers and live HLS players, as the hub counts them)."""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from media.library import items_table as library_items
from scheduler.command_tables import household_viewers, presence_intervals
from scheduler.recurrence import local
from scheduler.schedule import Schedule, SessionInfo, Theme
from scheduler.sites import SiteTree


@dataclass
class Statistics:
    since: datetime
    until: datetime
    per_theme: dict[str, int] = field(default_factory=dict)
    per_site: dict[str, int] = field(default_factory=dict)
    """Host site → activities."""
    per_month: dict[str, int] = field(default_factory=dict)
    """``YYYY-MM`` (Asia/Shanghai) → activities."""
    site_joins: int = 0
    """Sites that joined an activity, counted once per activity."""
    site_joins_per_month: dict[str, int] = field(default_factory=dict)
    household_viewers: int = 0
    library_replays: dict[str, int] | None = None
    """Theme → views of library items; None when this database has no library."""
    attendance: dict[str, dict[str, float]] = field(default_factory=dict)
    """Institute → {"expected", "joined", "rate"} over the activities that ended."""

    def to_json(self, tree: SiteTree) -> dict[str, Any]:
        def name(code: str) -> str:
            return tree.get(code).name if code in tree else code

        return {
            "since": local(self.since).isoformat(),
            "until": local(self.until).isoformat(),
            "per_theme": [
                {"theme": t.value, "label": t.label, "count": self.per_theme.get(t.value, 0)}
                for t in Theme
            ],
            "per_site": [
                {"site": c, "name": name(c), "count": n}
                for c, n in sorted(self.per_site.items(), key=lambda kv: (-kv[1], kv[0]))
            ],
            "per_month": [{"month": m, "count": n} for m, n in sorted(self.per_month.items())],
            "participants": {
                "site_joins": self.site_joins,
                "site_joins_per_month": [
                    {"month": m, "count": n} for m, n in sorted(self.site_joins_per_month.items())
                ],
                "household_viewers": self.household_viewers,
                "library_replays": self.library_replays,
            },
            "attendance": [
                {"institute": c, "name": name(c), **v} for c, v in sorted(self.attendance.items())
            ],
        }

    def to_csv(self, tree: SiteTree) -> bytes:
        """``section,key,label,value`` rows, UTF-8 with a BOM."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(["section", "key", "label", "value"])
        for theme in Theme:
            writer.writerow(["theme", theme.value, theme.label, self.per_theme.get(theme.value, 0)])
        for code, count in sorted(self.per_site.items()):
            writer.writerow(["site", code, tree.get(code).name if code in tree else "", count])
        for month, count in sorted(self.per_month.items()):
            writer.writerow(["month", month, "", count])
        writer.writerow(["participants", "site_joins", "站点参与次数", self.site_joins])
        writer.writerow(
            ["participants", "household_viewers", "群众直播观看", self.household_viewers]
        )
        if self.library_replays is None:
            writer.writerow(["participants", "library_replays", "点播回放", "no library"])
        else:
            for key, views in sorted(self.library_replays.items()):
                writer.writerow(["library_replays", key, Theme(key).label, views])
        for code, figures in sorted(self.attendance.items()):
            label = tree.get(code).name if code in tree else ""
            writer.writerow(["attendance_rate", code, label, f"{figures['rate']:.3f}"])
        return out.getvalue().encode("utf-8-sig")


def _relevant(info: SessionInfo, visible: set[str] | None) -> bool:
    return visible is None or info.host in visible or bool(info.audience_sites & visible)


async def _library_replays(engine: AsyncEngine) -> dict[str, int] | None:
    async with engine.connect() as conn:
        exists = await conn.run_sync(lambda sync: sa.inspect(sync).has_table(library_items.name))
        if not exists:
            return None
        rows = await conn.execute(
            sa.select(library_items.c.theme, sa.func.sum(library_items.c.views)).group_by(
                library_items.c.theme
            )
        )
        return {str(theme): int(views or 0) for theme, views in rows}


async def statistics(
    engine: AsyncEngine,
    tree: SiteTree,
    now: datetime,
    days: int = 365,
    visible: set[str] | None = None,
) -> Statistics:
    """The figures over the ``days`` before ``now``, limited to activities that concern
    ``visible`` sites (None: all) and to their sites."""
    since = now - timedelta(days=days)
    infos = [
        i
        for i in await Schedule(engine).overlapping(tree, since, now)
        if i.start >= since and _relevant(i, visible)
    ]
    stats = Statistics(since, now)
    stats.per_theme = dict(Counter(i.theme.value for i in infos))
    stats.per_site = dict(Counter(i.host for i in infos if visible is None or i.host in visible))
    stats.per_month = dict(Counter(f"{local(i.start):%Y-%m}" for i in infos))
    rooms: dict[str, SessionInfo] = {i.room: i for i in infos}
    joined: dict[str, set[str]] = {}
    if rooms:
        async with engine.connect() as conn:
            rows = await conn.execute(
                sa.select(presence_intervals.c.room, presence_intervals.c.site)
                .where(presence_intervals.c.room.in_(list(rooms)))
                .distinct()
            )
            for room, site in rows:
                if visible is None or site in visible:
                    joined.setdefault(room, set()).add(site)
        async with engine.connect() as conn:
            peaks = await conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(household_viewers.c.peak), 0)).where(
                    household_viewers.c.room.in_(list(rooms))
                )
            )
            stats.household_viewers = int(peaks.scalar_one())
    stats.site_joins = sum(len(s) for s in joined.values())
    stats.site_joins_per_month = dict(
        Counter(f"{local(rooms[room].start):%Y-%m}" for room, s in joined.items() for _ in s)
    )
    stats.library_replays = await _library_replays(engine)
    expected: Counter[str] = Counter()
    present: Counter[str] = Counter()
    for info in infos:
        if info.end > now:
            continue
        for code in info.audience_sites:
            institute = tree.institute_of(code) if code in tree else None
            if institute is None or (visible is not None and code not in visible):
                continue
            expected[institute] += 1
            present[institute] += code in joined.get(info.room, set())
    stats.attendance = {
        code: {
            "expected": float(expected[code]),
            "joined": float(present[code]),
            "rate": present[code] / expected[code],
        }
        for code in expected
    }
    return stats
