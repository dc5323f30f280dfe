"""The fan-out's C path (hub/_fastpath.c) and its Python twin (hub/_fastpath_py.py)
held to the same behaviour: the same script of packets through both, over real
SRTP on loopback, must leave the same packets on the wire and the same state; the
same protected datagrams, unprotected by both, must give the same plain packets."""

from __future__ import annotations

import importlib
import os
import random
import socket
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from aiortc.rtp import RtpPacket
from pylibsrtp import Policy, Session

from hub import _fastpath_py, fastpath
from hub.aiortc_internals import libsrtp_context_address, libsrtp_entry_points
from hub.client import HubClient
from tests.browser.conftest import HubProcess
from tests.helpers import REPLAYED, NoisyVideo, SrtpWire, first_track
from tests.test_forwarding_e2e import decode_frames

_fastpath_py.configure(**libsrtp_entry_points())


def native() -> ModuleType:
    try:
        return importlib.import_module("hub._fastpath")
    except ImportError:
        pytest.skip("hub._fastpath was not built (no C compiler at install)")


def test_ci_runs_the_c_path() -> None:
    """A build that silently fell back to Python would pass every other test, slower."""
    if os.environ.get("CI") != "true":
        pytest.skip("only required under CI=true")
    assert fastpath.NATIVE
    assert fastpath.fanout is native().fanout


BYE = bytes.fromhex("81cb0001abcdef01")
STATE = (
    "ssrc",
    "video",
    "payload_type",
    "abs_send_time_id",
    "next_seq",
    "last_timestamp",
    "packets_sent",
    "bytes_sent",
    "started",
    "first_seq",
    "seq_offset",
    "ts_offset",
    "report",
    "ready",
)


def run_script(impl: ModuleType, seed: int, shared: socket.socket | None = None) -> dict[str, Any]:
    """Drive four down tracks through a random but reproducible life; with ``shared``
    all four send from that one socket (HUB_UDP_PORT: the C path's sendmmsg)."""
    rng = random.Random(seed)
    wires = [SrtpWire(impl.SrtpSocket(), shared) for _ in range(4)]
    tracks = [
        impl.DownTrackCore(True, 0xABCDEF01),
        impl.DownTrackCore(True, 0x00000001),
        impl.DownTrackCore(False, 0xFFFFFFFF),
        impl.DownTrackCore(True, 0x7FFF1234),
    ]
    for i, (track, wire) in enumerate(zip(tracks, wires, strict=True)):
        track.payload_type = 96 + i
        track.abs_send_time_id = (0, 3, 0, 14)[i]
        if i != 1:
            track.srtp_socket = wire.srtp_socket  # the second gets its socket later
    results: list[Any] = []
    seq, timestamp = 65500, 0xFFFFF000  # both wrap during the script
    for step in range(400):
        if step == 50:
            tracks[1].srtp_socket = wires[1].srtp_socket
        if step == 200:
            wires[3].srtp_socket.close()  # the subscriber went away
        if step == 250:
            tracks[0].started = False  # a new subscription on the first slot
        marker = rng.random() < 0.3
        size = rng.choice((1, 100, 1100, 1200, 1400, 1460))  # the largest is refused
        payload = rng.randbytes(size)
        keyframe = step % 30 == 0 or rng.random() < 0.03  # a GOP, and requested ones
        ntp = rng.getrandbits(64)
        abs3 = rng.randbytes(3)
        if rng.random() < 0.1:  # a late packet, from before the current one
            late = (seq - 3) & 0xFFFF
            results.append(impl.fanout(tracks, late, timestamp, marker, payload, False, ntp, abs3))
        elif rng.random() < 0.05:  # a retransmission without RTX: a recent sequence number
            track = tracks[rng.randrange(4)]
            resent = (track.next_seq - 1 - rng.randrange(5)) & 0xFFFF
            results.append(track.write(resent, timestamp, marker, payload, ntp, abs3))
        else:
            results.append(
                impl.fanout(tracks, seq, timestamp, marker, payload, keyframe, ntp, abs3)
            )
            seq = (seq + 1) & 0xFFFF
            if marker:
                timestamp = (timestamp + 3000) & 0xFFFFFFFF
    for wire in wires:
        wire.srtp_socket.send(b"\x80\x60" + bytes(10) + b"rtp")
        wire.srtp_socket.send_rtcp(BYE)
    outcome = {
        "results": results,
        "state": [{name: getattr(track, name) for name in STATE} for track in tracks],
        "received": [list(wire.sent) for wire in wires],
    }
    for wire in wires:
        wire.close()
    return outcome


@pytest.mark.parametrize("one_socket", [False, True], ids=["socket-each", "one-socket"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_c_and_python_send_the_same_packets_and_keep_the_same_state(
    seed: int, one_socket: bool
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as shared:
        shared.bind(("127.0.0.1", 0))
        c = run_script(native(), seed, shared if one_socket else None)
        python = run_script(_fastpath_py, seed, shared if one_socket else None)
    assert c["results"] == python["results"]
    assert c["state"] == python["state"]
    assert c["received"] == python["received"]
    # The script exercised what it meant to: starts, refusals, a closed socket.
    sent = [r for r in c["results"] if isinstance(r, tuple)]
    assert any(r[2] for r in sent)  # a video track waited for a keyframe
    assert max(r[0] for r in sent) == 4
    assert c["state"][3]["ready"] is False and c["state"][0]["ready"] is True
    packets = [
        RtpPacket.parse(p) for p in c["received"][1] if p != REPLAYED and not 192 <= p[1] <= 223
    ]
    assert packets and all(p.payload_type == 97 for p in packets[:-1])
    assert all(len(p.payload) <= 1200 for p in packets)


def unprotect_script(impl: ModuleType, seed: int) -> list[tuple[bytes, bytes | None]]:
    """Protect a reproducible stream of RTP and RTCP packets with pylibsrtp, damage,
    replay or pad some, and unprotect each with ``impl``: (plain sent, what came out)."""
    rng = random.Random(seed)
    key = rng.randbytes(30)
    tx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    rx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND))
    ctx = libsrtp_context_address(rx)
    sent: list[bytes] = []
    outcome: list[tuple[bytes, bytes | None]] = []
    for seq in range(300):
        rtcp = rng.random() < 0.2
        if rtcp:  # a receiver report: V=2, RC=0, PT=201, length 1, sender SSRC
            plain = bytes.fromhex("80c90001") + rng.randbytes(4)
            datagram = tx.protect_rtcp(plain)
        else:
            header = bytes([0x80, 96]) + seq.to_bytes(2, "big") + rng.randbytes(8)
            plain = header + rng.randbytes(rng.choice((1, 160, 1100, 1300)))
            datagram = tx.protect(plain)
        roll = rng.random()
        if roll < 0.05:  # damaged on the way: authentication fails
            i = rng.randrange(len(datagram))
            datagram = datagram[:i] + bytes([datagram[i] ^ 0x40]) + datagram[i + 1 :]
        elif roll < 0.1 and sent:  # a replay of an earlier datagram
            datagram = rng.choice(sent)
        elif roll < 0.13:  # over the largest datagram the hub takes
            datagram += bytes(1501 - len(datagram))
        sent.append(datagram)
        out = impl.unprotect_rtcp(ctx, datagram) if rtcp else impl.unprotect(ctx, datagram)
        outcome.append((plain, out))
    return outcome


@pytest.mark.parametrize("seed", [1, 2])
def test_c_and_python_unprotect_alike(seed: int) -> None:
    c = unprotect_script(native(), seed)
    assert c == unprotect_script(_fastpath_py, seed)
    accepted = [plain for plain, out in c if out == plain]
    refused = [plain for plain, out in c if out is None]
    # Every packet came out as sent or not at all, and the script had both kinds.
    assert len(accepted) + len(refused) == len(c)
    assert len(refused) >= 10 and len(accepted) >= 200


@pytest.mark.parametrize("impl_name", ["native", "python"])
def test_bad_arguments_are_refused_with_clear_errors(impl_name: str) -> None:
    impl = native() if impl_name == "native" else _fastpath_py
    track = impl.DownTrackCore(True, 5)
    with pytest.raises(ValueError, match="abs3"):
        impl.fanout([track], 1, 1, 0, b"x", True, 0, b"toolong")
    with pytest.raises(ValueError, match="ssrc"):
        impl.DownTrackCore(True, 1 << 32)
    srtp_socket = impl.SrtpSocket()
    assert not srtp_socket.open and not srtp_socket.send(b"\x80" * 20)
    with pytest.raises(ValueError, match="numeric"):
        SrtpWire(srtp_socket).srtp_socket.aim(1, None, _udp(), "localhost", 9)
    with pytest.raises(ValueError, match="libsrtp context"):
        impl.unprotect(0, b"\x80" * 20)
    if impl_name == "native":
        with pytest.raises(TypeError):
            impl.fanout([object()], 1, 1, 0, b"x", True, 0, b"abc")
        with pytest.raises(TypeError):
            track.srtp_socket = object()


def _udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


async def test_a_hub_on_the_python_twin_forwards_decodable_video(tmp_path: Path) -> None:
    """HUB_FASTPATH=python (or a machine without a C compiler): the whole hub, in its
    own process, forwards with the Python twin, and says so in /metrics."""
    hub = HubProcess(tmp_path / "data", tmp_path / "hub.log", env={"HUB_FASTPATH": "python"})
    hub.start()
    ws = f"ws://127.0.0.1:{hub.port}/ws"
    center = HubClient(ws, hub.token("twin", "C", "center"))
    station = HubClient(ws, hub.token("twin", "S1", "station"))
    try:
        assert "practicehub_native_fanout 0" in _metrics(hub)
        await center.connect()
        await center.publish({"camera": NoisyVideo()})
        await station.connect()
        camera = await first_track(station, "camera")
        frames = await decode_frames(camera.track, 15)
        assert len(frames) == 15 and frames[-1].width == 640
        forwarded = next(
            float(line.split()[1])
            for line in _metrics(hub).splitlines()
            if line.startswith("practicehub_packets_forwarded_total ")
        )
        assert forwarded >= 15
    finally:
        await station.close()
        await center.close()
        hub.stop()


def _metrics(hub: HubProcess) -> str:
    with urllib.request.urlopen(f"{hub.base_url}/metrics", timeout=5) as response:
        text: str = response.read().decode()
    return text
