"""A county's first run, from an empty data dir, through the browser alone (the command
line only for ``practice-hub admin create``): the administrator creates itself, logs
in, loads the county's tree, creates a station operator, schedules a recorded,
household-live session with that station in its audience starting in a minute,
opens its console and starts the lecture. The station operator logs in, joins with
one click and decodes the lecturer; a household finds the session under "live now"
and plays it; after the end the recording is in the library and plays on its replay
page. No token ever reaches the hub's access log or a page's address."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from scheduler.recurrence import LOCAL_ZONE
from tests.browser.conftest import Browsers, HubProcess, create_admin, poll, screenshot
from tests.browser.rtc import Progress, client_state, outbound, sid_of

pytestmark = [pytest.mark.browser, pytest.mark.timeout(420)]

ADMIN = ("county-admin", "admin-password-2026")
OPERATOR = ("dongfang", "station-password-2026")
STATION = "I01-S001"
TITLE = "理论宣讲：首次直播"
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{10,}")


def log_in(page: Any, username: str, password: str) -> None:
    page.get_by_label("用户名").fill(username)
    page.get_by_label("密码").fill(password)
    page.get_by_role("button", name="登录").click()


def no_token_in(url: str) -> None:
    assert "token" not in url and not JWT.search(url), f"a token in the address: {url}"


def start_in_a_minute() -> datetime:
    """The next whole minute at least 20 s away, Asia/Shanghai wall clock."""
    now = datetime.now(LOCAL_ZONE)
    start = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    return start if (start - now).total_seconds() >= 20 else start + timedelta(minutes=1)


def test_a_county_installs_and_runs_its_first_lecture_from_the_browser(
    hub: HubProcess, browsers: Browsers
) -> None:
    # --- a fresh install says how to make the administrator ---
    admin = browsers.open(f"{hub.base_url}/", "admin")
    setup = admin.locator("#setup-needed")
    setup.wait_for()
    assert "practice-hub admin create" in setup.inner_text()
    screenshot(admin, "first-run.png")
    create_admin(hub.data_dir, *ADMIN)
    admin.reload()
    admin.locator("#login").wait_for()
    assert admin.locator("#setup-needed").is_hidden()

    # --- log in, load the county's tree in one click ---
    log_in(admin, *ADMIN)
    admin.wait_for_url("**/admin")
    admin.get_by_role("button", name="载入本县站点树").click()
    admin.locator("#notice").filter(has_text="已载入 191 个站点").wait_for()
    assert admin.locator("#setup").is_hidden()
    admin.get_by_role("tab", name="站点", exact=True).click()
    admin.locator("details.group summary").first.click()  # the first institute, opened
    admin.locator(f'[data-code="{STATION}"]').wait_for()
    screenshot(admin, "admin-sites.png")

    # --- a station operator for one village ---
    admin.get_by_role("tab", name="账号", exact=True).click()
    accounts = admin.locator("#account-form")
    accounts.get_by_label("用户名").fill(OPERATOR[0])
    accounts.get_by_label("初始密码（至少 10 位）").fill(OPERATOR[1])
    accounts.get_by_label("角色").select_option("station_operator")
    accounts.get_by_label("所属站点").select_option(STATION)
    accounts.get_by_role("button", name="创建").click()
    admin.locator(f'#account-rows [data-username="{OPERATOR[0]}"]').wait_for()
    screenshot(admin, "admin-accounts.png")

    # --- a recorded session, live for households, that village in its audience ---
    admin.get_by_role("tab", name="活动安排", exact=True).click()
    admin.get_by_role("button", name="新建活动").click()
    form = admin.locator("#session-form")
    form.get_by_label("标题").fill(TITLE)
    form.get_by_label("平台").select_option("theory")
    form.get_by_label("主办站点").select_option("C")
    form.locator("#session-audience").select_option("sites")
    form.get_by_label("筛选").fill(STATION)
    form.locator(f'[data-pick="{STATION}"]').check()
    start = start_in_a_minute()
    form.get_by_label("开始时间").fill(start.strftime("%Y-%m-%dT%H:%M"))
    form.get_by_label("结束时间").fill((start + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M"))
    form.get_by_label("录制", exact=True).check()
    form.get_by_label("录制后送入资源库").check()
    form.get_by_label("向群众直播").check()
    screenshot(admin, "admin-sessions.png")
    form.get_by_role("button", name="保存").click()
    admin.locator("#notice").filter(has_text=f"已保存「{TITLE}」").wait_for()

    # --- the console, opened from the login: no command line, no token in a URL ---
    admin.get_by_role("button", name=f"打开控制台: {TITLE}").click()
    admin.wait_for_url("**/console?room=*")
    no_token_in(admin.url)
    poll(lambda: None if client_state(admin) == "joined" else client_state(admin))
    admin.click("#golive")
    poll(
        lambda: (
            None
            if any(r["source"] == "camera" and r["packetsSent"] > 0 for r in outbound(admin))
            else "the console's camera is not sending"
        )
    )
    lecturer = sid_of(admin)

    # --- the station operator: log in, one click, the lecturer decoded ---
    station = browsers.open(f"{hub.base_url}/", "station", 1024, 768)
    log_in(station, *OPERATOR)
    station.wait_for_url("**/sessions")
    station.get_by_role("button", name=f"进入活动: {TITLE}").click()
    station.wait_for_url("**/station?room=*")
    no_token_in(station.url)
    poll(lambda: None if client_state(station) == "joined" else client_state(station))
    poll(Progress(station, "video", lecturer, "camera", "framesDecoded"), timeout=30)

    # --- at the start: recording; households find it under "live now" and play it ---
    recording = station.locator("#onair-recording")
    poll(
        lambda: None if recording.is_visible() else "the station is not told it is recorded",
        timeout=(start - datetime.now(LOCAL_ZONE)).total_seconds() + 30,
    )
    assert station.locator("#onair-live").is_visible()
    household = browsers.open(f"{hub.base_url}/", "household", width=360, height=740)

    def listed_live() -> str | None:
        household.reload()
        live = household.locator("#live-list")
        live.locator(".programme-item").first.wait_for(timeout=5000)
        return None if TITLE in live.inner_text() else f"live now: {live.inner_text()!r}"

    poll(listed_live, timeout=30, interval=2)
    assert "理论宣讲" in household.locator("#live-list").inner_text()  # its theme
    household.get_by_role("link", name=f"观看: {TITLE}").click()
    household.wait_for_url("**/watch/s*")
    samples: list[float] = []

    def playing() -> str | None:
        samples.append(household.evaluate("() => document.getElementById('player').currentTime"))
        return None if len(samples) > 2 and samples[-1] > samples[-2] > 0 else f"{samples[-4:]}"

    poll(playing, timeout=60, interval=1.0)
    assert household.locator("#onair-live").is_visible()
    assert household.locator("#onair-recording").is_visible()
    assert household.evaluate("() => document.documentElement.scrollWidth") <= 360
    admin.wait_for_timeout(8000)  # some lecture to record

    # --- the end, from the console; the recording reaches the library ---
    admin.once("dialog", lambda dialog: dialog.accept())
    admin.get_by_role("button", name="结束活动").click()
    admin.locator("#banner").filter(has_text="已结束").wait_for(timeout=30000)
    poll(lambda: None if client_state(station) == "closed" else client_state(station))

    with httpx.Client(base_url=hub.base_url, timeout=10) as anonymous:
        found: dict[str, Any] = {}

        def in_library() -> str | None:
            items = anonymous.get("/api/library", params={"q": TITLE}).json()["items"]
            ready = [i for i in items if i["title"] == TITLE and i["status"] == "ready"]
            if ready:
                found.update(ready[0])
                return None
            return f"library: {items}"

        poll(in_library, timeout=120, interval=2)
    assert found["theme"] == "theory" and found["duration"] and found["duration"] >= 5
    household.goto(f"{hub.base_url}/library")
    household.get_by_role("link", name=TITLE, exact=True).click()
    household.wait_for_url(f"**/replay/{found['id']}")
    # press play once the page has given the player its source
    household.wait_for_function("() => !!document.getElementById('player').currentSrc")
    household.evaluate(
        "() => { const v = document.getElementById('player'); v.muted = true; v.play(); }"
    )

    def replaying() -> str | None:
        state = household.evaluate(
            """() => { const v = document.getElementById('player');
                       const b = [...Array(v.buffered.length).keys()]
                           .map(i => [v.buffered.start(i), v.buffered.end(i)]);
                       return {time: v.currentTime, ready: v.readyState, paused: v.paused,
                               error: v.error && v.error.message, buffered: b}; }"""
        )
        return None if state["time"] > 1 else f"the replay does not play: {state}"

    poll(replaying, timeout=30)

    # --- the attendance report, from the administration ---
    admin.goto(f"{hub.base_url}/admin")
    admin.get_by_role("button", name=f"出勤: {TITLE}").click()
    admin.wait_for_url("**/attendance?session=*")
    row = admin.locator(f'#report-rows [data-site="{STATION}"]')
    row.wait_for()
    assert row.get_attribute("data-status") == "joined"
    assert "应到 1" in admin.locator("#counts").inner_text()
    screenshot(admin, "attendance.png")

    for page in (admin, station, household):
        no_token_in(page.url)
    log = hub.log_tail(10_000_000)
    assert " 200 OK" in log, "the access log is on"
    assert not JWT.search(log), "a join token reached the hub's access log"
    assert "token=" not in log
