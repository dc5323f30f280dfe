"""A restart loses nothing (issue 13): a hub that comes back within the empty-room
grace period takes its rooms back as they were (stage order, hands, moderators' mutes,
removals, households, live HLS, restreams, and the recording, which goes on as a new
part of the same library item); one that comes back later hands the recording a stop
cut off to the library. Real hubs, real aiortc clients, the real ffmpeg."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from hub.client import HubClient
from hub.ids import ParticipantIdentity, RoomName
from hub.room_state import state_key
from hub.tokens import Role, TokenSigner, grant_for_role
from media.jobs import job_sources
from tests.helpers import wait_until
from tests.hubserver import SECRET, RunningHub, free_port, hub_process, running_hub

pytestmark = pytest.mark.timeout(300)

ROOM = "restart"


def moderator(hub: RunningHub) -> dict[str, str]:
    return {"Authorization": f"Bearer {hub.token(ROOM, 'C', 'center')}"}


async def library_item_ready(hub: RunningHub, room: str) -> Any:
    recordings = hub.hub.on_recorded.__self__  # type: ignore[union-attr]

    async def made() -> str | None:
        return None if await recordings.latest_item(room) else "no library item yet"

    await wait_until(made, timeout=30, interval=0.5)
    item_id = await recordings.latest_item(room)
    library = recordings.library

    async def ready() -> str | None:
        item = await library.get(item_id)
        return None if item.status == "ready" else f"item {item.status}"

    await wait_until(ready, timeout=120, interval=0.5)
    job = await recordings.jobs.latest_for_item(item_id)
    return await library.get(item_id), job


async def test_a_restarted_hub_takes_its_rooms_back_as_they_were(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rtmp = f"rtmp://127.0.0.1:{free_port()}/live/key-that-stays-secret"
    async with running_hub(data) as first:
        center = HubClient(first.ws, first.token(ROOM, "C", "center"))
        s1 = HubClient(first.ws, first.token(ROOM, "S1", "station"))
        s2 = HubClient(first.ws, first.token(ROOM, "S2", "station"))
        s3 = HubClient(first.ws, first.token(ROOM, "S3", "station"))
        try:
            for client in (center, s1, s2, s3):
                await client.connect()
            await center.publish({"camera": VideoStreamTrack(), "microphone": AudioStreamTrack()})
            await s1.publish({"camera": VideoStreamTrack(), "microphone": AudioStreamTrack()})
            sid = {c: c.joined["participant"]["sid"] for c in (s1, s2, s3)}
            for message in (
                {"action": "stage", "participant": sid[s1], "on_stage": True},
                {"action": "mute", "participant": sid[s1], "source": "microphone", "muted": True},
                {"action": "remove", "participant": sid[s2]},
            ):
                await center.send({"type": "moderate", **message})
            await s3.send({"type": "hand", "raised": True})
            async with httpx.AsyncClient(base_url=first.base, headers=moderator(first)) as http:
                for path, body in (("recording", None), ("live", None), ("restreams", rtmp)):
                    answer = await http.post(
                        f"/api/rooms/{ROOM}/{path}", json={"url": body} if body else None
                    )
                    assert answer.status_code == 201, answer.text
            room = first.hub.rooms[RoomName(ROOM)]

            def settled() -> str | None:
                state = room.state
                done = (
                    state.stage == ["C", "S1"]
                    and state.hands.keys() == {"S3"}
                    and state.mutes == {"S1": ["microphone"]}
                    and "S2" in state.removed
                )
                return None if done else f"state so far: {state}"

            await wait_until(settled)
            await asyncio.sleep(4)  # a first part of the lecture
        finally:
            for client in (s3, s2, s1, center):
                await client.close()
    # The hub stopped (a restart, an upgrade): nothing went to the library yet.

    async with running_hub(data) as second:
        room = second.hub.rooms[RoomName(ROOM)]  # back at start, before any client
        state = room.state
        assert state.stage == ["C", "S1"] and list(state.hands) == ["S3"]
        assert state.mutes == {"S1": ["microphone"]} and list(state.removed) == ["S2"]
        assert room.public and room.media.live is not None
        assert room.media.recorder is not None and len(state.recording or []) == 2
        assert state.restreams == [rtmp] and len(room.media.restreamer.status()) == 1  # type: ignore[union-attr]
        center = HubClient(second.ws, second.token(ROOM, "C", "center"))
        s1 = HubClient(second.ws, second.token(ROOM, "S1", "station"))
        try:
            await center.connect()
            await center.publish({"camera": VideoStreamTrack(), "microphone": AudioStreamTrack()})
            await s1.connect()
            await s1.publish({"camera": VideoStreamTrack(), "microphone": AudioStreamTrack()})
            back = s1.joined["participant"]
            assert back["on_stage"] is True  # its place, not a new one
            assert [p.identity for p in room.stage] == ["C", "S1"]
            muted = await s1.wait_for(lambda m: m["type"] == "muted" and m["by_moderator"])
            assert muted["source"] == "microphone"
            s2 = HubClient(second.ws, second.token(ROOM, "S2", "station"))
            try:
                await s2.connect()
                raise AssertionError("a removed station came back after the restart")
            except ConnectionError as exc:
                assert "removed" in str(exc)
            finally:
                await s2.close()
            await asyncio.sleep(4)  # the lecture goes on
            async with httpx.AsyncClient(base_url=second.base, headers=moderator(second)) as http:
                stopped = await http.delete(f"/api/rooms/{ROOM}/recording")
                assert stopped.status_code == 200, stopped.text
        finally:
            for client in (s1, center):
                await client.close()
        item, job = await library_item_ready(second, ROOM)
        # one item, both parts, in order: the lecture before and after the restart
        assert len(job_sources(job)) == 2
        assert item.duration is not None and item.duration >= 6, item.duration
        assert await second.hub.store.get(state_key(RoomName(ROOM))) is not None  # still open


async def test_a_recording_cut_off_is_handed_to_the_library_when_the_room_is_not_restored(
    tmp_path: Path,
) -> None:
    """Killed mid-recording, the hub comes back after the grace period: the room is
    not restored, and the recording that was cut off becomes a library item."""
    data = tmp_path / "data"
    port = free_port()
    # The state lasts a second and two heartbeats past the last heartbeat.
    process = await hub_process(data, port, {"HUB_ROOM_EMPTY_TIMEOUT": "1"})
    base = f"http://127.0.0.1:{port}"
    grant = grant_for_role(RoomName(ROOM), ParticipantIdentity("C"), Role.CENTER, ttl=600)
    token = TokenSigner(SECRET).issue(grant)
    center = HubClient(f"ws://127.0.0.1:{port}/ws", token)
    try:
        async with httpx.AsyncClient(base_url=base) as http:
            await center.connect()
            await center.publish({"camera": VideoStreamTrack(), "microphone": AudioStreamTrack()})
            started = await http.post(
                f"/api/rooms/{ROOM}/recording", headers={"Authorization": f"Bearer {token}"}
            )
            assert started.status_code == 201
        await asyncio.sleep(6)
        process.send_signal(signal.SIGKILL)  # a crash: nothing is closed, nothing handed on
        await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await center.close()
    await asyncio.sleep(12)  # past the room's grace: its state has run out
    async with running_hub(data) as later:
        assert RoomName(ROOM) not in later.hub.rooms
        item, job = await library_item_ready(later, ROOM)
        assert len(job_sources(job)) == 1
        assert item.duration is not None and item.duration >= 3, item.duration
