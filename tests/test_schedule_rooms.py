"""The schedule runner's hands on a real hub: a session's room opens live for
households, records, closes, and its recording enters the library under the
session's title and theme."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import av
from aiortc.mediastreams import AudioStreamTrack

from hub.client import HubClient
from hub.ids import RoomName
from media.library import Theme
from media.processing import CANVAS, MP4_FILE
from scheduler.schedule import SessionInfo, SessionOptions, SessionStatus
from scheduler.seed import load_seed_into
from tests.helpers import NoisyVideo, wait_until
from tests.hubserver import RunningHub


async def test_a_scheduled_session_is_run_on_the_hub(hub_server: RunningHub) -> None:
    control = hub_server.app.state.room_control
    start = datetime.now(UTC)
    session = SessionInfo(
        session_id=7,
        room=RoomName("s7-202611291900"),
        title="学习贯彻全会精神宣讲",
        theme=Theme.THEORY,
        host="C",
        audience_sites=frozenset({"I01", "I01-S001"}),
        start=start,
        end=start + timedelta(hours=1),
        options=SessionOptions(record=True, publish=True, live_households=True),
        status=SessionStatus.SCHEDULED,
    )
    room_name = str(session.room)
    await control.open_room(room_name, session)
    await control.open_room(room_name, session)  # a restarted runner may repeat a step
    room = hub_server.hub.rooms[session.room]
    assert room.public and room.media.live is not None
    center = HubClient(hub_server.ws, hub_server.token(room_name, "C", "center"))
    try:
        await center.connect()
        await center.publish({"camera": NoisyVideo(), "microphone": AudioStreamTrack()})
        await control.start_recording(room_name)
        await control.start_recording(room_name)
        await asyncio.sleep(4)
        await control.stop_recording(room_name)
    finally:
        await center.close()
    await control.close_room(room_name)
    assert session.room not in hub_server.hub.rooms
    await control.hand_to_library(room_name, session)
    item_id = await control.local.recordings.latest_item(room_name)
    assert item_id is not None
    library = control.local.recordings.library
    item = await library.get(item_id)
    published = await library.get(item.id)
    assert published.title == "学习贯彻全会精神宣讲" and published.theme == Theme.THEORY
    assert published.session_id == "7" and published.site == "C" and published.published

    async def ready() -> str | None:
        current = await library.get(item.id)
        return None if current.status == "ready" else f"item is {current.status}"

    await wait_until(ready, timeout=60, interval=0.5)


async def test_a_sessions_composite_layout_reaches_the_library(hub_server: RunningHub) -> None:
    """The layout chosen for a session decides what the library makes of its recording:
    "composite" puts the lecturer beside the screen share on one 1280x720 canvas
    (a lecturer-only recording keeps the camera's own 640x480)."""
    control = hub_server.app.state.room_control
    start = datetime.now(UTC)
    room_name = "s8-202611291930"
    session = SessionInfo(
        session_id=8,
        room=RoomName(room_name),
        title="屏幕与主讲人",
        theme=Theme.SCIENCE,
        host="C",
        audience_sites=frozenset({"I01"}),
        start=start,
        end=start + timedelta(hours=1),
        options=SessionOptions(record=True, publish=True, layout="composite"),
        status=SessionStatus.SCHEDULED,
    )
    await control.open_room(room_name, session)
    center = HubClient(hub_server.ws, hub_server.token(room_name, "C", "center"))
    try:
        await center.connect()
        await center.publish(
            {"camera": NoisyVideo(), "screen": NoisyVideo(), "microphone": AudioStreamTrack()}
        )
        await control.start_recording(room_name)
        await asyncio.sleep(5)
        await control.stop_recording(room_name)
    finally:
        await center.close()
    await control.close_room(room_name)
    await control.hand_to_library(room_name, session)
    item_id = await control.local.recordings.latest_item(room_name)
    assert item_id is not None
    library = control.local.recordings.library
    item = await library.get(item_id)

    async def ready() -> str | None:
        current = await library.get(item.id)
        return None if current.status == "ready" else f"item is {current.status}"

    await wait_until(ready, timeout=120, interval=0.5)
    with av.open(str(library.item_dir(item.id) / MP4_FILE)) as mp4:
        video = mp4.streams.video[0]
        assert (video.codec_context.width, video.codec_context.height) == CANVAS


async def test_roll_call_in_a_sessions_room_checks_against_its_audience(
    hub_server: RunningHub,
) -> None:
    """The sites expected and not there show at once, by name: the runner gave the
    room its session's audience (the host is not called)."""
    control = hub_server.app.state.room_control
    sites = hub_server.app.state.room_control.local.sites
    await load_seed_into(sites)
    start = datetime.now(UTC)
    room_name = "s9-202611292000"
    session = SessionInfo(
        session_id=9,
        room=RoomName(room_name),
        title="点名",
        theme=Theme.THEORY,
        host="C",
        audience_sites=frozenset({"C", "I01-S001", "I01-S002"}),
        start=start,
        end=start + timedelta(hours=1),
        options=SessionOptions(),
        status=SessionStatus.SCHEDULED,
    )
    await control.open_room(room_name, session)
    center = HubClient(hub_server.ws, hub_server.token(room_name, "C", "center"), decode=False)
    station = HubClient(
        hub_server.ws, hub_server.token(room_name, "I01-S001", "station"), decode=False
    )
    try:
        await center.connect()
        await station.connect()
        await center.send({"type": "rollcall", "action": "start", "seconds": 30})
        status = await center.wait_for(lambda m: m["type"] == "rollcall_status")
        assert set(status["entries"]) == {"I01-S001", "I01-S002"}  # the absent one too
        assert status["entries"]["I01-S002"]["status"] == "waiting"
        tree = await sites.tree()
        assert status["names"]["I01-S002"] == tree.get("I01-S002").name
    finally:
        for client in (station, center):
            await client.close()
