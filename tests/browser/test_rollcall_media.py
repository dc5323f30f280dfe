"""Roll call and recording from the console, in real Chromium against the real hub."""

from __future__ import annotations

import subprocess
from typing import Any

import imageio_ffmpeg
import pytest

from tests.browser.conftest import Browsers, HubProcess, free_port, poll
from tests.browser.test_e2e import open_console, open_station
from tests.helpers import small_disk

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]


def rollcall_entries(console: Any) -> dict[str, str]:
    entries: dict[str, str] = console.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('#rollcall-list li')]
              .map(li => [li.dataset.identity, li.dataset.status]))"""
    )
    return entries


def test_roll_call_present_late_and_absent(hub: HubProcess, browsers: Browsers) -> None:
    room = "rollcall"
    console = open_console(hub, browsers, room)
    first = open_station(hub, browsers, room, 1)
    second = open_station(hub, browsers, room, 2)
    console.fill("#rollcall-seconds", "6")
    console.click('#rollcall-form button[type="submit"]')
    first.locator("#rollcall").wait_for(state="visible", timeout=10000)
    second.locator("#rollcall").wait_for(state="visible", timeout=10000)

    def waiting() -> str | None:
        entries = rollcall_entries(console)
        want = {"I01-S001": "waiting", "I01-S002": "waiting"}
        return None if entries == want else f"console shows {entries}"

    poll(waiting, timeout=10)
    first.click("#rollcall-answer")
    assert first.locator("#rollcall-text").inner_text() in ("已应答", "Answered")

    def present() -> str | None:
        entries = rollcall_entries(console)
        return None if entries.get("I01-S001") == "present" else f"console shows {entries}"

    poll(present, timeout=10)

    def absent() -> str | None:
        entries = rollcall_entries(console)
        return None if entries.get("I01-S002") == "absent" else f"console shows {entries}"

    poll(absent, timeout=15)  # the deadline passed without an answer
    second.click("#rollcall-answer")

    def late() -> str | None:
        entries = rollcall_entries(console)
        return None if entries.get("I01-S002") == "late" else f"console shows {entries}"

    poll(late, timeout=10)
    counts = console.locator("#rollcall-counts").inner_text()
    assert "1" in counts


def test_console_starts_and_stops_recording(hub: HubProcess, browsers: Browsers) -> None:
    room = "record"
    console = open_console(hub, browsers, room)

    def indicator(on: bool) -> Any:
        def check() -> str | None:
            state = console.locator("#ind-recording").get_attribute("data-on")
            return None if state == str(on).lower() else f"recording indicator data-on={state}"

        return check

    console.click("#record")
    poll(indicator(True), timeout=15)
    assert console.locator("#record").get_attribute("aria-pressed") == "true"
    console.wait_for_timeout(3000)
    console.click("#record")
    poll(indicator(False), timeout=15)
    recordings = list((hub.data_dir / "recordings").iterdir())
    assert recordings and (recordings[0] / "recording.json").exists()


def test_console_shows_why_a_recording_stopped(hub: HubProcess, browsers: Browsers) -> None:
    with small_disk(hub.data_dir / "recordings"):
        console = open_console(hub, browsers, "full-disk")
        console.click("#record")
        banner = console.locator("#media-error")
        banner.wait_for(state="visible", timeout=30000)
        text = banner.inner_text()
        assert "录制出错" in text and "space" in text.lower(), text

        def stopped() -> str | None:
            state = console.locator("#ind-recording").get_attribute("data-on")
            return None if state == "false" else "recording indicator still on"

        poll(stopped, timeout=15)


def test_console_restreams_to_an_rtmp_server(hub: HubProcess, browsers: Browsers) -> None:
    port = free_port()
    receiver = subprocess.Popen(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-listen", "1",
         "-i", f"rtmp://127.0.0.1:{port}/live/county", "-c", "copy", "-f", "null", "-"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        console = open_console(hub, browsers, "restream")
        console.fill("#restream-url", f"rtmp://127.0.0.1:{port}/live/county")
        console.click('#restream-form button[type="submit"]')

        def live() -> str | None:
            state = console.evaluate(
                "() => [...document.querySelectorAll('#restream-list li')]"
                ".map(li => li.dataset.state)"
            )
            return None if state == ["live"] else f"restream states {state}"

        poll(live, timeout=40)
        assert "推流中" in console.locator("#restream-list").inner_text()
        console.click("#restream-list [data-stop]")
        poll(
            lambda: (
                None
                if console.locator("#restream-list li").count() == 0
                else "restream still listed"
            ),
            timeout=15,
        )
    finally:
        receiver.kill()
        receiver.wait()
