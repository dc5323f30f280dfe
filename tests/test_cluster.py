"""Two hub nodes sharing the real Redis: a room lives on exactly one node."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis.asyncio
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from hub.client import HubClient
from hub.ids import ParticipantIdentity, RoomName
from hub.service import HEARTBEAT_INTERVAL
from hub.tokens import Role, TokenSigner, grant_for_role
from tests.helpers import wait_until
from tests.hubserver import SECRET, free_port, running_hub


async def test_a_room_lives_on_one_node_and_moves_when_freed(
    tmp_path: Path, redis_url: str
) -> None:
    async with (
        running_hub(tmp_path / "a", redis_url=redis_url, node_id="node-a") as a,
        running_hub(tmp_path / "b", redis_url=redis_url, node_id="node-b") as b,
    ):
        first = HubClient(a.ws, a.token("county", "C", "center"))
        await first.connect()
        assert await b.hub.store.room_node(RoomName("county")) == "node-a"
        elsewhere = HubClient(b.ws, b.token("county", "S1", "station"))
        with pytest.raises(ConnectionError, match=r"room_elsewhere.*node-a"):
            await elsewhere.connect()
        await elsewhere.close()
        # Presence written by node a is visible from node b.
        await wait_until(lambda: None)
        presence = await b.hub.store.presence(RoomName("county"))
        assert set(presence) == {"C"} and presence["C"]["node"] == "node-a"
        nodes = await b.hub.store.nodes()
        assert {"node-a", "node-b"} <= set(nodes)

        await first.close()
        assert await a.hub.close_room(RoomName("county"))
        moved = HubClient(b.ws, b.token("county", "S1", "station"))
        await moved.connect()
        assert await a.hub.store.room_node(RoomName("county")) == "node-b"
        await moved.close()


async def test_nodes_share_the_media_dir_and_leave_each_others_recordings_alone(
    tmp_path: Path, redis_url: str
) -> None:
    """HUB_MEDIA_DIR: recordings and the library where every node reaches them; a node
    that starts while another records does not take that recording for a cut-off one."""
    shared = tmp_path / "nfs"
    async with running_hub(
        tmp_path / "a", redis_url=redis_url, node_id="node-a", media_dir=shared
    ) as a:
        center = HubClient(a.ws, a.token("county", "C", "center"))
        await center.connect()
        await center.publish({"camera": VideoStreamTrack(), "microphone": AudioStreamTrack()})
        room = a.hub.rooms[RoomName("county")]
        room.media.start_recording()
        await asyncio.sleep(3)
        parts = room.state.recording
        assert parts is not None and len(parts) == 1
        assert Path(parts[0]).parent == shared / "recordings"
        assert not (tmp_path / "a" / "recordings").exists()
        async with running_hub(
            tmp_path / "b", redis_url=redis_url, node_id="node-b", media_dir=shared
        ) as b:
            await asyncio.sleep(1)
            recordings = b.hub.on_recorded.__self__  # type: ignore[union-attr]
            assert await recordings.latest_item("county") is None
            assert await recordings.jobs.recording_sources() == set()
        await room.media.stop_recording()
        await center.close()
        recordings = a.hub.on_recorded.__self__  # type: ignore[union-attr]

        async def item() -> str | None:
            return None if await recordings.latest_item("county") else "no item yet"

        await wait_until(item, timeout=30)
        item_id = await recordings.latest_item("county")
        assert recordings.library.item_dir(item_id).parent == shared / "library"


async def test_after_redis_forgot_a_room_claimed_twice_stays_on_one_node(
    tmp_path: Path, redis_url: str
) -> None:
    """Redis restarts (it keeps nothing) and a client reaches another node before the
    first node's heartbeat claims its room back: both hold a copy for a moment, then
    the heartbeats leave it on exactly one node, the one the Store names."""
    room = RoomName("county")
    async with (
        running_hub(tmp_path / "a", redis_url=redis_url, node_id="node-a") as a,
        running_hub(tmp_path / "b", redis_url=redis_url, node_id="node-b") as b,
    ):
        first = HubClient(a.ws, a.token("county", "C", "center"))
        await first.connect()
        forgetful = redis.asyncio.Redis.from_url(redis_url)
        await forgetful.flushdb()
        await forgetful.aclose()
        await b.hub.room(room)
        assert room in a.hub.rooms and room in b.hub.rooms

        async def one_host() -> str | None:
            hosts = [n.hub.node_id for n in (a, b) if room in n.hub.rooms]
            return None if len(hosts) == 1 else f"hosted on {hosts}"

        await wait_until(one_host, timeout=4 * HEARTBEAT_INTERVAL)
        host = a if room in a.hub.rooms else b
        await asyncio.sleep(2 * HEARTBEAT_INTERVAL)  # and it stays so
        assert await one_host() is None and room in host.hub.rooms
        assert await a.hub.store.room_node(room) == host.hub.node_id
        await first.close()


async def test_a_dead_nodes_rooms_are_taken_over_with_their_state(
    tmp_path: Path, redis_url: str
) -> None:
    """SIGKILL the node holding a room: within 10 s a live node holds it, as it was
    (stage, households, recording going on as a new part)."""
    port = free_port()
    env = {
        **os.environ,
        "HUB_SECRET": SECRET,
        "HUB_ICE_GATHER_ADDRESSES": '["127.0.0.1"]',
        "HUB_REDIS_URL": redis_url,
        "HUB_NODE_ID": "node-doomed",
        "HUB_MEDIA_DIR": str(tmp_path / "nfs"),
    }
    doomed = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hub", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--data-dir", str(tmp_path / "doomed"), env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    token = TokenSigner(SECRET).issue(
        grant_for_role(RoomName("county"), ParticipantIdentity("C"), Role.CENTER, ttl=600)
    )
    center = HubClient(f"ws://127.0.0.1:{port}/ws", token)
    try:
        async with running_hub(
            tmp_path / "b", redis_url=redis_url, node_id="node-b", media_dir=tmp_path / "nfs"
        ) as b:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

                async def healthy() -> str | None:
                    try:
                        return None if (await http.get("/healthz")).status_code == 200 else "?"
                    except httpx.TransportError as exc:
                        return f"not up: {exc}"

                await wait_until(healthy, timeout=30, interval=0.2)
                await center.connect()
                await center.publish({"camera": VideoStreamTrack()})
                auth = {"Authorization": f"Bearer {token}"}
                assert (await http.post("/api/rooms/county/recording", headers=auth)).is_success
                assert (
                    await http.patch("/api/rooms/county", json={"public": True}, headers=auth)
                ).is_success
            await asyncio.sleep(2 * HEARTBEAT_INTERVAL)  # the state is in the Store
            doomed.send_signal(signal.SIGKILL)
            await doomed.wait()
            killed_at = time.monotonic()

            async def taken_over() -> str | None:
                return None if RoomName("county") in b.hub.rooms else "not taken over yet"

            await wait_until(taken_over, timeout=10, interval=0.1)
            assert time.monotonic() - killed_at <= 10
            room = b.hub.rooms[RoomName("county")]
            assert room.public
            assert [s.identity for s in room.stage] == [] and room.state.stage == ["C"]
            parts = room.state.recording
            assert parts is not None and len(parts) == 2, parts
            assert await b.hub.store.room_node(RoomName("county")) == "node-b"
    finally:
        if doomed.returncode is None:
            doomed.kill()
            await doomed.wait()
        await center.close()
