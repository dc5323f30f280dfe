"""Audio-only mode over signaling, with real aiortc peers: the hub holds every video
down track of that subscriber (none of its video crosses the link), audio goes on,
and video comes back from a keyframe when the mode ends."""

from __future__ import annotations

import asyncio

from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from hub.aiortc_internals import drop_received
from hub.client import HubClient
from hub.ids import RoomName
from tests.helpers import ToneTrack, first_track, wait_until
from tests.hubserver import RunningHub
from tests.test_forwarding_e2e import decode_frames


async def test_audio_only_holds_every_video_down_track(hub_server: RunningHub) -> None:
    center = HubClient(hub_server.ws, hub_server.token("ao", "C", "center"))
    station = HubClient(hub_server.ws, hub_server.token("ao", "S1", "station"))
    try:
        await center.connect()
        # A voice: digital silence would be withheld (test_silence.py).
        await center.publish({"camera": VideoStreamTrack(), "microphone": ToneTrack(440)})
        await station.connect()
        video = (await first_track(station, "camera")).track
        audio = (await first_track(station, "microphone")).track
        await decode_frames(video, 3)
        participant = hub_server.hub.rooms[RoomName("ao")].by_identity("S1")  # type: ignore[arg-type]
        assert participant is not None and participant.subscriber is not None
        down = next(s.down for s in participant.subscriber.slots if s.down.kind == "video")

        start = len(station.messages)
        await station.send({"type": "audio_only", "on": "yes"})
        error = await station.wait_for(lambda m: m["type"] == "error", start=start)
        assert error["code"] == "bad_message" and error["ref"] == "audio_only"

        await station.send({"type": "audio_only", "on": True})
        await asyncio.sleep(0.5)
        sent = down.packets_sent
        await decode_frames(audio, 50)  # a second of sound goes on
        assert down.held and down.packets_sent == sent

        await station.send({"type": "audio_only", "on": False})
        await decode_frames(video, 3)
        assert down.packets_sent > sent
    finally:
        await station.close()
        await center.close()


async def test_the_publisher_is_told_of_its_stations_loss(hub_server: RunningHub) -> None:
    """The lecturer's Opus encoder adds in-band FEC in proportion to the loss it is
    told of: the hub's receiver reports carry the worst of its stations'."""
    center = HubClient(hub_server.ws, hub_server.token("fec", "C", "center"))
    station = HubClient(hub_server.ws, hub_server.token("fec", "S1", "station"))
    try:
        await center.connect()
        await center.publish({"microphone": AudioStreamTrack()})
        await station.connect()
        audio = (await first_track(station, "microphone")).track
        await decode_frames(audio, 10)
        participant = hub_server.hub.rooms[RoomName("fec")].by_identity("S1")  # type: ignore[arg-type]
        assert participant is not None and participant.subscriber is not None
        down = next(s.down for s in participant.subscriber.slots if s.down.kind == "audio")
        count = 0

        def lost(packet: bytes) -> bool:  # every fifth audio packet, on the station's link
            nonlocal count
            if int.from_bytes(packet[8:12], "big") != down.ssrc:
                return False
            count += 1
            return count % 5 == 0

        assert station.subscriber is not None and center.publisher is not None
        drop_received(station.subscriber, lost)
        sender = next(t.sender for t in center.publisher.getTransceivers() if t.kind == "audio")

        async def told() -> str | None:
            report = await sender.getStats()
            rr = [s for s in report.values() if s.type == "remote-inbound-rtp"]
            lost = rr[0].fractionLost / 256 if rr and rr[0].fractionLost else 0.0
            return None if lost >= 0.1 else f"the publisher is told of {lost:.0%} lost"

        await wait_until(told, timeout=15)
        assert down.lost >= 0.1
    finally:
        await station.close()
        await center.close()
