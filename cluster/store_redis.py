"""The Redis Store and Bus: state shared by the nodes of a cluster.

Redis keys, ``{p}`` being the prefix (``hub:`` by default)::

    {p}rooms                       hash    room name -> id of the node holding it
    {p}nodes                       zset    node id, scored by its heartbeat deadline
    {p}node_info                   hash    node id -> JSON info of its last heartbeat
    {p}presence:{room}             hash    participant identity -> JSON info
    {p}presence_deadlines:{room}   zset    participant identity, scored by its deadline
    {p}lease:{name}                string  holder, expiring with the lease (PX)
    {p}doc:{key}                   string  JSON document, expiring if put with a TTL (PX):
        room-state:{room}          a room's state (hub/room_state.py), while its node lives
        media-session:{secret}     a WHIP/WHEP session (hub/service.py RESOURCE_KEY)
        recording-session:{room}   what a room's recording is of (web/glue.py)
        library-item:{room}        the item made of it, for the schedule's hand-over
    {p}bus:{channel}               channel pub/sub, JSON messages

Deadlines are milliseconds on the Redis server's clock (``TIME`` inside the
scripts), so the nodes' clocks need not agree. A room entry stays in ``rooms``
after its node dies, but reads treat it as free: ``claim_room`` overwrites it and
``rooms()`` drops it. Dead entries of a hash/zset pair are dropped by the next
write, and both keys expire with their longest-lived entry.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from cluster.store import Fanout, Subscription, check_ttl
from hub.ids import NodeID, ParticipantIdentity, RoomName
from hub.tasks import TaskOwner

log = logging.getLogger(__name__)

_PRELUDE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local function alive(deadlines, member)
  local deadline = redis.call('ZSCORE', deadlines, member)
  return deadline and tonumber(deadline) > now
end
"""

# KEYS: rooms, nodes. ARGV: room, node.
_CLAIM_ROOM = """
local owner = redis.call('HGET', KEYS[1], ARGV[1])
if owner and alive(KEYS[2], owner) then return owner end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return ARGV[2]
"""

# KEYS: rooms, nodes. ARGV: room.
_ROOM_NODE = """
local owner = redis.call('HGET', KEYS[1], ARGV[1])
if owner and alive(KEYS[2], owner) then return owner end
return false
"""

# KEYS: rooms, nodes.
_ROOMS = """
local held = {}
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  if alive(KEYS[2], entries[i + 1]) then
    held[#held + 1] = entries[i]
    held[#held + 1] = entries[i + 1]
  else
    redis.call('HDEL', KEYS[1], entries[i])
  end
end
return held
"""

# KEYS: a hash, its deadlines zset. ARGV: member, JSON info, TTL in ms.
_EXPIRING_SET = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  redis.call('HDEL', KEYS[1], member)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
local keep = string.format('%d', tonumber(last[2]) - now)
redis.call('PEXPIRE', KEYS[1], keep)
redis.call('PEXPIRE', KEYS[2], keep)
"""

# KEYS: a hash, its deadlines zset.
_EXPIRING_LIST = """
local live = {}
local members = redis.call('ZRANGEBYSCORE', KEYS[2], string.format('(%d', now), '+inf')
for _, member in ipairs(members) do
  local info = redis.call('HGET', KEYS[1], member)
  if info then
    live[#live + 1] = member
    live[#live + 1] = info
  end
end
return live
"""

# KEYS: a hash. ARGV: field, expected value.
_HDEL_IF = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
"""

# KEYS: lease. ARGV: holder, TTL in ms.
_ACQUIRE_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: lease. ARGV: holder.
_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
"""


def _ms(ttl: float) -> int:
    return max(1, round(check_ttl(ttl) * 1000))


def _pairs(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _client(url: str, name: str, *, decode: bool) -> Redis:
    # The name shows in CLIENT LIST, so an operator can tell the hub's connections apart.
    return Redis.from_url(url, decode_responses=decode, client_name=name)


class RedisStore:
    """A Store shared by every node using the same Redis and prefix."""

    def __init__(self, client: Redis, *, prefix: str = "hub:") -> None:
        """Owns ``client`` (made with ``decode_responses=True``): ``close`` closes it."""
        self._client = client
        self._prefix = prefix
        self._rooms_key = f"{prefix}rooms"
        self._nodes_key = f"{prefix}nodes"
        self._node_info_key = f"{prefix}node_info"
        script = client.register_script
        self._claim_room = script(_PRELUDE + _CLAIM_ROOM)
        self._room_node = script(_PRELUDE + _ROOM_NODE)
        self._rooms = script(_PRELUDE + _ROOMS)
        self._expiring_set = script(_PRELUDE + _EXPIRING_SET)
        self._expiring_list = script(_PRELUDE + _EXPIRING_LIST)
        self._hdel_if = script(_HDEL_IF)
        self._acquire_lease = script(_ACQUIRE_LEASE)
        self._release_lease = script(_RELEASE_LEASE)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "hub:") -> RedisStore:
        return cls(_client(url, f"{prefix}store", decode=True), prefix=prefix)

    def _presence_keys(self, room: RoomName) -> list[str]:
        return [f"{self._prefix}presence:{room}", f"{self._prefix}presence_deadlines:{room}"]

    async def claim_room(self, room: RoomName, node: NodeID) -> NodeID:
        owner: str = await self._claim_room(
            keys=[self._rooms_key, self._nodes_key], args=[room, node]
        )
        return NodeID(owner)

    async def room_node(self, room: RoomName) -> NodeID | None:
        owner: str | None = await self._room_node(
            keys=[self._rooms_key, self._nodes_key], args=[room]
        )
        return None if owner is None else NodeID(owner)

    async def release_room(self, room: RoomName, node: NodeID) -> None:
        await self._hdel_if(keys=[self._rooms_key], args=[room, node])

    async def rooms(self) -> dict[RoomName, NodeID]:
        held = _pairs(await self._rooms(keys=[self._rooms_key, self._nodes_key]))
        return {RoomName(room): NodeID(node) for room, node in held.items()}

    async def heartbeat(self, node: NodeID, info: dict[str, Any], ttl: float) -> None:
        await self._expiring_set(
            keys=[self._node_info_key, self._nodes_key], args=[node, json.dumps(info), _ms(ttl)]
        )

    async def nodes(self) -> dict[NodeID, dict[str, Any]]:
        live = _pairs(await self._expiring_list(keys=[self._node_info_key, self._nodes_key]))
        return {NodeID(node): json.loads(info) for node, info in live.items()}

    async def set_presence(
        self, room: RoomName, identity: ParticipantIdentity, info: dict[str, Any], ttl: float
    ) -> None:
        await self._expiring_set(
            keys=self._presence_keys(room), args=[identity, json.dumps(info), _ms(ttl)]
        )

    async def remove_presence(self, room: RoomName, identity: ParticipantIdentity) -> None:
        entries, deadlines = self._presence_keys(room)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hdel(entries, identity)
            pipe.zrem(deadlines, identity)
            await pipe.execute()

    async def presence(self, room: RoomName) -> dict[ParticipantIdentity, dict[str, Any]]:
        live = _pairs(await self._expiring_list(keys=self._presence_keys(room)))
        return {ParticipantIdentity(who): json.loads(info) for who, info in live.items()}

    async def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        acquired: int = await self._acquire_lease(
            keys=[f"{self._prefix}lease:{name}"], args=[holder, _ms(ttl)]
        )
        return acquired == 1

    async def release_lease(self, name: str, holder: str) -> None:
        await self._release_lease(keys=[f"{self._prefix}lease:{name}"], args=[holder])

    async def lease_holder(self, name: str) -> str | None:
        # decode_responses=True: Redis answers str.
        return cast(str | None, await self._client.get(f"{self._prefix}lease:{name}"))

    async def put(self, key: str, value: dict[str, Any], ttl: float | None = None) -> None:
        text = json.dumps(value)
        await self._client.set(
            f"{self._prefix}doc:{key}", text, px=None if ttl is None else _ms(ttl)
        )

    async def get(self, key: str) -> dict[str, Any] | None:
        text = await self._client.get(f"{self._prefix}doc:{key}")
        if text is None:
            return None
        value: dict[str, Any] = json.loads(text)
        return value

    async def delete(self, key: str) -> None:
        await self._client.delete(f"{self._prefix}doc:{key}")

    async def scan(self, prefix: str) -> dict[str, dict[str, Any]]:
        documents = f"{self._prefix}doc:"
        keys = [key async for key in self._client.scan_iter(match=f"{documents}{prefix}*")]
        if not keys:
            return {}
        texts = await self._client.mget(keys)
        # A key that expired between the scan and the read reads as None.
        return {
            key.removeprefix(documents): json.loads(text)
            for key, text in zip(keys, texts, strict=True)
            if text is not None
        }

    async def close(self) -> None:
        await self._client.aclose()


class RedisBus:
    """A Bus over Redis pub/sub: one connection for all of this node's subscriptions,
    read by one task that this bus owns."""

    def __init__(self, client: Redis, *, prefix: str = "hub:") -> None:
        """Owns ``client`` (made with ``decode_responses=False``: anyone may publish any
        bytes, which must not break the reader): ``close`` closes it."""
        self._client = client
        self._channel_prefix = f"{prefix}bus:"
        self._pubsub = client.pubsub()
        self._fanout = Fanout()
        self._tasks = TaskOwner("redis bus")
        self._reader: asyncio.Task[Any] | None = None
        # SUBSCRIBE and UNSUBSCRIBE go out one at a time, so the single confirmation
        # awaited is unambiguous and the server's state follows the local one.
        self._lock = asyncio.Lock()
        self._confirmation: tuple[str, asyncio.Future[None]] | None = None

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "hub:") -> RedisBus:
        return cls(_client(url, f"{prefix}bus", decode=False), prefix=prefix)

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        self._fanout.ensure_open()
        await self._client.publish(self._channel_prefix + channel, json.dumps(message))

    def subscribe(self, channel: str) -> Subscription:
        return Subscription(channel, self._attach, self._detach)

    async def _attach(self, subscription: Subscription) -> None:
        async with self._lock:
            if not self._fanout.add(subscription):
                return
            try:
                await self._subscribe(self._channel_prefix + subscription.channel)
            except BaseException:
                self._fanout.remove(subscription)
                raise

    async def _subscribe(self, key: str) -> None:
        """Subscribe and wait for the confirmation: from then on, messages arrive."""
        confirmed = asyncio.get_running_loop().create_future()
        self._confirmation = (key, confirmed)
        try:
            await self._pubsub.subscribe(key)
            if self._reader is None:
                self._reader = self._tasks.spawn(self._read(), name="redis bus reader")
            await confirmed
        finally:
            self._confirmation = None

    async def _detach(self, subscription: Subscription) -> None:
        async with self._lock:
            if not self._fanout.remove(subscription):
                return
            try:
                await self._pubsub.unsubscribe(self._channel_prefix + subscription.channel)
            except (RedisError, OSError) as error:
                # Closing a subscription must not fail: stray messages find no subscriber.
                log.warning("could not unsubscribe from %r: %s", subscription.channel, error)

    async def _read(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(timeout=None)
            except (RedisError, OSError) as error:
                # redis-py reconnects and subscribes again on the next read.
                log.warning("Redis bus connection lost (%s); retrying", error)
                await asyncio.sleep(1.0)
                continue
            if message is None or message["type"] not in ("message", "subscribe"):
                continue
            key = message["channel"].decode()  # one of our channel names
            if message["type"] == "message":
                self._fanout.deliver(key.removeprefix(self._channel_prefix), message["data"])
            elif message["type"] == "subscribe" and self._confirmation is not None:
                awaited, confirmed = self._confirmation
                if awaited == key and not confirmed.done():
                    confirmed.set_result(None)

    async def close(self) -> None:
        """End every subscription, stop the reader task and close the connections."""
        if self._fanout.closed:
            return
        self._fanout.close()
        if self._confirmation is not None and not self._confirmation[1].done():
            self._confirmation[1].set_exception(RuntimeError("the bus is closed"))
        await self._tasks.close()
        await self._pubsub.aclose()
        await self._client.aclose()
