"""Routing that cannot miss (issue 16): two hub nodes sharing the real Redis, no proxy
in front. Whichever node a request about a room lands on, it reaches the node holding
the room: HTTP by a 307, signaling by a ``redirect`` message the client follows."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from aiortc.mediastreams import VideoStreamTrack

from hub.client import HubClient
from hub.ids import RoomName
from media.library import Theme
from scheduler.schedule import SessionInfo, SessionOptions, SessionStatus
from tests.helpers import first_track
from tests.hubserver import running_hub
from tests.test_forwarding_e2e import decode_frames
from tests.test_whip import whep_view

ROOM = RoomName("county")


async def test_requests_about_a_room_reach_its_node(tmp_path: Path, redis_url: str) -> None:
    async with (
        running_hub(tmp_path / "a", redis_url=redis_url, node_id="node-a") as a,
        running_hub(tmp_path / "b", redis_url=redis_url, node_id="node-b") as b,
    ):
        lecturer = HubClient(f"{a.ws}?room={ROOM}", a.token(ROOM, "C", "center"))
        await lecturer.connect()
        await lecturer.publish({"camera": VideoStreamTrack()})
        moderator = {"Authorization": f"Bearer {a.token(ROOM, 'C2', 'center')}"}
        async with httpx.AsyncClient() as http:
            # The room API and live HLS on node b: sent to node a, path and query kept.
            info = await http.get(f"{b.base}/api/rooms/{ROOM}?x=1", headers=moderator)
            assert info.status_code == 307, info.text
            assert info.headers["location"] == f"{a.base}/api/rooms/{ROOM}?x=1"
            assert info.json()["code"] == "room_elsewhere"
            live = await http.get(f"{b.base}/live/{ROOM}/index.m3u8")
            assert (live.status_code, live.headers["location"]) == (
                307,
                f"{a.base}/live/{ROOM}/index.m3u8",
            )
            followed = await http.get(
                f"{b.base}/api/rooms/{ROOM}", headers=moderator, follow_redirects=True
            )
            assert followed.status_code == 200
            assert followed.json()["name"] == ROOM
            # What any node answers for itself is not redirected.
            assert (await http.get(f"{b.base}/api/rooms/{ROOM}/invite")).status_code != 307

        # A WHEP offer keeps its method and body through the 307 and plays from node a.
        pc, _, response = await whep_view(b.base, ROOM, b.token(ROOM, "V1", "viewer"))
        try:
            assert response.status_code == 307
            assert response.headers["location"] == f"{a.base}/whep/{ROOM}"
        finally:
            await pc.close()

        # A station whose websocket lands on node b is sent to node a and decodes there.
        station = HubClient(f"{b.ws}?room={ROOM}", b.token(ROOM, "S1", "station"))
        try:
            joined = await station.connect()
            assert joined["room"] == ROOM
            assert station.url == f"{a.ws}?room={ROOM}"
            here = a.hub.rooms[ROOM]
            assert {p.identity for p in here.participants.values()} >= {"C", "S1"}
            assert ROOM not in b.hub.rooms
            camera = await first_track(station, "camera")
            assert len(await decode_frames(camera.track, 5, timeout=20)) == 5
        finally:
            await station.close()
            await lecturer.close()


async def test_a_room_held_by_nobody_is_claimed_by_the_node_asked(
    tmp_path: Path, redis_url: str
) -> None:
    async with (
        running_hub(tmp_path / "a", redis_url=redis_url, node_id="node-a") as a,
        running_hub(tmp_path / "b", redis_url=redis_url, node_id="node-b") as b,
    ):
        first = HubClient(f"{b.ws}?room={ROOM}", b.token(ROOM, "S1", "station"))
        await first.connect()
        assert first.url == f"{b.ws}?room={ROOM}"
        assert await a.hub.store.room_node(ROOM) == "node-b"
        second = HubClient(f"{a.ws}?room={ROOM}", a.token(ROOM, "S2", "station"))
        await second.connect()
        assert ROOM in b.hub.rooms and ROOM not in a.hub.rooms
        await first.close()
        await second.close()


def lecture(room: RoomName) -> SessionInfo:
    start = datetime.now(UTC)
    return SessionInfo(
        session_id=7,
        room=room,
        title="学习贯彻全会精神宣讲",
        theme=Theme.THEORY,
        host="C",
        audience_sites=frozenset({"I01", "I01-S001"}),
        start=start,
        end=start + timedelta(hours=1),
        options=SessionOptions(
            record=True,
            live_households=True,
            restream_urls=("rtmp://127.0.0.1:1/live/key",),
            layout="composite",
        ),
        status=SessionStatus.SCHEDULED,
    )


def test_a_session_crosses_the_bus_whole() -> None:
    session = lecture(ROOM)
    assert SessionInfo.from_message(json.loads(json.dumps(session.to_message()))) == session


async def test_the_schedule_acts_on_the_node_holding_the_room(
    tmp_path: Path, redis_url: str
) -> None:
    """Node b's runner opens, records and closes a room node a holds: over the Bus, on
    node a. A room held by nobody opens on the node asking."""
    session = lecture(ROOM)
    async with (
        running_hub(tmp_path / "a", redis_url=redis_url, node_id="node-a") as a,
        running_hub(tmp_path / "b", redis_url=redis_url, node_id="node-b") as b,
    ):
        lecturer = HubClient(f"{a.ws}?room={ROOM}", a.token(ROOM, "C", "center"))
        await lecturer.connect()
        try:
            await lecturer.publish({"camera": VideoStreamTrack()})
            control = b.app.state.room_control
            await control.open_room(ROOM, session)
            room = a.hub.rooms[ROOM]
            assert room.public and room.media.live is not None
            await control.start_recording(ROOM)
            assert room.media.recorder is not None
            await control.stop_recording(ROOM)
            assert room.media.recorder is None
            assert ROOM not in b.hub.rooms
        finally:
            await lecturer.close()
        await control.close_room(ROOM)
        assert ROOM not in a.hub.rooms

        other = RoomName("s8-202612070900")
        await control.open_room(other, lecture(other))
        assert other in b.hub.rooms and await a.hub.store.room_node(other) == "node-b"
