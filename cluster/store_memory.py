"""The in-memory Store and Bus: one process, the default.

Values are kept as JSON text, so they behave as in Redis: a non-JSON-able value
fails at once, and every read returns a fresh copy. Nothing here awaits, so every
method is atomic on the event loop. Expiry is read against an injectable clock.

Documents (``put``) may also be written through to a file, so that a restarted hub
finds them (a room's state: see :mod:`hub.room_state`); liveness (nodes, presence,
claims, leases) is never written: after a restart it starts afresh, as it must.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from cluster.store import Fanout, Subscription, check_ttl
from hub.ids import NodeID, ParticipantIdentity, RoomName

K = TypeVar("K", bound=str)
V = TypeVar("V")


class _Expiring(Generic[K, V]):
    """Entries with deadlines; an expired entry reads as absent and is dropped."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._entries: dict[K, tuple[float, V]] = {}

    def set(self, key: K, value: V, ttl: float | None) -> None:
        deadline = math.inf if ttl is None else self._clock() + check_ttl(ttl)
        self._entries[key] = (deadline, value)

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[key]
            return None
        return entry[1]

    def pop(self, key: K) -> None:
        self._entries.pop(key, None)

    def live(self) -> dict[K, V]:
        now = self._clock()
        self._entries = {k: entry for k, entry in self._entries.items() if entry[0] > now}
        return {k: value for k, (_, value) in self._entries.items()}

    def remaining(self) -> dict[K, tuple[float | None, V]]:
        """Every live entry with the seconds it has left (None: forever)."""
        now = self._clock()
        return {
            k: (None if deadline == math.inf else deadline - now, value)
            for k, (deadline, value) in self._entries.items()
            if deadline > now
        }


class MemoryStore:
    """A Store for one process. ``clock`` (seconds) lets tests move time; with
    ``documents``, the documents are also kept in that file (JSON, written whole and
    replaced at each change: a few small documents) and read back at construction."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, documents: Path | None = None
    ) -> None:
        self._clock = clock
        self._file = documents
        self._rooms: dict[RoomName, NodeID] = {}
        self._nodes: _Expiring[NodeID, str] = _Expiring(clock)
        self._presence: dict[RoomName, _Expiring[ParticipantIdentity, str]] = {}
        self._leases: _Expiring[str, str] = _Expiring(clock)
        self._documents: _Expiring[str, str] = _Expiring(clock)
        if documents is not None and documents.exists():
            self._load(documents)

    def _load(self, path: Path) -> None:
        """Documents a previous process left, as long as they have time left."""
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            return  # unreadable: start afresh rather than not at all
        now = time.time()
        for key, (expires_at, text) in saved.items():
            if expires_at is None:
                self._documents.set(key, text, None)
            elif expires_at > now:
                self._documents.set(key, text, expires_at - now)

    def _save(self) -> None:
        if self._file is None:
            return
        now = time.time()
        # Deadlines on the wall clock: the monotonic one means nothing after a restart.
        doc = {
            key: (None if left is None else now + left, text)
            for key, (left, text) in self._documents.remaining().items()
        }
        temporary = self._file.with_name(self._file.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(doc, out)
        os.replace(temporary, self._file)

    async def claim_room(self, room: RoomName, node: NodeID) -> NodeID:
        owner = self._live_owner(room)
        if owner is not None:
            return owner
        self._rooms[room] = node
        return node

    async def room_node(self, room: RoomName) -> NodeID | None:
        return self._live_owner(room)

    async def release_room(self, room: RoomName, node: NodeID) -> None:
        if self._rooms.get(room) == node:
            del self._rooms[room]

    async def rooms(self) -> dict[RoomName, NodeID]:
        live = self._nodes.live()
        self._rooms = {room: node for room, node in self._rooms.items() if node in live}
        return dict(self._rooms)

    def _live_owner(self, room: RoomName) -> NodeID | None:
        node = self._rooms.get(room)
        if node is None or self._nodes.get(node) is None:
            return None
        return node

    async def heartbeat(self, node: NodeID, info: dict[str, Any], ttl: float) -> None:
        self._nodes.set(node, json.dumps(info), ttl)

    async def nodes(self) -> dict[NodeID, dict[str, Any]]:
        return {node: json.loads(info) for node, info in self._nodes.live().items()}

    async def set_presence(
        self, room: RoomName, identity: ParticipantIdentity, info: dict[str, Any], ttl: float
    ) -> None:
        entries = self._presence.setdefault(room, _Expiring(self._clock))
        entries.set(identity, json.dumps(info), ttl)

    async def remove_presence(self, room: RoomName, identity: ParticipantIdentity) -> None:
        entries = self._presence.get(room)
        if entries is not None:
            entries.pop(identity)

    async def presence(self, room: RoomName) -> dict[ParticipantIdentity, dict[str, Any]]:
        entries = self._presence.get(room)
        live = {} if entries is None else entries.live()
        if not live:
            self._presence.pop(room, None)
        return {identity: json.loads(info) for identity, info in live.items()}

    async def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        if self._leases.get(name) not in (None, holder):
            return False
        self._leases.set(name, holder, ttl)
        return True

    async def release_lease(self, name: str, holder: str) -> None:
        if self._leases.get(name) == holder:
            self._leases.pop(name)

    async def lease_holder(self, name: str) -> str | None:
        return self._leases.get(name)

    async def put(self, key: str, value: dict[str, Any], ttl: float | None = None) -> None:
        self._documents.set(key, json.dumps(value), ttl)
        self._save()

    async def get(self, key: str) -> dict[str, Any] | None:
        text = self._documents.get(key)
        if text is None:
            return None
        value: dict[str, Any] = json.loads(text)
        return value

    async def delete(self, key: str) -> None:
        self._documents.pop(key)
        self._save()

    async def scan(self, prefix: str) -> dict[str, dict[str, Any]]:
        return {
            key: json.loads(text)
            for key, text in self._documents.live().items()
            if key.startswith(prefix)
        }

    async def close(self) -> None:
        """Nothing to release: the state goes with the object."""


class MemoryBus:
    """A Bus for one process: publish hands each subscriber its own copy at once."""

    def __init__(self) -> None:
        self._fanout = Fanout()

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        self._fanout.ensure_open()
        self._fanout.deliver(channel, json.dumps(message))

    def subscribe(self, channel: str) -> Subscription:
        return Subscription(channel, self._attach, self._detach)

    async def _attach(self, subscription: Subscription) -> None:
        self._fanout.add(subscription)

    async def _detach(self, subscription: Subscription) -> None:
        self._fanout.remove(subscription)

    async def close(self) -> None:
        self._fanout.close()
