"""Households through nginx's cache: Debian's nginx with ``deploy/nginx.conf``
(templated only for ports and paths) in front of a real hub whose lecturer is a real
aiortc publisher, the hub's ffmpeg packaging the room as LL-HLS. Players are the
benchmark's (``bench.households``): blocking playlist reloads and part fetches, as
hls.js does."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bench.households import NGINX, HttpConnection, Nginx, Played, Seen, play
from tests.conftest import missing_service
from tests.helpers import wait_until
from tests.hubserver import RunningHub, running_hub
from tests.test_room_media import lecturing

pytestmark = pytest.mark.timeout(120)

PLAYLIST = "/live/hh/index.m3u8"


@dataclass
class Cached:
    hub: RunningHub
    nginx: Nginx


@asynccontextmanager
async def live_behind_nginx(tmp_path: Path) -> AsyncIterator[Cached]:
    """Room ``hh`` live for households, playable, and nginx in front of its hub."""
    if shutil.which(NGINX) is None:
        missing_service("no nginx (apt-get install -y nginx)")
    async with (
        running_hub(tmp_path / "hub") as hub,
        lecturing(hub, "hh") as moderator,
        httpx.AsyncClient(base_url=hub.base) as http,
    ):
        started = await http.post("/api/rooms/hh/live", headers=moderator)
        assert started.status_code == 201, started.text

        async def playable() -> str | None:
            response = await http.get(PLAYLIST)
            return None if response.status_code == 200 else f"HTTP {response.status_code}"

        await wait_until(playable, timeout=40, interval=0.5)
        nginx = Nginx(tmp_path / "nginx", int(hub.base.rsplit(":", 1)[1]))
        await asyncio.to_thread(nginx.start)
        try:
            yield Cached(hub, nginx)
        finally:
            await asyncio.to_thread(nginx.stop)


async def test_many_players_through_nginx_cost_the_hub_about_one_request_per_part(
    tmp_path: Path,
) -> None:
    async with live_behind_nginx(tmp_path) as cached:
        nginx = cached.nginx
        context = nginx.client_context()
        seen, players = Seen(), [Played() for _ in range(40)]
        begun = time.time()
        until = time.monotonic() + 8
        await asyncio.gather(
            *(
                # The household page's player id: the cache key leaves it out.
                play(
                    HttpConnection(nginx.base, context),
                    f"{PLAYLIST}?player=p{n:07d}",
                    until,
                    seen,
                    p,
                )
                for n, p in enumerate(players)
            )
        )
        ended = time.time()
    passed = nginx.hub_requests(begun, ended)  # nginx has stopped: its log is complete
    # Every player got every part from its first one to the last one listed a second
    # before the end (later ones may still have been on their way).
    announced = sorted(part for part, at in seen.listed.items() if at < until - 1)
    assert len(announced) >= 10, announced
    for player in players:
        assert not player.errors, player.errors
        first = min(player.got)
        missed = [part for part in announced if part >= first and part not in player.got]
        assert not missed, f"a player missed {missed}"
    # About one blocking reload and one part a part (the init section and the players'
    # first plain playlists besides), where 40 players would cost 80 straight at the hub.
    per_part = len(passed) / len(announced)
    assert per_part <= 3, f"{len(passed)} hub requests for {len(announced)} parts: {passed[-9:]}"
    playlists = [uri for uri in passed if "_HLS_msn" in uri]
    assert len(playlists) <= 1.5 * len(announced), playlists


async def test_players_starting_at_once_share_one_hub_request(tmp_path: Path) -> None:
    """A plain playlist request changes with every part: the hub lets a shared cache
    keep it a second. Were it not storable, nginx would pass the waiting players to
    the hub one by one, each after the previous one's answer."""
    async with live_behind_nginx(tmp_path) as cached:
        nginx = cached.nginx
        context = nginx.client_context()
        begun = time.time()
        started = time.monotonic()
        answers = await asyncio.gather(
            *(HttpConnection(nginx.base, context).get(PLAYLIST) for _ in range(20))
        )
        took = time.monotonic() - started
        ended = time.time()
    assert [status for status, _, _ in answers] == [200] * 20
    passed = [uri for uri in nginx.hub_requests(begun, ended) if uri == PLAYLIST]
    assert len(passed) <= 2, f"{len(passed)} plain playlist requests reached the hub"
    assert took < 3, f"the players were answered after {took:.1f} s"
