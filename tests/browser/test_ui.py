"""The pages in a real browser: language toggle remembered, nothing fetched from
outside the hub, usable at 360 px, chat between the console and a station."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

import pytest

from tests.browser.conftest import Browsers, HubProcess, poll
from tests.browser.rtc import client_state

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]


def test_language_toggle_is_remembered_and_nothing_external(
    hub: HubProcess, browsers: Browsers
) -> None:
    page = browsers.open(f"{hub.base_url}/", "landing", width=360, height=740)
    hosts: set[str] = set()
    page.on("request", lambda r: hosts.add(urlparse(r.url).hostname or r.url))
    page.reload()
    assert page.locator("html").get_attribute("lang") == "zh-CN"
    assert page.locator("h1").inner_text() == "文明实践互动平台"
    page.locator("#lang-toggle").focus()
    page.keyboard.press("Enter")
    assert page.locator("h1").inner_text() == "Practice Hub"
    page.reload()
    assert page.locator("html").get_attribute("lang") == "en"
    assert page.locator("h1").inner_text() == "Practice Hub"
    for path in ("/console", "/station", "/watch/some-room"):
        page.goto(f"{hub.base_url}{path}")
        page.wait_for_load_state("networkidle")
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 360, f"{path} is {width}px wide at a 360px viewport"
    assert hosts <= {"127.0.0.1"}, f"requests outside the hub: {hosts}"


def test_chat_between_station_and_console(hub: HubProcess, browsers: Browsers) -> None:
    room = "chat-room"
    center = hub.token(room, "CENTER-01", "center", name="市中心")
    station = hub.token(room, "I01-S001", "station", name="东湖村站")
    console = browsers.open(f"{hub.base_url}/console#token={center}", "console")
    a: Any = browsers.open(f"{hub.base_url}/station#token={station}", "station")
    for page in (console, a):

        def check(p: Any = page) -> str | None:
            return None if client_state(p) == "joined" else client_state(p)

        poll(check)
    a.fill("#chat-input", "东湖村站已就位")
    a.press("#chat-input", "Enter")
    console.locator("#chat-log", has_text="东湖村站已就位").wait_for(timeout=10000)
    a.locator("#chat-log", has_text="东湖村站已就位").wait_for(timeout=10000)


def test_a_grant_without_chat_is_not_offered_chat(hub: HubProcess, browsers: Browsers) -> None:
    room = "quiet-room"
    viewer = hub.token(room, "V-01", "viewer", name="观摩席")
    page: Any = browsers.open(f"{hub.base_url}/station?token={viewer}", "viewer")
    poll(lambda: None if client_state(page) == "joined" else client_state(page))
    assert page.evaluate("() => window.practiceHub.client.self.can_chat") is False
    assert page.locator("#chat-form").is_hidden()
    assert page.evaluate("() => window.practiceHub.client.sendChat('hello')") is False


def test_audio_only_and_remove(hub: HubProcess, browsers: Browsers) -> None:
    room = "audio-only-room"
    center = hub.token(room, "CENTER-01", "center", name="市中心")
    station = hub.token(room, "I01-S002", "station", name="西湖村站")
    console = browsers.open(f"{hub.base_url}/console#token={center}", "console")
    a: Any = browsers.open(f"{hub.base_url}/station#token={station}", "station")
    poll(lambda: None if client_state(a) == "joined" else client_state(a))
    a_sid = a.evaluate("() => window.practiceHub.client.self.sid")

    def sources_seen_by_console() -> list[str]:
        got: list[str] = console.evaluate(
            """sid => { const p = window.practiceHub.client.participants.get(sid);
                       return p ? p.publications.map(x => x.source).sort() : []; }""",
            a_sid,
        )
        return got

    def publishes(expected: list[str]) -> Any:
        def check() -> str | None:
            seen = sources_seen_by_console()
            return None if seen == expected else f"console sees {seen}"

        return check

    poll(publishes(["camera", "microphone"]))
    # audio-only: the station stops publishing its camera (its m-line goes inactive)
    a.click("#audio-only")
    poll(publishes(["microphone"]))
    assert a.get_attribute("#audio-only", "aria-pressed") == "true"
    assert a.locator("#stage-video").is_hidden()
    a.click("#audio-only")
    poll(publishes(["camera", "microphone"]))

    # the center removes the station: it is told so and does not come back
    console.once("dialog", lambda dialog: dialog.accept())
    console.locator(f'.tile[data-sid="{a_sid}"] [data-action="remove"]').click()
    a.locator("#banner").wait_for(state="visible", timeout=10000)
    poll(lambda: None if client_state(a) == "closed" else client_state(a))
    poll(lambda: None if console.locator(".tile[data-sid]").count() == 0 else "tile still there")
    a.wait_for_timeout(2000)
    assert client_state(a) == "closed", "a removed station must not reconnect"

    # its link no longer admits it: opened again, the page says why and stays out
    a.goto(f"{hub.base_url}/station#token={station}")
    a.locator("#banner").filter(has_text="您已被主持人移出会议").wait_for()
    poll(lambda: None if client_state(a) == "closed" else client_state(a))
    # until the console lets it back in
    console.get_by_role("button", name="允许重新加入 西湖村站").click()
    poll(lambda: None if console.locator("#removed-section").is_hidden() else "still listed")
    a.goto(f"{hub.base_url}/station#token={station}")
    poll(lambda: None if client_state(a) == "joined" else client_state(a))


def test_station_joins_with_a_pasted_link(hub: HubProcess, browsers: Browsers) -> None:
    token = hub.token("paste-room", "I01-S003", "station", name="南山村站")
    page: Any = browsers.open(f"{hub.base_url}/station", "station", width=360, height=740)
    page.fill("#token-input", f"{hub.base_url}/station#token={token}")
    page.click("#token-form button[type=submit]")
    poll(lambda: None if client_state(page) == "joined" else client_state(page))
    assert "token=" not in page.url, "a token never stays in the address"
    assert page.url.endswith("/station?room=paste-room")
    assert page.locator("#self-name").inner_text().endswith("南山村站")
    page.reload()  # this tab kept the token: a reload rejoins
    poll(lambda: None if client_state(page) == "joined" else client_state(page))
    assert "token=" not in page.url


def test_protocol_library_pure_parts(hub: HubProcess, browsers: Browsers) -> None:
    page: Any = browsers.open(f"{hub.base_url}/", "landing")
    got = page.evaluate(
        """async () => {
            const m = await import('/static/js/protocol.js');
            const ui = await import('/static/js/ui.js');
            return {
                delays: [0, 1, 2, 3, 4, 5, 10].map(n => [m.backoffDelay(n, () => 0),
                                                      m.backoffDelay(n, () => 1)]),
                thumb: m.cameraEncoding('thumbnail', 1280),
                thumb640: m.cameraEncoding('thumbnail', 640),
                stage: m.cameraEncoding('stage', 1280),
                paused: m.cameraEncoding('paused', 1280),
                levels: [m.qualityLevel(20, 0), m.qualityLevel(200, 0), m.qualityLevel(20, 0.1)],
                holds: [[null, 0.5], [300, null], [300, 0], [300, 0.019], [300, 0.02],
                        [300, 0.2], [2, 0.1], [1000, 0.1]].map(([r, n]) => m.repairDelayMs(r, n)),
                pasted: [ui.tokenFromPaste('  abc.def.ghi '),
                         ui.tokenFromPaste('https://hub.local/station?token=abc.def')],
            };
        }"""
    )
    # backoff: grows from 250 ms and never waits more than 3.6 s (3 s + 20 % jitter)
    assert got["delays"][0] == [200, 300]
    assert all(low <= high <= 3600 for low, high in got["delays"])
    assert got["delays"][-1] == [2400, 3600]
    assert got["thumb"] == {
        "active": True,
        "scaleResolutionDownBy": 4,
        "maxFramerate": 15,
        "maxBitrate": 250000,
    }
    assert got["thumb640"]["scaleResolutionDownBy"] == 2
    assert got["stage"] == {
        "active": True,
        "scaleResolutionDownBy": 1,
        "maxFramerate": 30,
        "maxBitrate": 1500000,
    }
    # paused: nobody receives it; the camera stays open, its encoding inactive
    assert got["paused"] == {**got["thumb"], "active": False}
    assert got["levels"] == ["good", "fair", "poor"]
    # resends need two round trips and a frame: only while the link asks for them
    # (2 NACKs per 100 video packets or more), and never over 1.5 s
    assert got["holds"] == [None, None, None, None, 700, 700, 104, 1500]
    assert got["pasted"] == ["abc.def.ghi", "abc.def"]


def test_a_bad_token_is_said_and_not_retried(hub: HubProcess, browsers: Browsers) -> None:
    page: Any = browsers.open(f"{hub.base_url}/station#token=not-a-token", "station")
    page.locator("#banner").wait_for(state="visible", timeout=10000)
    assert "令牌无效" in page.locator("#banner").inner_text()
    poll(lambda: None if client_state(page) == "closed" else client_state(page))
    page.wait_for_timeout(1500)
    assert client_state(page) == "closed"
