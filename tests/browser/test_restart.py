"""A hub killed mid-lecture (SIGKILL) and started again: the console and two stations
in real Chromium come back by themselves, the stations decode the lecturer again, the
household page plays again, and the library item holds the lecture from before and
after the kill (issue 13, "A restart loses nothing")."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import httpx
import pytest

from tests.browser.conftest import Browsers, HubProcess, create_admin, poll
from tests.browser.rtc import Progress, client_state, sid_of
from tests.browser.test_e2e import open_console, open_station

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

ROOM = "county-lecture"
ADMIN = ("restart-admin", "restart-password-1")
COMEBACK = 15.0
"""Seconds from the hub being up again to the stations decoding and the household
playing again."""


def moderate(hub: HubProcess, method: str, path: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{hub.base_url}/api/rooms/{ROOM}" + (f"/{path}" if path else ""),
        method=method,
        headers={"Authorization": f"Bearer {hub.token(ROOM, 'CENTER-01', 'center')}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, Any] = json.load(response)
        return answer


def household_time(page: Any) -> float:
    return float(page.evaluate("() => document.getElementById('player').currentTime"))


def playing(page: Any) -> Any:
    seen: list[float] = []

    def check() -> str | None:
        seen.append(household_time(page))
        return None if len(seen) > 2 and seen[-1] > seen[-2] > 0 else f"currentTime {seen[-4:]}"

    return check


def test_a_killed_hub_comes_back_and_the_lecture_goes_on(
    hub: HubProcess, browsers: Browsers
) -> None:
    create_admin(hub.data_dir, *ADMIN)
    console = open_console(hub, browsers, ROOM)
    lecturer = sid_of(console)
    stations = [open_station(hub, browsers, ROOM, n) for n in (1, 2)]
    for station in stations:
        poll(Progress(station, "video", lecturer, "camera", "framesDecoded"), timeout=30)
    assert moderate(hub, "POST", "recording")["recording"] is True
    assert moderate(hub, "POST", "live")["live"] is True
    household = browsers.open(f"{hub.base_url}/watch/{ROOM}", "household", 360, 740)
    poll(playing(household), timeout=60, interval=1.0)
    time.sleep(10)  # the lecture before the crash

    hub.kill()  # SIGKILL: nothing closed, nothing handed on
    hub.start()
    back = time.monotonic()

    def rejoined() -> str | None:
        state = client_state(console)
        return None if state == "joined" and sid_of(console) != lecturer else f"console {state}"

    poll(rejoined, timeout=COMEBACK)
    lecturer_again = sid_of(console)
    for station in stations:
        left = COMEBACK - (time.monotonic() - back)
        poll(Progress(station, "video", lecturer_again, "camera", "framesDecoded"), timeout=left)
    poll(playing(household), timeout=max(1.0, COMEBACK - (time.monotonic() - back)))
    took = time.monotonic() - back
    print(f"stations decode and the household plays again {took:.1f} s after the restart")
    # what the hub restored, without anyone asking again
    status = moderate(hub, "GET", "")["media"]
    assert status["recording"] and status["live"]
    time.sleep(10)  # the lecture after

    assert moderate(hub, "DELETE", "recording")["recording"] is False
    assert_one_library_item(hub.base_url, ADMIN, ROOM)


def assert_one_library_item(
    base: str, admin: tuple[str, str], room: str, *, verify: bool = True
) -> None:
    """The library holds one item of ``room``, ready, with the lecture from before (at
    least 10 s) and after (at least 10 s) the kill."""
    with httpx.Client(base_url=base, timeout=15, verify=verify) as client:
        login = client.post("/api/login", json={"username": admin[0], "password": admin[1]})
        login.raise_for_status()
        found: list[dict[str, Any]] = []

        def in_library() -> str | None:
            listed = client.get("/api/library", params={"include_unpublished": "true"}).json()
            found[:] = [i for i in listed["items"] if i["title"].startswith(room)]
            ready = [i for i in found if i["status"] == "ready"]
            return None if ready else f"library: {found}"

        poll(in_library, timeout=240, interval=2)
    assert len(found) == 1, "one item for the one lecture"
    assert found[0]["duration"] >= 17, found[0]
