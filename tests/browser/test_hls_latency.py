"""How far behind the live edge a standard LL-HLS player sits: hls.js (the npm
package, served from node_modules: no network) with its default configuration in
Debian's Chromium, on the packager's own settings."""

from __future__ import annotations

import socket
import statistics
from pathlib import Path

import pytest

from media.hls import SEGMENT_TARGET
from tests.conftest import missing_service
from tests.helpers import wait_until
from tests.test_hls import free_socket as free_socket
from tests.test_hls import playable, start_live

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

HLS_JS = Path(__file__).resolve().parents[2] / "node_modules" / "hls.js" / "dist" / "hls.min.js"
PAGE = '<video id="v" muted autoplay playsinline></video><script src="/hls.min.js"></script>'
START = """src => {
    const video = document.getElementById("v");
    const hls = new Hls();  // hls.js's defaults: low-latency mode on
    window.hls = hls;
    window.failures = [];
    hls.on(Hls.Events.ERROR, (_, data) => { if (data.fatal) window.failures.push(data.details); });
    hls.loadSource(src);
    hls.attachMedia(video);
}"""
SAMPLE = """() => [hls.latency, hls.targetLatency, document.getElementById("v").currentTime,
              window.failures]"""
WARMUP = 6.0
"""Seconds of playing before the latency counts: hls.js settles on its start."""


async def test_hls_js_sits_close_to_the_live_edge(
    tmp_path: Path, free_socket: socket.socket, chromium_path: str
) -> None:
    from playwright.async_api import async_playwright

    if not HLS_JS.exists():
        missing_service("hls.js not installed: run `npm ci` at the repository root")
    async with start_live(
        tmp_path / "room", free_socket, "H264", speed=1.0, loops=15, segment_target=SEGMENT_TARGET
    ) as live:
        await playable(live)
        base = live.base.removesuffix("/live/room")
        async with async_playwright() as playwright:
            context = await playwright.chromium.launch_persistent_context(
                str(tmp_path / "profile"),
                executable_path=chromium_path,
                headless=True,
                args=[
                    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--autoplay-policy=no-user-gesture-required",
                    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
                ],
            )  # fmt: skip
            try:
                page = await context.new_page()
                # The page and hls.js come from the stream's origin, served by the test.
                await page.route(
                    f"{base}/", lambda route: route.fulfill(body=PAGE, content_type="text/html")
                )
                await page.route(
                    f"{base}/hls.min.js",
                    lambda route: route.fulfill(path=HLS_JS, content_type="text/javascript"),
                )
                await page.goto(f"{base}/")
                await page.evaluate(START, f"{live.base}/index.m3u8")

                async def playing() -> str | None:
                    _, _, time, failures = await page.evaluate(SAMPLE)
                    assert not failures, f"hls.js failed: {failures}"
                    return None if time > WARMUP else f"played {time:.1f} s"

                await wait_until(playing, timeout=40, interval=0.5)
                samples: list[tuple[float, float]] = []
                for _ in range(20):
                    latency, target, _, failures = await page.evaluate(SAMPLE)
                    assert not failures, f"hls.js failed: {failures}"
                    samples.append((latency, target))
                    await page.wait_for_timeout(500)
            finally:
                await context.close()
    latencies = [latency for latency, _ in samples]
    median = statistics.median(latencies)
    print(
        f"hls.js behind the live edge: median {median:.2f} s, max {max(latencies):.2f} s,"
        f" its target {samples[-1][1]:.2f} s"
    )
    # Where hls.js aims (PART-HOLD-BACK): 1 s with the former 0.334 s parts.
    assert samples[-1][1] <= 0.8, f"hls.js aims {samples[-1][1]:.2f} s behind the edge"
    # The goal is 1.5 s: measured 1.3-1.6 s here, 1.8-2.2 s with the machine's load
    # average at 45 (other jobs). With 2 s segments and 0.334 s parts: 2.4-3.7 s.
    assert median <= 2.2, f"hls.js sits {median:.2f} s behind the live edge: {samples}"
