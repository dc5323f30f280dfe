"""The center's wall in real Chromium against the real hub: pages, filters and the
institutes' counts over a crowd of sites, and a station nobody watches pausing its
uplink until the console turns to its page.

The crowd joins over the websocket alone (no media: a cheap participant the wall
shows like any other); the sites whose media matters are real Chromium stations."""

from __future__ import annotations

import asyncio
import csv
import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from scheduler.recurrence import LOCAL_ZONE
from tests.browser.conftest import ROOT, Browsers, HubProcess, poll, screenshot
from tests.browser.rtc import Progress, counter, sid_of
from tests.browser.test_dashboard import ADMIN, CommandHub, admin_client, log_in
from tests.browser.test_e2e import joined, open_console

pytestmark = [pytest.mark.browser, pytest.mark.timeout(150)]

SEED = {row["code"]: row for row in csv.DictReader((ROOT / "scheduler" / "seed_sites.csv").open())}


class SignalingSites:
    """Sites that join over the websocket only, on an event loop of their own thread.
    Each reads all the hub sends, so that none is a slow client the hub cuts off."""

    def __init__(self, hub: HubProcess) -> None:
        self.url = f"ws://127.0.0.1:{hub.port}/ws"
        self.hub = hub
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.sockets: dict[str, ClientConnection] = {}
        self.sids: dict[str, str] = {}
        self.readers: list[asyncio.Task[None]] = []

    def join(self, room: str, identity: str) -> str:
        token = self.hub.token(room, identity, "station", name=SEED[identity]["name"])
        future = asyncio.run_coroutine_threadsafe(self._join(identity, token), self.loop)
        self.sids[identity] = future.result(timeout=10)
        return self.sids[identity]

    async def _join(self, identity: str, token: str) -> str:
        ws = await connect(self.url)
        await ws.send(json.dumps({"type": "join", "token": token}))
        while True:
            message = json.loads(await ws.recv())
            if message["type"] == "joined":
                break
        self.sockets[identity] = ws
        self.readers.append(asyncio.create_task(self._read(ws)))
        sid: str = message["participant"]["sid"]
        return sid

    @staticmethod
    async def _read(ws: ClientConnection) -> None:
        async for _ in ws:
            pass

    def send(self, identity: str, message: dict[str, Any]) -> None:
        ws = self.sockets[identity]
        asyncio.run_coroutine_threadsafe(ws.send(json.dumps(message)), self.loop).result(10)

    def close(self) -> None:
        async def close_all() -> None:
            for ws in self.sockets.values():
                await ws.close()
            for reader in self.readers:
                reader.cancel()

        asyncio.run_coroutine_threadsafe(close_all(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(name="command_hub")
def command_hub_fixture(tmp_path: Path) -> Iterator[CommandHub]:
    process = CommandHub(tmp_path / "hub-data", tmp_path / "hub.log")
    process.start()
    yield process
    process.stop()


@pytest.fixture(name="crowd")
def crowd_fixture(request: pytest.FixtureRequest) -> Iterator[SignalingSites]:
    hub_name = "command_hub" if "command_hub" in request.fixturenames else "hub"
    sites = SignalingSites(request.getfixturevalue(hub_name))
    yield sites
    sites.close()


def wall_tiles(console: Any) -> list[str]:
    """The identities of the tiles on the wall's current page, in order."""
    found: list[str] = console.evaluate(
        "() => [...document.querySelectorAll('#wall .tile')].map(t => t.dataset.identity)"
    )
    return found


def shows(console: Any, want: list[str]) -> Any:
    def check() -> str | None:
        got = wall_tiles(console)
        return None if got == want else f"wall shows {got}, want {want}"

    return check


def test_the_wall_pure_parts(hub: HubProcess, browsers: Browsers) -> None:
    page: Any = browsers.open(f"{hub.base_url}/", "landing")
    got = page.evaluate(
        """async () => {
            const w = await import('/static/js/wall.js');
            const tree = new Map([
                ['C', {code: 'C', name: '清河县新时代文明实践中心', kind: 'center', parent: null}],
                ['I01', {code: 'I01', name: '东湖新时代文明实践所', kind: 'institute',
                         parent: 'C'}],
                ['I01-S001', {code: 'I01-S001', name: '甲村站', kind: 'station', parent: 'I01'}],
                ['I01-S002', {code: 'I01-S002', name: '乙村站', kind: 'station', parent: 'I01'}],
                ['I02', {code: 'I02', name: '西山所', kind: 'institute', parent: 'C'}],
                ['I02-S001', {code: 'I02-S001', name: '丙村站', kind: 'station', parent: 'I02'}],
            ]);
            const here = (identity, more = {}) => ({identity, name: identity, sid: 'PA_' + identity,
                onStage: false, hand: false, weak: false, ...more});
            const sites = w.wallSites(
                [here('I02-S001', {hand: true}), here('I01-S002', {weak: true}),
                 here('X-1', {onStage: true})],
                ['I01-S001', 'I01-S002', 'I02-S001'], tree);
            const ids = list => list.map(s => s.identity);
            const filter = (show, institute = '') => ids(w.filterSites(sites, {show, institute}));
            const letters = [...'abcdefghij'];
            return {
                order: ids(sites),
                institutes: sites.map(s => s.institute),
                offlineName: sites.find(s => s.identity === 'I01-S001').name,
                online: filter('online'), hand: filter('hand'), weak: filter('weak'),
                offline: filter('offline'), east: filter('online', 'I01'),
                counts: w.instituteCounts(sites),
                pages: [w.pageOf(letters, 4, 0), w.pageOf(letters, 4, 2), w.pageOf(letters, 4, 9),
                        w.pageOf([], 25, 3)],
                short: [w.shortName('东湖新时代文明实践所'), w.shortName('新时代文明实践')],
                sizes: [w.pageSizeFrom('9'), w.pageSizeFrom('7'), w.pageSizeFrom(null)],
                cycle: w.instituteOf('A', new Map([['A', {code: 'A', name: '', kind: 'station',
                                                          parent: 'A'}]])),
            };
        }"""
    )
    assert got["order"] == ["I01-S001", "I01-S002", "I02-S001", "X-1"]
    assert got["institutes"] == ["I01", "I01", "I02", ""]
    assert got["offlineName"] == "甲村站"  # an expected site not here, named from the tree
    assert got["online"] == ["I01-S002", "I02-S001"]  # the stage is never paged
    assert got["hand"] == ["I02-S001"]
    assert got["weak"] == ["I01-S002"]
    assert got["offline"] == ["I01-S001"]
    assert got["east"] == ["I01-S002"]
    assert got["counts"] == [
        {"institute": "I01", "online": 1, "total": 2},
        {"institute": "I02", "online": 1, "total": 1},
    ]
    assert [(p["items"], p["page"], p["pages"]) for p in got["pages"]] == [
        (["a", "b", "c", "d"], 0, 3),
        (["i", "j"], 2, 3),
        (["i", "j"], 2, 3),  # a page past the end is the last one
        ([], 0, 1),
    ]
    assert got["short"] == ["东湖所", "新时代文明实践"]
    assert got["sizes"] == [9, 25, 25]
    assert got["cycle"] == ""


def open_session_console(command_hub: CommandHub, browsers: Browsers) -> tuple[Any, str, list[str]]:
    """A session for three institutes' subtrees, open now; its console opened from the
    center's login. Returns the console page, the room and the expected sites."""
    with admin_client(command_hub) as admin:
        start = datetime.now(LOCAL_ZONE).replace(second=0, microsecond=0) - timedelta(minutes=1)
        session = admin.post(
            "/api/sessions",
            json={
                "title": "理论宣讲：全县大课",
                "theme": "theory",
                "host": "C",
                "audience": {"kind": "subtrees", "codes": ["I05", "I06", "I07"]},
                "start": start.isoformat(),
                "end": (start + timedelta(hours=1)).isoformat(),
            },
        )
        session.raise_for_status()
        opened = admin.post(f"/api/sessions/{session.json()['id']}/console")
        opened.raise_for_status()
        room: str = opened.json()["room"]
        expected: list[str] = admin.get(f"/api/attendance/{room}").json()["expected"]
    console = browsers.open(f"{command_hub.base_url}/", "console", 1280, 900)
    log_in(console, *ADMIN)
    console.wait_for_url("**/admin")
    console.goto(f"{command_hub.base_url}/console?room={room}")
    joined(console, "console")
    return console, room, [code for code in expected if code != "C"]


def test_the_wall_pages_filters_and_counts(
    command_hub: CommandHub, crowd: SignalingSites, browsers: Browsers
) -> None:
    console, room, expected = open_session_console(command_hub, browsers)
    stations = sorted(code for code in expected if SEED[code]["kind"] == "station")
    online = stations[:30]
    # one real station among them, for a picture on the wall
    camera_site = online[20]
    station = browsers.open(
        f"{command_hub.base_url}/station#token="
        + command_hub.token(room, camera_site, "station", name=SEED[camera_site]["name"]),
        "station",
    )
    joined(station, "station")
    for identity in online:
        if identity != camera_site:
            crowd.join(room, identity)
    hands = online[3:5] + online[27:29]
    for identity in hands:
        crowd.send(identity, {"type": "hand", "raised": True})

    poll(shows(console, online[:25]))
    assert console.locator("#wall-page").inner_text() == "第 1/2 页"
    console.get_by_role("button", name="下一页").click()
    poll(shows(console, online[25:]))

    # the page size is the operator's, and kept
    console.get_by_label("每页").select_option("9")
    poll(shows(console, online[:9]))
    assert console.locator("#wall-page").inner_text() == "第 1/4 页"
    console.reload()
    joined(console, "console")
    poll(shows(console, online[:9]))
    console.get_by_label("每页").select_option("25")

    # the institutes' counts: online / expected, and each a filter
    for institute in ("I05", "I06", "I07"):
        mine = [code for code in expected if code.startswith(institute)]
        here = [code for code in mine if code in online]
        short = SEED[institute]["name"].replace("新时代文明实践", "")
        chip = console.locator(f'#institute-counts [data-institute="{institute}"]')
        want = f"{short} {len(here)}/{len(mine)}"
        poll(
            lambda chip=chip, want=want: (
                None if chip.inner_text() == want else f"{chip.inner_text()!r}, want {want!r}"
            )
        )
    console.locator('#institute-counts [data-institute="I07"]').click()
    poll(shows(console, [code for code in online if code.startswith("I07")]))
    console.get_by_label("显示").select_option("offline")
    offline_i07 = [code for code in expected if code.startswith("I07") and code not in online]
    poll(shows(console, offline_i07))
    assert console.locator("#wall .tile[data-sid]").count() == 0
    assert console.locator("#wall .tile").first.inner_text().count("离线") >= 1
    console.locator('#institute-counts [data-institute=""]').click()
    console.get_by_label("显示").select_option("hand")
    poll(shows(console, hands))
    console.get_by_label("显示").select_option("weak")
    poll(shows(console, []))  # nobody's link is weak on loopback
    assert console.locator("#wall-empty").is_visible()
    console.get_by_label("显示").select_option("online")
    poll(shows(console, online[:25]))

    # the crowd publishes no camera: its tiles say so instead of a black picture
    assert console.locator(f'#wall .tile[data-identity="{online[0]}"] .no-video').is_visible()
    camera_tile = console.locator(f'#wall .tile[data-identity="{camera_site}"]')
    assert camera_tile.locator(".no-video").is_hidden()
    poll(Progress(console, "video", sid_of(station), "camera", "framesDecoded"), timeout=25)
    camera_tile.locator('[data-action="listen"]').click()
    assert camera_tile.locator('[data-action="listen"]').get_attribute("aria-pressed") == "true"

    # a site called on stage leaves the pages for the stage, shown large above them
    console.locator(f'#wall .tile[data-identity="{online[0]}"] [data-action="stage"]').click()
    poll(shows(console, online[1:26]))
    stage_tile = console.locator(f'#stage-wall .tile[data-identity="{online[0]}"]')
    stage_tile.wait_for()
    page_tile = console.locator("#wall .tile").first
    assert stage_tile.bounding_box()["width"] > page_tile.bounding_box()["width"]
    screenshot(console, "console-wall.png")

    console.get_by_role("button", name="切换语言为英文").click()
    assert console.locator("#wall-page").inner_text() == "Page 1 of 2"
    console.set_viewport_size({"width": 360, "height": 740})
    width = console.evaluate("document.documentElement.scrollWidth")
    assert width <= 360, f"the console scrolls sideways at 360 px ({width} px)"


OUTBOUND_VIDEO_BYTES = """
async () => {
  const c = window.practiceHub && window.practiceHub.client;
  if (!c || !c.publisher) return null;
  const camera = c.transceivers.get('camera');
  if (!camera || camera.mid === null) return null;
  for (const s of (await c.publisher.getStats()).values()) {
    if (s.type === 'outbound-rtp' && s.mid === camera.mid) return s.bytesSent;
  }
  return 0;  // paused before it ever sent: Chromium has no outbound-rtp for it yet
}
"""


def test_a_station_nobody_watches_pauses_its_uplink(
    hub: HubProcess, crowd: SignalingSites, browsers: Browsers
) -> None:
    room = "wall-pause"
    console = open_console(hub, browsers, room)
    first_page = [f"I06-S{n:03d}" for n in range(1, 5)]
    for identity in first_page:
        crowd.join(room, identity)
    station = browsers.open(
        f"{hub.base_url}/station#token={hub.token(room, 'I07-S001', 'station', name='石桥村站')}",
        "station",
    )
    joined(station, "station")
    console.get_by_label("每页").select_option("4")
    poll(shows(console, first_page))

    def sent() -> int:
        value = station.evaluate(OUTBOUND_VIDEO_BYTES)
        assert isinstance(value, int), "the station publishes no camera"
        return value

    def stalled() -> str | None:
        before = sent()
        time.sleep(2)
        after = sent()
        return None if after == before else f"camera bytes still growing ({before} → {after})"

    poll(stalled, timeout=20)
    assert station.locator("#uplink-paused").is_visible()
    assert station.locator("#self-video").evaluate("v => !v.paused && v.readyState >= 2")

    before = sent()
    console.get_by_role("button", name="下一页").click()
    took = poll(lambda: None if sent() > before else "camera bytes not growing", 5, 0.1)
    assert took <= 2, f"the uplink resumed {took:.1f} s after the console turned to its page"
    poll(Progress(console, "video", sid_of(station), "camera", "framesDecoded"), timeout=10)
    assert station.locator("#uplink-paused").is_hidden()

    # its microphone reaches the console only while the operator listens to it
    assert counter(console, "audio", sid_of(station), "microphone", "samples") is None
    assert station.locator("#mic-paused").is_visible()
    console.locator('#wall .tile[data-identity="I07-S001"] [data-action="listen"]').click()
    poll(Progress(console, "audio", sid_of(station), "microphone", "samples"), timeout=10)
    assert station.locator("#mic-paused").is_hidden()
