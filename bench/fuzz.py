"""``python -m bench.fuzz``: bad input at scale against a running hub.

A real hub in its own process (``python -m hub serve``, as bench/fanout.py runs
it) takes ``--count`` inputs, the same ones for the same ``--seed``: signaling
messages and mangled SDP offers on a websocket; WHIP and WHEP offers with mangled
bodies and headers; requests with mangled paths, queries, headers and bodies on
every route of the app (found in the app, not listed here), with and without
credentials; RTP, RTCP, STUN and DTLS-looking datagrams at the ICE ports of a real
publisher and a real subscriber. Then: is the hub alive, does a normal join decode
a frame, did anything answer 5xx or leave a traceback in the hub's log, how far did
the hub's memory move. See bench/README.md.

The generator (:class:`Inputs`) and the runner (:func:`run`) are shared with
``tests/test_fuzz.py``, which runs a few hundred of the same inputs on every CI run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import struct
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack, VideoStreamTrack
from fastapi.routing import iter_route_contexts

from bench.fanout import HubProcess, create_admin, rss_mb
from hub.aiortc_internals import restrict_host_addresses
from hub.client import HubClient
from hub.ids import ParticipantIdentity, RoomName
from hub.peers import make_peer_connection
from hub.settings import Settings
from hub.tokens import Role, grant_for_role

ROOM = "fuzz"
"""The room the HTTP and WHIP/WHEP inputs aim at (with tokens for it, and for others)."""
SIGNALING_ROOM = "fuzz-ws"
MEDIA_ROOM = "fuzz-media"
"""The real publisher and subscriber whose ports take the datagrams: no input's
token is for this room, so only the datagrams can disturb it."""
ADMIN = ("fuzz-admin", "fuzz-admin-password")
METRICS_TOKEN = "fuzz-metrics-token-0123456789"
KINDS = {
    "signaling": 26,
    "sdp": 8,
    "whip": 6,
    "whep": 4,
    "http": 36,
    "datagram_publisher": 10,
    "datagram_subscriber": 10,
}
"""Each kind of input and its share of the count."""
HTTP_TIMEOUT = 15.0
"""A request the hub has not answered by then counts as a timeout."""
MAX_BODY_READ = 64 * 1024
"""Of each answer; event streams never end."""


class FuzzError(RuntimeError):
    """The benchmark could not run; the message says what went wrong."""


# --- the generator ------------------------------------------------------------------

NASTY_LINES = [
    "m=video -1 UDP/TLS/RTP/SAVPF 96",
    "m=audio 9 UDP/TLS/RTP/SAVPF",
    "a=rtpmap:96 VP8/notanumber",
    "a=rtpmap:300 opus/48000/2",
    "a=fmtp:96 profile-level-id=zzzzzz;packetization-mode=9",
    "a=fingerprint:sha-999 00:11",
    "a=fingerprint:sha-256",
    "a=candidate:garbage",
    "a=candidate:1 1 UDP 1 999.999.999.999 70000 typ host",
    "a=ssrc:notanumber cname:x",
    "a=ssrc-group:FID 1",
    "a=extmap:999 urn:nothing",
    "a=ice-ufrag:",
    "a=setup:sideways",
    "a=mid:",
    "a=group:BUNDLE 7 8 9",
    "a=rtcp-fb:96",
    "c=IN IP9 nowhere",
    "a=msid:" + "x" * 5000,
    "\x00\x01\x02",
    "a=rtpmap:96 H264/90000\r\na=fmtp:96 profile-level-id=640c2a;packetization-mode=1",
]

NASTY_STRINGS = [
    "",
    " ",
    ".",
    "..",
    "../../../../etc/passwd",
    "%2e%2e%2f%2e%2e",
    "%00",
    "a" * 300,
    "x" * 5000,
    "讲座",
    "-1",
    "0",
    "1",
    "99999999999999999999999",
    "1e309",
    "NaN",
    "null",
    "true",
    "{}",
    "[]",
    "<script>alert(1)</script>",
    "' OR '1'='1",
    "index.m3u8",
    "init.mp4",
    "target-1",
    "I01",
    "I01-S001",
    "0" * 32,
]

NASTY_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1.5,
    2**64,
    -(2**63),
    1e308,
    "",
    "x",
    "camera",
    "publisher",
    "subscriber",
    "\u4e2d",
    "\ud800",
    [],
    {},
    [None],
    {"a": {"b": []}},
    "x" * 3000,
]

QUERY_NAMES = [
    "day", "days", "_HLS_msn", "_HLS_part", "q", "theme", "page", "limit", "offset", "site",
    "token", "from", "to", "format", "published", "room", "since", "status",
]  # fmt: skip

CONTENT_TYPES = [
    "application/json",
    "application/sdp",
    "application/sdp; charset=utf-8",
    "multipart/form-data; boundary=fuzz",
    "multipart/form-data",
    "application/x-www-form-urlencoded",
    "text/plain",
    "video/mp4",
    "",
    "\x7f/\x7f",
    "application/json; charset=utf-999",
]


def mangle_sdp(sdp: str, rng: random.Random) -> str:
    """``sdp`` with one to four lines deleted, inserted, cut, doubled or garbled, or
    cut short."""
    lines = sdp.split("\r\n")
    for _ in range(rng.randint(1, 4)):
        action = rng.randrange(6)
        i = rng.randrange(len(lines))
        if action == 0:
            del lines[i]
        elif action == 1:
            lines.insert(i, rng.choice(NASTY_LINES))
        elif action == 2:
            lines[i] = lines[i][: rng.randrange(len(lines[i]) + 1)]
        elif action == 3:
            lines.insert(i, lines[i])
        elif action == 4 and lines[i]:
            chars = list(lines[i])
            chars[rng.randrange(len(chars))] = chr(rng.randrange(32, 0x3000))
            lines[i] = "".join(chars)
        else:
            return "\r\n".join(lines)[: rng.randrange(len(sdp) + 1)]
    return "\r\n".join(lines)


FIXED_MESSAGES = [
    "not json",
    "[]",
    "null",
    '"offer"',
    "{}",
    '{"type": 7}',
    '{"type": "nope"}',
    '{"type": "' + "x" * 300 + '"}',
    '{"type": "join"}',
    '{"type": "join", "token": 5}',
    '{"type": "offer", "pc": "subscriber", "sdp": "v=0"}',
    '{"type": "answer", "pc": "subscriber", "sdp": "v=0"}',
    '{"type": "answer", "pc": "publisher", "sdp": 1}',
    '{"type": "candidate", "pc": "publisher", "candidate": {"candidate": "garbage"}}',
    '{"type": "candidate", "pc": "publisher", "candidate": "x"}',
    '{"type": "moderate", "action": "stage", "participant": "PA_x", "on_stage": true}',
    '{"type": "mute", "source": "tv", "muted": true}',
    '{"type": "mute", "source": "camera", "muted": "yes"}',
    '{"type": "unpublish", "source": "screen"}',
    '{"type": "hand"}',
    '{"type": "chat", "text": ""}',
    '{"type": "ping", "id": {"a": 1}}',
    "[" * 5000 + "]" * 5000,
    '{"type": "chat", "text": "\\ud800"}',
    '{"type": "rollcall", "seconds": -5}',
    '{"type": "rollcall", "seconds": 1e999}',
    '{"type": "rollcall_answer", "id": null}',
    '{"type": "view", "tiles": "PA_x"}',
    '{"type": "view", "tiles": [' + ", ".join(['"PA_x"'] * 2000) + "]}",
]
MESSAGE_TYPES = [
    "join", "offer", "answer", "candidate", "mute", "unpublish", "hand", "chat", "moderate",
    "ping", "rollcall", "rollcall_answer", "rollcall_stop", "leave", "quality",
]  # fmt: skip
MESSAGE_FIELDS = [
    "pc", "sdp", "source", "sources", "muted", "raised", "text", "candidate", "action",
    "participant", "on_stage", "id", "seconds", "expected", "token", "room", "level",
]  # fmt: skip


@dataclass(frozen=True)
class HttpInput:
    method: str
    path: str
    """Path and query, as sent (already percent-encoded where it is meant to be)."""
    headers: dict[str, str]
    body: bytes


@dataclass
class Inputs:
    """Deterministic bad input for one hub: everything it draws comes from ``rng``.

    ``credentials``: Authorization values and cookies worth trying (valid ones
    reach deeper code); ``routes``: (method, path template) of every HTTP route;
    ``offer``/``whep_offer``: valid SDP offers to mangle; ``participants``: sids
    seen in the rooms."""

    rng: random.Random
    routes: list[tuple[str, str]]
    offer: str
    whep_offer: str
    credentials: list[dict[str, str]]
    participants: list[str] = field(default_factory=list)
    signaling_token: str = ""

    def plan(self, count: int) -> list[str]:
        """The kind of each input, in order."""
        kinds = list(KINDS)
        return self.rng.choices(kinds, weights=[KINDS[k] for k in kinds], k=count)

    def value(self) -> Any:
        pick = self.rng.random()
        if pick < 0.3 and self.participants:
            return self.rng.choice(self.participants)
        if pick < 0.5:
            return self.rng.choice(NASTY_STRINGS)
        return self.rng.choice(NASTY_VALUES)

    def signaling(self) -> str | bytes:
        rng = self.rng
        pick = rng.random()
        if pick < 0.25:
            return rng.choice(FIXED_MESSAGES)
        if pick < 0.3:
            return rng.randbytes(rng.randrange(1, 200))
        if pick < 0.35:
            return json.dumps({"type": "join", "token": self.signaling_token})  # a second join
        body: dict[str, Any] = {"type": rng.choice(MESSAGE_TYPES)}
        for name in rng.sample(MESSAGE_FIELDS, rng.randint(0, 5)):
            body[name] = self.value()
        return json.dumps(body)

    def sdp_offer(self) -> str:
        sources: Any = {"0": "camera", "1": "microphone"}
        if self.rng.random() < 0.2:
            sources = self.value()
        return json.dumps(
            {
                "type": "offer",
                "pc": "publisher",
                "sdp": mangle_sdp(self.offer, self.rng),
                "sources": sources,
            }
        )

    def headers(self, content_type: str | None) -> dict[str, str]:
        rng = self.rng
        headers = dict(rng.choice(self.credentials))
        if content_type is not None:
            headers["Content-Type"] = content_type
        if rng.random() < 0.1:
            headers[rng.choice(["Range", "If-None-Match", "Accept", "X-CSRF-Token", "Origin"])] = (
                rng.choice(["bytes=-1", "bytes=999999999-", "bytes=5-2", "*", "x" * 2000, ""])
            )
        if rng.random() < 0.05:
            headers["Authorization"] = rng.choice(
                ["Bearer", "Bearer x y", "Basic eA==", "bearer " + "a." * 3000, "Bearer \t x"]
            )
        return headers

    def whip(self, kind: str) -> HttpInput:
        rng = self.rng
        template = self.offer if kind == "whip" else self.whep_offer
        body = mangle_sdp(template, rng).encode("utf-8", "surrogatepass")
        if rng.random() < 0.05:
            body = rng.randbytes(rng.randrange(0, 70_000))
        content_type = "application/sdp" if rng.random() < 0.85 else rng.choice(CONTENT_TYPES)
        room = ROOM if rng.random() < 0.8 else str(rng.choice(NASTY_STRINGS))
        return HttpInput("POST", f"/{kind}/{_segment(room)}", self.headers(content_type), body)

    def http(self) -> HttpInput:
        rng = self.rng
        method, template = rng.choice(self.routes)
        if rng.random() < 0.05:
            method = rng.choice(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])

        def parameter(match: re.Match[str]) -> str:
            name = match[1]
            if match[2] == ":path":
                return "/".join(
                    _segment(str(rng.choice(NASTY_STRINGS))) for _ in range(rng.randint(1, 4))
                )
            if name in ("room", "name") and rng.random() < 0.6:
                return ROOM
            return _segment(str(self.value()))

        path = re.sub(r"{(\w+)(:\w+)?}", parameter, template)
        if rng.random() < 0.5:
            pairs = [
                f"{rng.choice(QUERY_NAMES)}={_segment(str(self.value()))}"
                for _ in range(rng.randint(1, 4))
            ]
            path += "?" + "&".join(pairs)
        body, content_type = self.body()
        return HttpInput(method, path, self.headers(content_type), body)

    def body(self) -> tuple[bytes, str | None]:
        rng = self.rng
        pick = rng.random()
        if pick < 0.2:
            return b"", None
        if pick < 0.3:
            return rng.randbytes(rng.randrange(1, 4000)), rng.choice(CONTENT_TYPES)
        if pick < 0.35:
            depth = rng.randrange(100, 20_000)
            return b"[" * depth + b"]" * depth, "application/json"
        if pick < 0.45:
            boundary = b"--fuzz\r\n"
            part = b'Content-Disposition: form-data; name="file"; filename="../x.mp4"\r\n\r\n'
            cut = rng.randrange(1, 300)
            body = boundary + part + rng.randbytes(cut) + rng.choice([b"\r\n--fuzz--\r\n", b""])
            return body, "multipart/form-data; boundary=fuzz"
        document: dict[str, Any] = {}
        for name in rng.sample(JSON_FIELDS, rng.randint(0, 6)):
            document[name] = self.value()
        if rng.random() < 0.1:
            document["url"] = f"rtmp://127.0.0.1:9/{rng.choice(NASTY_STRINGS)}"
        return json.dumps(document).encode(), "application/json"

    def datagram(self, ufrag: str) -> bytes:
        rng = self.rng
        pick = rng.randrange(7)
        if pick == 0:  # RTP
            header = bytes([0x80 | rng.randrange(64), rng.randrange(256)]) + rng.randbytes(10)
            return header + rng.randbytes(rng.choice([0, 1, 12, 200, 1200, 1500, 3000]))
        if pick == 1:  # RTCP: SR, RR, SDES, BYE, APP, RTPFB, PSFB, XR
            kind = rng.choice([200, 201, 202, 203, 204, 205, 206, 207])
            length = rng.randrange(0x10000)
            return (
                bytes([0x80 | rng.randrange(32), kind])
                + struct.pack("!H", length)
                + (rng.randbytes(rng.randrange(0, 200)))
            )
        if pick in (2, 3):  # STUN, some with the hub's ICE user name
            attributes = b""
            for _ in range(rng.randrange(0, 6)):
                kind = rng.choice([0x0006, 0x0008, 0x8028, 0x0024, 0x0025, 0x802A, 0x8029, 0x0009])
                value = (
                    f"{ufrag}:fuzz".encode()
                    if kind == 0x0006 and rng.random() < 0.7
                    else rng.randbytes(rng.randrange(0, 40))
                )
                claimed = len(value) if rng.random() < 0.8 else rng.randrange(0x10000)
                attributes += struct.pack("!HH", kind, claimed) + value + b"\0" * (-len(value) % 4)
            kind = rng.choice([0x0001, 0x0101, 0x0111, 0x0011, rng.randrange(0x4000)])
            length = len(attributes) if rng.random() < 0.8 else rng.randrange(0x10000)
            return struct.pack("!HHI", kind, length, 0x2112A442) + rng.randbytes(12) + attributes
        if pick == 4:  # DTLS records: alert, handshake (a ClientHello with lying lengths)...
            content = rng.choice([20, 21, 22, 23, 24, 25])
            payload = rng.randbytes(rng.randrange(0, 300))
            if content == 22 and rng.random() < 0.5:
                declared = rng.randrange(0x1000000).to_bytes(3, "big")
                payload = bytes([1]) + declared + rng.randbytes(8) + payload
            claimed = len(payload) if rng.random() < 0.7 else rng.randrange(0x10000)
            version = rng.choice([b"\xfe\xff", b"\xfe\xfd", b"\x03\x03", rng.randbytes(2)])
            return (
                bytes([content])
                + version
                + rng.randbytes(8)
                + struct.pack("!H", claimed)
                + (payload)
            )
        if pick == 5:
            return rng.randbytes(rng.randrange(1, 4))
        return rng.randbytes(rng.randrange(1, 2000))


JSON_FIELDS = [
    "public", "url", "title", "theme", "host", "audience", "start", "end", "recurrence",
    "options", "label", "username", "password", "role", "site", "code", "name", "kind",
    "parent", "region", "published", "description", "text", "sites", "seconds", "status",
    "answer", "date", "contact_name", "contact_phone",
]  # fmt: skip


def _segment(value: str) -> str:
    """``value`` as one path segment or query value, percent-encoded (a lone
    surrogate included): what a client can put on the wire."""
    from urllib.parse import quote

    return quote(value.encode("utf-8", "surrogatepass"), safe="")


def app_routes() -> list[tuple[str, str]]:
    """(method, path template) of every HTTP route of the app, from the app itself."""
    from web.app import create_app

    with tempfile.TemporaryDirectory() as scratch:
        app = create_app(Settings(data_dir=Path(scratch), secret="fuzz" * 8))
        routes = [
            (method, route.path)
            for route in iter_route_contexts(app.routes)
            if route.path is not None
            for method in sorted(route.methods or ())
        ]
    if not routes:
        raise FuzzError("found no routes in the app")
    return routes


async def sdp_offers() -> tuple[str, str]:
    """A valid publishing offer (camera, microphone) and a valid WHEP offer."""
    offers = []
    for direction in ("sendonly", "recvonly"):
        pc = make_peer_connection([])
        try:
            if direction == "sendonly":
                pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
                pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
            else:
                pc.addTransceiver("video", direction="recvonly")
                pc.addTransceiver("audio", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            offers.append(pc.localDescription.sdp)
        finally:
            await pc.close()
    return offers[0], offers[1]


# --- the runner ---------------------------------------------------------------------


def _token(hub: HubProcess, room: str, identity: str, role: Role) -> str:
    grant = grant_for_role(RoomName(room), ParticipantIdentity(identity), role, ttl=3600)
    return hub.signer.issue(grant)


def start_hub(work: Path) -> HubProcess:
    """The hub, with a center administrator in its database (blocking)."""
    data = work / "data"
    data.mkdir(mode=0o700, parents=True)
    create_admin(data, *ADMIN)
    settings = {"HUB_ROOM_EMPTY_TIMEOUT": "2", "HUB_METRICS_TOKEN": METRICS_TOKEN}
    hub = HubProcess(data, settings=settings)
    try:
        hub.wait_healthy(30)
    except Exception:
        hub.stop()
        raise
    return hub


async def credentials(hub: HubProcess, http: httpx.AsyncClient) -> list[dict[str, str]]:
    """Headers worth sending: none, join tokens of every role for the fuzzed room,
    one for another room, an administrator's API token and login cookie, bad ones."""
    login = await http.post("/api/login", json={"username": ADMIN[0], "password": ADMIN[1]})
    if login.status_code != 200:
        raise FuzzError(f"admin login: HTTP {login.status_code} {login.text[:200]}")
    csrf = http.cookies.get("hub_csrf") or ""
    cookie = "; ".join(f"{k}={v}" for k, v in http.cookies.items())
    made = await http.post("/api/me/tokens", json={"label": "fuzz"}, headers={"X-CSRF-Token": csrf})
    if made.status_code not in (200, 201):
        raise FuzzError(f"admin API token: HTTP {made.status_code} {made.text[:200]}")
    api_token = str(made.json()["token"])
    http.cookies.clear()
    found: list[dict[str, str]] = [{}, {}, {"Authorization": f"Bearer {api_token}"}]
    found.append({"Cookie": cookie, "X-CSRF-Token": csrf})
    found.append({"Cookie": cookie})
    for role in Role:
        found.append({"Authorization": f"Bearer {_token(hub, ROOM, 'F-' + role.value, role)}"})
    found.append({"Authorization": f"Bearer {_token(hub, 'elsewhere', 'C', Role.CENTER)}"})
    found.append({"Authorization": f"Bearer {METRICS_TOKEN}"})
    found.append({"Authorization": "Bearer x.y.z"})
    return found


@dataclass
class Target:
    """A real publisher and subscriber in MEDIA_ROOM, and the hub's ICE ports for each."""

    publisher: HubClient
    subscriber: HubClient
    publisher_ports: list[int]
    subscriber_ports: list[int]
    ufrags: dict[str, str]

    async def close(self) -> None:
        await self.subscriber.close()
        await self.publisher.close()


def hub_ice(sdp: str) -> tuple[list[int], str]:
    """The 127.0.0.1 ports and the ICE user name fragment of the hub's side of ``sdp``."""
    ports = sorted(
        {
            int(line.split()[5])
            for line in sdp.splitlines()
            if line.startswith("a=candidate:") and " 127.0.0.1 " in line
        }
    )
    ufrag = next((line[12:] for line in sdp.splitlines() if line.startswith("a=ice-ufrag:")), "")
    return ports, ufrag


async def first_frame(client: HubClient, timeout: float = 20.0) -> bool:
    """Whether ``client`` decodes a camera frame within ``timeout``."""
    deadline = time.monotonic() + timeout
    while not client.tracks_of("camera"):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    track: MediaStreamTrack = client.tracks_of("camera")[0].track
    try:
        await asyncio.wait_for(track.recv(), max(0.1, deadline - time.monotonic()))
    except (TimeoutError, Exception):
        return False
    return True


async def media_target(hub: HubProcess) -> Target:
    publisher = HubClient(hub.ws, _token(hub, MEDIA_ROOM, "FUZZ-C", Role.CENTER))
    subscriber = HubClient(hub.ws, _token(hub, MEDIA_ROOM, "FUZZ-S", Role.STATION))
    await publisher.connect()
    await publisher.publish({"camera": VideoStreamTrack()})
    await subscriber.connect()
    if not await first_frame(subscriber):
        raise FuzzError("the datagram target's subscriber decoded nothing")
    assert publisher.publisher is not None and subscriber.subscriber is not None
    up_ports, up_ufrag = hub_ice(publisher.publisher.remoteDescription.sdp)
    down_ports, down_ufrag = hub_ice(subscriber.subscriber.remoteDescription.sdp)
    if not up_ports or not down_ports:
        raise FuzzError("no 127.0.0.1 candidates in the hub's descriptions")
    return Target(
        publisher,
        subscriber,
        up_ports,
        down_ports,
        {"datagram_publisher": up_ufrag, "datagram_subscriber": down_ufrag},
    )


@dataclass
class Tally:
    by_kind: Counter[str] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    timeouts: list[str] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    unsendable: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(KINDS, 0.0))


class Signaling:
    """One websocket in SIGNALING_ROOM, joined as its center; rejoins when the hub
    closes it (a message too large, a room closed by an input)."""

    def __init__(self, hub: HubProcess, tally: Tally) -> None:
        self.url = hub.ws
        self.token = _token(hub, SIGNALING_ROOM, "FUZZ-WS", Role.CENTER)
        self.tally = tally
        self.ws: Any = None
        self.pings = 0
        self.participants: list[str] = []

    async def connect(self) -> None:
        self.ws = await websockets.connect(self.url, max_size=2**22)
        await self.ws.send(json.dumps({"type": "join", "token": self.token}))
        joined: dict[str, Any] = {}
        while joined.get("type") not in ("joined", "error"):
            joined = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
        if joined["type"] != "joined":
            raise FuzzError(f"signaling join refused: {joined}")
        everyone = [joined.get("participant", {}), *joined.get("participants", [])]
        self.participants = [p["sid"] for p in everyone if "sid" in p]

    async def exchange(self, message: str | bytes) -> None:
        """Send, then ping: messages are handled in order, so the pong comes after
        whatever this message provoked."""
        if self.ws is None:
            await self.connect()
        self.pings += 1
        # One deadline for the whole exchange: a hub that keeps talking (stats, speakers)
        # while this message hangs must still count as a timeout.
        deadline = asyncio.get_running_loop().time() + HTTP_TIMEOUT
        try:
            await self.ws.send(message)
            await self.ws.send(json.dumps({"type": "ping", "id": self.pings}))
            while True:
                left = deadline - asyncio.get_running_loop().time()
                reply = json.loads(await asyncio.wait_for(self.ws.recv(), max(left, 0.001)))
                if reply.get("type") == "error" and reply.get("code") == "internal":
                    self.tally.server_errors.append(f"signaling internal: {str(message)[:200]}")
                if reply.get("type") == "removed":
                    raise websockets.ConnectionClosedOK(None, None)
                if reply.get("type") == "pong" and reply.get("id") == self.pings:
                    return
                if reply.get("code") == "rate_limited":
                    # The hub's message budget dropped something, maybe the ping: a
                    # refusal, answered. Let the bucket refill and ask again.
                    await asyncio.sleep(0.5)
                    self.pings += 1
                    await self.ws.send(json.dumps({"type": "ping", "id": self.pings}))
        except websockets.ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd is not None else None
            if code == 1011:
                self.tally.server_errors.append(f"signaling closed 1011: {str(message)[:200]}")
            await self._reset()
        except TimeoutError:
            self.tally.timeouts.append(f"signaling: {str(message)[:200]}")
            await self._reset()

    async def _reset(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        self.ws = None

    async def close(self) -> None:
        await self._reset()


async def send_http(
    http: httpx.AsyncClient, item: HttpInput, tally: Tally
) -> httpx.Response | None:
    label = f"{item.method} {item.path[:200]}"
    try:
        request = http.build_request(
            item.method, item.path, headers=item.headers, content=item.body
        )
        response = await http.send(request, stream=True)
        try:
            read = 0
            # An event stream is open for as long as the client stays: its headers will do.
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                async for chunk in response.aiter_raw():
                    read += len(chunk)
                    if read >= MAX_BODY_READ:
                        break
        finally:
            await response.aclose()
    except httpx.TimeoutException:
        tally.timeouts.append(label)
        return None
    except httpx.LocalProtocolError:  # a header the client itself will not send
        tally.unsendable += 1
        return None
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
        tally.server_errors.append(f"{label}: connection dropped: {exc}")
        return None
    tally.statuses[response.status_code] += 1
    # 503 with Retry-After is an answer (live HLS while its stream starts), not a failure.
    if response.status_code >= 500 and not (
        response.status_code == 503 and "retry-after" in response.headers
    ):
        tally.server_errors.append(f"{label}: HTTP {response.status_code}")
    return response


async def send_whip(http: httpx.AsyncClient, item: HttpInput, tally: Tally) -> None:
    response = await send_http(http, item, tally)
    if response is not None and response.status_code == 201:
        location = response.headers.get("location", "")
        ended = HttpInput("DELETE", location, dict(item.headers), b"")
        await send_http(http, ended, tally)


def log_errors(log: str) -> list[str]:
    """Tracebacks in the hub's log (each with its last line: the exception)."""
    found = []
    for block in log.split("Traceback (most recent call last):")[1:]:
        lines = [line for line in block.splitlines() if line and not line.startswith(" ")]
        found.append(lines[0][:300] if lines else "traceback")
    return found


async def run(count: int, seed: int, work: Path, progress: bool = False) -> dict[str, Any]:
    """Start a hub in ``work``, throw ``count`` inputs at it, check it, stop it."""
    restrict_host_addresses(["127.0.0.1"])
    routes = await asyncio.to_thread(app_routes)
    hub = await asyncio.to_thread(start_hub, work)
    tally = Tally()
    result: dict[str, Any] = {"inputs": count, "seed": seed}
    target: Target | None = None
    signaling = Signaling(hub, tally)
    try:
        limits = httpx.Limits(max_connections=4)
        async with httpx.AsyncClient(
            base_url=hub.base, timeout=HTTP_TIMEOUT, limits=limits
        ) as http:
            offer, whep_offer = await sdp_offers()
            inputs = Inputs(
                random.Random(seed), routes, offer, whep_offer, await credentials(hub, http)
            )
            inputs.signaling_token = signaling.token
            target = await media_target(hub)
            await signaling.connect()
            inputs.participants = signaling.participants + [
                client.joined["participant"]["sid"]
                for client in (target.publisher, target.subscriber)
            ]
            loop = asyncio.get_running_loop()
            sender, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
            )
            await asyncio.sleep(2)  # the hub settles after the set-up
            result["rss_mb_before"] = round(rss_mb(hub.process.pid), 1)
            started = time.monotonic()
            try:
                for n, kind in enumerate(inputs.plan(count)):
                    tally.by_kind[kind] += 1
                    began = time.monotonic()
                    if kind == "signaling":
                        await signaling.exchange(inputs.signaling())
                    elif kind == "sdp":
                        await signaling.exchange(inputs.sdp_offer())
                    elif kind in ("whip", "whep"):
                        await send_whip(http, inputs.whip(kind), tally)
                    elif kind == "http":
                        await send_http(http, inputs.http(), tally)
                    else:
                        ports = (
                            target.publisher_ports
                            if kind == "datagram_publisher"
                            else target.subscriber_ports
                        )
                        datagram = inputs.datagram(target.ufrags[kind])
                        sender.sendto(datagram, ("127.0.0.1", inputs.rng.choice(ports)))
                        if n % 50 == 0:
                            await asyncio.sleep(0)  # let the hub drain its socket
                    tally.seconds[kind] += time.monotonic() - began
                    if progress and n % 500 == 499:
                        print(f"{n + 1} inputs, {len(tally.server_errors)} server errors",
                              file=sys.stderr)  # fmt: skip
            finally:
                sender.close()
            result["seconds"] = round(time.monotonic() - started, 1)
            await signaling.close()
            result["hub_alive"] = (
                hub.process.poll() is None and (await http.get("/healthz")).status_code == 200
            )
            result["target_still_decodes"] = await first_frame(target.subscriber)
            result["normal_join_after"] = await normal_join(hub)
            await asyncio.sleep(HUB_SETTLE)  # rooms of the inputs close when empty
            result["rss_mb_after"] = round(rss_mb(hub.process.pid), 1)
    finally:
        if target is not None:
            await target.close()
        await signaling.close()
        hub.stop()
    tally.server_errors += [
        f"log: {e}" for e in log_errors(hub.log_path.read_text("utf-8", "replace"))
    ]
    result |= {
        "by_kind": dict(sorted(tally.by_kind.items())),
        "seconds_by_kind": {k: round(v, 1) for k, v in sorted(tally.seconds.items())},
        "server_errors": len(tally.server_errors),
        "server_error_samples": tally.server_errors[:20],
        "timeouts": len(tally.timeouts),
        "timeout_samples": tally.timeouts[:10],
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "unsendable": tally.unsendable,
    }
    return result


HUB_SETTLE = 5.0
"""Seconds between the last input and the memory reading: the inputs' rooms close
after HUB_ROOM_EMPTY_TIMEOUT (2 s here)."""


async def normal_join(hub: HubProcess) -> bool:
    """A center publishes and a station decodes a frame, in a new room."""
    center = HubClient(hub.ws, _token(hub, "fuzz-after", "C", Role.CENTER))
    station = HubClient(hub.ws, _token(hub, "fuzz-after", "S", Role.STATION))
    try:
        await center.connect()
        await center.publish({"camera": VideoStreamTrack()})
        await station.connect()
        return await first_frame(station)
    except (ConnectionError, TimeoutError, OSError):
        return False
    finally:
        await station.close()
        await center.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__)
    parser.add_argument("--count", type=int, default=10_000, help="inputs (default 10000)")
    parser.add_argument("--seed", type=int, default=20261206, help="the inputs' seed")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be positive")
    with tempfile.TemporaryDirectory(prefix="fuzz-") as work:
        try:
            result = asyncio.run(run(args.count, args.seed, Path(work), progress=True))
        except FuzzError as exc:
            print(f"bench.fuzz: {exc}", file=sys.stderr)
            sys.exit(1)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        for key, value in result.items():
            print(f"{key:24} {value}")
    grown = result["rss_mb_after"] - result["rss_mb_before"]
    ok = result["server_errors"] == 0 and result["hub_alive"] and result["normal_join_after"]
    sys.exit(0 if ok and grown <= 20 else 1)


if __name__ == "__main__":
    main()
