"""The console in real Chromium shows a lecturer whose media stopped reaching the hub
("主讲人连接中断" on its stage tile), and shows it recover."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.browser.conftest import Browsers, HubProcess, ThreadedPublisher, poll
from tests.browser.rtc import Progress
from tests.browser.test_e2e import joined

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]

STALLED = "主讲人连接中断"


def stage_badges(console: Any, sid: str) -> Any:
    """``shows(want)``: a check that the badges of ``sid``'s stage tile say it stalled (or not)."""
    tile = console.locator(f'#stage-wall .tile[data-sid="{sid}"] .badges')

    def shows(want: bool) -> Any:
        def check() -> str | None:
            text = tile.inner_text() if tile.count() else None
            if text is None:
                return "the lecturer has no tile on the stage"
            return None if (STALLED in text) == want else f"stage badges: {text!r}"

        return check

    return shows


def test_console_shows_a_stalled_lecturer_and_its_recovery(
    hub: HubProcess, browsers: Browsers
) -> None:
    room = "lecture-stall"
    lecturer = ThreadedPublisher(
        f"ws://127.0.0.1:{hub.port}/ws", hub.token(room, "LECTURER", "center", name="主讲人")
    )
    try:
        lecturer.start()
        sid = str(lecturer.client.joined["participant"]["sid"])
        token = hub.token(room, "CENTER-01", "center", name="市中心")
        console = browsers.open(f"{hub.base_url}/console#token={token}", "console")
        joined(console, "console")
        badges = stage_badges(console, sid)
        poll(Progress(console, "video", sid, "camera", "framesDecoded"), timeout=25)
        poll(badges(False), timeout=5)

        # The lecturer's uplink goes dark: nothing it sends reaches the hub.
        lecturer.dark = True
        took = poll(badges(True), timeout=8, interval=0.2)
        print(f"badge shown {took:.1f}s after the lecturer's media stopped")
        assert console.locator("#stage-wall .badge.stalled").is_visible()

        # Media flows again: the badge goes and the tile decodes new frames.
        lecturer.dark = False
        started = time.monotonic()
        poll(badges(False), timeout=8, interval=0.2)
        poll(Progress(console, "video", sid, "camera", "framesDecoded"), timeout=15)
        print(f"badge gone and decoding again {time.monotonic() - started:.1f}s after")
    finally:
        lecturer.close()
