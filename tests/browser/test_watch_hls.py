"""A household viewer switches to live HLS when the room goes live for households."""

from __future__ import annotations

import json
import urllib.request
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from tests.browser.conftest import Browsers, HubProcess, poll
from tests.browser.test_e2e import open_console

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]


def player(page: Any) -> dict[str, Any]:
    state: dict[str, Any] = page.evaluate(
        """() => { const v = document.getElementById('player');
                   return {src: v.currentSrc || '', time: v.currentTime, error: !!v.error,
                           hls: window.practiceHub.mode === 'hls',
                           lowLatency: window.practiceHub.lowLatency}; }"""
    )
    return state


def test_the_viewer_plays_live_hls_when_the_room_is_live(
    hub: HubProcess, browsers: Browsers
) -> None:
    room = "live-hls"
    open_console(hub, browsers, room)
    request = urllib.request.Request(
        f"{hub.base_url}/api/rooms/{room}/live",
        method="POST",
        headers={"Authorization": f"Bearer {hub.token(room, 'CENTER-01', 'center')}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.load(response)["hls_url"] == f"/live/{room}/index.m3u8"
    viewer = browsers.open(f"{hub.base_url}/watch/{room}", "viewer", width=360, height=740)

    def on_hls() -> str | None:
        state = player(viewer)
        # Part by part over Media Source Extensions (a blob: source), not native HLS.
        return None if state["hls"] and state["lowLatency"] else f"player: {state}"

    poll(on_hls, timeout=30)
    samples: list[float] = []

    def advancing() -> str | None:
        samples.append(player(viewer)["time"])
        moving = len(samples) > 2 and samples[-1] > samples[-2] > 0
        return None if moving else f"currentTime samples {samples[-4:]}"

    poll(advancing, timeout=60, interval=1.0)


def test_the_viewer_is_counted_by_the_id_its_page_keeps(
    hub: HubProcess, browsers: Browsers
) -> None:
    room = "live-count"
    open_console(hub, browsers, room)
    request = urllib.request.Request(
        f"{hub.base_url}/api/rooms/{room}/live",
        method="POST",
        headers={"Authorization": f"Bearer {hub.token(room, 'CENTER-01', 'center')}"},
    )
    urllib.request.urlopen(request, timeout=10).close()
    viewer = browsers.open(f"{hub.base_url}/watch/{room}", "viewer", width=360, height=740)

    def part_by_part() -> str | None:
        state = player(viewer)
        return None if state["hls"] and state["lowLatency"] else f"player: {state}"

    poll(part_by_part, timeout=30)
    kept = viewer.evaluate("() => sessionStorage.getItem('practiceHub.player')")
    assert kept and len(kept) == 24, kept
    seen: list[str] = []
    viewer.on("request", lambda r: seen.append(r.url) if f"/live/{room}/" in r.url else None)
    viewer.reload()  # the same tab: the same household
    poll(part_by_part, timeout=30)

    def requested() -> str | None:
        viewer.wait_for_timeout(200)  # Playwright hands over events while it is called
        playlists = [u for u in seen if "index.m3u8" in u]
        media = [u for u in seen if "index.m3u8" not in u]
        return None if len(playlists) >= 3 and media else f"requests: {seen[-4:]}"

    poll(requested, timeout=30)
    for url in seen:
        query = parse_qs(urlparse(url).query)
        if "index.m3u8" in url:
            assert query["player"] == [kept], url
        else:
            assert "player" not in query, url  # media files: one URL for everyone
    moderator = {"Authorization": f"Bearer {hub.token(room, 'CENTER-01', 'center')}"}
    asked = urllib.request.Request(f"{hub.base_url}/api/rooms/{room}", headers=moderator)
    with urllib.request.urlopen(asked, timeout=10) as response:
        assert json.load(response)["household_viewers"] == 1
