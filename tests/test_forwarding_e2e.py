"""Real aiortc peers over loopback through a real hub: frames decoded, nothing decoded
at the hub."""

from __future__ import annotations

import asyncio

from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from hub.client import HubClient
from tests.helpers import wait_until
from tests.hubserver import RunningHub


async def decode_frames(track, count: int, timeout: float = 15.0) -> list:  # type: ignore[no-untyped-def]
    frames = []

    async def read() -> None:
        while len(frames) < count:
            frames.append(await track.recv())

    await asyncio.wait_for(read(), timeout)
    return frames


async def test_lecturer_reaches_station_decoded(hub_server: RunningHub) -> None:
    center = HubClient(hub_server.ws, hub_server.token("lecture", "C", "center", name="中心"))
    station = HubClient(hub_server.ws, hub_server.token("lecture", "S1", "station"))
    try:
        await center.connect()
        await center.publish({"camera": VideoStreamTrack(), "microphone": AudioStreamTrack()})
        await station.connect()
        await wait_until(
            lambda: (
                None
                if station.tracks_of("camera") and station.tracks_of("microphone")
                else f"station has {[t.info for t in station.received.values()]}"
            )
        )
        video = station.tracks_of("camera")[0].track
        audio = station.tracks_of("microphone")[0].track
        frames = await decode_frames(video, 10)
        assert frames[-1].width == 640 and frames[-1].height == 480
        sound = await decode_frames(audio, 10)
        assert sound[-1].sample_rate == 48000
        stats = hub_server.hub.stats
        assert stats.packets_forwarded > 0
        assert stats.keyframe_requests >= 1
    finally:
        await station.close()
        await center.close()


async def test_a_lightweight_subscriber_counts_and_sends_no_feedback(
    hub_server: RunningHub,
) -> None:
    """The benchmark's load generator: counts packets with none of aiortc's receive path."""
    from aiortc.rtp import RtpPacket

    from hub.client import ReceivedTrack

    seen: list[int] = []

    def on_rtp(track: ReceivedTrack, packet: RtpPacket) -> None:
        seen.append(packet.sequence_number)

    center = HubClient(hub_server.ws, hub_server.token("lw", "C", "center"))
    station = HubClient(
        hub_server.ws,
        hub_server.token("lw", "S1", "station"),
        decode=False,
        lightweight=True,
        on_rtp=on_rtp,
    )
    try:
        await center.connect()
        await center.publish({"camera": VideoStreamTrack(), "microphone": AudioStreamTrack()})
        await station.connect()
        await wait_until(lambda: None if len(seen) > 150 else f"{len(seen)} packets")
        await asyncio.sleep(3)  # several RTCP intervals
        participant = hub_server.hub.rooms["lw"].by_identity("S1")  # type: ignore[index,arg-type]
        assert participant is not None and participant.link.rtt_ms is None  # no receiver reports
        assert hub_server.hub.stats.nacks_received == 0
        assert sum(t.packets for t in station.received.values()) == len(seen)
    finally:
        await station.close()
        await center.close()
