"""Audio-only mode over signaling, with real aiortc peers: the hub holds every video
down track of that subscriber (none of its video crosses the link), audio goes on,
and video comes back from a keyframe when the mode ends."""

from __future__ import annotations

import asyncio

from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from hub.client import HubClient
from hub.ids import RoomName
from tests.helpers import first_track
from tests.hubserver import RunningHub
from tests.test_forwarding_e2e import decode_frames


async def test_audio_only_holds_every_video_down_track(hub_server: RunningHub) -> None:
    center = HubClient(hub_server.ws, hub_server.token("ao", "C", "center"))
    station = HubClient(hub_server.ws, hub_server.token("ao", "S1", "station"))
    try:
        await center.connect()
        await center.publish({"camera": VideoStreamTrack(), "microphone": AudioStreamTrack()})
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
