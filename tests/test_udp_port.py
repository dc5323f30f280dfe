"""One UDP port for every peer connection (``HUB_UDP_PORT``, hub/udpmux.py): real
aiortc peers over loopback through a real hub whose media all use that port."""

from __future__ import annotations

import asyncio
import os
import random
import re
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import aioice.stun
import httpx
import pytest
from aiortc import RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from hub.client import HubClient
from hub.udpmux import UdpMux, stun_class, stun_local_ufrag
from tests.helpers import first_track, wait_until
from tests.hubserver import RunningHub, free_port, running_hub
from tests.test_forwarding_e2e import decode_frames
from tests.test_fuzz import stun_garbage


@pytest.fixture
async def shared_hub(tmp_path: Path) -> AsyncIterator[RunningHub]:
    async with running_hub(tmp_path, udp_port=free_port()) as running:
        yield running


def mux_of(hub_server: RunningHub) -> UdpMux:
    mux = hub_server.hub.udp_mux
    assert mux is not None
    return mux


def hub_ports(pc: RTCPeerConnection | None) -> set[int]:
    """The ports of the host candidates the hub gave this client's connection."""
    assert pc is not None and pc.remoteDescription is not None
    return {
        int(p)
        for p in re.findall(
            r"a=candidate:\S+ \d+ udp \d+ \S+ (\d+) typ host", pc.remoteDescription.sdp
        )
    }


def local_port(pc: RTCPeerConnection | None) -> int:
    """The client-side port of ``pc``'s selected ICE pair."""
    assert pc is not None
    connection = pc.getTransceivers()[0].receiver.transport.transport._connection
    return int(connection._nominated[1].local_addr[1])


def mapped(mux: UdpMux) -> dict[tuple[str, int], str]:
    """Each remote address the hub's port knows, and the ufrag of the endpoint it maps to."""
    return {addr: e.ufrag for s in mux.sockets for addr, e in s.by_address.items()}


async def test_a_publisher_and_its_subscribers_all_use_the_one_port(shared_hub: RunningHub) -> None:
    port = mux_of(shared_hub).port
    center = HubClient(shared_hub.ws, shared_hub.token("one", "C", "center"))
    stations = [
        HubClient(shared_hub.ws, shared_hub.token("one", f"S{i}", "station")) for i in (1, 2)
    ]
    try:
        await center.connect()
        await center.publish({"camera": VideoStreamTrack(), "microphone": AudioStreamTrack()})
        for station in stations:
            await station.connect()
        for station in stations:
            video = (await first_track(station, "camera")).track
            assert len(await decode_frames(video, 10)) == 10
            audio = (await first_track(station, "microphone")).track
            assert (await decode_frames(audio, 5))[-1].sample_rate == 48000
        assert hub_ports(center.publisher) == {port}
        for station in stations:
            assert hub_ports(station.subscriber) == {port}
        # Two sites behind one address (127.0.0.1), each on a port of its own: each
        # address maps to its own connection on the hub's port.
        addresses = mapped(mux_of(shared_hub))
        assert {("127.0.0.1", local_port(s.subscriber)) for s in stations} <= addresses.keys()
        ufrags = {addresses[("127.0.0.1", local_port(s.subscriber))] for s in stations}
        assert len(ufrags) == 2
    finally:
        for station in stations:
            await station.close()
        await center.close()


async def test_a_site_leaving_frees_its_mapping(shared_hub: RunningHub) -> None:
    mux = mux_of(shared_hub)
    center = HubClient(shared_hub.ws, shared_hub.token("leave", "C", "center"))
    station = HubClient(shared_hub.ws, shared_hub.token("leave", "S1", "station"))
    try:
        await center.connect()
        await center.publish({"camera": VideoStreamTrack()})
        endpoints = mux.endpoints  # the center's
        await station.connect()
        await decode_frames((await first_track(station, "camera")).track, 3)
        address = ("127.0.0.1", local_port(station.subscriber))
        ufrag = mapped(mux)[address]
        assert mux.endpoints == endpoints + 1
        await station.close()

        def forgotten() -> str | None:
            if address in mapped(mux):
                return f"{address} still mapped"
            if any(ufrag in s.by_ufrag for s in mux.sockets):
                return f"{ufrag} still there"
            return None if mux.endpoints == endpoints else f"{mux.endpoints} endpoints"

        await wait_until(forgotten)
        assert all(not e.closed for s in mux.sockets for e in s.by_transaction.values())
    finally:
        await station.close()
        await center.close()


async def test_a_new_site_from_a_port_a_lost_one_still_holds_is_mapped_to_the_new_one(
    shared_hub: RunningHub,
) -> None:
    """A site's connection drops without a word and a new connection comes from the
    same address and port (a reconnect through the same NAT mapping, as after an ICE
    restart), while the hub still holds the old one: its checks move the address."""
    site_port = free_port()
    center = HubClient(shared_hub.ws, shared_hub.token("move", "C", "center"))
    lost_site = UdpMux.open(["127.0.0.1"], site_port)
    lost = HubClient(shared_hub.ws, shared_hub.token("move", "S1", "station"), udp_mux=lost_site)
    new_site: UdpMux | None = None
    new = None
    try:
        await center.connect()
        await center.publish({"camera": VideoStreamTrack()})
        await lost.connect()
        await decode_frames((await first_track(lost, "camera")).track, 3)
        address = ("127.0.0.1", site_port)
        mux = mux_of(shared_hub)
        old_ufrag = mapped(mux)[address]
        lost_site.close()  # gone without a word: the hub still holds its connection
        new_site = UdpMux.open(["127.0.0.1"], site_port)
        new = HubClient(shared_hub.ws, shared_hub.token("move", "S2", "station"), udp_mux=new_site)
        await new.connect()
        frames = await decode_frames((await first_track(new, "camera")).track, 10)
        assert len(frames) == 10
        assert mapped(mux)[address] != old_ufrag
        assert any(old_ufrag in s.by_ufrag for s in mux.sockets)  # still held, address moved
    finally:
        if new is not None:
            await new.close()
        await lost.close()
        await center.close()
        lost_site.close()
        if new_site is not None:
            new_site.close()


def stun_request(ufrag: str) -> bytes:
    """A Binding request naming ``ufrag``, with a MESSAGE-INTEGRITY that is wrong."""
    message = aioice.stun.Message(
        message_method=aioice.stun.Method.BINDING, message_class=aioice.stun.Class.REQUEST
    )
    message.attributes["USERNAME"] = f"{ufrag}:stranger"
    message.add_message_integrity(b"not the password")
    return bytes(message)


async def test_garbage_to_the_port_is_dropped_without_harm(shared_hub: RunningHub) -> None:
    mux = mux_of(shared_hub)
    center = HubClient(shared_hub.ws, shared_hub.token("junk", "C", "center"))
    station = HubClient(shared_hub.ws, shared_hub.token("junk", "S1", "station"))
    try:
        await center.connect()
        await center.publish({"camera": VideoStreamTrack()})
        await station.connect()
        track = (await first_track(station, "camera")).track
        await decode_frames(track, 3)
        known = next(iter(mux.sockets[0].by_ufrag))
        response = bytearray(stun_request("x"))
        response[0:2] = b"\x01\x01"  # a success response nobody asked for
        junk = [
            random.randbytes(200),
            b"\x80" + random.randbytes(1599),  # SRTP-looking, oversized
            b"\x16\xfe\xfd" + random.randbytes(60),  # DTLS-looking
            b"\x00\x01\x00\x00\x21\x12\xa4\x42",  # STUN header cut short
            stun_request("nobody"),
            stun_request(known),  # the right ufrag, the wrong password
            bytes(response),
            *stun_garbage(),
            *(struct.pack("!HH", 0x0001, 0xFFFF) + b"\x21\x12\xa4\x42" + os.urandom(40),),
        ]
        dropped = mux.dropped
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            stranger.bind(("127.0.0.1", 0))
            for datagram in junk * 20:
                stranger.sendto(datagram, ("127.0.0.1", mux.port))
            await asyncio.sleep(0.5)
            assert stranger.getsockname() not in mapped(mux)
        assert mux.dropped > dropped
        assert len(await decode_frames(track, 30, timeout=15)) == 30
        async with httpx.AsyncClient() as http:
            response = await http.get(
                f"{shared_hub.base}/metrics", headers=shared_hub.metrics_headers
            )
        counted = re.search(r"^practicehub_udp_port_dropped_total (\d+)$", response.text, re.M)
        assert counted is not None and int(counted[1]) >= dropped + 20 * len(junk) - 40
    finally:
        await station.close()
        await center.close()


def test_stun_is_told_from_media_by_its_first_bytes() -> None:
    request = stun_request("abcd1234")
    assert stun_class(request) == 0
    assert stun_local_ufrag(request) == "abcd1234"
    assert stun_class(b"\x80" + bytes(40)) is None  # RTP
    assert stun_class(b"\x16\xfe\xfd" + bytes(40)) is None  # DTLS
    assert stun_local_ufrag(request[:24]) is None  # cut inside its attributes
