"""Fails loudly if the pinned aiortc/aioice move the internals the hub relies on."""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import random
import re
import struct
import time
import tomllib
from pathlib import Path
from typing import Any

import aioice.ice
import aioice.stun
import aioice.utils
import aiortc.rate
import aiortc.rtcicetransport
import pytest
from aiortc import MediaStreamTrack, RTCSessionDescription
from aiortc.rtp import RtpPacket

from hub.aiortc_internals import (
    EXTRA_H264_PROFILES,
    PINNED,
    InternalsChanged,
    ReceiverTap,
    _Heard,
    accept_offered_payload_types,
    check_internals,
    install_datagram_path,
    install_flat_rate_counter,
    install_h264_profiles,
    keep_consent_while_heard,
    restrict_host_addresses,
)
from hub.peers import make_peer_connection
from hub.settings import Settings
from tests.helpers import EncodedFrames, wait_until
from tests.test_fuzz import stun_garbage


async def test_pinned_internals_are_all_there() -> None:
    await check_internals()


@pytest.mark.parametrize(
    "owner, name",
    [
        (aioice.ice.Connection, "_check_list_maybe_complete"),
        (aioice.ice.Connection, "_check_periodic"),
        (aioice.ice.Connection, "_unfreeze_initial"),
        (aioice.ice, "ICE_COMPLETED"),
        (aioice.utils, "random_string"),
        (aiortc.rtcicetransport, "candidate_to_aioice"),
    ],
)
async def test_what_ice_restart_relies_on_is_checked(
    owner: Any, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(owner, name)
    with pytest.raises(InternalsChanged, match=name):
        await check_internals()


async def test_what_ice_restart_relies_on_of_a_connection_is_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The attributes a connection gets in ``__init__`` (here one it no longer would)."""
    init = aioice.ice.Connection.__init__

    def without_nominating(self: aioice.ice.Connection, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        del self._nominating

    monkeypatch.setattr(aioice.ice.Connection, "__init__", without_nominating)
    with pytest.raises(InternalsChanged, match="_nominating"):
        await check_internals()


def test_pyproject_pins_the_same_versions() -> None:
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    dependencies = project["project"]["dependencies"]
    for package, version in PINNED.items():
        assert f"{package}=={version}" in dependencies
        assert importlib.metadata.version(package) == version


def test_h264_profiles_install_once_with_unique_payload_types() -> None:
    from aiortc.codecs import CODECS

    install_h264_profiles()
    install_h264_profiles()
    video = CODECS["video"]
    profiles = [str(c.parameters.get("profile-level-id")) for c in video if c.name == "H264"]
    for profile in EXTRA_H264_PROFILES:
        assert profiles.count(profile) == 1
    payload_types = [c.payloadType for kind in CODECS.values() for c in kind]
    assert len(payload_types) == len(set(payload_types))


async def test_an_answer_keeps_a_payload_type_offered_below_96() -> None:
    """Chromium offers its newer codecs (H.264 High 4:4:4 Predictive, AV1) on 35-63;
    an answer must use the offered number, or the browser reads another codec."""
    install_h264_profiles()
    accept_offered_payload_types()
    offerer, answerer = make_peer_connection([]), make_peer_connection([])
    try:
        offerer.addTransceiver("video", direction="recvonly")
        await offerer.setLocalDescription(await offerer.createOffer())
        sdp = offerer.localDescription.sdp
        # Renumber the offered H.264 High 4:4:4 Predictive and its RTX into 41/42.
        high444 = re.search(r"a=fmtp:(\d+) [^\r]*profile-level-id=f4001f", sdp)
        assert high444 is not None, sdp
        rtx = re.search(rf"a=fmtp:(\d+) apt={high444[1]}\r", sdp)
        assert rtx is not None
        for old, new in ((high444[1], "41"), (rtx[1], "42")):
            sdp = re.sub(rf"(?<=[ :=]){old}(?=[ \r])", new, sdp)
        answerer.addTransceiver("video", direction="sendonly")
        await answerer.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
        await answerer.setLocalDescription(await answerer.createAnswer())
        answer = answerer.localDescription.sdp
        assert (
            "a=fmtp:41 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=f4001f"
            in answer
        )
        assert "a=fmtp:42 apt=41" in answer
    finally:
        await offerer.close()
        await answerer.close()


async def test_consent_lasts_while_the_peers_checks_arrive_and_ends_in_silence() -> None:
    """A peer that answers no consent checks but sends its own (the hub hears it) keeps
    its connection; once it goes silent the connection closes after the timeout."""
    timeout = 3.0
    keep_consent_while_heard(timeout)
    restrict_host_addresses(["127.0.0.1"])
    hub_side = aioice.ice.Connection(ice_controlling=False)
    peer = aioice.ice.Connection(ice_controlling=True)
    try:
        for connection in (hub_side, peer):
            await connection.gather_candidates()
        for a, b in ((hub_side, peer), (peer, hub_side)):
            a.remote_username, a.remote_password = b.local_username, b.local_password
            for candidate in b.local_candidates:
                await a.add_remote_candidate(candidate)
            await a.add_remote_candidate(None)
        await asyncio.gather(hub_side.connect(), peer.connect())
        # From now on the peer answers nothing, like ffmpeg's WHIP muxer.
        peer.request_received = lambda *args: None  # type: ignore[method-assign]
        closed = asyncio.ensure_future(hub_side.get_event())
        await asyncio.wait({closed}, timeout=3 * timeout)
        assert not closed.done(), f"closed while the peer's checks arrived: {closed.result()}"
        await peer.close()
        assert isinstance(await asyncio.wait_for(closed, 3 * timeout), aioice.ice.ConnectionClosed)
    finally:
        await peer.close()
        await hub_side.close()
        keep_consent_while_heard(Settings().peer_silence_timeout)


async def test_gathering_follows_the_configured_addresses() -> None:
    from hub.peers import make_peer_connection

    restrict_host_addresses(["127.0.0.1"])
    pc = make_peer_connection([])
    pc.addTransceiver("audio")
    await pc.setLocalDescription(await pc.createOffer())
    candidates = [
        line for line in pc.localDescription.sdp.splitlines() if line.startswith("a=candidate")
    ]
    assert candidates and all(" 127.0.0.1 " in c for c in candidates)
    assert not any(" srflx " in c for c in candidates)  # no STUN server was asked
    await pc.close()
    restrict_host_addresses([])
    assert aioice.ice.get_host_addresses is not None
    restrict_host_addresses(["127.0.0.1"])


async def test_a_peer_connection_on_the_shared_port_gathers_there_and_leaves_nothing() -> None:
    """use_udp_mux: host candidates on the mux's port with a ufrag of the mux's, the
    connection carries media through it, and closing it frees its endpoint."""
    from hub.udpmux import UdpMux
    from tests.hubserver import free_port

    restrict_host_addresses(["127.0.0.1"])
    mux = UdpMux.open(["127.0.0.1"], free_port())
    on_mux, plain = make_peer_connection([], mux), make_peer_connection([])
    try:
        plain.addTrack(EncodedFrames(800, 0.05))
        await plain.setLocalDescription(await plain.createOffer())
        await on_mux.setRemoteDescription(plain.localDescription)
        await on_mux.setLocalDescription(await on_mux.createAnswer())
        answer = on_mux.localDescription.sdp
        ports = re.findall(r"a=candidate:\S+ \d+ udp \d+ 127\.0\.0\.1 (\d+) typ host", answer)
        assert ports == [str(mux.port)]
        ufrag = re.search(r"a=ice-ufrag:(\S+)", answer)
        assert ufrag is not None and len(ufrag[1]) == 8
        assert ufrag[1] in mux.sockets[0].by_ufrag
        await plain.setRemoteDescription(on_mux.localDescription)

        async def media_arrived() -> str | None:
            stats = (await on_mux.getStats()).values()
            packets = sum(
                getattr(s, "packetsReceived", 0) for s in stats if s.type == "inbound-rtp"
            )
            return None if packets > 10 else f"{on_mux.connectionState}, {packets} packets"

        await wait_until(media_arrived)
        assert mux.addresses == 1
    finally:
        await on_mux.close()
        await plain.close()
    await wait_until(lambda: None if mux.endpoints == 0 else f"{mux.endpoints} endpoints")
    assert mux.addresses == 0
    mux.close()


async def test_frames_are_assembled_only_while_wanted() -> None:
    """The receive path forwards packets always, but builds frames only for a sink."""
    restrict_host_addresses(["127.0.0.1"])
    sender_pc, receiver_pc = make_peer_connection([]), make_peer_connection([])
    packets: list[RtpPacket] = []
    frames: list[tuple[str, bytes, int]] = []
    taps: list[ReceiverTap] = []

    @receiver_pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        transceiver = next(t for t in receiver_pc.getTransceivers() if t.receiver.track is track)
        taps.append(ReceiverTap(transceiver.receiver, packets.append))

    track = EncodedFrames(4000, 0.05)
    sender_pc.addTransceiver(track, direction="sendonly")
    try:
        await sender_pc.setLocalDescription(await sender_pc.createOffer())
        await receiver_pc.setRemoteDescription(sender_pc.localDescription)
        await receiver_pc.setLocalDescription(await receiver_pc.createAnswer())
        await sender_pc.setRemoteDescription(receiver_pc.localDescription)
        await wait_until(lambda: None if len(packets) > 40 else f"{len(packets)} packets", 10)
        assert frames == []
        taps[0].set_frame_callback(lambda codec, data, ts: frames.append((codec, data, ts)))
        await wait_until(lambda: None if len(frames) >= 5 else f"{len(frames)} frames", 10)
        assert {codec for codec, _, _ in frames} == {"VP8"}
        assert all(len(data) == 4000 for _, data, _ in frames[1:])
        taps[0].set_frame_callback(None)
        seen = len(frames)
        await asyncio.sleep(0.3)
        assert len(frames) == seen
    finally:
        await sender_pc.close()
        await receiver_pc.close()


def test_aioice_still_raises_struct_error_on_a_short_stun_attribute() -> None:
    """Why the hub's datagram path drops struct.error (hub/aiortc_internals.py): when
    aioice raises ValueError instead, the guard is no longer needed."""

    for datagram in stun_garbage():
        with pytest.raises(struct.error):
            aioice.stun.parse_message(datagram)
    install_datagram_path()
    assert aioice.ice.StunProtocol.datagram_received.__module__ == "hub.aiortc_internals"


async def test_no_consent_checks_to_a_peer_that_is_heard() -> None:
    """Media or RTCP that authenticates is consent enough: the hub asks only a peer
    it has not heard from since its last look."""
    timeout = 3.0
    keep_consent_while_heard(timeout)
    restrict_host_addresses(["127.0.0.1"])
    hub_side = aioice.ice.Connection(ice_controlling=False)
    peer = aioice.ice.Connection(ice_controlling=True)
    try:
        for connection in (hub_side, peer):
            await connection.gather_candidates()
        for a, b in ((hub_side, peer), (peer, hub_side)):
            a.remote_username, a.remote_password = b.local_username, b.local_password
            for candidate in b.local_candidates:
                await a.add_remote_candidate(candidate)
            await a.add_remote_candidate(None)
        await asyncio.gather(hub_side.connect(), peer.connect())
        checks: list[float] = []
        answer = peer.request_received

        def count(*args: Any) -> None:
            checks.append(time.monotonic())
            answer(*args)

        peer.request_received = count  # type: ignore[method-assign]
        heard = _Heard.of(hub_side)
        for _ in range(30):  # 3 s of media arriving (what _Unprotector counts)
            heard.count += 1
            await asyncio.sleep(0.1)
        assert checks == []  # (a peer not heard is asked: see the test above)
    finally:
        await peer.close()
        await hub_side.close()
        keep_consent_while_heard(Settings().peer_silence_timeout)


def test_the_flat_rate_counter_gives_aiortcs_figures() -> None:
    """The hub's RateCounter (two flat lists) against a fresh, unpatched copy of
    aiortc's, on the same arrivals: every rate equal."""
    spec = importlib.util.find_spec("aiortc.rate")
    assert spec is not None and spec.loader is not None
    original = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(original)
    install_flat_rate_counter()
    ours, theirs = aiortc.rate.RateCounter(1000, 8000), original.RateCounter(1000, 8000)
    assert ours.reset.__func__ is not theirs.reset.__func__  # type: ignore[attr-defined]
    rng = random.Random(15)
    now = 5_000
    for _ in range(5_000):
        now += rng.choice((0, 0, 1, 3, 20, 400, 1_500))
        size = rng.randrange(40, 1_300)
        ours.add(size, now)
        theirs.add(size, now)
        assert ours.rate(now) == theirs.rate(now)
        if rng.random() < 0.001:
            ours.reset()
            theirs.reset()


async def test_every_connection_presents_one_certificate_and_still_connects() -> None:
    """One DTLS certificate for the process: the same fingerprint in every offer, and
    two connections holding it handshake and carry media."""
    first, second = make_peer_connection([]), make_peer_connection([])
    try:
        first.addTransceiver("audio", direction="sendonly")
        second.addTransceiver("audio", direction="recvonly")
        await first.setLocalDescription(await first.createOffer())

        def fingerprint(sdp: str) -> str:
            found = re.search(r"a=fingerprint:(.+)", sdp)
            assert found is not None
            return found[1]

        await second.setRemoteDescription(first.localDescription)
        await second.setLocalDescription(await second.createAnswer())
        assert fingerprint(first.localDescription.sdp) == fingerprint(second.localDescription.sdp)
        await first.setRemoteDescription(second.localDescription)
        await wait_until(
            lambda: (
                None
                if first.connectionState == second.connectionState == "connected"
                else f"{first.connectionState} / {second.connectionState}"
            )
        )
    finally:
        await first.close()
        await second.close()
