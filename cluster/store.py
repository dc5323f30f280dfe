"""The Store/Bus seam: cluster state and cross-node messages.

Two implementations, chosen once at start-up by :func:`open_store_bus`: in memory
(one process, the default) and Redis (many nodes). Values are JSON-able dicts, and
both implementations hand back fresh copies, so nothing live is ever shared.

Liveness: a node exists while its heartbeat lasts. A room belongs to a node only
while that node is alive: once its heartbeat expires, its rooms are free and the
next ``claim_room`` takes them. A node therefore heartbeats before it claims.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

from hub.ids import NodeID, ParticipantIdentity, RoomName

log = logging.getLogger(__name__)


class Store(Protocol):
    """Shared state. Every TTL is in seconds (millisecond precision) and must be positive."""

    async def claim_room(self, room: RoomName, node: NodeID) -> NodeID:
        """Atomically give ``room`` to ``node`` unless a live node holds it; the owner."""
        ...

    async def room_node(self, room: RoomName) -> NodeID | None:
        """The live node holding ``room``, if any."""
        ...

    async def release_room(self, room: RoomName, node: NodeID) -> None:
        """Free ``room`` if ``node`` holds it."""
        ...

    async def rooms(self) -> dict[RoomName, NodeID]:
        """Every room held by a live node."""
        ...

    async def heartbeat(self, node: NodeID, info: dict[str, Any], ttl: float) -> None:
        """Declare ``node`` alive for ``ttl`` seconds, with ``info`` for the others."""
        ...

    async def nodes(self) -> dict[NodeID, dict[str, Any]]:
        """The info of every node whose heartbeat has not expired."""
        ...

    async def set_presence(
        self, room: RoomName, identity: ParticipantIdentity, info: dict[str, Any], ttl: float
    ) -> None:
        """Record ``identity`` as present in ``room`` for ``ttl`` seconds."""
        ...

    async def remove_presence(self, room: RoomName, identity: ParticipantIdentity) -> None: ...

    async def presence(self, room: RoomName) -> dict[ParticipantIdentity, dict[str, Any]]:
        """The unexpired presence entries of ``room``."""
        ...

    async def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        """Take lease ``name`` if free or expired, renew it if ``holder`` has it; else False."""
        ...

    async def release_lease(self, name: str, holder: str) -> None:
        """Free lease ``name`` if ``holder`` has it."""
        ...

    async def lease_holder(self, name: str) -> str | None: ...

    async def put(self, key: str, value: dict[str, Any], ttl: float | None = None) -> None:
        """Store a small document, forever or for ``ttl`` seconds."""
        ...

    async def get(self, key: str) -> dict[str, Any] | None: ...

    async def delete(self, key: str) -> None: ...

    async def scan(self, prefix: str) -> dict[str, dict[str, Any]]:
        """Every unexpired document whose key starts with ``prefix``, by key."""
        ...

    async def close(self) -> None: ...


class Bus(Protocol):
    """Cross-node messages: JSON-able dicts on named channels, at most once."""

    async def publish(self, channel: str, message: dict[str, Any]) -> None: ...

    def subscribe(self, channel: str) -> Subscription:
        """A subscription to ``channel``; it is active once entered (``async with``)."""
        ...

    async def close(self) -> None:
        """Stop; every subscription's iteration ends."""
        ...


class Subscription:
    """The messages of one channel, in order, from entering until closing.

    ``async with bus.subscribe(channel) as messages: async for message in messages``.
    Messages already received when it closes are still yielded, then iteration ends.
    The buffer is unbounded: a consumer must keep up (control messages are few).
    """

    def __init__(
        self,
        channel: str,
        attach: Callable[[Subscription], Awaitable[None]],
        detach: Callable[[Subscription], Awaitable[None]],
    ) -> None:
        self.channel = channel
        self._attach = attach
        self._detach = detach
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._entered = False
        self._closed = False
        self._ended = False

    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError("a subscription is entered once")
        self._entered = True
        try:
            await self._attach(self)
        except BaseException:
            self.end()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if not self._entered:
            raise RuntimeError("enter the subscription (async with) before iterating")
        if self._ended:
            raise StopAsyncIteration
        message = await self._queue.get()
        if message is None:
            self._ended = True
            raise StopAsyncIteration
        return message

    async def aclose(self) -> None:
        """Stop receiving; iteration ends after the messages already received."""
        if not self._closed:
            self.end()
            await self._detach(self)

    def deliver(self, text: str | bytes) -> None:
        """For Bus implementations: queue one message received as JSON text."""
        if self._closed:
            return
        try:
            message = json.loads(text)
        except (ValueError, RecursionError):
            message = None
        if not isinstance(message, dict):
            log.warning("dropped a message on %r that is not a JSON object", self.channel)
            return
        self._queue.put_nowait(message)

    def end(self) -> None:
        """For Bus implementations: end iteration without detaching (the bus is closing)."""
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(None)


class Fanout:
    """The local subscriptions of a Bus, by channel."""

    def __init__(self) -> None:
        self._channels: dict[str, set[Subscription]] = {}
        self.closed = False

    def add(self, subscription: Subscription) -> bool:
        """Register ``subscription``; True if it is the first on its channel."""
        self.ensure_open()
        subscriptions = self._channels.setdefault(subscription.channel, set())
        subscriptions.add(subscription)
        return len(subscriptions) == 1

    def ensure_open(self) -> None:
        """RuntimeError once the bus is closed."""
        if self.closed:
            raise RuntimeError("the bus is closed")

    def remove(self, subscription: Subscription) -> bool:
        """Forget ``subscription``; True if it was the last on its channel."""
        subscriptions = self._channels.get(subscription.channel)
        if subscriptions is None or subscription not in subscriptions:
            return False
        subscriptions.remove(subscription)
        if subscriptions:
            return False
        del self._channels[subscription.channel]
        return True

    def deliver(self, channel: str, text: str | bytes) -> None:
        for subscription in self._channels.get(channel, ()):
            subscription.deliver(text)

    def close(self) -> None:
        """End every subscription; later ones are refused."""
        self.closed = True
        for subscriptions in self._channels.values():
            for subscription in subscriptions:
                subscription.end()
        self._channels.clear()


def check_ttl(ttl: float) -> float:
    """``ttl`` if it is a usable number of seconds, else ValueError."""
    if not (ttl > 0 and math.isfinite(ttl)):
        raise ValueError(f"a TTL must be a positive number of seconds, not {ttl!r}")
    return ttl


def open_store_bus(
    redis_url: str | None, *, prefix: str = "hub:", documents: Path | None = None
) -> tuple[Store, Bus]:
    """In-memory Store and Bus when ``redis_url`` is None (its documents kept in the
    file ``documents`` too, when given, so a restart finds them), else Redis ones (keys
    under ``prefix``). The caller closes both."""
    # Imported on demand: only a cluster loads the Redis module and redis itself.
    if redis_url is None:
        from cluster.store_memory import MemoryBus, MemoryStore

        return MemoryStore(documents=documents), MemoryBus()
    from cluster.store_redis import RedisBus, RedisStore

    return RedisStore.from_url(redis_url, prefix=prefix), RedisBus.from_url(
        redis_url, prefix=prefix
    )
