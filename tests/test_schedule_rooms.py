"""The schedule runner's hands on a real hub: a session's room opens live for
households, records, closes, and its recording enters the library under the
session's title and theme."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from aiortc.mediastreams import AudioStreamTrack

from hub.client import HubClient
from hub.ids import RoomName
from media.library import Theme
from scheduler.schedule import SessionInfo, SessionOptions, SessionStatus
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
    item = control.recordings.latest[room_name]
    library = control.recordings.library
    published = await library.get(item.id)
    assert published.title == "学习贯彻全会精神宣讲" and published.theme == Theme.THEORY
    assert published.session_id == "7" and published.site == "C" and published.published

    async def ready() -> str | None:
        current = await library.get(item.id)
        return None if current.status == "ready" else f"item is {current.status}"

    await wait_until(ready, timeout=60, interval=0.5)
