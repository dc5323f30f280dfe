"""End to end in real Chromium against the real hub: the console, stations and a
household viewer, shown working by getStats figures (frames decoded increasing)."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import pytest

from tests.browser.conftest import Browsers, HubProcess, poll, screenshot
from tests.browser.rtc import Progress, client_state, counter, outbound, sid_of

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]


def joined(page: Any, label: str) -> None:
    def check() -> str | None:
        state = client_state(page)
        return None if state == "joined" else f"{label} is {state}"

    poll(check, timeout=20)


def open_console(hub: HubProcess, browsers: Browsers, room: str) -> Any:
    token = hub.token(room, "CENTER-01", "center", name="市中心")
    page = browsers.open(f"{hub.base_url}/console#token={token}", "console")
    joined(page, "console")
    page.click("#golive")

    def sending() -> str | None:
        rows = [r for r in outbound(page) if r["source"] == "camera"]
        if not rows or rows[0]["packetsSent"] == 0:
            return f"console camera not sending: {rows}"
        return None

    poll(sending, timeout=20)
    return page


def open_station(hub: HubProcess, browsers: Browsers, room: str, n: int) -> Any:
    token = hub.token(room, f"I01-S{n:03d}", "station", name=f"第{n}村站")
    page = browsers.open(f"{hub.base_url}/station#token={token}", f"station{n}")
    joined(page, f"station{n}")
    return page


def camera_width(page: Any) -> int:
    rows = [r for r in outbound(page) if r["source"] == "camera"]
    return rows[0]["frameWidth"] if rows else 0


def camera_size(page: Any) -> tuple[int, int]:
    rows = [r for r in outbound(page) if r["source"] == "camera"]
    return (rows[0]["frameWidth"], rows[0]["frameHeight"]) if rows else (0, 0)


def test_stations_decode_the_lecturer(hub: HubProcess, browsers: Browsers) -> None:
    room = "lecture-join"
    console = open_console(hub, browsers, room)
    center = sid_of(console)
    stations = [open_station(hub, browsers, room, n) for n in (1, 2, 3)]
    for station in stations:
        poll(Progress(station, "video", center, "camera", "framesDecoded"), timeout=25)
        poll(Progress(station, "audio", center, "microphone", "samples"), timeout=15)
    # the console's wall shows the three sites
    poll(
        lambda: (
            None
            if console.locator(".tile[data-sid]").count() == 3
            else f"{console.locator('.tile[data-sid]').count()} tiles on the wall"
        ),
        timeout=10,
    )


def test_hand_stage_and_back(hub: HubProcess, browsers: Browsers) -> None:
    room = "lecture-stage"
    console = open_console(hub, browsers, room)
    a = open_station(hub, browsers, room, 1)
    b = open_station(hub, browsers, room, 2)
    a_sid = sid_of(a)
    poll(Progress(b, "video", sid_of(console), "camera", "framesDecoded"), timeout=25)

    def thumbnail() -> str | None:
        width = camera_width(a)
        return None if 0 < width <= 320 else f"station camera sends {width} px wide"

    poll(thumbnail, timeout=15)
    off_stage = camera_size(a)

    a.click("#hand")
    hand_item = console.locator(f'#hands li[data-sid="{a_sid}"]')
    hand_item.wait_for(timeout=10000)
    hand_item.locator('[data-action="stage"]').click()

    poll(Progress(b, "video", a_sid, "camera", "framesDecoded"), timeout=20)

    def raised() -> str | None:
        width = camera_width(a)
        return None if width >= 1280 else f"on stage, station camera still {width} px wide"

    # The size follows the browser's bandwidth estimate; the hub announces a
    # ceiling (REMB) well above a stage camera's, so the full size comes quickly.
    poll(raised, timeout=40)
    on_stage = camera_size(a)
    assert on_stage[1] > off_stage[1], f"height did not rise: {off_stage} -> {on_stage}"
    a.locator("#stage-notice").wait_for(state="visible", timeout=5000)
    screenshot(b, "station.png")
    screenshot(console, "console.png")

    console.locator(f'.tile[data-sid="{a_sid}"] [data-action="stage"]').click()

    def lowered() -> str | None:
        # back to the thumbnail's own size, not a fraction of a reduced stage size
        size = camera_size(a)
        return None if size == off_stage else f"back off stage, station camera sends {size}"

    poll(lowered, timeout=15)
    back = camera_size(a)
    assert back[1] < on_stage[1], f"height did not fall: {on_stage} -> {back}"
    print(f"station camera sent at {off_stage}, on stage {on_stage}, back {back}")


def test_moderator_mute(hub: HubProcess, browsers: Browsers) -> None:
    room = "lecture-mute"
    console = open_console(hub, browsers, room)
    a = open_station(hub, browsers, room, 1)
    b = open_station(hub, browsers, room, 2)
    a_sid = sid_of(a)
    tile = console.locator(f'.tile[data-sid="{a_sid}"]')
    tile.wait_for(timeout=10000)
    tile.locator('[data-action="stage"]').click()
    poll(Progress(b, "audio", a_sid, "microphone", "packetsReceived"), timeout=20)

    tile.locator('[data-action="mute"]').click()

    def muted_in_ui() -> str | None:
        mic = a.locator("#mic")
        state = (
            mic.get_attribute("data-muted"),
            mic.get_attribute("data-locked"),
            mic.is_disabled(),
        )
        if state == ("true", "true", True):
            return None
        return f"station mic (muted, locked, disabled) = {state}"

    poll(muted_in_ui, timeout=10)
    time.sleep(2)  # what was in flight has arrived
    pages = (b, console)
    before = {p: counter(p, "audio", a_sid, "microphone", "packetsReceived") for p in pages}
    time.sleep(3)
    for page, label in ((b, "other station"), (console, "console")):
        after = counter(page, "audio", a_sid, "microphone", "packetsReceived")
        assert after is None or after == before[page], (
            f"{label} still receives the muted station's audio: {before[page]} -> {after}"
        )


def test_screen_share_reaches_stations(hub: HubProcess, browsers: Browsers) -> None:
    room = "lecture-screen"
    console = open_console(hub, browsers, room)
    center = sid_of(console)
    a = open_station(hub, browsers, room, 1)
    poll(Progress(a, "video", center, "camera", "framesDecoded"), timeout=25)
    console.click("#share")
    poll(Progress(a, "video", center, "screen", "framesDecoded"), timeout=25)
    # the screen takes the stage's main view
    poll(
        lambda: (
            None
            if a.locator("#stage-video").evaluate("v => v.videoWidth") >= 640
            else "stage video not showing the screen"
        ),
        timeout=10,
    )


def test_station_recovers_by_itself(hub: HubProcess, browsers: Browsers) -> None:
    room = "lecture-recover"
    console = open_console(hub, browsers, room)
    center = sid_of(console)
    a = open_station(hub, browsers, room, 1)
    poll(Progress(a, "video", center, "camera", "framesDecoded"), timeout=25)
    # the station has its hand up and the center has muted it: both survive the drops
    a.click("#hand")
    tile = console.locator(f'.tile[data-sid="{sid_of(a)}"]')
    tile.wait_for(timeout=10000)
    tile.locator('[data-action="mute"]').click()
    poll(station_seen_as(console, a, hand=True, mic_muted=True), timeout=10)

    # 1. the station's network drops: websocket and both peer connections die
    a.evaluate(
        """() => { const c = window.practiceHub.client;
                   c.publisher.close(); c.subscriber.close(); c.ws.close(); }"""
    )
    took = poll(Progress(a, "video", center, "camera", "framesDecoded"), timeout=20)
    print(f"decoding again {took:.1f}s after the network drop")
    assert took <= 10, f"station took {took:.1f}s to decode again after a network drop"
    poll(station_seen_as(console, a, hand=True, mic_muted=True), timeout=10)
    assert a.get_attribute("#mic", "data-locked") == "true"

    # 2. the hub restarts (killed, then started again on the same port)
    hub.restart()
    took = poll(Progress(a, "video", None, "camera", "framesDecoded"), timeout=25)
    print(f"decoding again {took:.1f}s after the hub came back")
    assert took <= 10, f"station took {took:.1f}s after the hub came back"
    assert client_state(a) == "joined"
    assert client_state(console) == "joined"
    poll(station_seen_as(console, a, hand=True, mic_muted=True), timeout=10)
    assert a.get_attribute("#mic", "data-locked") == "true"


def station_seen_as(console: Any, station: Any, *, hand: bool, mic_muted: bool) -> Any:
    """A check: the console sees the station (its current join) with its hand
    and microphone in the given state."""

    def check() -> str | None:
        sid = sid_of(station)
        seen = console.evaluate(
            """sid => { const p = window.practiceHub.client.participants.get(sid);
                if (!p) return null;
                const mic = p.publications.find(x => x.source === 'microphone');
                return {hand: p.hand_raised, mic_muted: mic ? mic.muted : null}; }""",
            sid,
        )
        want = {"hand": hand, "mic_muted": mic_muted}
        return None if seen == want else f"console sees station {sid} as {seen}, want {want}"

    return check


def test_household_viewer_plays_the_stage(hub: HubProcess, browsers: Browsers) -> None:
    room = "lecture-watch"
    console = open_console(hub, browsers, room)
    # the center opens the room to households (anonymous WHEP)
    viewer = open_viewer(hub, browsers, console, room)

    def frames() -> str | None:
        got = viewer.evaluate(
            """async () => {
                const s = window.practiceHub.session;
                const v = document.getElementById('player');
                let decoded = 0, samples = 0;
                if (s && s.pc) for (const r of (await s.pc.getStats()).values()) {
                    if (r.type === 'inbound-rtp' && r.kind === 'video')
                        decoded += r.framesDecoded || 0;
                    if (r.type === 'inbound-rtp' && r.kind === 'audio')
                        samples += r.totalSamplesReceived || 0;
                }
                return {decoded, samples, time: v.currentTime, mode: window.practiceHub.mode};
            }"""
        )
        ok = got["decoded"] > 30 and got["time"] > 1 and got["samples"] > 0
        return None if ok else f"viewer: {got}"

    poll(frames, timeout=30)
    t0 = viewer.evaluate("() => document.getElementById('player').currentTime")
    time.sleep(1.5)
    t1 = viewer.evaluate("() => document.getElementById('player').currentTime")
    assert t1 > t0, f"viewer's video is not advancing ({t0} -> {t1})"
    screenshot(viewer, "viewer.png")

    # the hub restarts: the console rejoins, the operator opens the room to households
    # again, the viewer starts a new WHEP session by itself
    hub.restart()
    joined(console, "console")
    open_to_households(hub, room)
    last: list[int] = []

    def playing_again() -> str | None:
        got = viewer.evaluate(
            """async () => {
                const s = window.practiceHub.session;
                let decoded = -1;
                if (s && s.pc && s.pc.connectionState === 'connected')
                    for (const r of (await s.pc.getStats()).values())
                        if (r.type === 'inbound-rtp' && r.kind === 'video')
                            decoded = r.framesDecoded || 0;
                return decoded;
            }"""
        )
        last.append(got)
        if len(last) >= 3 and last[-3] >= 0 and last[-3] < last[-2] < last[-1]:
            return None
        return f"viewer frames decoded: {last[-5:]}"

    took = poll(playing_again, timeout=40)
    print(f"viewer playing again {took:.1f}s after the hub came back")


def open_to_households(hub: HubProcess, room: str) -> None:
    """Anonymous WebRTC viewing (WHEP), for a small audience; the console's button
    starts live HLS instead (see test_watch_hls.py)."""
    request = urllib.request.Request(
        f"{hub.base_url}/api/rooms/{room}",
        method="PATCH",
        data=json.dumps({"public": True}).encode(),
        headers={
            "Authorization": f"Bearer {hub.token(room, 'CENTER-01', 'center')}",
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.load(response)["public"] is True


def open_viewer(hub: HubProcess, browsers: Browsers, console: Any, room: str) -> Any:
    open_to_households(hub, room)
    return browsers.open(f"{hub.base_url}/watch/{room}", "viewer", width=360, height=740)


def test_households_hear_the_lecturer_and_a_station_on_stage(
    hub: HubProcess, browsers: Browsers
) -> None:
    room = "lecture-voices"
    console = open_console(hub, browsers, room)
    viewer = open_viewer(hub, browsers, console, room)
    # a station called on stage is heard by households too, with the lecturer
    station = open_station(hub, browsers, room, 1)
    station_sid = sid_of(station)
    console.locator(f'.tile[data-sid="{station_sid}"] [data-action="stage"]').click()
    samples: list[list[int]] = []

    def two_voices() -> str | None:
        got: list[int] = viewer.evaluate(
            """async () => {
                const s = window.practiceHub.session, byMid = {};
                if (s && s.pc) for (const r of (await s.pc.getStats()).values())
                    if (r.type === 'inbound-rtp' && r.kind === 'audio')
                        byMid[r.mid] = r.packetsReceived || 0;
                return Object.keys(byMid).sort().map(mid => byMid[mid]);
            }"""
        )
        samples.append(got)
        if len(samples) < 2 or len(samples[-1]) != len(samples[-2]):
            return f"viewer audio packets: {got}"
        live = sum(1 for a, b in zip(samples[-2], samples[-1], strict=True) if b > a)
        return None if live >= 2 else f"{live} voice(s) heard, packets {samples[-2]} -> {got}"

    poll(two_voices, timeout=20)
