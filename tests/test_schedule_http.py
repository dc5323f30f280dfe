"""Sessions (store and HTTP) and the sites API, through ``scheduler_router`` on a test app."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from scheduler.recurrence import LOCAL_ZONE, Recurrence, Repeat
from scheduler.schedule import (
    Audience,
    AudienceKind,
    Schedule,
    SessionOptions,
    SessionStatus,
    Theme,
    audience_sites,
)
from scheduler.seed import load_seed
from scheduler.sites import CSV_HEADER, Sites
from tests.test_accounts import Api, api_fixture  # noqa: F401  (fixture import)
from tests.test_sites import engine_fixture  # noqa: F401  (fixture import)

T = datetime(2026, 3, 2, 9, 0, tzinfo=LOCAL_ZONE)  # Monday 09:00 local
HOUR = timedelta(hours=1)
I01 = Audience(AudienceKind.SUBTREES, ("I01",))


async def create(schedule: Schedule, engine: AsyncEngine, **changes: Any) -> Any:
    fields: dict[str, Any] = {
        "title": "广场舞教学",
        "theme": Theme.FITNESS,
        "host": "I01",
        "audience": I01,
        "start": T,
        "end": T + HOUR,
    }
    fields.update(changes)
    return await schedule.create(await Sites(engine).tree(), **fields)


async def test_sessions_round_trip_in_utc(engine: AsyncEngine) -> None:
    await load_seed(engine)
    schedule = Schedule(engine)
    rule = Recurrence(Repeat.WEEKLY, frozenset({0, 2, 4}), until=date(2026, 3, 31))
    options = SessionOptions(True, True, True, ("rtmp://live.example/app/key",))
    created = await create(schedule, engine, recurrence=rule, options=options, created_by=7)
    loaded = await schedule.get(created.id)
    assert loaded == created
    assert loaded.start == datetime(2026, 3, 2, 1, 0, tzinfo=UTC) and loaded.start.tzinfo is UTC
    assert (loaded.recurrence, loaded.options, loaded.created_by) == (rule, options, 7)
    assert (await schedule.cancel(created.id)).status is SessionStatus.CANCELLED
    with pytest.raises(KeyError):
        await schedule.get(created.id + 1)


INVALID_SESSIONS = [
    ("empty title", {"title": "  "}, "title is required"),
    ("unknown host", {"host": "I99"}, "unknown host site I99"),
    (
        "unknown audience site",
        {"audience": Audience(AudienceKind.SITES, ("X",))},
        "unknown audience",
    ),
    (
        "everyone with codes",
        {"audience": Audience(AudienceKind.EVERYONE, ("I01",))},
        "takes no codes",
    ),
    ("subtrees without codes", {"audience": Audience(AudienceKind.SUBTREES)}, "at least one"),
    ("publish without record", {"options": SessionOptions(publish=True)}, "needs the record"),
    (
        "restream to http",
        {"options": SessionOptions(restream_urls=("http://x",))},
        "rtmp://",
    ),
    ("zero length", {"end": T}, "end must be after start"),
]


@pytest.mark.parametrize(
    ("changes", "message"),
    [c[1:] for c in INVALID_SESSIONS],
    ids=[c[0] for c in INVALID_SESSIONS],
)
async def test_invalid_sessions_are_refused(
    engine: AsyncEngine, changes: dict[str, Any], message: str
) -> None:
    await load_seed(engine)
    with pytest.raises(ValueError, match=message):
        await create(Schedule(engine), engine, **changes)
    assert await Schedule(engine).all() == []


async def test_audience_sites_resolve_subtrees(engine: AsyncEngine) -> None:
    await load_seed(engine)
    tree = await Sites(engine).tree()
    schedule = Schedule(engine)
    everyone = await create(schedule, engine, host="C", audience=Audience(AudienceKind.EVERYONE))
    mixed = await create(
        schedule, engine, host="C", audience=Audience(AudienceKind.SUBTREES, ("I01", "I02-S001"))
    )
    listed = await create(
        schedule, engine, host="C", audience=Audience(AudienceKind.SITES, ("I02", "I03-S001"))
    )
    assert len(audience_sites(everyone, tree)) == 191
    assert audience_sites(mixed, tree) == {"I01", "I01-S001", "I01-S002", "I02-S001"}
    assert audience_sites(listed, tree) == {"I02", "I03-S001"}


async def test_sessions_for_site_today_and_upcoming(engine: AsyncEngine) -> None:
    await load_seed(engine)
    schedule = Schedule(engine)
    county = await create(schedule, engine, host="C", audience=Audience(AudienceKind.EVERYONE))
    daily = await create(
        schedule, engine, start=T + 10 * HOUR, end=T + 11 * HOUR,
        recurrence=Recurrence(Repeat.DAILY, count=3),
    )  # fmt: skip
    other = await create(
        schedule, engine, host="I02", audience=Audience(AudienceKind.SUBTREES, ("I02",))
    )
    cancelled = await create(schedule, engine)
    await schedule.cancel(cancelled.id)
    next_week = await create(
        schedule, engine, start=T + timedelta(days=8), end=T + timedelta(days=8) + HOUR
    )
    tree = await Sites(engine).tree()

    def listing(found: list[Any]) -> list[tuple[int, str]]:
        return [
            (i.session_id, i.start.astimezone(LOCAL_ZONE).strftime("%m-%d %H:%M")) for i in found
        ]

    station = await schedule.sessions_for_site(tree, "I01-S002", T.date())
    assert listing(station) == [
        (county.id, "03-02 09:00"),
        (daily.id, "03-02 19:00"),
        (daily.id, "03-03 19:00"),
        (daily.id, "03-04 19:00"),
    ]
    assert listing(
        await schedule.sessions_for_site(tree, "I01-S002", T.date() + timedelta(days=1), 1)
    ) == [(daily.id, "03-03 19:00")]
    host = await schedule.sessions_for_site(tree, "I02", T.date())
    assert {i.session_id for i in host} == {county.id, other.id}
    assert next_week.id in {
        i.session_id for i in await schedule.sessions_for_site(tree, "I01", T.date(), 9)
    }


# --- HTTP ---


def session_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "title": "科普讲座：防范电信诈骗",
        "theme": "science",
        "host": "I01",
        "audience": {"kind": "subtrees", "codes": ["I01"]},
        "start": "2026-03-02T09:00:00",  # naive: Asia/Shanghai
        "end": "2026-03-02T10:00:00",
        "recurrence": {"repeat": "weekly", "weekdays": [0, 2, 4], "count": 6},
        "options": {"record": True, "publish": True},
    }
    body.update(changes)
    return body


async def test_scheduling_over_http_within_permissions(api: Api) -> None:
    inst1 = await api.client("inst1")
    created = await inst1.post("/api/sessions", json=session_body())
    assert created.status_code == 201, created.text
    session = created.json()
    assert session["start"] == "2026-03-02T09:00:00+08:00"
    assert session["theme_label"] == "科技科普" and session["status"] == "scheduled"
    assert session["recurrence"] == {
        "repeat": "weekly",
        "weekdays": [0, 2, 4],
        "until": None,
        "count": 6,
    }
    utc = await inst1.post(
        "/api/sessions", json=session_body(start="2026-03-02T01:00:00Z", end="2026-03-02T02:00:00Z")
    )
    assert utc.json()["start"] == "2026-03-02T09:00:00+08:00"
    assert api.schedule_changes == 2  # each new session wakes the runner

    refusals = [
        (
            "inst1",
            session_body(audience={"kind": "everyone"}),
            403,
            "only the center schedules for everyone",
        ),
        (
            "inst1",
            session_body(audience={"kind": "subtrees", "codes": ["I02"]}),
            403,
            "beyond your institute: I02",
        ),
        ("inst1", session_body(host="I02"), 403, "the host I02 is outside your institute I01"),
        ("sta1", session_body(host="I01-S001"), 403, "station operators cannot schedule"),
        ("inst1", session_body(end="2026-03-02T08:00:00"), 422, "end must be after start"),
        (
            "inst1",
            session_body(recurrence={"repeat": "weekly", "weekdays": [1]}),
            422,
            "not on one of the weekdays",
        ),
        ("inst1", session_body(options={"publish": True}), 422, "needs the record option"),
        ("inst1", session_body(theme="sports"), 422, "theory"),
    ]
    for username, body, status, reason in refusals:
        client = await api.client(username)
        response = await client.post("/api/sessions", json=body)
        assert (response.status_code, reason in response.text) == (status, True), response.text
        await client.aclose()
    admin = await api.client("admin")
    county = await admin.post(
        "/api/sessions", json=session_body(host="C", audience={"kind": "everyone"})
    )
    assert county.status_code == 201
    assert api.schedule_changes == 3  # refusals changed nothing
    for client in (inst1, admin):
        await client.aclose()


async def test_who_sees_and_cancels_which_session(api: Api) -> None:
    admin = await api.client("admin")
    ids = {}
    for name, host, audience in [
        ("county", "C", {"kind": "everyone"}),
        ("i01", "I01", {"kind": "subtrees", "codes": ["I01"]}),
        ("i01-list", "I01", {"kind": "sites", "codes": ["I01-S002"]}),
        ("i02", "I02", {"kind": "subtrees", "codes": ["I02"]}),
    ]:
        response = await admin.post(
            "/api/sessions", json=session_body(title=name, host=host, audience=audience)
        )
        ids[name] = response.json()["id"]
    visible = {}
    for username in ("admin", "inst1", "inst2", "sta1", "sta2"):
        client = await api.client(username)
        visible[username] = {s["title"] for s in (await client.get("/api/sessions")).json()}
        await client.aclose()
    assert visible == {
        "admin": {"county", "i01", "i01-list", "i02"},
        "inst1": {"county", "i01", "i01-list"},
        "inst2": {"county", "i02"},
        "sta1": {"county", "i01"},
        "sta2": {"county", "i01", "i01-list"},
    }
    sta1 = await api.client("sta1")
    hidden = await sta1.get(f"/api/sessions/{ids['i01-list']}")
    assert hidden.status_code == 403 and "not in this session's audience" in hidden.json()["detail"]
    assert (await sta1.get("/api/sessions/99999")).status_code == 404
    assert (await sta1.post(f"/api/sessions/{ids['i01']}/cancel")).status_code == 403
    inst1 = await api.client("inst1")
    refused = await inst1.post(f"/api/sessions/{ids['county']}/cancel")
    assert refused.status_code == 403 and refused.json()["detail"].startswith("cannot cancel")
    assert api.schedule_changes == 4  # the four sessions created; no refusal counts
    cancelled = await inst1.post(f"/api/sessions/{ids['i01']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert api.schedule_changes == 5
    for client in (admin, sta1, inst1):
        await client.aclose()


async def test_restream_urls_in_full_only_for_those_who_may_edit_the_session(api: Api) -> None:
    """A stream key is a secret: a station in the audience sees where the session is
    restreamed, not with which key."""
    url = "rtmps://u:pa55word@live.example:443/app/secret-key?sig=sig-9f3e"
    shown = "rtmps://u:***@live.example:443/app/***?sig=***"
    admin = await api.client("admin")
    created = await admin.post(
        "/api/sessions", json=session_body(options={"record": True, "restream_urls": [url]})
    )
    assert created.status_code == 201 and created.json()["options"]["restream_urls"] == [url]
    session_id = created.json()["id"]
    seen = {}
    for username in ("admin", "inst1", "sta1"):
        client = await api.client(username)
        one = (await client.get(f"/api/sessions/{session_id}")).json()
        listed = [s for s in (await client.get("/api/sessions")).json() if s["id"] == session_id]
        assert listed == [one]
        seen[username] = one["options"]["restream_urls"]
        await client.aclose()
    assert seen == {"admin": [url], "inst1": [url], "sta1": [shown]}
    await admin.aclose()


async def test_site_sessions_today_and_upcoming(api: Api) -> None:
    admin = await api.client("admin")
    await admin.post("/api/sessions", json=session_body(host="C", audience={"kind": "everyone"}))
    soon = datetime.now(LOCAL_ZONE).replace(second=0, microsecond=0) + HOUR
    today = session_body(
        title="today", start=soon.isoformat(), end=(soon + HOUR).isoformat(), recurrence={}
    )
    await admin.post("/api/sessions", json=today)
    sta1 = await api.client("sta1")
    listed = await sta1.get("/api/sites/I01-S001/sessions", params={"day": "2026-03-02", "days": 3})
    assert [(s["start"], s["room"].split("-")[1]) for s in listed.json()] == [
        ("2026-03-02T09:00:00+08:00", "202603020900"),
        ("2026-03-04T09:00:00+08:00", "202603040900"),
    ]
    default_day = await sta1.get("/api/sites/I01-S001/sessions")
    assert "today" in {s["title"] for s in default_day.json()}
    assert (await sta1.get("/api/sites/I02-S001/sessions")).status_code == 403
    assert (await sta1.get("/api/sites/NOPE/sessions")).status_code == 404
    assert (await sta1.get("/api/sites/I01-S001/sessions", params={"days": 0})).status_code == 422
    for client in (admin, sta1):
        await client.aclose()


async def test_numbers_and_dates_out_of_range_are_refused_with_a_reason(api: Api) -> None:
    admin = await api.client("admin")
    # Beyond a database integer, beyond datetime's years 1 to 9999, and series that would
    # take millions of steps to expand: each a 422 that says why, and nothing stored.
    for path in ("/api/sessions/99999999999999999999", f"/api/sessions/{2**31}", "/api/sessions/0"):
        response = await admin.get(path)
        assert response.status_code == 422, (path, response.text)
        assert "session_id" in response.text
    response = await admin.post(f"/api/sessions/{2**63}/cancel")
    assert response.status_code == 422 and "session_id" in response.text
    once = {"recurrence": {}}
    bodies = [
        (session_body(start="0001-01-01T00:00", end="0001-01-01T01:00", **once), "out of range"),
        (session_body(start="9999-12-31T22:00", end="9999-12-31T23:00", **once), "between 2000"),
        (session_body(start="1999-12-31T22:00Z", end="1999-12-31T23:00Z", **once), "between 2000"),
        (session_body(recurrence={"repeat": "daily", "count": 10**30}), "count must be"),
        (session_body(recurrence={"repeat": "daily", "count": 3661}), "count must be"),
        (session_body(recurrence={"repeat": "daily", "until": "9999-12-31"}), "until must be"),
    ]
    for body, reason in bodies:
        response = await admin.post("/api/sessions", json=body)
        assert response.status_code == 422, (body, response.text)
        assert reason in response.json()["detail"], response.text
    assert (await admin.get("/api/sessions")).json() == []
    for day in ("9999-12-31", "0001-01-01"):
        response = await admin.get("/api/sites/I01/sessions", params={"day": day})
        assert response.status_code == 422, (day, response.text)
        assert "day must be between" in response.json()["detail"]
    await admin.aclose()


async def test_sites_tree_and_crud_within_permissions(api: Api) -> None:
    sta1 = await api.client("sta1")
    assert [s["code"] for s in (await sta1.get("/api/sites")).json()] == ["C", "I01", "I01-S001"]
    inst1 = await api.client("inst1")
    codes = [s["code"] for s in (await inst1.get("/api/sites")).json()]
    assert codes == ["C", "I01", "I01-S001", "I01-S002"]
    detail = (await inst1.get("/api/sites/I01")).json()
    assert detail["children"] == ["I01-S001", "I01-S002"] and detail["kind"] == "institute"
    assert (await inst1.get("/api/sites/I02")).status_code == 403
    assert (await inst1.get("/api/sites/NOPE")).status_code == 404

    new = {"code": "I01-S003", "name": "新村站", "kind": "station", "parent": "I01"}
    assert (await inst1.post("/api/sites", json=new)).status_code == 201
    assert (await inst1.post("/api/sites", json=new)).status_code == 409
    outside = await inst1.post("/api/sites", json={**new, "code": "I02-S099", "parent": "I02"})
    assert outside.status_code == 403 and "inside your institute I01" in outside.json()["detail"]
    assert (await sta1.post("/api/sites", json={**new, "code": "X"})).status_code == 403
    institute = await inst1.post("/api/sites", json={**new, "code": "I01-X", "kind": "institute"})
    assert institute.status_code == 403 and "only stations" in institute.json()["detail"]

    patched = await inst1.patch(
        "/api/sites/I01-S003", json={"contact_name": "赵强", "contact_phone": "13900000001"}
    )
    assert patched.status_code == 200 and patched.json()["contact_name"] == "赵强"
    moved = await inst1.patch("/api/sites/I01-S003", json={"parent": "I02"})
    assert moved.status_code == 403
    assert (await inst1.patch("/api/sites/I01", json={"name": "改名"})).status_code == 403
    # another institute's sites are out of reach
    assert (await inst1.patch("/api/sites/I02-S001", json={"name": "改名"})).status_code == 403
    assert (await inst1.delete("/api/sites/I02-S001")).status_code == 403
    assert (await inst1.patch("/api/sites/I01-S003", json={"name": None})).status_code == 422
    admin = await api.client("admin")
    assert (await admin.patch("/api/sites/I01-S003", json={"parent": "I02"})).json()[
        "parent"
    ] == "I02"
    cycle = await admin.patch("/api/sites/I01", json={"parent": "I01-S001"})
    assert cycle.status_code == 422 and "cycle" in cycle.json()["detail"]

    assert (await admin.delete("/api/sites/I01")).status_code == 409
    assert (await inst1.delete("/api/sites/I01-S001")).status_code == 204
    assert (await inst1.delete("/api/sites/I01-S001")).status_code == 404
    for client in (sta1, inst1, admin):
        await client.aclose()


async def test_sites_csv_over_http(api: Api) -> None:
    inst1 = await api.client("inst1")
    exported = await inst1.get("/api/sites/export.csv")
    assert exported.headers["content-type"].startswith("text/csv")
    assert exported.content.startswith(b"\xef\xbb\xbf")
    assert len(exported.content.decode("utf-8-sig").splitlines()) == 1 + 4  # C, I01 and its two

    header = ",".join(CSV_HEADER)
    bad = f"{header}\nI01-S001,站,station,I01,,,\nI01-S009,站,hamlet,I01,,,\n".encode("utf-8-sig")
    response = await inst1.post("/api/sites/import", files={"file": ("s.csv", bad)})
    assert response.status_code == 422
    assert response.json()["errors"] == [{"row": 3, "message": "I01-S009: bad kind 'hamlet'"}]
    foreign = f"{header}\nI01-S001,站,station,I01,,,\nI02-S001,站,station,I02,,,\n".encode()
    response = await inst1.post("/api/sites/import", files={"file": ("s.csv", foreign)})
    assert response.status_code == 403 and response.json()["errors"][0]["row"] == 3
    unknown = f"{header}\nI01-S010,站,station,NOPE,,,\n".encode()
    admin = await api.client("admin")
    response = await admin.post("/api/sites/import", files={"file": ("s.csv", unknown)})
    assert response.json()["errors"] == [{"row": 2, "message": "I01-S010: unknown parent NOPE"}]
    good = f"{header}\nI01-S001,文化路站,station,I01,城关街道,钱明,13900000002\n".encode(
        "utf-8-sig"
    )
    response = await inst1.post("/api/sites/import", files={"file": ("s.csv", good)})
    assert response.status_code == 200 and response.json() == {"imported": 1}
    assert (await inst1.get("/api/sites/I01-S001")).json()["contact_name"] == "钱明"
    for client in (inst1, admin):
        await client.aclose()


async def test_sessions_are_edited_within_permissions(api: Api) -> None:
    admin, inst1, inst2, sta1 = [
        await api.client(name) for name in ("admin", "inst1", "inst2", "sta1")
    ]
    mine = (await inst1.post("/api/sessions", json=session_body())).json()
    county = (
        await admin.post(
            "/api/sessions", json=session_body(host="C", audience={"kind": "everyone"})
        )
    ).json()
    changes = api.schedule_changes
    edited = session_body(
        title="科普讲座：防范电信诈骗（改）",
        start="2026-03-02T14:00:00",
        end="2026-03-02T15:30:00",
        options={
            "record": True,
            "publish": True,
            "live_households": True,
            "layout": "composite",
            "restream_urls": ["rtmp://live.example/app/key"],
        },
    )
    done = await inst1.put(f"/api/sessions/{mine['id']}", json=edited)
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["title"].endswith("（改）") and body["start"] == "2026-03-02T14:00:00+08:00"
    assert body["options"]["layout"] == "composite" and body["options"]["live_households"]
    assert body["status"] == "scheduled" and body["created_by"] == mine["created_by"]
    assert api.schedule_changes == changes + 1  # the runner looks again at once
    refusals = [
        # another institute's session, or the center's
        (
            inst2,
            mine["id"],
            session_body(host="I02", audience={"kind": "subtrees", "codes": ["I02"]}),
        ),
        (inst1, county["id"], session_body()),
        # moving one's own session out of reach
        (inst1, mine["id"], session_body(audience={"kind": "subtrees", "codes": ["I02"]})),
        (inst1, mine["id"], session_body(host="C")),
        (sta1, mine["id"], session_body()),
    ]
    for client, session_id, refused_body in refusals:
        response = await client.put(f"/api/sessions/{session_id}", json=refused_body)
        assert response.status_code == 403, response.text
    bad = await inst1.put(
        f"/api/sessions/{mine['id']}", json=session_body(options={"record": True, "layout": "x"})
    )
    assert bad.status_code == 422 and "lecturer" in bad.text  # the layouts there are
    assert (await admin.put("/api/sessions/99999", json=session_body())).status_code == 404
    assert (await admin.get(f"/api/sessions/{mine['id']}")).json()["title"].endswith("（改）")
    for client in (admin, inst1, inst2, sta1):
        await client.aclose()
