"""Attendance recorded from a real hub: real signaling clients join a session's room,
leave, rejoin and answer a roll call; the recorder writes it to SQLite and PostgreSQL.

Also home of the ``command_engine`` fixture the other command suites import."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiortc.mediastreams import VideoStreamTrack
from sqlalchemy.ext.asyncio import AsyncEngine

from hub.client import HubClient
from scheduler.attendance import AttendanceRecorder, attendance, find_occurrence, parse_room
from scheduler.command_tables import create_tables, drop_tables, metadata
from scheduler.recurrence import LOCAL_ZONE
from scheduler.schedule import (
    Audience,
    AudienceKind,
    Schedule,
    Session,
    SessionInfo,
    Theme,
    room_name,
)
from scheduler.seed import load_seed
from scheduler.sites import Sites
from tests.helpers import wait_until
from tests.hubserver import running_hub
from tests.test_sites import engine_fixture  # noqa: F401  (fixture import)

_RESET: set[str] = set()


@pytest.fixture(name="command_engine")
async def command_engine_fixture(engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    """The scheduler's and the command tables, the seed county loaded; the command
    tables are recreated once per run and emptied after each test."""
    url = str(engine.url)
    if url not in _RESET:
        await drop_tables(engine)
        _RESET.add(url)
    await create_tables(engine)
    await load_seed(engine)
    yield engine
    async with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            await conn.execute(table.delete())


async def live_session(engine: AsyncEngine, start: datetime, **changes: object) -> Session:
    """A one-hour session for the I01 subtree, hosted by the center, from ``start``."""
    fields: dict[str, object] = {
        "title": "理论宣讲：乡村振兴",
        "theme": Theme.THEORY,
        "host": "C",
        "audience": Audience(AudienceKind.SUBTREES, ("I01",)),
        "start": start,
        "end": start + timedelta(hours=1),
    }
    fields.update(changes)
    tree = await Sites(engine).tree()
    return await Schedule(engine).create(tree, **fields)  # type: ignore[arg-type]


def minute_now() -> datetime:
    return datetime.now(UTC).replace(second=0, microsecond=0)


def test_room_names_map_back_to_their_occurrence() -> None:
    start = datetime(2026, 3, 2, 9, 30, tzinfo=LOCAL_ZONE)
    assert parse_room(room_name(42, start)) == (42, start.astimezone(UTC))
    assert parse_room("lecture-1") is None
    assert parse_room("s1-202613450000") is None  # month 13


async def test_joins_leaves_rejoins_and_roll_call_are_recorded(
    command_engine: AsyncEngine, tmp_path: Path
) -> None:
    engine = command_engine
    session = await live_session(engine, minute_now() - timedelta(minutes=1))
    room = room_name(session.id, session.start)
    async with running_hub(tmp_path) as hub:
        recorder = AttendanceRecorder(engine, hub.hub.bus, hub.hub.node_id)
        await recorder.start()
        clients: list[HubClient] = []
        try:
            center = HubClient(hub.ws, hub.token(room, "C", "center"), decode=False)
            s1 = HubClient(hub.ws, hub.token(room, "I01-S001", "station"), decode=False)
            s2 = HubClient(hub.ws, hub.token(room, "I01-S002", "station"), decode=False)
            other = HubClient(hub.ws, hub.token("lecture-x", "I02-S001", "station"), decode=False)
            clients = [center, s1, s2, other]
            for client in clients:
                await client.connect()
            # Real peers: the lecturer publishes, the stations receive it over WebRTC.
            await center.publish({"camera": VideoStreamTrack()})
            await wait_until(lambda: None if s1.received else "s1 receives nothing yet")
            await s2.close()
            s2 = HubClient(hub.ws, hub.token(room, "I01-S002", "station"), decode=False)
            clients.append(s2)
            await s2.connect()

            await center.send({"type": "rollcall", "action": "start", "seconds": 5})
            call = await s1.wait_for(lambda m: m["type"] == "rollcall")
            await s1.send({"type": "rollcall_ack", "id": call["id"]})
            await asyncio.sleep(5.3)  # past the deadline: S002's answer is late
            await s2.send({"type": "rollcall_ack", "id": call["id"]})

            tree = await Sites(engine).tree()
            info = await find_occurrence(Schedule(engine), tree, room)
            assert info is not None and info.room == room

            async def recorded() -> str | None:
                report = await attendance(engine, info, datetime.now(UTC))
                answers = {
                    site: next(iter(calls.values()))["status"]
                    for site, calls in report.to_json()["rollcall"].items()
                }
                if answers != {"I01-S001": "present", "I01-S002": "late"}:
                    return f"roll call so far: {answers}"
                return None

            await wait_until(recorded, timeout=10)
            await s1.close()
            await wait_until(lambda: _closed(engine, info, "I01-S001"), timeout=10)
        finally:
            for client in clients:
                await client.close()
            await recorder.stop()

    report = (await attendance(engine, info, datetime.now(UTC))).to_json()
    assert set(report["expected"]) == set(tree.subtree("I01"))
    assert set(report["joined"]) == {"C", "I01-S001", "I01-S002"}  # I02-S001 was elsewhere
    assert report["joined"]["I01-S001"]["here"] is False
    assert report["joined"]["I01-S001"]["seconds"] > 5
    assert report["joined"]["I01-S002"]["seconds"] > 0
    assert report["absent"] == ["I01"]


async def _closed(engine: AsyncEngine, info: SessionInfo, site: str) -> str | None:
    report = await attendance(engine, info, datetime.now(UTC))
    entry = report.sites.get(site)
    return None if entry is not None and not entry.here else f"{site} still here"


async def test_a_rejoin_adds_a_second_interval_and_durations_add_up(
    command_engine: AsyncEngine,
) -> None:
    """Durations are the sum of the intervals, from the hub's own timestamps."""
    engine = command_engine
    session = await live_session(engine, minute_now() - timedelta(minutes=30))
    room = room_name(session.id, session.start)
    recorder = AttendanceRecorder(engine, bus=None)  # type: ignore[arg-type]
    t0 = session.start.timestamp() + 60
    for identity, here, at in [
        ("I01-S001", True, t0),
        ("I01-S001", True, t0 + 5),  # a duplicate join keeps the interval open
        ("I01-S001", False, t0 + 100),
        ("I01-S001", True, t0 + 400),
        ("I01-S001", False, t0 + 450),
        ("I01-S002", True, t0 + 10),
    ]:
        await recorder.record_presence({"room": room, "identity": identity, "here": here, "at": at})
    await recorder.record_presence({"room": "s999-202601010900", "identity": "X", "here": True})
    # In a cluster each node records its own rooms only: every node hears every message.
    node_a = AttendanceRecorder(engine, bus=None, node="node-a")  # type: ignore[arg-type]
    joins = {"room": room, "identity": "I01-S001", "here": True, "at": t0 + 2000}
    await node_a.record_presence({**joins, "node": "node-b"})
    await node_a.record_presence({**joins, "identity": "I01", "node": "node-a"})
    tree = await Sites(engine).tree()
    info = await find_occurrence(Schedule(engine), tree, room)
    assert info is not None
    now = datetime.fromtimestamp(t0 + 1000, UTC)
    report = (await attendance(engine, info, now)).to_json()
    assert report["joined"]["I01-S001"]["seconds"] == 150
    assert "I01" in report["joined"] and report["joined"]["I01"]["seconds"] == 0
    assert report["joined"]["I01-S001"]["first_join"].startswith(
        datetime.fromtimestamp(t0, LOCAL_ZONE).isoformat()[:16]
    )
    assert report["joined"]["I01-S002"] == {
        "first_join": datetime.fromtimestamp(t0 + 10, UTC).astimezone(LOCAL_ZONE).isoformat(),
        "seconds": 990,
        "here": True,
    }
