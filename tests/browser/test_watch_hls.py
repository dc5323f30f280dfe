"""A household viewer switches to live HLS when the room goes live for households."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

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
