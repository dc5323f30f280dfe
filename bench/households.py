"""``python -m bench.households``: a thousand household players on one live room.

N simulated LL-HLS players follow one live room the way hls.js does in low-latency
mode: a plain playlist request, the init section, the newest independent part, then
a blocking playlist reload (``_HLS_msn``/``_HLS_part``) for each next part and a GET
for each part it lists, one keep-alive HTTPS connection per player. They run in a
few worker processes (uvloop, a bare HTTP/1.1 client: httpx would cost more CPU than
the server side), twice: through nginx (Debian's, ``deploy/nginx.conf`` templated
only for ports and paths, its cache in a temp directory) and straight at the hub.

The hub runs in its own process (``python -m hub serve``); the lecturer is
``hub.client.HubClient`` replaying the pre-encoded VP8 clip of ``bench._media``, so
the hub transcodes it once to H.264 (its ffmpeg, not counted in the hub's CPU).

Figures, per run (see bench/README.md):

- ``parts_per_player_missed``: parts announced while a player played that it never
  got, averaged over the players (the most any one player missed beside it);
- ``p95_part_delay_ms``: from a part's announcement (the first moment any client
  received a playlist listing it) to a player having the part's bytes;
- ``hub_requests_per_part``: requests that reached the hub (nginx's log: those with
  an upstream address) per part announced in the window;
- ``hub_cpu_percent``, ``nginx_cpu_percent``: % of one core over the window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import pwd
import re
import resource
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
NGINX = "/usr/sbin/nginx"
ROOM = "households"


class BenchError(RuntimeError):
    """The benchmark could not measure; the message says what went wrong."""


# --- nginx, as deploy/ configures it -------------------------------------------------------


def self_signed(
    directory: Path, address: str = "127.0.0.1", stem: str = "hub"
) -> tuple[Path, Path]:
    """A self-signed certificate for ``address`` (as an IP name; a CA, so clients can
    trust it as its own root) and its key: ``stem``.crt and .key (PEM) in ``directory``."""
    from ipaddress import ip_address

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ip_address(address))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def site_config(
    conf: str,
    *,
    http_port: int,
    https_port: int,
    nodes: dict[str, int],
    tls: tuple[Path, Path],
    cache: Path,
) -> str:
    """``deploy/nginx.conf`` with this machine's ports and paths, nothing else:
    ``nodes`` are the hubs behind it, by node id, each on 127.0.0.1 at its port."""
    replacements = {
        "listen 80;": f"listen 127.0.0.1:{http_port};",
        "listen 443 ssl http2;": f"listen 127.0.0.1:{https_port} ssl http2;",
        "server 127.0.0.1:8080;": "\n    ".join(
            f"server 127.0.0.1:{port};" for port in nodes.values()
        ),
        "hub-1    127.0.0.1:8080;": "\n    ".join(
            f"{node}  127.0.0.1:{port};" for node, port in nodes.items()
        ),
        "/etc/practice-hub/tls/hub.crt": str(tls[0]),
        "/etc/practice-hub/tls/hub.key": str(tls[1]),
        "/var/cache/nginx/practice-hub-live": str(cache),
    }
    for old, new in replacements.items():
        if old not in conf:
            raise BenchError(f"deploy/nginx.conf no longer holds {old!r}: update the template")
        conf = conf.replace(old, new)
    return conf


LOG_FORMAT = "$msec $upstream_addr $status $request_uri"


class Nginx:
    """Debian's nginx in the foreground on free ports in front of the hubs, with the
    site config of ``deploy/``. Its access log notes, per
    request, whether it reached the hub."""

    def __init__(self, directory: Path, nodes: dict[str, int] | int, *, workers: int = 1) -> None:
        """In front of ``nodes`` (by node id), or of the one hub at that port."""
        from tests.hubserver import free_port

        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.https_port = free_port()
        self.cert, key = self_signed(directory)
        site = site_config(
            NGINX_CONF.read_text(),
            http_port=free_port(),
            https_port=self.https_port,
            nodes=nodes if isinstance(nodes, dict) else {"hub-1": nodes},
            tls=(self.cert, key),
            cache=directory / "cache",
        )
        (directory / "site.conf").write_text(site)
        self.log = directory / "access.log"
        temp = "\n".join(
            f"    {kind}_temp_path {directory / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        # Root's workers would run as nobody, who cannot enter a test's temp dir.
        user = f"user {pwd.getpwuid(os.getuid()).pw_name};" if os.getuid() == 0 else ""
        (directory / "nginx.conf").write_text(
            f"""daemon off;
{user}
worker_processes {workers};
worker_rlimit_nofile 16384;
pid {directory / "nginx.pid"};
error_log {directory / "error.log"} warn;
events {{ worker_connections 8192; }}
http {{
{temp}
    log_format hub '{LOG_FORMAT}';
    access_log {self.log} hub buffer=256k flush=1s;
    include {directory / "site.conf"};
}}
"""
        )
        self.base = f"https://127.0.0.1:{self.https_port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10) -> None:
        import socket

        self.process = subprocess.Popen(
            [
                NGINX,
                "-e",
                str(self.directory / "error.log"),
                "-c",
                str(self.directory / "nginx.conf"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"nginx exited {self.process.returncode}: {self.errors()}")
            try:
                socket.create_connection(("127.0.0.1", self.https_port), 0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise BenchError(f"nginx not listening in {timeout} s: {self.errors()}")

    def stop(self) -> None:
        """Quit gracefully (the log is flushed), kill if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGQUIT)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def errors(self) -> str:
        path = self.directory / "error.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def pids(self) -> list[int]:
        """The master and its workers."""
        if self.process is None:
            return []
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [self.process.pid, *map(int, children.read_text().split())]

    def hub_requests(self, since: float = 0.0, until: float = math.inf) -> list[str]:
        """Request URIs nginx passed to the hub between two wall-clock times (the log
        is complete once nginx stopped, or a second after the requests)."""
        passed = []
        for line in self.log.read_text().splitlines():
            at, upstream, _, uri = line.split(" ", 3)
            if upstream != "-" and since <= float(at) < until:
                passed.append(uri)
        return passed

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


# --- an HTTP/1.1 client that costs little -------------------------------------------------


class HttpConnection:
    """One keep-alive HTTP/1.1 connection; one request at a time; reconnects once when
    the server closed it."""

    def __init__(
        self, base: str, context: ssl.SSLContext | None, sent: list[float] | None = None
    ) -> None:
        self.sent = sent
        """Monotonic time of each request, when given."""
        scheme, _, authority = base.partition("://")
        host, _, port = authority.partition(":")
        self.host, self.port = host, int(port or (443 if scheme == "https" else 80))
        self.context = context if scheme == "https" else None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def get(self, target: str) -> tuple[int, dict[str, str], bytes]:
        for attempt in (0, 1):
            fresh = self._writer is None
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_connection(
                    self.host, self.port, ssl=self.context
                )
            assert self._reader is not None
            if self.sent is not None:
                self.sent.append(time.monotonic())
            try:
                self._writer.write(f"GET {target} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
                return await self._response(self._reader)
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if fresh or attempt:
                    raise
        raise AssertionError("unreachable")

    async def _response(self, reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        else:  # chunked
            chunks = []
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                chunks.append(await reader.readexactly(size))
                await reader.readexactly(2)
            await reader.readuntil(b"\r\n")
            body = b"".join(chunks)
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, body

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


# --- a player like hls.js in low-latency mode --------------------------------------------

PART = re.compile(r'#EXT-X-PART:.*URI="part(\d+)\.(\d+)\.m4s"(,INDEPENDENT=YES)?')
MAP = re.compile(r'#EXT-X-MAP:URI="([^"]+)"')


def listed_parts(text: str) -> list[tuple[int, int, bool]]:
    return [(int(m), int(p), bool(independent)) for m, p, independent in PART.findall(text)]


@dataclass
class Played:
    """What one player did, on the system-wide monotonic clock."""

    got: dict[tuple[int, int], float] = field(default_factory=dict)
    """Part → when the player had all its bytes."""
    errors: list[str] = field(default_factory=list)


@dataclass
class Seen:
    """Part → the first moment a client of this process received a playlist listing it."""

    listed: dict[tuple[int, int], float] = field(default_factory=dict)

    def note(self, parts: list[tuple[int, int, bool]], at: float) -> None:
        for msn, part, _ in parts:
            self.listed.setdefault((msn, part), at)


async def play(http: HttpConnection, path: str, until: float, seen: Seen, played: Played) -> None:
    """From the newest independent part on, every part in order, until ``until``
    (monotonic). A part missing from a playlist that lists later ones is skipped, as
    a player must: it counts as missed."""
    status, _, body = await http.get(path)
    while status == 503:  # starting
        await asyncio.sleep(1)
        status, _, body = await http.get(path)
    if status != 200:
        raise BenchError(f"{path}: HTTP {status}")
    text = body.decode()
    parts = listed_parts(text)
    seen.note(parts, time.monotonic())
    starts = [(m, p) for m, p, independent in parts if independent]
    maps = MAP.findall(text)
    if not starts or not maps:
        raise BenchError(f"no independent part or init section listed:\n{text}")
    base = path.rsplit("/", 1)[0]
    await http.get(f"{base}/{maps[-1]}")
    want = starts[-1]
    while time.monotonic() < until:
        for msn, part, _ in parts:
            if (msn, part) < want:
                continue
            if msn == want[0] and part != want[1]:
                break  # not listed yet (a stale answer): reload
            status, _, _ = await http.get(f"{base}/part{msn}.{part}.m4s")
            if status != 200:
                played.errors.append(f"part{msn}.{part}: HTTP {status}")
            else:
                played.got[(msn, part)] = time.monotonic()
            want = (msn, part + 1)
        query = f"_HLS_msn={want[0]}&_HLS_part={want[1]}"
        status, _, body = await http.get(f"{path}{'&' if '?' in path else '?'}{query}")
        if status != 200:
            played.errors.append(f"blocking reload {query}: HTTP {status}")
            await asyncio.sleep(0.2)
            continue
        parts = listed_parts(body.decode())
        seen.note(parts, time.monotonic())


# --- players in worker processes ---------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """What one worker process runs."""

    base: str
    cafile: str | None
    first: int
    """Index of its first player (player ids are unique across workers)."""
    count: int
    ramp_until: float
    """Monotonic time by which all its players have started (evenly spread)."""
    until: float


def _worker(conn: Connection, load: Load) -> None:
    import uvloop

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * load.count + 64)), hard))
    result = uvloop.run(_players(load))
    conn.send(result)
    conn.close()


async def _players(load: Load) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=load.cafile) if load.cafile else None
    seen = Seen()
    played = [Played() for _ in range(load.count)]
    requests: list[float] = []
    spacing = max(0.0, load.ramp_until - time.monotonic()) / max(1, load.count)

    async def one(index: int) -> None:
        await asyncio.sleep(index * spacing)
        http = HttpConnection(load.base, context, requests)
        try:
            path = f"/live/{ROOM}/index.m3u8?player=household{load.first + index:08d}"
            await play(http, path, load.until, seen, played[index])
        except (OSError, asyncio.IncompleteReadError, BenchError) as exc:
            played[index].errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            http.close()

    started = time.process_time()
    await asyncio.gather(*(one(i) for i in range(load.count)))
    return {
        "listed": seen.listed,
        "got": [p.got for p in played],
        "errors": [p.errors for p in played],
        "requests": requests,
        "cpu_s": time.process_time() - started,
    }


# --- one run: players through nginx or straight at the hub ---------------------------------


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def cpu_seconds_of(pids: list[int]) -> float:
    from bench.fanout import cpu_seconds

    return sum(cpu_seconds(pid) for pid in pids)


async def measure(
    base: str,
    cafile: Path | None,
    *,
    players: int,
    workers: int,
    ramp: float,
    warmup: float,
    seconds: float,
    hub_pid: int,
    nginx: Nginx | None,
) -> dict[str, Any]:
    """Players from ``workers`` processes against ``base``; figures over the window
    after the ramp and the warm-up."""
    start = time.monotonic()
    window = (start + ramp + warmup, start + ramp + warmup + seconds)
    clock = time.time() - time.monotonic()  # monotonic → wall clock (nginx's log)
    spawn = multiprocessing.get_context("spawn")
    children: list[tuple[Any, Connection]] = []
    share = math.ceil(players / workers)
    for first in range(0, players, share):
        receiving, sending = spawn.Pipe(duplex=False)
        load = Load(
            base, str(cafile) if cafile else None, first, min(share, players - first),
            start + ramp, window[1] + 1,
        )  # fmt: skip
        process = spawn.Process(target=_worker, args=(sending, load), daemon=True)
        process.start()
        children.append((process, receiving))
    try:
        await asyncio.sleep(max(0.0, window[0] - time.monotonic()))
        nginx_pids = nginx.pids() if nginx else []
        cpu = (cpu_seconds_of([hub_pid]), cpu_seconds_of(nginx_pids), time.monotonic())
        await asyncio.sleep(max(0.0, window[1] - time.monotonic()))
        hub_cpu = cpu_seconds_of([hub_pid]) - cpu[0]
        nginx_cpu = cpu_seconds_of(nginx_pids) - cpu[1]
        elapsed = time.monotonic() - cpu[2]
        results = []
        for _, receiving in children:
            ready = await asyncio.to_thread(receiving.poll, 60)
            if not ready:
                raise BenchError("a player process sent no result within 60 s of the end")
            results.append(receiving.recv())
    finally:
        for process, _ in children:
            process.join(5)
            if process.is_alive():
                process.kill()
    listed: dict[tuple[int, int], float] = {}
    for result in results:
        for part, at in result["listed"].items():
            listed[part] = min(at, listed.get(part, math.inf))
    # Parts announced in the window, a second before its end: time to fetch them.
    parts = {part: at for part, at in listed.items() if window[0] <= at < window[1] - 1}
    got = [played for result in results for played in result["got"]]
    errors = [error for result in results for each in result["errors"] for error in each]
    missed, delays = [], []
    for played in got:
        first = min(played, default=(-1, -1))
        mine = [part for part in parts if part >= first]
        missed.append(sum(1 for part in mine if part not in played))
        delays += [played[part] - parts[part] for part in mine if part in played]
    if nginx is not None:
        nginx.stop()  # its log is complete
        reached = len(nginx.hub_requests(window[0] + clock, window[1] - 1 + clock))
    else:
        reached = sum(
            1 for result in results for at in result["requests"] if window[0] <= at < window[1] - 1
        )
    players_cpu = sum(result["cpu_s"] for result in results)
    if not parts or not delays:
        raise BenchError(f"no part announced or played in the window; errors: {errors[:5]}")
    return {
        "players": players,
        "parts_per_player_missed": round(sum(missed) / len(got), 3),
        "parts_missed_most": max(missed),
        "p95_part_delay_ms": round(1000 * percentile(delays, 0.95), 1),
        "p50_part_delay_ms": round(1000 * percentile(delays, 0.5), 1),
        "hub_requests_per_part": round(reached / len(parts), 2),
        "hub_cpu_percent": round(100 * hub_cpu / elapsed, 1),
        "nginx_cpu_percent": round(100 * nginx_cpu / elapsed, 1),
        "players_cpu_percent": round(100 * players_cpu / (window[1] + 1 - start), 1),
        "parts": len(parts),
        "player_errors": len(errors),
        "first_errors": errors[:3],
    }


# --- running -----------------------------------------------------------------------------


async def run(args: argparse.Namespace, result: dict[str, Any]) -> None:
    import httpx

    from bench._media import clip_tracks, load_clip
    from bench.fanout import HubProcess
    from bench.media import room_action, token
    from hub.client import HubClient

    with tempfile.TemporaryDirectory(prefix="bench-households-") as tmp:
        work = Path(tmp)
        (work / "hub").mkdir()
        hub = HubProcess(work / "hub")
        client: HubClient | None = None
        try:
            await asyncio.to_thread(hub.wait_healthy, 30)
            video, audio = clip_tracks(await asyncio.to_thread(load_clip))
            client = HubClient(hub.ws, token(hub, ROOM))
            await client.connect()
            await client.publish({"camera": video, "microphone": audio})
            playlist = f"{hub.base}/live/{ROOM}/index.m3u8"
            async with httpx.AsyncClient(timeout=10) as http:
                await room_action(http, hub, ROOM, "live")
                deadline = time.monotonic() + 40
                while (await http.get(playlist)).status_code != 200:  # 503 while starting
                    if time.monotonic() > deadline:
                        raise BenchError(f"live playlist not playable in 40 s:\n{hub.log_tail()}")
                    await asyncio.sleep(0.5)
                text = (await http.get(playlist)).text
            result["part_target_s"] = float(re.findall(r"PART-TARGET=([\d.]+)", text)[0])
            options = {
                "players": args.players,
                "workers": args.workers,
                "ramp": args.ramp,
                "warmup": args.warmup,
                "seconds": args.seconds,
                "hub_pid": hub.process.pid,
            }
            for mode in args.only:
                if mode == "cache":
                    nginx = Nginx(work / "nginx", hub.port)
                    nginx.start()
                    try:
                        figures = await measure(nginx.base, nginx.cert, nginx=nginx, **options)
                    finally:
                        nginx.stop()
                else:
                    figures = await measure(hub.base, None, nginx=None, **options)
                result[mode] = figures
        finally:
            if client is not None:
                await client.close()
            await asyncio.to_thread(hub.stop)


def main(argv: list[str] | None = None) -> None:
    from hub.aiortc_internals import restrict_host_addresses

    parser = argparse.ArgumentParser(prog="python -m bench.households", description=__doc__)
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--players", type=int, default=1000, help="players (default 1000)")
    parser.add_argument("--workers", type=int, default=2, help="player processes (default 2)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring window, s")
    parser.add_argument("--ramp", type=float, default=5.0, help="players start over this, s")
    parser.add_argument("--warmup", type=float, default=3.0, help="after the ramp, s")
    parser.add_argument(
        "--only", nargs="+", choices=("cache", "direct"), default=("cache", "direct")
    )
    args = parser.parse_args(argv)
    if min(args.players, args.workers) < 1 or args.seconds < 3 or args.ramp < 0:
        parser.error("--players and --workers must be positive, --seconds at least 3")
    restrict_host_addresses(["127.0.0.1"])  # the lecturer's ICE stays on loopback
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    limit = 120 + len(args.only) * (args.ramp + args.warmup + args.seconds + 90)
    try:
        asyncio.run(asyncio.wait_for(run(args, result), limit))
    except (BenchError, TimeoutError) as exc:
        message = str(exc) or f"hard time limit of {limit:.0f} s"
        print(f"bench.households: {message}", file=sys.stderr)
        if args.json:
            print(json.dumps({**result, "error": message.splitlines()[0]}))
        sys.exit(1)
    except KeyboardInterrupt:
        print("bench.households: interrupted", file=sys.stderr)
        sys.exit(130)
    if not args.json:
        for mode in args.only:
            for key, value in result[mode].items():
                print(f"{mode:7} {key:28} {value}")
    else:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
