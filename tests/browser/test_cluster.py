"""Three hub nodes behind Debian's nginx (``deploy/nginx.conf``, templated only for
ports and paths), sharing the real Redis, a real PostgreSQL database and one media
directory, with real Chromium stations (issue 16).

- Everyone joining a room through nginx (the console, three stations, a WHIP ingest)
  lands on the room's node; a browser whose first request lands on another node
  (straight at it, bypassing nginx) is sent to the room's node and decodes the
  lecturer there.
- SIGKILL the room's node mid-lecture, recording and household live on: a live node
  takes the room over with its state, the stations decode again and the household plays
  again by themselves, and the library holds one item of the lecture from before and
  after the kill.
- The node processing that recording's library job dies too: another node takes the
  job when its lease runs out and finishes it, exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from aiortc import RTCSessionDescription
from aiortc.mediastreams import VideoStreamTrack

from bench.households import NGINX, Nginx
from hub.client import HubClient
from hub.peers import make_peer_connection
from tests.browser.conftest import ROOT, Browsers, HubProcess, poll
from tests.browser.rtc import Progress, client_state, sid_of
from tests.browser.test_e2e import joined
from tests.browser.test_restart import assert_one_library_item, household_time, playing
from tests.conftest import missing_service
from tests.helpers import first_track
from tests.test_forwarding_e2e import decode_frames

pytestmark = [pytest.mark.browser, pytest.mark.timeout(480)]

ROOM = "county-cluster"
NODES = ("hub-1", "hub-2", "hub-3")
SECRET = "cluster-test-secret-0123456789abcdef"
ADMIN = ("cluster-admin", "cluster-password-1")
COMEBACK = 10.0
"""Seconds from the kill to the stations decoding and the household playing again: a
node is dead 3 s after its last heartbeat, a live node takes its rooms at its next one,
and the clients reconnect with their backoff (at most 3 s) and set up media again."""


@dataclass
class Cluster:
    nodes: dict[str, HubProcess]
    nginx: Nginx
    redis_url: str
    env: dict[str, str]

    def owner(self) -> str | None:
        """The node the Store says holds the room (the hub's default key prefix)."""
        client = redis.Redis.from_url(self.redis_url)
        try:
            node = client.hget("hub:rooms", ROOM)
        finally:
            client.close()
        return None if node is None else str(node.decode())

    def present(self) -> dict[str, str]:
        """Who is in the room, and on which node, as the nodes tell the Store."""
        client = redis.Redis.from_url(self.redis_url)
        try:
            found = client.hgetall(f"hub:presence:{ROOM}")
        finally:
            client.close()
        return {k.decode(): json.loads(v)["node"] for k, v in found.items()}

    def api(self, method: str, path: str, base: str | None = None) -> dict[str, Any]:
        token = self.nodes[NODES[0]].token(ROOM, "CENTER-OPS", "center")
        with httpx.Client(verify=False, follow_redirects=True, timeout=15) as http:
            response = http.request(
                method,
                f"{base or self.nginx.base}/api/rooms/{ROOM}" + (f"/{path}" if path else ""),
                headers={"Authorization": f"Bearer {token}"},
            )
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer


def _database(postgres_url: str) -> Iterator[str]:
    import psycopg

    name = f"hub_cluster_{uuid.uuid4().hex[:10]}"
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def cluster(tmp_path: Path, redis_url: str, postgres_url: str) -> Iterator[Cluster]:
    if shutil.which(NGINX) is None:
        missing_service("no nginx (apt-get install -y nginx)")
    database = _database(postgres_url)
    database_url = next(database)
    nodes = {node: HubProcess(tmp_path / node, tmp_path / f"{node}.log") for node in NODES}
    nginx = Nginx(tmp_path / "nginx", {node: hub.port for node, hub in nodes.items()})
    env = {
        "HUB_SECRET": SECRET,
        "HUB_REDIS_URL": redis_url,
        "HUB_DATABASE_URL": database_url,
        "HUB_MEDIA_DIR": str(tmp_path / "nfs"),
    }
    for node, hub in nodes.items():
        hub.secret = SECRET
        hub.env = env | {
            "HUB_NODE_ID": node,
            "HUB_NODE_URL": f"{nginx.base}/node/{node}",
        }
    try:
        for hub in nodes.values():
            hub.start()
        nginx.start()
        yield Cluster(nodes, nginx, redis_url, env)
    finally:
        nginx.stop()
        for hub in nodes.values():
            hub.stop()
        for node, hub in nodes.items():
            print(f"--- {node}\n{hub.log_tail()}")
        next(database, None)


def create_admin(cluster: Cluster) -> None:
    subprocess.run(
        [sys.executable, "-m", "hub", "admin", "create", "--username", ADMIN[0]],
        env=os.environ | cluster.env | {"HUB_ADMIN_PASSWORD": ADMIN[1]},
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=60,
    )


class Beside:
    """An event loop in a thread of its own, for the aiortc clients of this test (the
    test's Playwright owns this thread's loop): a WHIP ingest and a station, both
    through nginx, verifying its certificate."""

    def __init__(self, nginx: Nginx) -> None:
        self.nginx = nginx
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._closing: list[Any] = []

    def run(self, coroutine: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def _whip(self, token: str) -> int:
        pc = make_peer_connection([])
        self._closing.append(pc)
        pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        async with httpx.AsyncClient(verify=self.nginx.client_context()) as http:
            answer = await http.post(
                f"{self.nginx.base}/whip/{ROOM}",
                content=pc.localDescription.sdp,
                headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"},
            )
        if answer.status_code == 201:
            await pc.setRemoteDescription(RTCSessionDescription(answer.text, "answer"))
        return answer.status_code

    def whip(self, token: str) -> int:
        """An ingest's WHIP session; its status code."""
        return int(self.run(self._whip(token)))

    async def _station(self, token: str) -> int:
        url = self.nginx.base.replace("https:", "wss:") + f"/ws?room={ROOM}"
        station = HubClient(url, token, tls=self.nginx.client_context())
        self._closing.append(station)
        await station.connect()
        track = await first_track(station, "camera")
        return len(await decode_frames(track.track, 5, timeout=30))

    def station(self, token: str) -> int:
        """A station joined through nginx; the stage's frames it decoded."""
        return int(self.run(self._station(token)))

    def close(self) -> None:
        for each in self._closing:
            with contextlib.suppress(Exception):
                self.run(each.close(), timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def open_page(browsers: Browsers, url: str, label: str) -> Any:
    page = browsers.open(url, label, ignore_https_errors=True)
    joined(page, label)
    return page


def test_a_county_lecture_holds_together_across_three_nodes(
    cluster: Cluster, browsers: Browsers, tmp_path: Path
) -> None:
    create_admin(cluster)
    hub = cluster.nodes[NODES[0]]
    base = cluster.nginx.base
    console = browsers.open(
        f"{base}/console#token={hub.token(ROOM, 'CENTER-01', 'center', name='市中心')}",
        "console",
        ignore_https_errors=True,
    )
    joined(console, "console")
    console.click("#golive")
    lecturer = sid_of(console)
    owner = cluster.owner()
    assert owner in NODES
    station = open_page(
        browsers, f"{base}/station#token={hub.token(ROOM, 'I01-S001', 'station')}", "station1"
    )
    # Another station's first request lands on a node that does not hold the room.
    elsewhere = next(node for node in NODES if node != owner)
    straight = open_page(
        browsers,
        f"{cluster.nodes[elsewhere].base_url}/station#token="
        + hub.token(ROOM, "I01-S002", "station"),
        "station2",
    )
    beside = Beside(cluster.nginx)
    try:
        assert beside.whip(hub.token(ROOM, "ENCODER-1", "ingest")) == 201
        for site in ("I01-S003", "I01-S004"):  # two more stations, aiortc ones
            assert beside.station(hub.token(ROOM, site, "station")) == 5
        for page in (station, straight):
            poll(Progress(page, "video", lecturer, "camera", "framesDecoded"), timeout=40)
        want = {"CENTER-01", "I01-S001", "I01-S002", "I01-S003", "I01-S004", "ENCODER-1"}

        def all_on_the_owner() -> str | None:
            present = cluster.present()
            here = {identity for identity, node in present.items() if node == owner}
            return None if want <= here else f"present: {present}, owner {owner}"

        poll(all_on_the_owner, timeout=30)
        token = hub.token(ROOM, "CENTER-OPS", "center")
        for node in NODES:
            if node != owner:  # asked straight, another node sends the client on
                answer = httpx.get(
                    f"{cluster.nodes[node].base_url}/api/rooms/{ROOM}",
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert answer.status_code == 307
                assert answer.headers["location"] == f"{base}/node/{owner}/api/rooms/{ROOM}"

        # Recording and household live on, then the room's node dies mid-lecture.
        assert cluster.api("POST", "recording")["recording"] is True
        assert cluster.api("POST", "live")["live"] is True
        household = browsers.open(
            f"{base}/watch/{ROOM}", "household", 360, 740, ignore_https_errors=True
        )
        poll(playing(household), timeout=60, interval=1.0)
        time.sleep(10)  # the lecture before
        cluster.nodes[owner].kill()
        killed = time.monotonic()

        def rejoined() -> str | None:
            state = client_state(console)
            return None if state == "joined" and sid_of(console) != lecturer else f"console {state}"

        poll(rejoined, timeout=COMEBACK)
        lecturer_again = sid_of(console)
        for page in (station, straight):
            left = COMEBACK - (time.monotonic() - killed)
            poll(
                Progress(page, "video", lecturer_again, "camera", "framesDecoded"),
                timeout=max(1.0, left),
            )
        before = household_time(household)
        poll(playing(household), timeout=max(1.0, COMEBACK - (time.monotonic() - killed)))
        took = time.monotonic() - killed
        print(f"back on a live node {took:.1f} s after the kill (household at {before:.1f} s)")
        new_owner = cluster.owner()
        assert new_owner in NODES and new_owner != owner
        status = cluster.api("GET", "")
        assert status["public"] is True
        assert status["media"]["recording"] and status["media"]["live"]
        time.sleep(10)  # the lecture after
        assert cluster.api("DELETE", "recording")["recording"] is False
    finally:
        beside.close()

    # The recording's library job: the node processing it dies; another finishes it, once.
    item, node = poll_value(lambda: processing(cluster), timeout=90, interval=0.05)
    cluster.nodes[node].kill()
    print(f"{node}, processing item {item}, killed")
    assert_one_library_item(base, ADMIN, ROOM, verify=False)
    assert job_of(cluster, item) == ("done", 2)  # the dead node's attempt, then one more


def processing(cluster: Cluster) -> tuple[str, str] | None:
    """The library item an ffmpeg of a live node is processing, and that node."""
    library = f"{cluster.env['HUB_MEDIA_DIR']}/library/"
    nodes = {hub.proc.pid: node for node, hub in cluster.nodes.items() if hub.proc}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        item = re.search(re.escape(library) + r"([0-9a-f]{32})", cmdline)
        if "ffmpeg" in cmdline and item is not None and parent in nodes:
            return item[1], nodes[parent]
    return None


def job_of(cluster: Cluster, item: str) -> tuple[str, int]:
    import psycopg

    url = cluster.env["HUB_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT status, attempts FROM library_jobs WHERE item_id = %s", (item,)
        ).fetchall()
    assert len(rows) == 1, rows
    return str(rows[0][0]), int(rows[0][1])


def poll_value(find: Any, timeout: float, interval: float) -> Any:
    """What ``find`` returns first that is not None."""
    found: list[Any] = []

    def check() -> str | None:
        value = find()
        if value is None:
            return "not yet"
        found.append(value)
        return None

    poll(check, timeout=timeout, interval=interval)
    return found[0]
