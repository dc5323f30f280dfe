"""A real hub on 127.0.0.1, served by uvicorn inside the test's event loop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from hub.ids import ParticipantIdentity, RoomName
from hub.service import Hub
from hub.settings import Settings
from hub.tokens import Role, TokenSigner, grant_for_role
from web.app import create_app

SECRET = "test-secret-0123456789abcdef0123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class RunningHub:
    base: str
    ws: str
    hub: Hub
    signer: TokenSigner
    app: Any

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
        ice_gather_addresses=["127.0.0.1"],
        **overrides,
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
