"""Which node a request about a room belongs to.

A room lives on exactly one node (the Store's claim). Every request about it (signaling,
WHIP/WHEP, the room API, live HLS, the schedule's room control) must reach that node,
whichever node it first lands on: the router says where the room is held, and the
caller sends the client there (HTTP 307, a signaling ``redirect``) or forwards the
action over the Bus. Chosen once at wiring: one process needs no routing.
"""

from __future__ import annotations

from typing import Protocol

from cluster.store import Store
from hub.ids import NodeID, RoomName


class RoomRouter(Protocol):
    async def elsewhere(self, room: RoomName) -> tuple[NodeID, str] | None:
        """The node holding ``room`` and its URL when that is another live node; None
        when it is held here or by nobody (this node may claim it)."""
        ...


class LocalRouter:
    """One process: every room is here."""

    async def elsewhere(self, room: RoomName) -> tuple[NodeID, str] | None:
        return None


class StoreRouter:
    """A cluster: the Store names each room's node; each node's heartbeat carries the
    URL clients reach it at."""

    def __init__(self, store: Store, node: NodeID) -> None:
        self.store = store
        self.node = node

    async def elsewhere(self, room: RoomName) -> tuple[NodeID, str] | None:
        owner = await self.store.room_node(room)
        if owner is None or owner == self.node:
            return None
        url = (await self.store.nodes()).get(owner, {}).get("url")
        return (owner, str(url)) if url else None


def open_router(clustered: bool, store: Store, node: NodeID) -> RoomRouter:
    return StoreRouter(store, node) if clustered else LocalRouter()
