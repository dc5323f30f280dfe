"""The command API over real HTTP (uvicorn on 127.0.0.1; the event streams need a real
server): one-click join, attendance, escalations, the notice stream, dispatch, the
dashboard and statistics, each with its permission checks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from cluster.store import Bus, Store, open_store_bus
from hub.ids import ParticipantIdentity, RoomName
from hub.tokens import Role as HubRole
from hub.tokens import TokenError, TokenSigner
from scheduler.accounts import CSRF_COOKIE, Accounts, Auth
from scheduler.command_http import GRANT_GRACE, STATIC_DIR, CommandCenter, command_router
from scheduler.http import scheduler_router
from scheduler.notices import STREAMS_CHANNEL, BusNotifier
from scheduler.runner import Runner
from scheduler.schedule import (
    Audience,
    AudienceKind,
    Schedule,
    Session,
    SessionOptions,
    room_name,
)
from scheduler.sites import Sites
from tests.helpers import wait_until
from tests.hubserver import SECRET, free_port
from tests.test_accounts import FAST_HASHER, PASSWORD, USERS
from tests.test_attendance import (  # noqa: F401  (fixture import)
    command_engine_fixture,
    live_session,
    minute_now,
)
from tests.test_command import FakeClock
from tests.test_runner import Rooms
from tests.test_sites import engine_fixture  # noqa: F401  (fixture import)


@dataclass
class EventStream:
    """A Server-Sent Events response read in the background: comments and events."""

    response: httpx.Response
    comments: list[str] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    ended: bool = False

    async def read(self) -> None:
        event = "message"
        try:
            async for line in self.response.aiter_lines():
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                elif line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    self.events.append((event, json.loads(line[6:])))
                    event = "message"
        finally:
            self.ended = True

    async def next_event(
        self, check: Callable[[str, dict[str, Any]], bool], timeout: float = 10
    ) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def done() -> str | None:
            found[:] = [data for name, data in self.events if check(name, data)]
            return None if found else f"no such event among {self.events[-3:]}"

        await wait_until(done, timeout)
        return found[0]


@dataclass
class CommandApi:
    base: str
    center: CommandCenter
    store: Store
    bus: Bus
    clock: FakeClock
    rooms: Rooms
    """What the runner asked the (fake) hub: a session ended early closes its room."""
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    async def client(self, username: str) -> httpx.AsyncClient:
        """Logged in as ``username`` with the cookie, echoing the CSRF token as pages do."""
        client = httpx.AsyncClient(base_url=self.base, timeout=10)
        self.clients.append(client)
        response = await client.post(
            "/api/login", json={"username": username, "password": PASSWORD}
        )
        assert response.status_code == 200, response.text
        client.headers["X-CSRF-Token"] = client.cookies[CSRF_COOKIE]
        return client

    @contextlib.asynccontextmanager
    async def stream(self, client: httpx.AsyncClient, path: str) -> AsyncIterator[EventStream]:
        async with client.stream("GET", path) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            stream = EventStream(response)
            reader = asyncio.create_task(stream.read())
            try:
                yield stream
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                    await reader


@pytest.fixture(name="api")
async def api_fixture(command_engine: AsyncEngine) -> AsyncIterator[CommandApi]:
    engine = command_engine
    accounts = Accounts(engine, hasher=FAST_HASHER)
    tree = await Sites(engine).tree()
    for username, (role, site) in USERS.items():
        await accounts.create(username, PASSWORD, role, site, tree)
    auth = Auth(accounts)
    store, bus = open_store_bus(None)
    clock = FakeClock(minute_now())
    center = CommandCenter(
        engine=engine,
        store=store,
        bus=bus,
        clock=clock,
        keepalive=0.3,
        dashboard_refresh=0.5,
    )
    rooms = Rooms()
    runner = Runner(engine, rooms, center.notifier, store, "node-1", clock)
    app = FastAPI()
    app.include_router(scheduler_router(auth, Sites(engine), Schedule(engine)))
    app.include_router(
        command_router(
            auth=auth,
            center=center,
            issue_token=TokenSigner(SECRET).issue,
            end_occurrence=runner.end_now,
        )
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    await center.start()
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    api = CommandApi(f"http://127.0.0.1:{port}", center, store, bus, clock, rooms)
    try:
        yield api
    finally:
        await center.stop()  # ends open streams, so the server can stop
        for client in api.clients:
            await client.aclose()
        server.should_exit = True
        await asyncio.wait_for(task, 20)
        await bus.close()
        await store.close()


async def i01_session(api: CommandApi, engine: AsyncEngine) -> Session:
    return await live_session(engine, api.clock.now() - timedelta(minutes=1))


async def test_join_gives_a_token_for_the_live_room_to_its_audience_only(
    api: CommandApi, command_engine: AsyncEngine
) -> None:
    session = await i01_session(api, command_engine)
    room = room_name(session.id, session.start)
    sta1 = await api.client("sta1")
    response = await sta1.post(f"/api/sessions/{session.id}/join")
    assert response.status_code == 200, response.text
    body = response.json()
    grant = TokenSigner(SECRET).verify(body["token"])
    assert body["room"] == room and body["url"] == f"/station?room={room}"
    assert (grant.room, grant.identity, grant.role) == (room, "I01-S001", HubRole.STATION)
    assert grant.name == (await Sites(command_engine).tree()).get("I01-S001").name

    admin = await api.client("admin")
    grant = TokenSigner(SECRET).verify(
        (await admin.post(f"/api/sessions/{session.id}/join")).json()["token"]
    )
    assert (grant.identity, grant.role) == ("C", HubRole.CENTER)
    assert (
        await (await api.client("inst2")).post(f"/api/sessions/{session.id}/join")
    ).status_code == 403
    assert (await sta1.post("/api/sessions/999/join")).status_code == 404

    later = await live_session(command_engine, api.clock.now() + timedelta(hours=2))
    response = await sta1.post(f"/api/sessions/{later.id}/join")
    assert response.status_code == 409 and "not open" in response.json()["detail"]
    del sta1.headers["X-CSRF-Token"]
    assert (await sta1.post(f"/api/sessions/{session.id}/join")).status_code == 403  # CSRF


async def test_attendance_is_shown_within_the_callers_reach(
    api: CommandApi, command_engine: AsyncEngine
) -> None:
    session = await live_session(
        command_engine,
        api.clock.now() - timedelta(minutes=1),
        audience=Audience(AudienceKind.SUBTREES, ("I01", "I02")),
    )
    room = room_name(session.id, session.start)
    for site in ("I01-S001", "I02-S001"):
        await api.center.recorder.record_presence({"room": room, "identity": site, "here": True})
    admin = await (await api.client("admin")).get(f"/api/attendance/{room}")
    assert admin.status_code == 200
    assert set(admin.json()["joined"]) == {"I01-S001", "I02-S001"}
    inst1 = (await (await api.client("inst1")).get(f"/api/attendance/{room}")).json()
    assert set(inst1["joined"]) == {"I01-S001"}
    assert set(inst1["expected"]) == {"I01", "I01-S001", "I01-S002"}
    assert inst1["absent"] == ["I01", "I01-S002"]
    sta2 = (await (await api.client("sta2")).get(f"/api/attendance/{room}")).json()
    assert sta2["joined"] == {} and sta2["absent"] == ["I01-S002"]
    assert (await (await api.client("admin")).get("/api/attendance/lecture-1")).status_code == 404

    only_i01 = await live_session(command_engine, api.clock.now() - timedelta(minutes=2))
    other_room = room_name(only_i01.id, only_i01.start)
    response = await (await api.client("inst2")).get(f"/api/attendance/{other_room}")
    assert response.status_code == 403


async def test_escalations_reach_the_institutes_view_and_notice_stream(
    api: CommandApi, command_engine: AsyncEngine
) -> None:
    session = await i01_session(api, command_engine)
    room = RoomName(room_name(session.id, session.start))
    await api.store.set_presence(room, ParticipantIdentity("I01-S001"), {"sid": "PA_1"}, 30)
    inst1 = await api.client("inst1")
    async with api.stream(inst1, "/api/notices/stream") as notices:
        await wait_until(lambda: None if notices.comments else "stream not open yet")
        api.clock.advance(timedelta(minutes=5))
        escalation = await notices.next_event(lambda name, _: name == "escalation")
    assert escalation["site"] == "I01-S002" and escalation["room"] == room
    listed = (await inst1.get("/api/escalations")).json()
    assert [e["site"] for e in listed] == ["I01-S002"]
    assert (await (await api.client("inst2")).get("/api/escalations")).json() == []
    assert (await inst1.get("/api/escalations?days=0")).status_code == 422


async def test_the_notice_stream_carries_session_opening_and_keeps_alive(
    api: CommandApi,
) -> None:
    sta1 = await api.client("sta1")
    async with api.bus.subscribe(STREAMS_CHANNEL) as announcements:
        async with api.stream(sta1, "/api/notices/stream") as notices:
            opened = await asyncio.wait_for(anext(announcements), 5)
            assert (opened["site"], opened["open"]) == ("I01-S001", True)
            event = {"type": "session.opening", "room": "s1-202603020900", "title": "讲座"}
            await BusNotifier(api.bus).notify({"I01-S001", "I01-S002"}, event)
            got = await notices.next_event(lambda name, _: name == "session.opening")
            assert got == event
            await wait_until(
                lambda: None if "keep-alive" in notices.comments else "no keep-alive yet"
            )
        closed = await asyncio.wait_for(anext(announcements), 5)
        assert (closed["site"], closed["open"]) == ("I01-S001", False)  # the client left

    anonymous = httpx.AsyncClient(base_url=api.base)
    api.clients.append(anonymous)
    assert (await anonymous.get("/api/notices/stream")).status_code == 401
    token = (await sta1.post("/api/me/tokens", json={"label": "bot"})).json()["token"]
    anonymous.headers["Authorization"] = f"Bearer {token}"
    async with api.stream(anonymous, "/api/notices/stream") as by_token:
        await wait_until(lambda: None if by_token.comments else "stream not open yet")
        await BusNotifier(api.bus).notify({"I01-S001"}, event)
        assert await by_token.next_event(lambda name, _: name == "session.opening") == event


async def test_app_shutdown_ends_open_streams(api: CommandApi) -> None:
    sta1 = await api.client("sta1")
    async with api.stream(sta1, "/api/notices/stream") as notices:
        await wait_until(lambda: None if notices.comments else "stream not open yet")
        await api.center.stop()
        await wait_until(lambda: None if notices.ended else "the stream is still open")


async def test_a_directive_is_read_live_by_sites_and_followed_by_its_sender(
    api: CommandApi,
) -> None:
    inst1, sta1, admin = [await api.client(u) for u in ("inst1", "sta1", "admin")]
    body = {
        "title": "防汛值班",
        "text": "今晚安排专人值班。",
        "targets": {"kind": "subtrees", "codes": ["I01"]},
    }
    async with (
        api.stream(sta1, "/api/notices/stream") as notices,
        api.stream(admin, "/api/dashboard/stream") as dashboard,
    ):
        await dashboard.next_event(lambda name, _: name == "snapshot")
        await wait_until(lambda: None if notices.comments else "stream not open yet")
        response = await inst1.post("/api/directives", json=body)
        assert response.status_code == 201, response.text
        sent = response.json()
        assert sent["unread"] == ["I01-S001", "I01-S002"]  # not the sender's own site
        notice = await notices.next_event(lambda name, _: name == "directive")
        assert notice["id"] == sent["id"] and notice["title"] == "防汛值班"
        ack = await sta1.post(f"/api/directives/{sent['id']}/ack")
        assert ack.status_code == 200
        read = await dashboard.next_event(lambda name, _: name == "directive_read")
        assert (read["id"], read["site"]) == (sent["id"], "I01-S001")
    state = (await inst1.get(f"/api/directives/{sent['id']}")).json()
    assert list(state["read"]) == ["I01-S001"] and state["unread"] == ["I01-S002"]
    assert [d["id"] for d in (await sta1.get("/api/directives")).json()] == [sent["id"]]
    assert (
        await (await api.client("inst2")).get(f"/api/directives/{sent['id']}")
    ).status_code == 403
    beyond = {**body, "targets": {"kind": "sites", "codes": ["I02-S001"]}}
    assert (await inst1.post("/api/directives", json=beyond)).status_code == 403
    assert (await sta1.post("/api/directives", json=body)).status_code == 403
    assert (await admin.post(f"/api/directives/{sent['id']}/ack")).status_code == 404
    unknown = {**body, "targets": {"kind": "regions", "codes": ["火星"]}}
    assert (await admin.post("/api/directives", json=unknown)).status_code == 422


async def test_the_dashboard_shows_presence_links_speakers_and_notice_streams_live(
    api: CommandApi, command_engine: AsyncEngine
) -> None:
    admin, inst1, sta1 = (
        await api.client("admin"),
        await api.client("inst1"),
        await api.client("sta1"),
    )
    assert (await sta1.get("/api/dashboard")).status_code == 403
    snapshot = (await admin.get("/api/dashboard")).json()
    assert len(snapshot["sites"]) == 191 and snapshot["sites"][0]["code"] == "C"
    assert not any(site["online"] for site in snapshot["sites"])
    assert {s["code"] for s in (await inst1.get("/api/dashboard")).json()["sites"]} == {
        "I01",
        "I01-S001",
        "I01-S002",
    }
    room = RoomName("lecture-1")
    async with (
        api.stream(admin, "/api/dashboard/stream") as dashboard,
        api.stream(inst1, "/api/dashboard/stream") as institute,
    ):
        await dashboard.next_event(lambda name, _: name == "snapshot")
        await institute.next_event(lambda name, _: name == "snapshot")

        def update_of(code: str, **expect: Any) -> Callable[[str, dict[str, Any]], bool]:
            return lambda name, data: (
                name == "sites"
                and any(
                    s["code"] == code and all(s[k] == v for k, v in expect.items())
                    for s in data["sites"]
                )
            )

        link = {"rtt_ms": 42.0, "loss": 0.02, "bitrate_kbps": 250.0}
        await api.store.claim_room(room, "node-1")  # type: ignore[arg-type]
        await api.store.heartbeat("node-1", {}, 30)  # type: ignore[arg-type]
        await api.store.set_presence(room, ParticipantIdentity("I02-S001"), {"link": link}, 30)
        await api.bus.publish("presence", {"room": room, "identity": "viewer-7", "here": True})
        await api.bus.publish("presence", {"room": room, "identity": "I02-S001", "here": True})
        await dashboard.next_event(update_of("I02-S001", online=True, room=room))
        await dashboard.next_event(update_of("I02-S001", link=link))  # from the Store
        await api.bus.publish("speakers", {"room": room, "speakers": ["I02-S001"]})
        await dashboard.next_event(update_of("I02-S001", speaking=True))
        # A session scheduled after the dashboard started still shows its title.
        session = await live_session(command_engine, api.clock.now())
        session_room = RoomName(room_name(session.id, session.start))
        await api.store.claim_room(session_room, "node-1")  # type: ignore[arg-type]
        await api.store.set_presence(session_room, ParticipantIdentity("I01-S002"), {}, 30)
        await api.bus.publish(
            "presence", {"room": session_room, "identity": "I01-S002", "here": True}
        )
        await dashboard.next_event(update_of("I01-S002", session="理论宣讲：乡村振兴"))
        async with api.stream(sta1, "/api/notices/stream"):
            await institute.next_event(update_of("I01-S001", online=True, room=None))
        await institute.next_event(update_of("I01-S001", online=False))
        every_update = [s["code"] for _, data in dashboard.events for s in data["sites"]]
        assert "viewer-7" not in every_update  # not a site
        assert not any(
            s["code"] == "I02-S001"
            for _, data in institute.events[1:]
            for s in data.get("sites", [])
        )


async def test_statistics_for_the_center_and_institutes_as_json_and_csv(
    api: CommandApi, command_engine: AsyncEngine
) -> None:
    await i01_session(api, command_engine)
    admin = await api.client("admin")
    data = (await admin.get("/api/statistics")).json()
    assert {r["theme"]: r["count"] for r in data["per_theme"]}["theory"] == 1
    assert data["participants"]["household_viewers"] == 0
    csv_response = await admin.get("/api/statistics.csv")
    assert csv_response.content.startswith(b"\xef\xbb\xbfsection,key,label,value")
    assert "attachment" in csv_response.headers["content-disposition"]
    assert (await (await api.client("inst1")).get("/api/statistics")).status_code == 200
    assert (await (await api.client("sta1")).get("/api/statistics.csv")).status_code == 403
    for path in ("/api/statistics", "/api/statistics.csv"):
        assert (await admin.get(path, params={"days": "3660"})).status_code == 200


async def test_numbers_out_of_range_are_refused_with_a_reason(api: CommandApi) -> None:
    admin = await api.client("admin")
    for path in ("/api/statistics", "/api/statistics.csv"):
        for days in ("999999999", "-1", "0", "3661"):
            refused = await admin.get(path, params={"days": days})
            assert refused.status_code == 422, (path, days, refused.text)
            assert refused.json()["detail"] == "days must be between 1 and 3660"
    big = str(2**63)
    for method, path, name in (
        ("POST", f"/api/sessions/{big}/join", "session_id"),
        ("GET", f"/api/directives/{big}", "directive_id"),
        ("POST", f"/api/directives/{big}/ack", "directive_id"),
    ):
        refused = await admin.request(method, path)
        assert refused.status_code == 422 and name in refused.text, (path, refused.text)


async def test_the_pages_are_served(api: CommandApi) -> None:
    async with httpx.AsyncClient(base_url=api.base) as client:
        for page in ("/dashboard", "/sessions"):
            response = await client.get(page)
            assert response.status_code == 200 and "<html" in response.text


def test_every_page_string_is_in_both_languages() -> None:

    source = (STATIC_DIR / "js" / "command-common.js").read_text(encoding="utf-8")
    key = re.compile(r'^\s*"([a-zA-Z0-9_.]+)":', re.M)
    zh = set(key.findall(source.split("const zh = {", 1)[1].split("\n};", 1)[0]))
    en = set(key.findall(source.split("const en = {", 1)[1].split("\n};", 1)[0]))
    assert zh == en
    for page in ("dashboard.html", "sessions.html", "admin.html", "attendance.html"):
        used = set(
            re.findall(r'data-c(?:-label)?="([^"]+)"', (STATIC_DIR / page).read_text("utf-8"))
        )
        assert used and used <= zh, f"{page} uses unknown keys: {used - zh}"


async def test_the_runner_announces_a_session_on_the_audiences_notice_streams(
    api: CommandApi, command_engine: AsyncEngine
) -> None:
    session = await live_session(command_engine, api.clock.now() + timedelta(minutes=10))
    runner = Runner(command_engine, Rooms(), api.center.notifier, api.store, "node-1", api.clock)
    sta1 = await api.client("sta1")
    async with api.stream(sta1, "/api/notices/stream") as notices:
        await wait_until(lambda: None if notices.comments else "stream not open yet")
        await runner.tick()
        opening = await notices.next_event(lambda name, _: name == "session.opening")
    assert opening["room"] == room_name(session.id, session.start)
    assert opening["title"] == session.title and opening["session_id"] == session.id


async def test_a_join_grant_expires_at_the_sessions_end_plus_a_grace(
    api: CommandApi, command_engine: AsyncEngine
) -> None:
    session = await i01_session(api, command_engine)
    sta1 = await api.client("sta1")
    body = (await sta1.post(f"/api/sessions/{session.id}/join")).json()
    grant = TokenSigner(SECRET).verify(body["token"])
    assert grant.expires_at == (session.end + GRANT_GRACE).timestamp()
    # not 12 or 24 hours later: past the grace, the same token admits nobody
    with pytest.raises(TokenError, match="expired"):
        TokenSigner(SECRET).verify(body["token"], now=grant.expires_at + 1)
    assert "token" not in body["url"] and body["url"] == f"/station?room={body['room']}"


async def test_the_console_is_for_the_center_and_the_hosting_institute(
    api: CommandApi, command_engine: AsyncEngine
) -> None:
    start = api.clock.now() - timedelta(minutes=1)
    center_hosted = await i01_session(api, command_engine)
    i01_hosted = await live_session(command_engine, start, host="I01")
    admin, inst1, inst2, sta1 = [
        await api.client(name) for name in ("admin", "inst1", "inst2", "sta1")
    ]
    answer = await admin.post(f"/api/sessions/{center_hosted.id}/console")
    assert answer.status_code == 200, answer.text
    grant = TokenSigner(SECRET).verify(answer.json()["token"])
    assert grant.can_moderate and (grant.identity, grant.role) == ("C", HubRole.CENTER)
    assert grant.expires_at == (center_hosted.end + GRANT_GRACE).timestamp()
    assert answer.json()["url"] == f"/console?room={grant.room}"
    # an institute moderates the sessions it hosts, as itself
    answer = await inst1.post(f"/api/sessions/{i01_hosted.id}/console")
    assert answer.status_code == 200, answer.text
    grant = TokenSigner(SECRET).verify(answer.json()["token"])
    assert grant.can_moderate and (grant.identity, grant.role) == ("I01", HubRole.INSTITUTE)
    refusals = [
        (inst1, center_hosted.id, "the host C is outside your institute I01"),
        (inst2, i01_hosted.id, "outside your institute I02"),
        (sta1, i01_hosted.id, "station operators cannot moderate"),
    ]
    for client, session_id, reason in refusals:
        refused = await client.post(f"/api/sessions/{session_id}/console")
        assert refused.status_code == 403 and reason in refused.json()["detail"], refused.text
    later = await live_session(command_engine, api.clock.now() + timedelta(hours=3))
    not_open = await admin.post(f"/api/sessions/{later.id}/console")
    assert not_open.status_code == 409


async def test_ending_a_session_early_closes_it_for_good(
    api: CommandApi, command_engine: AsyncEngine
) -> None:
    session = await live_session(
        command_engine,
        api.clock.now() - timedelta(minutes=5),
        options=SessionOptions(record=True, publish=True),
    )
    room = room_name(session.id, session.start)
    admin, sta1 = await api.client("admin"), await api.client("sta1")
    # the runner opened it and started recording
    runner = Runner(command_engine, api.rooms, api.center.notifier, api.store, "n", api.clock)
    await runner.tick()
    assert ("start_recording", room) in api.rooms.calls
    assert (await sta1.post(f"/api/sessions/{session.id}/end")).status_code == 403
    ended = await admin.post(f"/api/sessions/{session.id}/end")
    assert ended.status_code == 200 and ended.json() == {"room": room, "ended": True}
    assert api.rooms.calls[-3:] == [("stop_recording", room), ("close", room), ("library", room)]
    for action in ("join", "console", "end"):
        gone = await admin.post(f"/api/sessions/{session.id}/{action}")
        assert gone.status_code == 409 and "has ended" in gone.json()["detail"]
    # the runner neither reopens nor records it again, now or later
    calls = len(api.rooms.calls)
    await runner.tick()
    api.clock.advance(timedelta(hours=2))
    await runner.tick()
    assert len(api.rooms.calls) == calls
    occurrences = (await admin.get(f"/api/sessions/{session.id}/occurrences")).json()
    assert [o["ended"] for o in occurrences if o["room"] == room] == [True]


async def test_households_see_only_public_sessions_and_only_what_they_need(
    api: CommandApi, command_engine: AsyncEngine
) -> None:
    now = api.clock.now()
    live = await live_session(
        command_engine,
        now - timedelta(minutes=5),
        title="正在直播的宣讲",
        options=SessionOptions(live_households=True, restream_urls=("rtmp://x/app/key",)),
    )
    await live_session(command_engine, now + timedelta(days=1), title="明天的讲座",
                       options=SessionOptions(live_households=True))  # fmt: skip
    await live_session(command_engine, now - timedelta(minutes=5), title="内部会议")
    await live_session(command_engine, now + timedelta(days=30), title="下个月",
                       options=SessionOptions(live_households=True))  # fmt: skip
    async with httpx.AsyncClient(base_url=api.base) as anonymous:
        answer = (await anonymous.get("/api/public/sessions")).json()
    assert [s["title"] for s in answer["live"]] == ["正在直播的宣讲"]
    assert [s["title"] for s in answer["upcoming"]] == ["明天的讲座"]
    entry = answer["live"][0]
    assert set(entry) == {"room", "title", "theme", "theme_label", "host_name", "start", "end"}
    assert entry["room"] == room_name(live.id, live.start) and entry["theme_label"] == "理论宣讲"
    assert "key" not in json.dumps(answer) and "I01" not in json.dumps(answer)


async def test_attendance_report_as_csv_for_the_host_and_the_center(
    api: CommandApi, command_engine: AsyncEngine
) -> None:
    session = await i01_session(api, command_engine)
    room = room_name(session.id, session.start)
    at = api.clock.now().timestamp()
    await api.center.recorder.record_presence(
        {"room": room, "identity": "I01-S001", "here": True, "node": None, "at": at}
    )
    admin, inst2 = await api.client("admin"), await api.client("inst2")
    csv_answer = await admin.get(f"/api/attendance/{room}.csv")
    assert csv_answer.status_code == 200
    assert csv_answer.headers["content-type"].startswith("text/csv")
    rows = csv_answer.content.decode("utf-8-sig").splitlines()
    assert rows[0] == "site,name,expected,first_join,minutes,here"
    by_site = {row.split(",")[0]: row.split(",") for row in rows[1:]}
    assert by_site["I01-S001"][2:3] == ["yes"] and by_site["I01-S001"][5] == "yes"
    assert by_site["I01-S002"][3:] == ["", "0", "no"]  # expected, absent
    report = (await admin.get(f"/api/attendance/{room}")).json()
    assert report["names"]["I01-S001"] and "I01-S002" in report["absent"]
    assert (await inst2.get(f"/api/attendance/{room}.csv")).status_code == 403


async def test_ad_hoc_rooms_are_the_centers(api: CommandApi) -> None:
    admin, inst1 = await api.client("admin"), await api.client("inst1")
    opened = await admin.post("/api/rooms/county-meeting/console")
    assert opened.status_code == 200
    grant = TokenSigner(SECRET).verify(opened.json()["token"])
    assert (grant.room, grant.identity, grant.can_moderate) == ("county-meeting", "C", True)
    assert opened.json()["url"] == "/console?room=county-meeting"
    invite = await admin.post("/api/rooms/county-meeting/invite", json={"site": "I02-S001"})
    assert invite.status_code == 200
    url = invite.json()["url"]
    assert url.startswith("/station#token=")  # in the fragment: never sent to a server
    invited = TokenSigner(SECRET).verify(url.split("#token=", 1)[1])
    assert (invited.identity, invited.role, invited.can_moderate) == (
        "I02-S001",
        HubRole.STATION,
        False,
    )
    refusals = [
        (inst1, "/api/rooms/county-meeting/console", None, 403),
        (admin, "/api/rooms/..%2Fetc/console", None, 404),
        (admin, "/api/rooms/bad%20name/console", None, 422),
        (admin, "/api/rooms/s1-202612010900/console", None, 403),  # a session's room
        (admin, "/api/rooms/county-meeting/invite", {"site": "NOPE"}, 404),
    ]
    for client, path, body, status in refusals:
        answer = await client.post(path, json=body) if body else await client.post(path)
        assert answer.status_code == status, (path, answer.text)
