"""Nothing on the forwarding path decodes, and memory stays flat with nobody reading."""

from __future__ import annotations

import asyncio
import resource
import threading
from collections.abc import Iterator
from unittest.mock import patch

import pytest
from aiortc.codecs.h264 import H264Decoder
from aiortc.codecs.opus import OpusDecoder
from aiortc.codecs.vpx import Vp8Decoder
from aiortc.mediastreams import AudioStreamTrack

from hub.client import HubClient
from hub.ids import ParticipantIdentity, RoomName
from tests.helpers import NoisyVideo, first_track, wait_until
from tests.hubserver import RunningHub


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.fixture
def decode_calls() -> Iterator[list[str]]:
    """Spies on every aiortc decoder in this process (hub and clients alike)."""
    calls: list[str] = []

    def spy(cls: type) -> object:
        original = cls.decode

        def decode(self: object, frame: object) -> object:
            calls.append(cls.__name__)
            return original(self, frame)

        return patch.object(cls, "decode", decode)

    with spy(Vp8Decoder), spy(OpusDecoder), spy(H264Decoder):
        yield calls


@pytest.mark.timeout(90)
async def test_forwarding_decodes_nothing_and_memory_stays_flat(
    hub_server: RunningHub, decode_calls: list[str]
) -> None:
    center = HubClient(hub_server.ws, hub_server.token("nd", "C", "center"))
    stations = [
        HubClient(hub_server.ws, hub_server.token("nd", f"S{i}", "station"), decode=False)
        for i in range(3)
    ]
    try:
        await center.connect()
        await center.publish({"camera": NoisyVideo(), "microphone": AudioStreamTrack()})
        for station in stations:
            await station.connect()
        cameras = []
        for station in stations:
            cameras.append(await first_track(station, "camera"))
        await wait_until(lambda: None if min(c.packets for c in cameras) > 50 else "slow start")
        forwarded_before = hub_server.hub.stats.packets_forwarded
        bytes_before = sum(c.bytes for c in cameras)
        start = rss_mb()
        await asyncio.sleep(12)
        growth = rss_mb() - start
        received = sum(c.bytes for c in cameras) - bytes_before
        assert hub_server.hub.stats.packets_forwarded - forwarded_before > 1000
        # Decoded and left unread, this much video would be ~1 GB of raw frames.
        assert received > 3_000_000, f"only {received} bytes of video arrived"
        assert decode_calls == [], f"decoders ran: {set(decode_calls)}"
        assert growth < 40, f"RSS grew {growth:.0f} MB in 12 s"
    finally:
        for station in stations:
            await station.close()
        await center.close()


def decoder_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.endswith("-decoder")]


async def test_receiving_a_publisher_starts_no_decoder_thread(hub_server: RunningHub) -> None:
    """aiortc starts a decoder thread for every receiver; the hub's receivers never
    decode, so they get none (two idle threads per station otherwise)."""
    center = HubClient(hub_server.ws, hub_server.token("threads", "C", "center"), decode=False)
    try:
        await center.connect()
        before = decoder_threads()
        await center.publish({"camera": NoisyVideo(), "microphone": AudioStreamTrack()})
        room = hub_server.hub.rooms[RoomName("threads")]
        lecturer = room.by_identity(ParticipantIdentity("C"))
        assert lecturer is not None

        def flowing() -> str | None:
            publications = list(lecturer.publications.values())
            if len(publications) == 2 and all(p.up.packets_received for p in publications):
                return None
            return "no media at the hub yet"

        await wait_until(flowing)
        # The publisher's own connection only sends: any decoder thread is the hub's.
        assert decoder_threads() == before
    finally:
        await center.close()
