"""Browser end-to-end fixtures: the real hub as a subprocess, real Chromium.

Everything runs on 127.0.0.1. The hub is started with
``python -m hub serve`` and a fresh data dir; tokens are minted with the same
secret by ``hub.tokens``. Chromium is Debian's, headless, with a fake camera,
microphone and screen; each page gets its own persistent context (its own
process), at most four at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from bench.fanout import create_admin as create_admin
from hub.aiortc_internals import drop_sent
from hub.client import HubClient
from tests.hubserver import free_port

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "docs" / "screenshots"

CHROMIUM_ARGS = [
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--allow-loopback-in-peer-connection",
    # No test reaches out: every name but the hub's resolves to nothing.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
]


class HubProcess:
    """The real hub in a subprocess; ``restart()`` keeps its port and data dir."""

    def __init__(
        self,
        data_dir: Path,
        log_path: Path,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.env = env or {}
        """Set in the hub's environment besides what the tests set."""
        self.host = host
        """Where it listens and gathers ICE candidates (tests/netlab.py's address)."""
        self.port = free_port()
        self.data_dir = data_dir
        self.secret = secrets.token_urlsafe(24)[:32]
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.base_url = f"http://{host}:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        env = dict(os.environ)
        env["HUB_ICE_GATHER_ADDRESSES"] = json.dumps([self.host])
        env["HUB_SECRET"] = self.secret
        env |= self.env
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hub",
                "serve",
                "--host",
                self.host,
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"hub exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"hub not healthy after {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        proc = self.proc
        self.proc = None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def kill(self) -> None:
        """An abrupt end (a crash or a power cut at the hub)."""
        proc = self.proc
        self.proc = None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)

    def restart(self) -> None:
        self.kill()
        self.start()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def token(self, room: str, identity: str, role: str, name: str | None = None) -> str:
        from hub.ids import ParticipantIdentity, RoomName
        from hub.tokens import Role, TokenSigner, grant_for_role

        grant = grant_for_role(
            RoomName(room), ParticipantIdentity(identity), Role(role), ttl=3600, name=name
        )
        return TokenSigner(self.secret).issue(grant)


def _serve(
    tmp_path: Path, request: pytest.FixtureRequest, env: dict[str, str] | None = None
) -> Iterator[HubProcess]:
    if not (ROOT / "hub" / "__main__.py").exists():
        pytest.fail("hub/__main__.py missing: `python -m hub serve` cannot start the hub")
    process = HubProcess(tmp_path / "hub-data", tmp_path / "hub.log", env=env)
    process.start()
    yield process
    process.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        sys.stderr.write(f"\n--- hub log tail ---\n{process.log_tail()}\n")


@pytest.fixture
def hub(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[HubProcess]:
    yield from _serve(tmp_path, request)


@pytest.fixture
def shared_hub(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[HubProcess]:
    """The hub with every peer connection's media on one UDP port (``HUB_UDP_PORT``)."""
    yield from _serve(tmp_path, request, {"HUB_UDP_PORT": str(free_port())})


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)


class Browsers:
    """Opens pages, each in its own fresh persistent Chromium context."""

    MAX_CONTEXTS = 4

    def __init__(self, playwright: Any, chromium_path: str, tmp_path: Path) -> None:
        self.playwright = playwright
        self.chromium_path = chromium_path
        self.tmp_path = tmp_path
        self.contexts: list[Any] = []
        self.console_logs: dict[str, list[str]] = {}

    def open(
        self,
        url: str,
        label: str,
        width: int = 1280,
        height: int = 800,
        executable: str | None = None,
        args: list[str] | None = None,
        *,
        ignore_https_errors: bool = False,
    ) -> Any:
        """``executable`` (default: the Chromium found) and ``args`` replace
        :data:`CHROMIUM_ARGS`' defaults where they say so: a station in a network
        namespace runs through a wrapper, on the lab's address. ``ignore_https_errors``:
        for a test's own self-signed certificate (nginx)."""
        if len(self.contexts) >= self.MAX_CONTEXTS:
            raise AssertionError("at most four browser contexts at once")
        context = self.playwright.chromium.launch_persistent_context(
            str(self.tmp_path / f"profile-{label}"),
            executable_path=executable or self.chromium_path,
            headless=True,
            args=args or CHROMIUM_ARGS,
            viewport={"width": width, "height": height},
            ignore_https_errors=ignore_https_errors,
        )
        self.contexts.append(context)
        page = context.pages[0] if context.pages else context.new_page()
        logs = self.console_logs.setdefault(label, [])
        page.on("console", lambda m: logs.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: logs.append(f"pageerror: {e}"))
        page.set_default_timeout(20000)
        page.goto(url)
        return page

    def close(self) -> None:
        for context in self.contexts:
            try:
                context.close()
            except Exception:  # a crashed browser must not hide the test's failure
                pass
        self.contexts.clear()

    def dump_logs(self) -> str:
        return "\n".join(
            f"--- {label} ---\n" + "\n".join(lines[-40:])
            for label, lines in self.console_logs.items()
        )


@pytest.fixture
def playwright_instance() -> Iterator[Any]:
    # Per test, not per session: sync Playwright keeps an event loop running in
    # this thread, which would break every asyncio test that runs after it.
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture
def browsers(
    chromium_path: str, playwright_instance: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Browsers]:
    b = Browsers(playwright_instance, chromium_path, tmp_path)
    yield b
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        sys.stderr.write(f"\n--- browser console ---\n{b.dump_logs()}\n")
    b.close()


class ThreadedPublisher:
    """An aiortc publisher (camera + microphone) in its own thread and event loop:
    sync Playwright owns this thread's loop."""

    def __init__(self, ws_url: str, token: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.client = HubClient(ws_url, token)
        self.dark = False
        """While true, nothing the publisher sends leaves it (see :meth:`start`)."""

    def run(self, coroutine: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def start(self) -> None:
        self.run(self.client.connect())
        self.run(
            self.client.publish({"camera": VideoStreamTrack(), "microphone": AudioStreamTrack()})
        )
        assert self.client.publisher is not None
        drop_sent(self.client.publisher, lambda packet: self.dark)

    def close(self) -> None:
        try:
            self.run(self.client.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()


def screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


def poll(check: Callable[[], str | None], timeout: float = 20.0, interval: float = 0.5) -> float:
    """Waits until ``check`` returns None (it returns why not, otherwise); returns
    the seconds it took. A timeout says what was missing."""
    start = time.monotonic()
    reason: str | None = "never checked"
    while time.monotonic() - start < timeout:
        reason = check()
        if reason is None:
            return time.monotonic() - start
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s: {reason}")
