"""One contract for every Store/Bus: the same suite runs in memory and on real Redis.

Two "nodes" are two Store/Bus pairs on the same state: two connections to one Redis,
or, in memory, the one pair of the process. Time: the memory store's clock is moved;
Redis sleeps past short TTLs. No assertion depends on something happening quickly.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from cluster.store import Bus, Store, Subscription, open_store_bus
from cluster.store_memory import MemoryBus, MemoryStore
from cluster.store_redis import RedisBus, RedisStore
from hub.ids import NodeID, ParticipantIdentity, RoomName
from tests.helpers import wait_until

SHORT = 0.2
"""A TTL meant to run out."""
PAST_SHORT = 0.6
"""Time after which SHORT has run out, with a margin."""
LONG = 60.0
"""A TTL that never runs out during a test."""

ROOM = RoomName("lecture")
A, B = NodeID("node-a"), NodeID("node-b")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Cluster:
    """Opens nodes on one shared state and moves its time."""

    open_node: Callable[[], tuple[Store, Bus]]
    elapse: Callable[[float], Awaitable[None]]
    opened: list[tuple[Store, Bus]] = field(default_factory=list)

    def node(self) -> tuple[Store, Bus]:
        pair = self.open_node()
        self.opened.append(pair)
        return pair


def memory_cluster() -> Cluster:
    clock = FakeClock()
    pair: tuple[Store, Bus] = (MemoryStore(clock), MemoryBus())

    async def elapse(seconds: float) -> None:
        clock.now += seconds

    return Cluster(lambda: pair, elapse)


def redis_cluster(url: str) -> Cluster:
    return Cluster(lambda: open_store_bus(url, prefix="test:"), asyncio.sleep)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def cluster(request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    if request.param == "memory":
        made = memory_cluster()
    else:
        made = redis_cluster(request.getfixturevalue("redis_url"))
    yield made
    for store, bus in {id(pair): pair for pair in made.opened}.values():
        await bus.close()
        await store.close()


@pytest.fixture
def store(cluster: Cluster) -> Store:
    return cluster.node()[0]


@pytest.fixture
def bus(cluster: Cluster) -> Bus:
    return cluster.node()[1]


async def receive(subscription: Subscription, count: int) -> list[dict[str, Any]]:
    async def take() -> list[dict[str, Any]]:
        return [await anext(subscription) for _ in range(count)]

    return await asyncio.wait_for(take(), timeout=10)


# Rooms


async def test_concurrent_claims_of_one_room_have_exactly_one_winner(cluster: Cluster) -> None:
    stores = [cluster.node()[0], cluster.node()[0]]
    nodes = [NodeID(f"node-{i}") for i in range(20)]
    for node in nodes:
        await stores[0].heartbeat(node, {}, LONG)
    owners = await asyncio.gather(
        *(stores[i % 2].claim_room(ROOM, node) for i, node in enumerate(nodes))
    )
    assert len(set(owners)) == 1
    assert owners[0] in nodes
    assert await stores[1].room_node(ROOM) == owners[0]
    assert await stores[0].rooms() == {ROOM: owners[0]}


async def test_claim_room_returns_the_live_owner(store: Store) -> None:
    await store.heartbeat(A, {}, LONG)
    await store.heartbeat(B, {}, LONG)
    assert await store.claim_room(ROOM, A) == A
    assert await store.claim_room(ROOM, B) == A
    assert await store.claim_room(ROOM, A) == A
    assert await store.claim_room(RoomName("other"), B) == B
    assert await store.rooms() == {ROOM: A, RoomName("other"): B}


async def test_release_room_frees_the_room_only_for_its_owner(store: Store) -> None:
    await store.heartbeat(A, {}, LONG)
    await store.heartbeat(B, {}, LONG)
    await store.claim_room(ROOM, A)
    await store.release_room(ROOM, B)
    assert await store.room_node(ROOM) == A
    await store.release_room(ROOM, A)
    assert await store.room_node(ROOM) is None
    assert await store.rooms() == {}
    assert await store.claim_room(ROOM, B) == B


async def test_heartbeat_expiry_removes_the_node_and_frees_its_rooms(
    cluster: Cluster, store: Store
) -> None:
    await store.heartbeat(A, {"url": "https://a"}, SHORT)
    await store.heartbeat(B, {"url": "https://b"}, LONG)
    await store.claim_room(ROOM, A)
    await store.claim_room(RoomName("orphan"), A)
    await store.claim_room(RoomName("kept"), B)
    await cluster.elapse(PAST_SHORT)
    assert await store.nodes() == {B: {"url": "https://b"}}
    assert await store.room_node(ROOM) is None
    assert await store.claim_room(ROOM, B) == B
    assert await store.rooms() == {ROOM: B, RoomName("kept"): B}


async def test_a_node_without_heartbeat_holds_no_room(store: Store) -> None:
    await store.heartbeat(B, {}, LONG)
    await store.claim_room(ROOM, A)
    assert await store.room_node(ROOM) is None
    assert await store.claim_room(ROOM, B) == B


async def test_heartbeat_renews_the_node_and_replaces_its_info(
    cluster: Cluster, store: Store
) -> None:
    await store.heartbeat(A, {"load": 1}, SHORT)
    await store.heartbeat(A, {"load": 2}, LONG)
    await cluster.elapse(PAST_SHORT)
    assert await store.nodes() == {A: {"load": 2}}


# Presence


async def test_presence_entries_expire_and_can_be_removed(cluster: Cluster, store: Store) -> None:
    alice, bob, carol = (ParticipantIdentity(n) for n in ("alice", "bob", "carol"))
    await store.set_presence(ROOM, alice, {"role": "center"}, LONG)
    await store.set_presence(ROOM, bob, {"role": "station"}, LONG)
    await store.set_presence(ROOM, carol, {"role": "station"}, SHORT)
    await store.set_presence(RoomName("other"), alice, {}, LONG)
    await cluster.elapse(PAST_SHORT)
    assert await store.presence(ROOM) == {alice: {"role": "center"}, bob: {"role": "station"}}
    await store.remove_presence(ROOM, alice)
    await store.remove_presence(ROOM, carol)
    assert await store.presence(ROOM) == {bob: {"role": "station"}}
    assert await store.presence(RoomName("other")) == {alice: {}}
    assert await store.presence(RoomName("nobody")) == {}


async def test_set_presence_again_renews_the_entry(cluster: Cluster, store: Store) -> None:
    alice = ParticipantIdentity("alice")
    await store.set_presence(ROOM, alice, {"muted": True}, SHORT)
    await store.set_presence(ROOM, alice, {"muted": False}, LONG)
    await cluster.elapse(PAST_SHORT)
    assert await store.presence(ROOM) == {alice: {"muted": False}}


# Leases


async def test_a_lease_is_refused_to_others_renewed_and_released(store: Store) -> None:
    assert await store.lease_holder("schedule") is None
    assert await store.acquire_lease("schedule", "a", LONG)
    assert not await store.acquire_lease("schedule", "b", LONG)
    assert await store.acquire_lease("schedule", "a", LONG)
    await store.release_lease("schedule", "b")
    assert await store.lease_holder("schedule") == "a"
    await store.release_lease("schedule", "a")
    assert await store.lease_holder("schedule") is None
    assert await store.acquire_lease("schedule", "b", LONG)
    assert await store.lease_holder("schedule") == "b"


async def test_a_lease_moves_to_another_node_once_its_holder_stops_renewing(
    cluster: Cluster,
) -> None:
    first, second = cluster.node()[0], cluster.node()[0]
    assert await first.acquire_lease("schedule", "a", SHORT)
    await cluster.elapse(PAST_SHORT)
    assert await second.lease_holder("schedule") is None
    assert await second.acquire_lease("schedule", "b", LONG)
    assert not await first.acquire_lease("schedule", "a", LONG)
    assert await first.lease_holder("schedule") == "b"


# Documents


async def test_put_get_delete_with_and_without_ttl(cluster: Cluster, store: Store) -> None:
    await store.put("lasting", {"a": [1, 2], "b": {"c": None}})
    await store.put("passing", {"x": 1}, ttl=SHORT)
    await store.put("replaced", {"v": 1}, ttl=SHORT)
    await store.put("replaced", {"v": 2})
    await cluster.elapse(PAST_SHORT)
    assert await store.get("lasting") == {"a": [1, 2], "b": {"c": None}}
    assert await store.get("passing") is None
    assert await store.get("replaced") == {"v": 2}
    await store.delete("lasting")
    await store.delete("never-there")
    assert await store.get("lasting") is None


async def test_scan_finds_the_unexpired_documents_of_a_prefix(
    cluster: Cluster, store: Store
) -> None:
    other = cluster.node()[0]  # what one node puts, another finds
    await store.put("room-state:a", {"stage": ["C"]})
    await store.put("room-state:b", {"stage": []}, ttl=SHORT)
    await store.put("room-stateless", {"x": 1})
    await store.put("media-session:z", {"room": "a"})
    assert await other.scan("room-state:") == {
        "room-state:a": {"stage": ["C"]},
        "room-state:b": {"stage": []},
    }
    await cluster.elapse(PAST_SHORT)
    assert await other.scan("room-state:") == {"room-state:a": {"stage": ["C"]}}
    assert await other.scan("nothing:") == {}


async def test_get_returns_a_copy(store: Store) -> None:
    await store.put("doc", {"list": [1]})
    copy = await store.get("doc")
    assert copy is not None
    copy["list"].append(2)
    assert await store.get("doc") == {"list": [1]}


async def test_ttls_must_be_positive(store: Store) -> None:
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            await store.heartbeat(A, {}, bad)
        with pytest.raises(ValueError):
            await store.set_presence(ROOM, ParticipantIdentity("x"), {}, bad)
        with pytest.raises(ValueError):
            await store.acquire_lease("l", "a", bad)
        with pytest.raises(ValueError):
            await store.put("k", {}, ttl=bad)


async def test_values_must_be_json(store: Store, bus: Bus) -> None:
    with pytest.raises(TypeError):
        await store.put("k", {"when": object()})
    with pytest.raises(TypeError):
        await bus.publish("ch", {"when": object()})


# Bus


async def test_messages_reach_every_node_in_order(cluster: Cluster) -> None:
    bus_a, bus_b = cluster.node()[1], cluster.node()[1]
    async with bus_a.subscribe("room:x") as on_a, bus_b.subscribe("room:x") as on_b:
        await bus_a.publish("room:other", {"n": -1})
        for n in range(50):
            await bus_b.publish("room:x", {"n": n})
        expected = [{"n": n} for n in range(50)]
        assert await receive(on_a, 50) == expected
        assert await receive(on_b, 50) == expected


async def test_a_subscription_gets_only_messages_published_once_it_is_active(bus: Bus) -> None:
    await bus.publish("ch", {"n": 0})
    async with bus.subscribe("ch") as messages:
        await bus.publish("ch", {"n": 1})
        assert await receive(messages, 1) == [{"n": 1}]


async def test_closing_a_subscription_ends_its_iteration(bus: Bus) -> None:
    received: list[dict[str, Any]] = []

    async def consume(subscription: Subscription) -> None:
        async for message in subscription:
            received.append(message)

    async with bus.subscribe("ch") as subscription:
        consumer = asyncio.create_task(consume(subscription))
        await bus.publish("ch", {"n": 1})
        await wait_until(lambda: None if received else "nothing received yet")
        await subscription.aclose()
        await asyncio.wait_for(consumer, timeout=10)
    assert received == [{"n": 1}]


async def test_closing_one_subscription_leaves_the_others_on_the_channel(bus: Bus) -> None:
    async with bus.subscribe("ch") as staying:
        async with bus.subscribe("ch") as leaving:
            await bus.publish("ch", {"n": 1})
            assert await receive(leaving, 1) == [{"n": 1}]
        await bus.publish("ch", {"n": 2})
        assert await receive(staying, 2) == [{"n": 1}, {"n": 2}]
    async with bus.subscribe("ch") as again:
        await bus.publish("ch", {"n": 3})
        assert await receive(again, 1) == [{"n": 3}]


async def test_closing_the_bus_ends_every_subscription_and_refuses_more(bus: Bus) -> None:
    subscription = bus.subscribe("ch")
    async with subscription:
        await bus.close()
        assert [message async for message in subscription] == []
    with pytest.raises(RuntimeError):
        await bus.publish("ch", {})
    with pytest.raises(RuntimeError):
        async with bus.subscribe("ch"):
            pass


async def test_iterating_a_subscription_not_entered_raises_runtime_error(bus: Bus) -> None:
    with pytest.raises(RuntimeError):
        await anext(bus.subscribe("ch"))


# Wiring


async def test_open_store_bus_without_url_is_in_memory() -> None:
    store, bus = open_store_bus(None)
    assert isinstance(store, MemoryStore)
    assert isinstance(bus, MemoryBus)
    await bus.close()
    await store.close()


@pytest.mark.redis
async def test_closing_the_redis_store_and_bus_leaves_no_task_behind(redis_url: str) -> None:
    before = asyncio.all_tasks()
    store, bus = open_store_bus(redis_url, prefix="test:")
    assert isinstance(store, RedisStore)
    assert isinstance(bus, RedisBus)
    async with bus.subscribe("ch") as messages:
        await bus.publish("ch", {"n": 1})
        assert await receive(messages, 1) == [{"n": 1}]
    await bus.close()
    await store.close()
    assert asyncio.all_tasks() == before


@pytest.mark.redis
async def test_the_redis_bus_subscribes_again_after_its_connection_drops(redis_url: str) -> None:
    prefix = f"test-{secrets.token_hex(4)}:"
    bus = RedisBus.from_url(redis_url, prefix=prefix)
    admin = Redis.from_url(redis_url, decode_responses=True)
    try:
        async with bus.subscribe("ch") as messages:
            ours = [c["id"] for c in await admin.client_list() if c["name"] == f"{prefix}bus"]
            assert ours
            for client_id in ours:
                await admin.client_kill_filter(_id=client_id)

            async def resubscribed() -> str | None:
                receivers = await admin.publish(f"{prefix}bus:ch", '{"n": 1}')
                return None if receivers else "no subscriber on the channel yet"

            await wait_until(resubscribed, timeout=10, interval=0.2)
            assert (await receive(messages, 1))[0] == {"n": 1}
    finally:
        await bus.close()
        await admin.aclose()


@pytest.mark.redis
async def test_the_redis_bus_drops_messages_that_are_not_json_objects(redis_url: str) -> None:
    bus = RedisBus.from_url(redis_url, prefix="test:")
    admin = Redis.from_url(redis_url)
    try:
        async with bus.subscribe("ch") as messages:
            for raw in (b"not json", b"[1, 2]", b"\xff\xfe", b"[" * 5000):
                await admin.publish("test:bus:ch", raw)
            await bus.publish("ch", {"n": 1})
            assert await receive(messages, 1) == [{"n": 1}]
    finally:
        await bus.close()
        await admin.aclose()


async def test_memory_documents_outlive_the_process_in_their_file(tmp_path: Path) -> None:
    """A restarted hub finds what the last one put (a room's state): the documents are
    written through to the file, with their deadlines on the wall clock; liveness
    (nodes, claims) is not kept."""
    path = tmp_path / "store.json"
    first = MemoryStore(documents=path)
    await first.heartbeat(A, {}, LONG)
    assert await first.claim_room(ROOM, A) == A
    await first.put("room-state:lecture", {"stage": ["C"], "public": True}, ttl=LONG)
    await first.put("forever", {"v": 1})
    await first.put("brief", {"v": 2}, ttl=0.3)
    await first.put("gone", {"v": 3})
    await first.delete("gone")
    assert path.stat().st_mode & 0o777 == 0o600  # a room's restream keys are in there
    await asyncio.sleep(0.5)  # "brief" runs out while no process holds it
    second = MemoryStore(documents=path)
    assert await second.get("room-state:lecture") == {"stage": ["C"], "public": True}
    assert await second.get("forever") == {"v": 1}
    assert await second.get("brief") is None and await second.get("gone") is None
    assert await second.room_node(ROOM) is None and await second.nodes() == {}
    path.write_text("{not json")
    assert await MemoryStore(documents=path).scan("") == {}  # unreadable: a fresh start
