"""Dispatch (directives, read receipts) and escalation of missing stations, on SQLite
and PostgreSQL, with the in-memory Store/Bus and a real webhook receiver."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import uvicorn
from sqlalchemy.ext.asyncio import AsyncEngine

from cluster.store import Bus, Store, open_store_bus
from hub.ids import ParticipantIdentity, RoomName
from scheduler.accounts import Account
from scheduler.command import (
    Dispatch,
    EscalationConfig,
    Escalator,
    TargetKind,
    check_dispatch,
    list_escalations,
    may_follow,
    resolve_targets,
)
from scheduler.notices import BusNotifier, FanoutNotifier, site_channel
from scheduler.permissions import Role
from scheduler.runner import WebhookNotifier
from scheduler.schedule import Audience, AudienceKind, room_name
from scheduler.sites import Sites
from tests.helpers import wait_until
from tests.hubserver import free_port
from tests.test_attendance import (  # noqa: F401  (fixture import)
    command_engine_fixture,
    live_session,
    minute_now,
)
from tests.test_sites import engine_fixture  # noqa: F401  (fixture import)

CENTER = Account(1, "admin", Role.CENTER_ADMIN, None)
INST1 = Account(2, "inst1", Role.INSTITUTE_OPERATOR, "I01")
STA1 = Account(4, "sta1", Role.STATION_OPERATOR, "I01-S001")
STA3 = Account(5, "sta3", Role.STATION_OPERATOR, "I02-S001")


@pytest.fixture(name="store_bus")
async def store_bus_fixture() -> AsyncIterator[tuple[Store, Bus]]:
    store, bus = open_store_bus(None)
    yield store, bus
    await bus.close()
    await store.close()


class FakeClock:
    """A clock the test moves; ``sleep`` waits until the test advances it."""

    def __init__(self, now: datetime) -> None:
        self.current = now
        self.moved = asyncio.Event()

    def now(self) -> datetime:
        return self.current

    def advance(self, delta: timedelta) -> None:
        self.current += delta
        self.moved.set()

    async def sleep(self, seconds: float) -> None:
        self.moved.clear()
        await self.moved.wait()


class WebhookReceiver:
    """A real HTTP server on 127.0.0.1 that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(json.loads(body))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture(name="webhook")
async def webhook_fixture() -> AsyncIterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    config = uvicorn.Config(
        receiver.app, host="127.0.0.1", port=receiver.port, log_level="error", interface="asgi3"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    yield receiver
    server.should_exit = True
    await task


async def test_targets_resolve_from_subtrees_sites_and_regions(
    command_engine: AsyncEngine,
) -> None:
    tree = await Sites(command_engine).tree()
    assert resolve_targets(tree, TargetKind.SUBTREES, ["I01"]) == set(tree.subtree("I01"))
    assert resolve_targets(tree, TargetKind.SITES, ["I01-S001"]) == {"I01-S001"}
    region = tree.get("I02").region
    in_region = resolve_targets(tree, TargetKind.REGIONS, [region])
    assert "I02" in in_region and all(tree.get(c).region == region for c in in_region)
    assert len(resolve_targets(tree, TargetKind.EVERYONE, [])) == len(tree)
    with pytest.raises(ValueError, match="unknown"):
        resolve_targets(tree, TargetKind.SITES, ["nope"])
    with pytest.raises(ValueError, match="unknown"):
        resolve_targets(tree, TargetKind.REGIONS, ["火星"])


async def test_only_the_center_dispatches_beyond_an_institute(
    command_engine: AsyncEngine,
) -> None:
    tree = await Sites(command_engine).tree()
    mine = set(tree.subtree("I01")) - {"I01"}
    assert check_dispatch(CENTER, tree, set(tree.subtree("C"))) is None
    assert check_dispatch(INST1, tree, mine) is None
    assert "beyond your institute: I02" in str(check_dispatch(INST1, tree, mine | {"I02"}))
    assert "cannot dispatch" in str(check_dispatch(STA1, tree, {"I01-S002"}))


async def test_a_directive_reaches_each_site_and_records_who_read_it(
    command_engine: AsyncEngine, store_bus: tuple[Store, Bus]
) -> None:
    _, bus = store_bus
    dispatch = Dispatch(command_engine, bus)
    tree = await Sites(command_engine).tree()
    async with bus.subscribe(site_channel("I01-S001")) as inbox:
        directive = await dispatch.send(
            INST1, "防汛值班", "今晚各站安排专人值班。", {"I01-S001", "I01-S002"}
        )
        notice = await asyncio.wait_for(anext(inbox), 5)
    assert notice == {**directive.notice(), "type": "directive"}
    assert notice["title"] == "防汛值班" and notice["from"] == "I01"
    assert directive.to_json()["unread"] == ["I01-S001", "I01-S002"]

    first = await dispatch.acknowledge(directive.id, "I01-S001")
    assert await dispatch.acknowledge(directive.id, "I01-S001") == first  # first read counts
    with pytest.raises(KeyError):
        await dispatch.acknowledge(directive.id, "I02-S001")
    state = (await dispatch.get(directive.id)).to_json()
    assert list(state["read"]) == ["I01-S001"] and state["unread"] == ["I01-S002"]
    assert may_follow(CENTER, tree, directive) and may_follow(INST1, tree, directive)
    assert may_follow(STA1, tree, directive) and not may_follow(STA3, tree, directive)
    assert (await dispatch.get(directive.id)).to_json({"I01-S002"})["read"] == {}


async def test_a_station_missing_five_minutes_after_the_start_is_escalated_once(
    command_engine: AsyncEngine, store_bus: tuple[Store, Bus], webhook: WebhookReceiver
) -> None:
    store, bus = store_bus
    start = minute_now()
    session = await live_session(
        command_engine, start, audience=Audience(AudienceKind.SUBTREES, ("I01",))
    )
    room = RoomName(room_name(session.id, session.start))
    await store.set_presence(room, ParticipantIdentity("I01-S001"), {"sid": "PA_1"}, 30)
    clock = FakeClock(start + timedelta(minutes=4, seconds=59))
    hooks = WebhookNotifier([webhook.url])
    escalator = Escalator(
        command_engine,
        store,
        FanoutNotifier(BusNotifier(bus), hooks),
        clock,
        EscalationConfig(tick=1.0),
    )
    try:
        async with bus.subscribe(site_channel("I01")) as institute_inbox:
            assert await escalator.check() == []  # not yet five minutes
            clock.advance(timedelta(seconds=1))
            raised = await escalator.check()
            assert [e["site"] for e in raised] == ["I01-S002"]  # S001 is here
            assert raised[0]["institute"] == "I01" and raised[0]["room"] == room
            notice = await asyncio.wait_for(anext(institute_inbox), 5)
            assert notice["type"] == "escalation" and notice["site"] == "I01-S002"
        clock.advance(timedelta(minutes=1))
        assert await escalator.check() == []  # once per (occurrence, site)
        await wait_until(lambda: None if webhook.bodies else "no webhook call yet")
        assert webhook.bodies[0]["sites"] == ["C", "I01"]
        assert webhook.bodies[0]["event"]["site"] == "I01-S002"

        tree = await Sites(command_engine).tree()
        since = start - timedelta(days=1)
        assert [e["site"] for e in await list_escalations(command_engine, tree, None, since)] == [
            "I01-S002"
        ]
        assert await list_escalations(command_engine, tree, set(tree.subtree("I02")), since) == []
    finally:
        await hooks.aclose()


async def test_the_periodic_check_runs_on_the_injected_clock(
    command_engine: AsyncEngine, store_bus: tuple[Store, Bus]
) -> None:
    store, bus = store_bus
    start = minute_now()
    await live_session(command_engine, start)
    clock = FakeClock(start)
    escalator = Escalator(command_engine, store, BusNotifier(bus), clock)
    async with bus.subscribe(site_channel("C")) as center_inbox:
        escalator.start()
        try:
            await asyncio.sleep(0.2)  # a first check at the start: nothing due
            clock.advance(timedelta(minutes=6))
            notices = [await asyncio.wait_for(anext(center_inbox), 5) for _ in range(2)]
        finally:
            await escalator.stop()
    assert sorted(n["site"] for n in notices) == ["I01-S001", "I01-S002"]
    assert all(n["raised_at"].startswith(str(clock.now().astimezone(UTC).year)) for n in notices)


async def test_a_directive_left_unread_past_its_time_is_escalated_once(
    command_engine: AsyncEngine, store_bus: tuple[Store, Bus]
) -> None:
    store, bus = store_bus
    dispatch = Dispatch(command_engine, bus)
    directive = await dispatch.send(
        CENTER,
        "防汛值班",
        "今晚各站安排专人值班。",
        {"I01-S001", "I01-S002", "I02-S001"},
        read_within=timedelta(minutes=30),
    )
    silent = await dispatch.send(CENTER, "周报", "", {"I01-S002"})  # no deadline: never
    await dispatch.acknowledge(directive.id, "I01-S001")
    clock = FakeClock(directive.created_at + timedelta(minutes=29))
    escalator = Escalator(command_engine, store, BusNotifier(bus), clock)
    async with bus.subscribe(site_channel("I01")) as institute_inbox:
        assert await escalator.check() == []  # not yet due
        clock.advance(timedelta(minutes=2))
        raised = await escalator.check()
        assert sorted(e["site"] for e in raised) == ["I01-S002", "I02-S001"]
        assert {e["reason"] for e in raised} == {"unread"}
        assert {e["directive_id"] for e in raised} == {directive.id}
        notice = await asyncio.wait_for(anext(institute_inbox), 5)
        assert notice["type"] == "escalation" and notice["site"] == "I01-S002"
    assert await escalator.check() == []  # once per (directive, site)
    await dispatch.acknowledge(directive.id, "I02-S001")  # reading late keeps the record
    tree = await Sites(command_engine).tree()
    since = clock.now() - timedelta(days=1)
    listed = await list_escalations(command_engine, tree, None, since)
    assert sorted((e["reason"], e["site"]) for e in listed) == [
        ("unread", "I01-S002"),
        ("unread", "I02-S001"),
    ]
    assert silent.id not in {e.get("directive_id") for e in listed}
    mine = await list_escalations(command_engine, tree, set(tree.subtree("I02")), since)
    assert [e["site"] for e in mine] == ["I02-S001"]
