"""``python -m bench.dashboard --json``: how fast the command dashboard reflects a
station joining or leaving, with the whole county connected.

A real hub (``python -m hub serve``) in its own process on 127.0.0.1;
190 signaling connections (websocket ``/ws`` joins, no media) as the 14 institutes
and 176 stations; the center administrator's ``/api/dashboard/stream``. Then ~50
changes, one at a time: a station leaves (closes its socket) or joins again, and the
time until the stream reports it is measured. Prints one JSON object last:
``{"sites": 190, "p50_ms": …, "p95_ms": …, "changes": …}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import websockets

from bench.fanout import HubProcess, create_admin
from hub.ids import ParticipantIdentity, RoomName
from hub.tokens import Role, TokenSigner, grant_for_role

ROOT = Path(__file__).resolve().parent.parent
ROOM = "county-meeting"
ADMIN = ("bench-admin", "bench-password-1")


def _run(*argv: str) -> None:
    subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, check=True, timeout=60)


class Station:
    """One site's signaling connection (join only, messages drained)."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
        self.socket: Any = None
        self.reader: asyncio.Task[None] | None = None

    async def join(self) -> None:
        self.socket = await websockets.connect(self.url, max_size=2**22)
        await self.socket.send(json.dumps({"type": "join", "token": self.token}))
        while json.loads(await self.socket.recv())["type"] not in ("joined", "error"):
            pass
        self.reader = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        try:
            async for _ in self.socket:
                pass
        except websockets.ConnectionClosed:
            pass

    async def leave(self) -> None:
        await self.socket.close()
        if self.reader is not None:
            await self.reader


class DashboardWatch:
    """The center's dashboard stream: when each site was last seen online/offline."""

    def __init__(self) -> None:
        self.online: dict[str, bool] = {}
        self.changed = asyncio.Event()

    async def follow(self, client: httpx.AsyncClient) -> None:
        event = ""
        async with client.stream("GET", "/api/dashboard/stream", timeout=None) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event in ("snapshot", "sites"):
                    for site in json.loads(line[6:])["sites"]:
                        self.online[site["code"]] = site["online"]
                    self.changed.set()

    async def until(self, code: str, online: bool, timeout: float = 10.0) -> float:
        """Waits until ``code`` shows ``online``; the monotonic time it did."""
        deadline = time.monotonic() + timeout
        while self.online.get(code) is not online:
            self.changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{code} never showed online={online}")
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                pass
        return time.monotonic()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(base: str, secret: str, changes: int) -> dict[str, Any]:
    signer = TokenSigner(secret)

    def issue(code: str, kind: str, name: str) -> str:
        grant = grant_for_role(
            RoomName(ROOM), ParticipantIdentity(code), Role(kind), ttl=3600, name=name
        )
        return signer.issue(grant)

    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        response = await client.post(
            "/api/login", json={"username": ADMIN[0], "password": ADMIN[1]}
        )
        response.raise_for_status()
        sites = [
            s for s in (await client.get("/api/dashboard")).json()["sites"] if s["kind"] != "center"
        ]
        watch = DashboardWatch()
        follower = asyncio.create_task(watch.follow(client))
        stations = {
            s["code"]: Station(
                base.replace("http", "ws") + "/ws", issue(s["code"], s["kind"], s["name"])
            )
            for s in sites
        }
        try:
            gate = asyncio.Semaphore(10)

            async def join(station: Station) -> None:
                async with gate:
                    await station.join()

            await asyncio.gather(*(join(s) for s in stations.values()))
            for code in stations:
                await watch.until(code, True, timeout=60)
            delays: list[float] = []
            codes = [c for c, s in zip(stations, sites, strict=True) if s["kind"] == "station"]
            for i in range(changes):
                code = codes[(i // 2 * 7) % len(codes)]
                station = stations[code]
                started = time.monotonic()
                if i % 2 == 0:
                    await station.leave()
                    seen = await watch.until(code, False)
                else:
                    await station.join()
                    seen = await watch.until(code, True)
                delays.append((seen - started) * 1000)
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
            await asyncio.gather(
                *(s.leave() for s in stations.values() if s.socket is not None),
                return_exceptions=True,
            )
    return {
        "sites": len(stations),
        "p50_ms": round(percentile(delays, 0.5), 1),
        "p95_ms": round(percentile(delays, 0.95), 1),
        "max_ms": round(max(delays), 1),
        "changes": len(delays),
    }


def bench(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp:
        data_dir = Path(tmp)
        database = f"sqlite+aiosqlite:///{data_dir / 'hub.sqlite3'}"
        _run("scheduler.seed", "--database-url", database)
        create_admin(data_dir, *ADMIN)
        hub = HubProcess(data_dir)
        try:
            hub.wait_healthy(30)
            return asyncio.run(asyncio.wait_for(measure(hub.base, hub.secret, args.changes), 100))
        finally:
            hub.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    parser.add_argument("--changes", type=int, default=50, help="presence changes to time")
    args = parser.parse_args(argv)
    result = bench(args)
    if not args.json:
        print(
            f"{result['sites']} sites connected; dashboard reflects a presence change in "
            f"p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms (goal ≤ 1000 ms at p95)"
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
