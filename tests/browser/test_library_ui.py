"""The digital library and the household live stream in real headless Chromium,
against the real hub in a subprocess: items made by the real ffmpeg and processed
by the hub's own job runner; live HLS from a real aiortc publisher."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import imageio_ffmpeg
import pytest

from tests.browser.conftest import (
    Browsers,
    HubProcess,
    ThreadedPublisher,
    create_admin,
    poll,
    screenshot,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]

ADMIN = ("county-admin", "library-admin-pass")


def make_clip(path: Path, seconds: float = 3.0) -> Path:
    """A short H.264 + AAC MP4 (what an administrator would upload), real ffmpeg."""
    subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y",
            "-f", "lavfi", "-i", f"testsrc=size=320x180:rate=25:duration={seconds}",
            "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}",
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "25",
            "-c:a", "aac", "-b:a", "64k", "-shortest", "-movflags", "+faststart", str(path),
        ],
        check=True,
    )  # fmt: skip
    return path


@pytest.fixture
def admin_hub(hub: HubProcess) -> HubProcess:
    """The hub with a center administrator, made with the installer's command (it
    creates the tables if needed; SQLite lets it write next to the running hub)."""
    create_admin(hub.data_dir, *ADMIN)
    return hub


@contextmanager
def admin_client(hub: HubProcess) -> Iterator[httpx.Client]:
    """An HTTP client logged in as the administrator (cookie + CSRF header)."""
    with httpx.Client(base_url=hub.base_url, timeout=30) as client:
        login = client.post("/api/login", json={"username": ADMIN[0], "password": ADMIN[1]})
        login.raise_for_status()
        client.headers["X-CSRF-Token"] = client.cookies["hub_csrf"]
        yield client


def wait_ready(client: httpx.Client, item_id: str, timeout: float = 60) -> None:
    def done() -> str | None:
        job = client.get(f"/api/library/{item_id}/job").json()
        return (
            None if job["status"] == "done" else f"{job['status']} {job['progress']} {job['error']}"
        )

    poll(done, timeout=timeout)


def visible_titles(page: Any) -> list[str]:
    titles: list[str] = page.locator("#results li.item h3").all_inner_texts()
    return titles


def wait_summary(page: Any, text: str) -> None:
    page.locator("#summary", has_text=text).wait_for(timeout=10000)


def upload(client: httpx.Client, clip: Path, **fields: str) -> str:
    """Upload ``clip`` with these metadata fields; the new item's id."""
    with clip.open("rb") as file:
        answer = client.post(
            "/api/library/uploads", files={"file": (clip.name, file, "video/mp4")}, data=fields
        )
    assert answer.status_code == 202, answer.text
    item_id: str = answer.json()["item"]["id"]
    return item_id


def test_replay_plays_an_item_found_by_theme_and_chinese_search(
    admin_hub: HubProcess, browsers: Browsers, tmp_path: Path
) -> None:
    title = "乡村振兴与科学种田"
    with admin_client(admin_hub) as admin:
        item_id = upload(
            admin, make_clip(tmp_path / "talk.mp4"),
            title=title, theme="science", date="2026-11-20", speaker="李老师", site="S001",
            tags="农业,种植", description="讲解大棚蔬菜的新技术。", published="true",
        )  # fmt: skip
        wait_ready(admin, item_id)

    # Browse on a phone-sized screen, as a household.
    page = browsers.open(f"{admin_hub.base_url}/library", "library", width=360, height=740)
    hosts: set[str] = set()
    page.on("request", lambda r: hosts.add(urlparse(r.url).hostname or r.url))
    page.reload()
    assert page.locator("h1").inner_text() == "数字图书馆"
    wait_summary(page, "共 1 个节目")
    assert visible_titles(page) == [title]
    assert page.locator("#admin").is_hidden()  # not an administrator
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 360
    # By theme, operated from the keyboard.
    page.focus("[data-theme=fitness]")
    page.keyboard.press("Enter")
    wait_summary(page, "没有找到节目")
    assert visible_titles(page) == []
    page.keyboard.press("Shift+Tab")  # from "fitness" back to "science"
    page.keyboard.press("Enter")
    wait_summary(page, "共 1 个节目")
    assert page.locator("[data-theme=science]").get_attribute("aria-pressed") == "true"
    assert page.evaluate("() => document.activeElement.dataset.theme") == "science"
    assert visible_titles(page) == [title]
    # Search: a Chinese term of the description, then one that is nowhere; site, date.
    for query, site, since, found in [
        ("大棚蔬菜", "", "", True),
        ("太极拳", "", "", False),
        ("", "S001", "2026-11-01", True),
        ("", "S999", "", False),
        ("", "", "2026-11-21", False),
    ]:
        search = page.get_by_role("search")
        search.get_by_label("搜索标题、简介、标签").fill(query)
        search.get_by_label("站点").fill(site)
        search.get_by_label("开始日期").fill(since)
        search.get_by_role("button", name="搜索", exact=True).click()
        wait_summary(page, "共 1 个节目" if found else "没有找到节目")
        assert visible_titles(page) == ([title] if found else []), (query, site, since)
    assert "theme=science" in page.url  # the view can be bookmarked
    # English on request; remembered across pages.
    page.click("#lang-toggle")
    assert page.locator("h1").inner_text() == "Digital library"
    assert page.locator("[data-theme=science]").inner_text() == "Science"
    page.click("#lang-toggle")

    page.get_by_role("button", name="清除").click()
    wait_summary(page, "共 1 个节目")
    page.get_by_role("link", name=title, exact=True).click()
    page.wait_for_url(f"**/replay/{item_id}")
    assert page.locator("#title").inner_text() == title
    assert page.locator("#theme").inner_text() == "科技科普"
    assert page.locator("#speaker").inner_text() == "李老师"
    assert page.locator("#date").inner_text() == "2026-11-20"
    assert page.locator("#duration").inner_text() == "0:03"
    assert page.locator("#description").inner_text() == "讲解大棚蔬菜的新技术。"
    assert page.locator("#player").get_attribute("poster") == f"/library/{item_id}/poster.jpg"
    href = page.locator("#download").get_attribute("href")
    assert href == f"/library/{item_id}/video.mp4"

    page.evaluate(
        "() => { const v = document.getElementById('player'); v.muted = true; v.play(); }"
    )

    def playing() -> str | None:
        t = page.evaluate("() => document.getElementById('player').currentTime")
        return None if t > 1.0 else f"currentTime {t}"

    poll(playing, timeout=30)
    source = page.evaluate(
        "() => [window.practiceHubReplay.source, document.getElementById('player').currentSrc]"
    )
    assert source == ["hls", f"{admin_hub.base_url}/library/{item_id}/index.m3u8"], source

    with httpx.Client(base_url=admin_hub.base_url) as anonymous:

        def counted() -> str | None:
            views = anonymous.get(f"/api/library/{item_id}").json()["views"]
            return None if views == 1 else f"views {views}"

        poll(counted, timeout=10)
        part = anonymous.get(href, headers={"Range": "bytes=0-99"})
        assert part.status_code == 206 and len(part.content) == 100
        assert part.headers["content-range"].startswith("bytes 0-99/")

    assert page.evaluate("() => document.documentElement.scrollWidth") <= 360
    assert hosts == {"127.0.0.1"}, f"requests outside the hub: {hosts}"
    page.set_viewport_size({"width": 1280, "height": 800})
    screenshot(page, "replay.png")

    page.goto(f"{admin_hub.base_url}/replay/{'0' * 32}")
    page.get_by_role("alert").filter(has_text="没有这个节目").wait_for()
    assert page.locator("#item").is_hidden()


def test_browse_pages_through_results_newest_first(
    admin_hub: HubProcess, browsers: Browsers, tmp_path: Path
) -> None:
    clip = make_clip(tmp_path / "clip.mp4", seconds=1.0)
    titles = ["健身气功八段锦", "二十四节气与农事", "党的创新理论学习"]
    with admin_client(admin_hub) as admin:
        ids = [
            upload(admin, clip, title=title, theme=theme, date=date, published="true")
            for title, theme, date in zip(
                titles,
                ["fitness", "science", "theory"],
                ["2026-11-03", "2026-11-02", "2026-11-01"],
                strict=True,
            )
        ]
        for item_id in ids:
            wait_ready(admin, item_id)
    page = browsers.open(f"{admin_hub.base_url}/library?page_size=2", "pages", width=360)
    wait_summary(page, "共 3 个节目")
    assert visible_titles(page) == titles[:2]
    assert page.locator("#page-info").inner_text() == "第 1 / 2 页"
    assert page.locator("#prev").is_disabled()
    page.get_by_role("button", name="下一页").click()
    page.locator("#page-info", has_text="第 2 / 2 页").wait_for()
    assert visible_titles(page) == titles[2:]
    assert page.locator("#next").is_disabled()
    assert "page=2" in page.url
    page.reload()  # the address keeps the page
    page.locator("#page-info", has_text="第 2 / 2 页").wait_for()
    page.get_by_role("button", name="上一页").click()
    page.locator("#page-info", has_text="第 1 / 2 页").wait_for()
    assert visible_titles(page) == titles[:2]


def test_administrator_uploads_follows_processing_publishes_and_deletes(
    admin_hub: HubProcess, browsers: Browsers, tmp_path: Path
) -> None:
    clip = make_clip(tmp_path / "dance.mp4")
    title = "广场舞教学第一课"
    page = browsers.open(f"{admin_hub.base_url}/library", "admin")
    wait_summary(page, "没有找到节目")
    page.get_by_text("管理员登录").click()
    page.get_by_label("用户名").fill(ADMIN[0])
    page.get_by_label("密码").fill(ADMIN[1])
    page.get_by_role("button", name="登录").click()
    page.locator("#admin").wait_for(state="visible")
    assert page.locator("#who").inner_text() == f"管理员：{ADMIN[0]}"

    # Every progress text the page shows while the job runs (it may be brief).
    page.evaluate(
        """() => {
            window.progressSeen = [];
            new MutationObserver(() => {
                for (const el of document.querySelectorAll('.job-progress'))
                    window.progressSeen.push(el.textContent);
            }).observe(document.getElementById('results'), { childList: true, subtree: true });
        }"""
    )
    upload = page.locator("#upload")
    upload.get_by_label("视频文件").set_input_files(str(clip))
    upload.get_by_label("标题").fill(title)
    upload.get_by_label("主题").select_option("culture")
    upload.get_by_label("标签（用逗号分隔）").fill("舞蹈,健身")
    upload.get_by_role("button", name="上传").click()
    page.locator("#upload-status", has_text=f"已上传《{title}》").wait_for()

    card = page.locator("li.item", has_text=title)
    card.locator(".item-status[data-status=ready]").wait_for(timeout=60000)
    item_id = card.get_attribute("data-id")
    jobs = page.evaluate(
        "() => [...window.practiceHubLibrary.jobs.entries()]"
        ".map(([id, job]) => [id, job.status, job.progress])"
    )
    assert [item_id, "done", 100] in jobs, jobs
    seen = page.evaluate("() => window.progressSeen")
    assert any(text.startswith(("处理进度", "排队中")) for text in seen), seen
    assert "可播放" in card.locator(".item-status").inner_text()
    assert "未公开" in card.locator(".item-status").inner_text()

    with httpx.Client(base_url=admin_hub.base_url) as anonymous:

        def public_ids() -> list[str]:
            return [i["id"] for i in anonymous.get("/api/library").json()["items"]]

        assert public_ids() == []
        card.get_by_role("button", name="公开", exact=True).focus()
        page.keyboard.press("Enter")
        card.get_by_role("button", name="取消公开", exact=True).wait_for()
        assert public_ids() == [item_id]
        # The list was rebuilt; the keyboard focus is still on that item's button.
        assert page.evaluate("() => document.activeElement.textContent") == "取消公开"
        card.get_by_role("button", name="取消公开", exact=True).click()
        card.get_by_role("button", name="公开", exact=True).wait_for()
        assert public_ids() == []

        page.once("dialog", lambda dialog: dialog.accept())
        card.get_by_role("button", name="删除").click()
        card.wait_for(state="detached")
        wait_summary(page, "没有找到节目")
        with admin_client(admin_hub) as admin:
            assert admin.get(f"/api/library/{item_id}").status_code == 404


def test_live_household_stream_plays_in_chromium(hub: HubProcess, browsers: Browsers) -> None:
    room = "live-households"
    center = hub.token(room, "CENTER-01", "center")
    publisher = ThreadedPublisher(f"ws://127.0.0.1:{hub.port}/ws", center)
    try:
        publisher.start()
        with httpx.Client(base_url=hub.base_url, timeout=10) as http:
            started = http.post(
                f"/api/rooms/{room}/live", headers={"Authorization": f"Bearer {center}"}
            )
            assert started.status_code == 201, started.text
            playlist = f"{hub.base_url}{started.json()['hls_url']}"

            # 503 until the playlist holds three target durations (Chromium needs them).
            def listed() -> str | None:
                status = http.get(playlist).status_code
                return None if status == 200 else f"HTTP {status}"

            poll(listed, timeout=40)
        page = browsers.open(f"{hub.base_url}/healthz", "live")
        page.set_content(f'<video id="v" muted autoplay playsinline src="{playlist}"></video>')

        def advancing() -> str | None:
            state = page.evaluate(
                "() => { const v = document.getElementById('v');"
                " return [v.currentTime, v.error ? v.error.code : 0]; }"
            )
            if state[1]:  # a player that gave up (e.g. a playlist cut short): load again
                page.evaluate("url => { document.querySelector('#v').src = url; }", playlist)
            return None if state[0] > 2.0 else f"currentTime {state[0]}, error {state[1]}"

        poll(advancing, timeout=40)
    finally:
        publisher.close()
