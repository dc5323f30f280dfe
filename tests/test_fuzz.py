"""Bad input: mangled SDPs, messages, bodies and datagrams (the generator is
bench/fuzz.py's); then a normal join still works."""

from __future__ import annotations

import asyncio
import json
import random
import struct
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import websockets
from aiortc import RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from bench.fuzz import FIXED_MESSAGES, Inputs, hub_ice, mangle_sdp, sdp_offers
from bench.fuzz import KINDS as FUZZ_KINDS
from bench.fuzz import ROOM as FUZZ_ROOM
from bench.fuzz import run as run_fuzz
from hub.client import HubClient
from hub.peers import make_peer_connection
from tests.helpers import first_track
from tests.hubserver import RunningHub, running_hub
from tests.test_forwarding_e2e import decode_frames


@pytest.fixture
async def unlimited_hub(tmp_path: Path) -> AsyncIterator[RunningHub]:
    """Every mangled message must reach its handler, not the message rate limit
    (test_signaling.py tests that): the rate here is far above what the test sends."""
    async with running_hub(tmp_path, signaling_rate=10_000.0, signaling_burst=10_000) as running:
        yield running


async def test_mangled_input_gets_errors_and_the_hub_survives(unlimited_hub: RunningHub) -> None:
    hub_server = unlimited_hub
    rng = random.Random(20261129)
    template = make_peer_connection([])
    template.addTransceiver(VideoStreamTrack(), direction="sendonly")
    template.addTransceiver(AudioStreamTrack(), direction="sendonly")
    await template.setLocalDescription(await template.createOffer())
    valid = template.localDescription.sdp
    await template.close()

    token = hub_server.token("fuzz", "F1", "station")
    replies = 0
    async with websockets.connect(hub_server.ws, max_size=2**22) as ws:
        await ws.send(json.dumps({"type": "join", "token": token}))
        assert json.loads(await ws.recv())["type"] == "joined"

        async def exchange(message: str | bytes) -> None:
            """Send, then ping: messages are handled in order, so the pong comes
            after whatever this message provoked."""
            nonlocal replies
            replies += 1
            await ws.send(message)
            await ws.send(json.dumps({"type": "ping", "id": replies}))
            while True:
                reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if reply["type"] == "pong" and reply["id"] == replies:
                    return

        for _ in range(250):
            sdp = mangle_sdp(valid, rng)
            await exchange(
                json.dumps(
                    {
                        "type": "offer",
                        "pc": "publisher",
                        "sdp": sdp,
                        "sources": {"0": "camera", "1": "microphone"},
                    }
                )
            )
        inputs = Inputs(rng, [], valid, valid, [{}], signaling_token=token)
        for message in [*FIXED_MESSAGES, *(inputs.signaling() for _ in range(60))]:
            await exchange(message)
        await ws.send(b"\x00binary")
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["code"] == "bad_message"
        await exchange('{"type": "ping", "id": 1}')  # still connected and answering
    assert replies >= 250 + 80

    async with httpx.AsyncClient() as http:
        ingest = hub_server.token("fuzz", "ENC", "ingest")
        for _ in range(60):
            response = await http.post(
                f"{hub_server.base}/whip/fuzz",
                content=mangle_sdp(valid, rng).encode("utf-8", "surrogatepass"),
                headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {ingest}"},
            )
            assert response.status_code in (201, 400), response.text
            if response.status_code == 201:
                await http.delete(
                    f"{hub_server.base}{response.headers['location']}",
                    headers={"Authorization": f"Bearer {ingest}"},
                )
        assert (await http.get(f"{hub_server.base}/healthz")).status_code == 200

    # A normal lecture still works afterwards.
    center = HubClient(hub_server.ws, hub_server.token("fuzz", "C", "center"))
    station = HubClient(hub_server.ws, hub_server.token("fuzz", "S1", "station"))
    try:
        await center.connect()
        await center.publish({"camera": VideoStreamTrack()})
        await station.connect()
        camera = await first_track(station, "camera")
        assert len(await decode_frames(camera.track, 5)) == 5
    finally:
        await station.close()
        await center.close()


async def send_to_the_hub(peers: list[RTCPeerConnection], datagrams: list[bytes]) -> None:
    """Send ``datagrams`` from a stranger's socket to each of the hub's ICE ports (of
    its side of each connection), then give the hub a moment to read them."""
    ports = {port for pc in peers for port in hub_ice(pc.remoteDescription.sdp)[0]}
    assert ports
    sender, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    try:
        for port in sorted(ports):
            for datagram in datagrams:
                sender.sendto(datagram, ("127.0.0.1", port))
    finally:
        sender.close()
    await asyncio.sleep(0.5)


async def test_stray_datagrams_at_a_publishers_port_do_not_cut_it_off(
    hub_server: RunningHub,
) -> None:
    """Anyone can send UDP to the hub's ICE ports: oversized "SRTP" (aiortc's own
    unprotect raised ValueError on it and ended the receive loop), garbage and
    short datagrams are dropped, and the lecture goes on."""
    center = HubClient(hub_server.ws, hub_server.token("stray", "C", "center"))
    station = HubClient(hub_server.ws, hub_server.token("stray", "S1", "station"))
    try:
        await center.connect()
        await center.publish({"camera": VideoStreamTrack()})
        await station.connect()
        track = (await first_track(station, "camera")).track
        await decode_frames(track, 3)
        assert center.publisher is not None
        stray = [
            b"\x80" + bytes(1599),  # SRTP-looking, over 1,500 bytes
            b"\x90" + random.randbytes(3000),
            b"\x80\xc8" + random.randbytes(40),  # SRTCP-looking garbage
            b"\x80",
            random.randbytes(200),
        ]
        await send_to_the_hub([center.publisher], stray * 20)
        frames = await decode_frames(track, 30, timeout=15)
        assert len(frames) == 30
    finally:
        await station.close()
        await center.close()


# --- what bench/fuzz.py found -------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/login", b'{"username": "\xff\xfe", "password": 5}'),
        ("/api/login", b'{"username": "\\ud800", "password": "\\udfff"}'),
        ("/api/login", b"\x86\x00garbage"),
        ("/api/rooms/fuzz/restreams", b'{"url": "\\ud800", "x": 1}'),
    ],
)
async def test_a_request_body_that_is_not_text_gets_a_4xx(
    hub_server: RunningHub, path: str, body: bytes
) -> None:
    """The validation error used to echo the input: bytes that are not UTF-8, or a
    lone surrogate, then failed to render and the answer was a 500."""
    async with httpx.AsyncClient(base_url=hub_server.base) as http:
        response = await http.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code in (400, 401, 422), response.text
    assert "detail" in response.json()


async def test_a_static_path_too_long_for_the_file_system_is_404(hub_server: RunningHub) -> None:
    async with httpx.AsyncClient(base_url=hub_server.base) as http:
        response = await http.get("/static/" + "x" * 300)
        nested = await http.get("/static/js/" + "a/" * 3000 + "b.js")
    assert (response.status_code, nested.status_code) == (404, 404)


def stun_garbage() -> list[bytes]:
    """STUN requests whose length adds up but whose attributes are too short for their
    type: aioice's parser raised struct.error (not ValueError) on them, out of the
    socket's callback."""
    cookie = struct.pack("!I", 0x2112A442)

    def request(kind: int, value: bytes) -> bytes:
        attribute = struct.pack("!HH", kind, len(value)) + value + bytes(-len(value) % 4)
        return struct.pack("!HH", 0x0001, len(attribute)) + cookie + bytes(12) + attribute

    # PRIORITY (4 bytes), ICE-CONTROLLING and ICE-CONTROLLED (8 bytes each)
    return [request(0x0024, b"\x01\x02"), request(0x802A, bytes(4)), request(0x8029, b"\x01")]


async def test_malformed_stun_is_dropped_without_a_traceback(
    hub_server: RunningHub, caplog: pytest.LogCaptureFixture
) -> None:
    center = HubClient(hub_server.ws, hub_server.token("stun", "C", "center"))
    viewer = HubClient(hub_server.ws, hub_server.token("stun", "V", "viewer"))
    try:
        await center.connect()
        await center.publish({"camera": VideoStreamTrack()})
        await viewer.connect()
        track = (await first_track(viewer, "camera")).track
        await decode_frames(track, 3)
        assert center.publisher is not None and viewer.subscriber is not None
        await send_to_the_hub([center.publisher, viewer.subscriber], stun_garbage() * 5)
        assert len(await decode_frames(track, 30, timeout=15)) == 30
    finally:
        await viewer.close()
        await center.close()
    tracebacks = [r for r in caplog.records if r.exc_info or "Exception in" in r.getMessage()]
    assert tracebacks == []


@pytest.mark.parametrize("kind", ["whip", "whep"])
async def test_mangled_whip_and_whep_offers_get_a_resource_or_a_4xx(
    hub_server: RunningHub, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """aiortc can fail to answer an offer it accepted: the WHEP answer was made outside
    the guard and became a 500."""
    offer, whep_offer = await sdp_offers()
    role = "ingest" if kind == "whip" else "viewer"
    token = hub_server.token(FUZZ_ROOM, "F1", role)
    inputs = Inputs(random.Random(3), [], offer, whep_offer, [{"Authorization": f"Bearer {token}"}])
    statuses: Counter[int] = Counter()
    async with httpx.AsyncClient(base_url=hub_server.base, timeout=30) as http:
        for _ in range(150):
            item = inputs.whip(kind)
            response = await http.post(item.path, content=item.body, headers=item.headers)
            statuses[response.status_code] += 1
            if response.status_code == 201:
                await http.delete(response.headers["location"], headers=item.headers)
    assert statuses[201] > 0 and not [s for s in statuses if s >= 500], statuses
    tracebacks = [r.getMessage() for r in caplog.records if r.exc_info]
    assert tracebacks == []


async def test_a_few_hundred_inputs_of_the_fuzz_benchmark(tmp_path: Path) -> None:
    """The benchmark's own generator and runner (bench/fuzz.py) at a small count: a
    hub in its own process, every kind of input, no 5xx and no traceback, the hub
    alive, a normal join decoding afterwards."""
    result = await run_fuzz(400, seed=20261206, work=tmp_path)
    assert result["server_errors"] == 0, result["server_error_samples"]
    assert result["timeouts"] == 0, result["timeout_samples"]
    assert set(result["by_kind"]) == set(FUZZ_KINDS) and sum(result["by_kind"].values()) == 400
    assert result["hub_alive"] and result["target_still_decodes"] and result["normal_join_after"]
    assert result["rss_mb_after"] - result["rss_mb_before"] < 40


async def test_a_surrogate_pair_is_text_and_a_lone_surrogate_is_a_400(
    hub_server: RunningHub,
) -> None:
    async with httpx.AsyncClient(base_url=hub_server.base) as http:
        pair = await http.post(
            "/api/login",
            content=b'{"username": "\\ud83d\\ude00", "password": "not it at all"}',
            headers={"Content-Type": "application/json"},
        )
        lone = await http.post(
            "/api/login",
            content=b'{"username": "x", "password": "\\ud800 not it"}',
            headers={"Content-Type": "application/json"},
        )
    assert pair.status_code == 401, pair.text  # an ordinary wrong login
    assert lone.status_code == 400 and "surrogate" in lone.json()["detail"]
