"""The command dashboard and the station operator's page in real headless Chromium,
against the real hub (with the command side mounted) in a subprocess.

A station operator logs in on /sessions at 360 px, acknowledges a directive the
center dispatched from /dashboard (the dashboard sees it read, live), joins the live
session in one click, and the dashboard shows the station online within seconds."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from scheduler.recurrence import LOCAL_ZONE
from tests.browser.conftest import ROOT, Browsers, HubProcess, create_admin, poll, screenshot

ADMIN = ("admin", "admin-password-1")
OPERATOR = ("station1", "station-password-1")
STATION = "I01-S001"


class CommandHub(HubProcess):
    """The hub (``python -m hub serve``) with the seed county and two accounts."""

    def start(self, timeout: float = 30.0) -> None:
        database = f"sqlite+aiosqlite:///{self.data_dir / 'hub.sqlite3'}"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "scheduler.seed", "--database-url", database],
            cwd=ROOT,
            check=True,
        )
        create_admin(self.data_dir, *ADMIN)
        super().start(timeout)


@pytest.fixture(name="command_hub")
def command_hub_fixture(tmp_path: Path) -> Iterator[CommandHub]:
    process = CommandHub(tmp_path / "hub-data", tmp_path / "hub.log")
    process.start()
    yield process
    process.stop()


@contextmanager
def admin_client(hub: CommandHub) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hub.base_url, timeout=10) as client:
        login = {"username": ADMIN[0], "password": ADMIN[1]}
        client.post("/api/login", json=login).raise_for_status()
        client.headers["X-CSRF-Token"] = client.cookies["hub_csrf"]
        yield client


def log_in(page: Any, username: str, password: str) -> None:
    page.get_by_label("用户名").fill(username)
    page.get_by_label("密码").fill(password)
    page.get_by_role("button", name="登录").click()


def test_a_station_joining_shows_online_on_the_dashboard(
    command_hub: CommandHub, browsers: Browsers
) -> None:
    with admin_client(command_hub) as admin:
        admin.post(
            "/api/accounts",
            json={
                "username": OPERATOR[0],
                "password": OPERATOR[1],
                "role": "station_operator",
                "site": STATION,
            },
        ).raise_for_status()
        start = datetime.now(LOCAL_ZONE).replace(second=0, microsecond=0) - timedelta(minutes=1)
        admin.post(
            "/api/sessions",
            json={
                "title": "理论宣讲：乡村振兴",
                "theme": "theory",
                "host": "C",
                "audience": {"kind": "subtrees", "codes": ["I01"]},
                "start": start.isoformat(),
                "end": (start + timedelta(hours=1)).isoformat(),
            },
        ).raise_for_status()

    dashboard = browsers.open(f"{command_hub.base_url}/dashboard", "dashboard", 1280, 900)
    log_in(dashboard, *ADMIN)
    row = dashboard.locator(f'tr[data-code="{STATION}"]')
    row.wait_for()
    assert dashboard.locator("table.sites tbody tr").count() == 191
    assert row.get_attribute("data-online") == "false"
    poll(
        lambda: (
            None if dashboard.locator("#live").get_attribute("data-live") == "true" else "not live"
        )
    )

    station = browsers.open(f"{command_hub.base_url}/sessions", "station", 360, 740)
    log_in(station, *OPERATOR)
    join = station.get_by_role("button", name="进入活动: 理论宣讲：乡村振兴")
    join.wait_for()
    width = station.evaluate("document.documentElement.scrollWidth")
    assert width <= 360, f"the sessions page scrolls sideways at 360 px ({width} px)"
    # The station's notice stream alone makes it online.
    poll(lambda: None if row.get_attribute("data-online") == "true" else "no notice stream seen")

    dashboard.get_by_label("标题").fill("请各站提前调试设备")
    dashboard.get_by_label("范围").select_option("sites")
    dashboard.get_by_label("编码或地区（逗号分隔）").fill(STATION)
    dashboard.get_by_role("button", name="下发").click()
    directive = dashboard.locator("#directives li").first
    poll(lambda: None if "已读 0 / 1" in directive.inner_text() else directive.inner_text())
    station.get_by_role("button", name="确认已读: 请各站提前调试设备").click()
    poll(lambda: None if "已读 1 / 1" in directive.inner_text() else directive.inner_text())

    join.click()
    station.wait_for_url("**/station?room=*")
    assert "token" not in station.url
    poll(
        lambda: (
            None
            if "理论宣讲" in row.inner_text() and row.get_attribute("data-online") == "true"
            else f"dashboard row: {row.inner_text()!r}"
        ),
        timeout=20,
    )
    assert "理论宣讲" in dashboard.locator("#stats").inner_text()  # the theme chart
    screenshot(dashboard, "dashboard.png")
    dashboard.set_viewport_size({"width": 360, "height": 740})
    width = dashboard.evaluate("document.documentElement.scrollWidth")
    assert width <= 360, f"the dashboard scrolls sideways at 360 px ({width} px)"

    dashboard.get_by_role("button", name="切换语言为英文").click()
    assert dashboard.locator("h1").inner_text() == "Command dashboard"
    # Its fake microphone beeps: the row may say it is speaking rather than online.
    assert "Online" in row.inner_text() or "Speaking" in row.inner_text()


def test_the_dashboard_is_for_the_center_and_institutes(
    command_hub: CommandHub, browsers: Browsers
) -> None:
    with admin_client(command_hub) as admin:
        admin.post(
            "/api/accounts",
            json={
                "username": OPERATOR[0],
                "password": OPERATOR[1],
                "role": "station_operator",
                "site": STATION,
            },
        ).raise_for_status()
    page = browsers.open(f"{command_hub.base_url}/dashboard", "station-on-dashboard", 360, 740)
    log_in(page, *OPERATOR)
    banner = page.get_by_role("alert").first
    poll(lambda: None if "无权访问" in banner.inner_text() else banner.inner_text())
