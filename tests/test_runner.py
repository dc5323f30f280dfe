"""The runner against a clock the tests move: steps at the right times, durable across
restarts, one actor per lease; and the webhook notifier against a real local server."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from scheduler.recurrence import LOCAL_ZONE, Recurrence, Repeat
from scheduler.runner import (
    LEASE_NAME,
    Lease,
    Runner,
    RunnerConfig,
    Step,
    WebhookNotifier,
    due_steps,
)
from scheduler.schedule import (
    Audience,
    AudienceKind,
    Schedule,
    SessionInfo,
    SessionOptions,
    SessionStatus,
    Theme,
    room_name,
)
from scheduler.seed import load_seed
from scheduler.sites import Sites
from scheduler.tables import runner_steps
from tests.helpers import wait_until
from tests.test_sites import engine_fixture  # noqa: F401  (fixture import)

T = datetime(2026, 3, 2, 9, 0, tzinfo=LOCAL_ZONE).astimezone(UTC)  # a Monday, 09:00 local
MIN = timedelta(minutes=1)
CONFIG = RunnerConfig(lead=10 * MIN, grace=5 * MIN, tick=1.0, poll_interval=5.0, lease_ttl=9.0)


class FakeClock:
    """Time moves only when the test says; ``sleep`` returns when it has moved enough."""

    def __init__(self, now: datetime) -> None:
        self._now = now
        self._sleepers: list[tuple[datetime, asyncio.Future[None]]] = []

    def now(self) -> datetime:
        return self._now

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        sleeper = (self._now + timedelta(seconds=seconds), future)
        self._sleepers.append(sleeper)
        try:
            await future
        finally:  # a sleep cut short (the runner was woken) is no sleeper any more
            if sleeper in self._sleepers:
                self._sleepers.remove(sleeper)

    def set(self, now: datetime) -> None:
        self._now = now
        due = [s for s in self._sleepers if s[0] <= now]
        self._sleepers = [s for s in self._sleepers if s[0] > now]
        for _, future in due:
            if not future.done():
                future.set_result(None)

    async def settle(self, sleepers: int) -> None:
        """Wait until ``sleepers`` loops are asleep again, i.e. done with this instant."""
        await wait_until(
            lambda: (
                None
                if len(self._sleepers) >= sleepers
                else f"{len(self._sleepers)} of {sleepers} loops asleep"
            )
        )


class FakeLease:
    """The Store's lease contract in memory, expiring against the fake clock."""

    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock
        self.held: dict[str, tuple[str, datetime]] = {}
        self.refused: Counter[str] = Counter()

    async def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        current = self.held.get(name)
        now = self._clock.now()
        if current is not None and current[0] != holder and current[1] > now:
            self.refused[holder] += 1
            return False
        self.held[name] = (holder, now + timedelta(seconds=ttl))
        return True

    async def release_lease(self, name: str, holder: str) -> None:
        if self.held.get(name, ("",))[0] == holder:
            del self.held[name]


@dataclass
class Rooms:
    """Room control that writes down what it is asked; ``fail`` makes calls raise."""

    calls: list[tuple[str, str]] = field(default_factory=list)
    libraries: list[SessionInfo] = field(default_factory=list)
    fail: int = 0

    def _call(self, action: str, room: str) -> None:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("the hub is busy")
        self.calls.append((action, room))

    async def open_room(self, room: str, session: SessionInfo) -> None:
        self._call("open", room)

    async def start_recording(self, room: str) -> None:
        self._call("start_recording", room)

    async def stop_recording(self, room: str) -> None:
        self._call("stop_recording", room)

    async def close_room(self, room: str) -> None:
        self._call("close", room)

    async def hand_to_library(self, room: str, session: SessionInfo) -> None:
        self._call("library", room)
        self.libraries.append(session)


@dataclass
class Notices:
    sent: list[tuple[set[str], dict[str, Any]]] = field(default_factory=list)

    async def notify(self, site_codes: set[str], event: dict[str, Any]) -> None:
        self.sent.append((site_codes, event))


@dataclass
class World:
    engine: AsyncEngine
    clock: FakeClock
    lease: FakeLease
    schedule: Schedule

    def runner(
        self, holder: str = "node-a", config: RunnerConfig = CONFIG
    ) -> tuple[Runner, Rooms, Notices]:
        rooms, notices = Rooms(), Notices()
        runner = Runner(self.engine, rooms, notices, self.lease, holder, self.clock, config)
        return runner, rooms, notices

    async def add(
        self,
        *,
        start: datetime = T,
        record: bool = True,
        publish: bool = True,
        recurrence: Recurrence | None = None,
        audience: Audience | None = None,
    ) -> int:
        session = await self.schedule.create(
            await Sites(self.engine).tree(),
            title="学习二十大精神宣讲",
            theme=Theme.THEORY,
            host="C",
            audience=audience or Audience(AudienceKind.SUBTREES, ("I01",)),
            start=start,
            end=start + timedelta(hours=1),
            recurrence=recurrence,
            options=SessionOptions(record=record, publish=publish),
        )
        return session.id


@pytest.fixture
async def world(engine: AsyncEngine) -> AsyncIterator[World]:
    await load_seed(engine)
    clock = FakeClock(T - timedelta(hours=1))
    yield World(engine, clock, FakeLease(clock), Schedule(engine))


async def at(runner: Runner, clock: FakeClock, when: datetime) -> None:
    clock.set(when)
    await runner.tick()


async def test_steps_happen_at_the_right_times(world: World) -> None:
    session_id = await world.add()
    room = room_name(session_id, T)
    assert room == f"s{session_id}-202603020900"
    runner, rooms, notices = world.runner()
    timeline = [
        (T - 11 * MIN, []),
        (T - 10 * MIN, [("open", room)]),
        (T - 1 * MIN, []),
        (T, [("start_recording", room)]),
        (T + 59 * MIN, []),
        (T + 64 * MIN, []),  # the lecture may overrun into the grace period
        (T + 65 * MIN, [("stop_recording", room), ("close", room), ("library", room)]),
        (T + 3 * 60 * MIN, []),
    ]
    for when, expected in timeline:
        before = len(rooms.calls)
        await at(runner, world.clock, when)
        assert rooms.calls[before:] == expected, when
    ((sites, event),) = notices.sent
    assert sites == {"I01", "I01-S001", "I01-S002"}
    assert event["type"] == "session.opening" and event["room"] == room
    assert event["start"] == "2026-03-02T09:00:00+08:00" and event["theme_label"] == "理论宣讲"
    (library,) = rooms.libraries
    assert (library.title, library.theme) == ("学习二十大精神宣讲", Theme.THEORY)


async def test_options_decide_recording_and_library(world: World) -> None:
    plain = await world.add(record=False, publish=False)
    kept = await world.add(record=True, publish=False)
    runner, rooms, _ = world.runner()
    for when in (T - 10 * MIN, T, T + 65 * MIN):
        await at(runner, world.clock, when)
    actions = {(a, r.split("-")[0]) for a, r in rooms.calls}
    assert actions == {
        ("open", f"s{plain}"),
        ("close", f"s{plain}"),
        ("open", f"s{kept}"),
        ("start_recording", f"s{kept}"),
        ("stop_recording", f"s{kept}"),
        ("close", f"s{kept}"),
    }


async def test_a_restart_mid_session_repeats_nothing(world: World) -> None:
    session_id = await world.add()
    room = room_name(session_id, T)
    first, first_rooms, first_notices = world.runner()
    await at(first, world.clock, T - 10 * MIN)
    await at(first, world.clock, T + 1 * MIN)
    assert [a for a, _ in first_rooms.calls] == ["open", "start_recording"]
    await first.stop()

    # A new process (same database) takes over mid-session.
    second, second_rooms, second_notices = world.runner("node-a")
    for when in (T + 2 * MIN, T + 30 * MIN, T + 65 * MIN, T + 70 * MIN):
        await at(second, world.clock, when)
    assert second_rooms.calls == [("stop_recording", room), ("close", room), ("library", room)]
    assert len(first_notices.sent) == 1 and second_notices.sent == []


async def test_a_hub_down_past_the_end_still_closes_what_it_opened(world: World) -> None:
    session_id = await world.add()
    runner, _, _ = world.runner()
    await at(runner, world.clock, T)
    restarted, later_rooms, _ = world.runner()
    await at(restarted, world.clock, T + timedelta(days=3))
    room = room_name(session_id, T)
    assert later_rooms.calls == [("stop_recording", room), ("close", room), ("library", room)]


async def test_a_session_missed_entirely_is_not_opened_late(world: World) -> None:
    await world.add()
    runner, rooms, notices = world.runner()
    await at(runner, world.clock, T + 65 * MIN)
    assert rooms.calls == [] and notices.sent == []


async def test_a_late_start_still_opens_and_records(world: World) -> None:
    session_id = await world.add()
    runner, rooms, _ = world.runner()
    await at(runner, world.clock, T + 20 * MIN)
    room = room_name(session_id, T)
    assert rooms.calls == [("open", room), ("start_recording", room)]


async def test_cancelling_closes_an_open_room_without_publishing(world: World) -> None:
    opened = await world.add()
    never_opened = await world.add()
    runner, rooms, _ = world.runner()
    await world.schedule.cancel(never_opened)
    await at(runner, world.clock, T + 1 * MIN)
    await world.schedule.cancel(opened)
    await at(runner, world.clock, T + 2 * MIN)
    await at(runner, world.clock, T + 65 * MIN)
    room = room_name(opened, T)
    assert rooms.calls == [
        ("open", room),
        ("start_recording", room),
        ("stop_recording", room),
        ("close", room),
    ]


async def test_a_failed_step_is_retried_and_later_steps_wait(world: World) -> None:
    session_id = await world.add()
    runner, rooms, notices = world.runner()
    rooms.fail = 1
    await at(runner, world.clock, T - 10 * MIN)
    assert rooms.calls == [] and notices.sent == []  # no notice for a room not open
    await at(runner, world.clock, T - 9 * MIN)
    assert rooms.calls == [("open", room_name(session_id, T))] and len(notices.sent) == 1


async def test_each_occurrence_of_a_series_gets_its_own_room(world: World) -> None:
    session_id = await world.add(
        record=False, publish=False, recurrence=Recurrence(Repeat.DAILY, count=2)
    )
    runner, rooms, _ = world.runner()
    for when in (T - 10 * MIN, T + 65 * MIN, T + 1430 * MIN, T + 1505 * MIN, T + 2880 * MIN):
        await at(runner, world.clock, when)
    day1, day2 = room_name(session_id, T), room_name(session_id, T + timedelta(days=1))
    assert day2 == f"s{session_id}-202603030900"
    assert rooms.calls == [("open", day1), ("close", day1), ("open", day2), ("close", day2)]


@contextlib.contextmanager
def schedule_reads(engine: AsyncEngine) -> Iterator[list[str]]:
    """The SELECTs on the runner's steps table while in the block: one per look at the
    schedule (``Runner.act`` reads it once)."""
    reads: list[str] = []

    def before_execute(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and runner_steps.name in statement:
            reads.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", before_execute)
    try:
        yield reads
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", before_execute)


async def test_an_idle_runner_reads_the_schedule_once_per_poll_interval(world: World) -> None:
    await world.add()  # at T; nothing is due for the next 50 minutes
    runner, rooms, _ = world.runner()
    with schedule_reads(world.engine) as reads:
        runner.start()
        await world.clock.settle(1)
        for second in range(1, 61):
            world.clock.set(T - timedelta(hours=1, seconds=-second))
            await world.clock.settle(1)
        await runner.stop()
    # Sixty ticks of a second: the lease is renewed every 3 s, the schedule read at
    # the start and then every 5 s, not every tick.
    assert len(reads) == 1 + 60 // 5 and rooms.calls == []


async def test_a_runner_wakes_when_a_step_falls_due_and_when_told(world: World) -> None:
    session_id = await world.add()
    room = room_name(session_id, T)
    # Polling an hour apart: only the steps' own times and wake() bring the runner round.
    runner, rooms, _ = world.runner(config=replace(CONFIG, poll_interval=3600.0))
    runner.start()
    await world.clock.settle(1)
    for when, expected in [
        (T - 10 * MIN - timedelta(seconds=1), []),
        (T - 10 * MIN, [("open", room)]),
        (T - timedelta(seconds=1), [("open", room)]),
        (T, [("open", room), ("start_recording", room)]),
    ]:
        world.clock.set(when)
        await world.clock.settle(1)
        assert rooms.calls == expected, when

    # A session scheduled on another node (or straight into the database) due at once:
    # not seen before the next poll...
    soon = room_name(await world.add(start=T + 5 * MIN, record=False, publish=False), T + 5 * MIN)
    world.clock.set(T + timedelta(seconds=4))  # the lease is renewed meanwhile
    await world.clock.settle(1)
    assert ("open", soon) not in rooms.calls
    # ...but scheduled here, the API wakes the runner, and the clock need not move.
    runner.wake()
    await wait_until(lambda: None if ("open", soon) in rooms.calls else f"{soon} not open")
    await runner.stop()


async def test_two_runners_one_lease_only_the_holder_acts(world: World) -> None:
    session_id = await world.add()
    room = room_name(session_id, T)
    a, a_rooms, _ = world.runner("node-a")
    b, b_rooms, _ = world.runner("node-b")
    a.start()
    await world.clock.settle(1)
    b.start()
    await world.clock.settle(2)
    assert world.lease.held[LEASE_NAME][0] == "node-a" and a.leading and not b.leading

    world.clock.set(T - 10 * MIN)
    await world.clock.settle(2)
    await wait_until(lambda: None if world.lease.refused["node-b"] >= 2 else "b never tried")
    assert a_rooms.calls == [("open", room)] and b_rooms.calls == []

    # The holder stops (a clean shutdown releases the lease): the other takes over.
    await a.stop()
    world.clock.set(T)
    await world.clock.settle(1)
    assert b.leading
    assert b_rooms.calls == [("start_recording", room)]
    assert a_rooms.calls == [("open", room)]
    await b.stop()
    assert LEASE_NAME not in world.lease.held


async def test_a_runner_that_loses_its_lease_stops_acting(world: World) -> None:
    session_id = await world.add()
    a, a_rooms, _ = world.runner("node-a")
    a.start()
    await world.clock.settle(1)
    # Someone else got the lease (say the hub was paused longer than the TTL).
    world.lease.held[LEASE_NAME] = ("node-z", T + timedelta(days=1))
    world.clock.set(T - 10 * MIN)
    await world.clock.settle(1)
    assert not a.leading and a_rooms.calls == []
    # When the other holder goes away, it acts again.
    del world.lease.held[LEASE_NAME]
    world.clock.set(T - 9 * MIN)
    await world.clock.settle(1)
    assert a_rooms.calls == [("open", room_name(session_id, T))]
    await a.stop()


async def test_a_crashed_holder_is_replaced_after_the_ttl(world: World) -> None:
    await world.add()
    a, a_rooms, _ = world.runner("node-a")
    b, b_rooms, _ = world.runner("node-b")
    await at(a, world.clock, T - 20 * MIN)  # a holds the lease, then dies silently
    await at(b, world.clock, T - 20 * MIN + timedelta(seconds=5))
    assert not b.leading
    await at(b, world.clock, T - 10 * MIN)
    assert b.leading and [c[0] for c in b_rooms.calls] == ["open"] and a_rooms.calls == []


def info(**changes: Any) -> SessionInfo:
    base = SessionInfo(
        session_id=1,
        room=room_name(1, T),
        title="t",
        theme=Theme.SCIENCE,
        host="C",
        audience_sites=frozenset({"C"}),
        start=T,
        end=T + timedelta(hours=1),
        options=SessionOptions(record=True, publish=True),
        status=SessionStatus.SCHEDULED,
    )
    return SessionInfo(**{**base.__dict__, **changes})


OPEN, N, R, S, C, L = (
    Step.OPEN,
    Step.NOTIFY,
    Step.START_RECORDING,
    Step.STOP_RECORDING,
    Step.CLOSE,
    Step.LIBRARY,
)
DUE = [
    ("before the lead", info(), T - 11 * MIN, set(), []),
    ("at the lead", info(), T - 10 * MIN, set(), [OPEN, N]),
    ("at the start", info(), T, {OPEN, N}, [R]),
    ("no recording option", info(options=SessionOptions()), T, {OPEN, N}, []),
    ("during the grace period", info(), T + 61 * MIN, {OPEN, N, R}, []),
    ("recording not started in time", info(), T + 61 * MIN, {OPEN, N}, []),
    ("after the grace period", info(), T + 65 * MIN, {OPEN, N, R}, [S, C, L]),
    ("never recorded: nothing to publish", info(), T + 65 * MIN, {OPEN, N}, [C]),
    ("closed but library pending", info(), T + 66 * MIN, {OPEN, N, R, S, C}, [L]),
    ("all done", info(), T + 66 * MIN, {OPEN, N, R, S, C, L}, []),
    ("missed entirely", info(), T + 65 * MIN, set(), []),
    ("cancelled, never opened", info(status=SessionStatus.CANCELLED), T, set(), []),
    ("cancelled while recording", info(status=SessionStatus.CANCELLED), T, {OPEN, N, R}, [S, C]),
]


@pytest.mark.parametrize(
    ("occurrence", "now", "done", "expected"), [c[1:] for c in DUE], ids=[c[0] for c in DUE]
)
def test_due_steps(
    occurrence: SessionInfo, now: datetime, done: set[Step], expected: list[Step]
) -> None:
    assert due_steps(occurrence, now, done, CONFIG) == expected


# --- WebhookNotifier against a real HTTP server on 127.0.0.1 ---


@dataclass
class Webhook:
    """A tiny HTTP server answering scripted statuses (then 200); ``stall`` holds every
    answer back until the test ends."""

    statuses: list[int]
    stall: bool = False
    bodies: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    released: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        self.bodies.append(json.loads(await reader.readexactly(length)))
        status = self.statuses.pop(0) if self.statuses else 200
        if self.stall:
            await self.released.wait()
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    started: list[tuple[asyncio.Server, Webhook]] = []

    async def start(hook: Webhook) -> Webhook:
        server = await asyncio.start_server(hook.handle, "127.0.0.1", 0)
        started.append((server, hook))
        hook.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
        return hook

    yield start
    for server, hook in started:
        hook.released.set()
        server.close()
        await server.wait_closed()


WEBHOOK_CASES = [
    ("accepted at once", [200], False, 1),
    ("5xx is retried until it works", [500, 503, 200], False, 3),
    ("gives up after the attempts", [500, 500, 500, 500], False, 3),
    ("4xx is not retried", [404], False, 1),
    ("a timeout is retried", [200, 200, 200], True, 3),
]


@pytest.mark.parametrize(
    ("statuses", "stall", "requests"),
    [c[1:] for c in WEBHOOK_CASES],
    ids=[c[0] for c in WEBHOOK_CASES],
)
async def test_webhook_notifier(
    serve: Any, statuses: list[int], stall: bool, requests: int
) -> None:
    hook = await serve(Webhook(list(statuses), stall))
    # A generous timeout unless the case is about timeouts: the machine may be busy.
    notifier = WebhookNotifier([hook.url], timeout=0.3 if stall else 10.0, attempts=3, backoff=0.01)
    event = {"type": "session.opening", "room": "s1-202603020900"}
    await notifier.notify({"I01-S002", "I01"}, event)
    await notifier.aclose()
    # The server reads on the same loop: let it catch up with a request that timed out.
    await wait_until(lambda: None if len(hook.bodies) >= requests else f"{hook.bodies}")
    assert len(hook.bodies) == requests
    assert hook.bodies[0] == {"sites": ["I01", "I01-S002"], "event": event}


async def test_webhook_notifier_survives_a_dead_url(serve: Any) -> None:
    live = await serve(Webhook([]))
    notifier = WebhookNotifier(["http://127.0.0.1:9/hook", live.url], attempts=2, backoff=0.01)
    await notifier.notify({"C"}, {"type": "x"})
    await notifier.aclose()
    assert len(live.bodies) == 1


# --- the hub's real Store as the lease (another engineer's module) ---


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, world: World) -> AsyncIterator[Lease]:
    if request.param == "memory":
        from cluster.store_memory import MemoryStore

        memory = MemoryStore(clock=lambda: world.clock.now().timestamp())
        yield memory
        await memory.close()
    else:
        from cluster.store_redis import RedisStore

        redis = RedisStore.from_url(request.getfixturevalue("redis_url"), prefix="test-scheduler:")
        yield redis
        await redis.close()


async def test_two_runners_on_the_hub_store_take_turns(world: World, store: Lease) -> None:
    session_id = await world.add()
    room = room_name(session_id, T)
    a_rooms, b_rooms = Rooms(), Rooms()
    a = Runner(world.engine, a_rooms, Notices(), store, "node-a", world.clock, CONFIG)
    b = Runner(world.engine, b_rooms, Notices(), store, "node-b", world.clock, CONFIG)
    await at(a, world.clock, T - 10 * MIN)
    await at(b, world.clock, T - 10 * MIN)
    assert a.leading and not b.leading
    assert a_rooms.calls == [("open", room)] and b_rooms.calls == []
    await a.stop()
    await at(b, world.clock, T)
    assert b.leading and b_rooms.calls == [("start_recording", room)]
    await b.stop()
