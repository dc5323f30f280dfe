"""A real hub on 127.0.0.1, served by uvicorn inside the test's event loop."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import httpx
import uvicorn

from hub.ids import ParticipantIdentity, RoomName
from hub.service import Hub
from hub.settings import Settings
from hub.tokens import Role, TokenSigner, grant_for_role
from tests.helpers import wait_until
from web.app import create_app

SECRET = "test-secret-0123456789abcdef0123"
METRICS_TOKEN = "test-metrics-token-0123456789"
"""The test hub's scraper token (``HUB_METRICS_TOKEN``): /metrics then shows every series."""
FIRST_TEST_PORT = 20000
"""Above the registered ports that services on this machine kind use (PostgreSQL 5432,
Redis 6379, RabbitMQ 5672 and the like)."""


def free_port() -> int:
    """A loopback port free for both TCP and UDP, below the kernel's ephemeral range.

    A port the kernel hands out (bind to 0) lies in the ephemeral range, where any
    outgoing connection of the suite may take it before the server under test binds
    it: a CI run lost coturn's TCP listener that way. Ports below the range are only
    ever taken by an explicit bind."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(FIRST_TEST_PORT, low), 100):
        try:
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                with socket.socket(socket.AF_INET, kind) as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no free loopback port in {FIRST_TEST_PORT}-{low - 1}")


@dataclass
class RunningHub:
    base: str
    ws: str
    hub: Hub
    signer: TokenSigner
    app: Any
    metrics_headers: ClassVar[dict[str, str]] = {"Authorization": f"Bearer {METRICS_TOKEN}"}

    def token(
        self, room: str, identity: str, role: str, *, name: str | None = None, ttl: float = 3600
    ) -> str:
        grant = grant_for_role(
            RoomName(room), ParticipantIdentity(identity), Role(role), ttl=ttl, name=name
        )
        return self.signer.issue(grant)


@asynccontextmanager
async def running_hub(data_dir: Path, **overrides: Any) -> AsyncIterator[RunningHub]:
    port = free_port()
    settings = Settings(
        host="127.0.0.1",
        port=port,
        data_dir=data_dir,
        secret=SECRET,
        **{"ice_gather_addresses": ["127.0.0.1"], "metrics_token": METRICS_TOKEN, **overrides},
    )
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws_max_size=300_000)
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield RunningHub(
            base=f"http://127.0.0.1:{port}",
            ws=f"ws://127.0.0.1:{port}/ws",
            hub=app.state.hub,
            signer=TokenSigner(SECRET),
            app=app,
        )
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), 20)
        except TimeoutError:
            stuck = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in stuck:
                t.print_stack()
            raise AssertionError(
                f"hub did not shut down in 20 s; {len(stuck)} tasks left"
            ) from None


async def hub_process(
    data_dir: Path, port: int, settings: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    """``python -m hub serve`` in a process of its own (a test kills it), answering
    ``/healthz``; ``settings``: more ``HUB_*`` variables."""
    env = {
        **os.environ,
        "HUB_SECRET": SECRET,
        "HUB_ICE_GATHER_ADDRESSES": '["127.0.0.1"]',
        **(settings or {}),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hub", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--data-dir", str(data_dir), env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

        async def healthy() -> str | None:
            if process.returncode is not None:
                raise AssertionError(f"the hub exited with {process.returncode}")
            try:
                return None if (await http.get("/healthz")).status_code == 200 else "?"
            except httpx.TransportError as exc:
                return f"not up: {exc}"

        try:
            await wait_until(healthy, timeout=60, interval=0.2)
        except BaseException:
            if process.returncode is None:
                process.kill()
                await process.wait()
            raise
    return process
