"""Two hub nodes sharing the real Redis: a room lives on exactly one node."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.client import HubClient
from hub.ids import RoomName
from tests.helpers import wait_until
from tests.hubserver import running_hub


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
