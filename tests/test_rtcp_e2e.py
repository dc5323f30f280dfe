"""RTCP with a real aiortc subscriber: NACKs answered over RTX from the hub's own
history, Sender Reports that match what was forwarded."""

from __future__ import annotations

import asyncio

from hub.aiortc_internals import drop_received
from hub.client import HubClient
from hub.forwarding import DownTrack
from hub.ids import RoomName
from tests.helpers import NoisyVideo, first_track
from tests.hubserver import RunningHub
from tests.test_forwarding_e2e import decode_frames


class LossyLink:
    """Loses every tenth media packet of one SSRC on its way in (not RTX)."""

    def __init__(self, media_ssrc: int) -> None:
        self.media_ssrc = media_ssrc
        self.count = 0
        self.dropped = 0

    def lost(self, packet: bytes) -> bool:
        if int.from_bytes(packet[8:12], "big") == self.media_ssrc:
            self.count += 1
            if self.count % 10 == 0:
                self.dropped += 1
                return True
        return False


async def test_lost_packets_are_resent_and_sender_reports_match(hub_server: RunningHub) -> None:
    center = HubClient(hub_server.ws, hub_server.token("n", "C", "center"))
    station = HubClient(hub_server.ws, hub_server.token("n", "S1", "station"))
    try:
        await center.connect()
        await center.publish({"camera": NoisyVideo()})
        await station.connect()
        track = (await first_track(station, "camera")).track
        await decode_frames(track, 3)
        room = hub_server.hub.rooms[RoomName("n")]
        participant = room.by_identity("S1")  # type: ignore[arg-type]
        assert participant is not None and participant.subscriber is not None
        down: DownTrack = next(
            s.down for s in participant.subscriber.slots if s.publication is not None
        )
        assert down.rtx_payload_type is not None
        lossy = LossyLink(down.ssrc)
        assert station.subscriber is not None
        drop_received(station.subscriber, lossy.lost)
        stats = hub_server.hub.stats
        nacks, resent = stats.nacks_received, stats.retransmissions
        frames = await decode_frames(track, 60, timeout=20)
        assert lossy.dropped > 10
        assert stats.nacks_received > nacks
        assert stats.retransmissions - resent >= lossy.dropped * 0.8
        # Frames kept flowing: a gap that was not repaired would stall the decoder.
        assert len(frames) == 60

        # Stop the flow (the lecturer mutes its camera), then let a Sender Report pass:
        # it must count exactly what the hub sent on this SSRC (refreshed every 8th).
        await center.send({"type": "mute", "source": "camera", "muted": True})
        await center.wait_for(lambda m: m["type"] == "muted")
        await asyncio.sleep(2.5)  # over one Sender Report interval (0.5-1.5 s)
        receiver = next(
            t.receiver for t in station.subscriber.getTransceivers() if t.receiver.track is track
        )
        report = await receiver.getStats()
        sr = next(s for s in report.values() if s.type == "remote-outbound-rtp")
        assert sr.ssrc == down.ssrc
        assert down.packets_sent - 8 < sr.packetsSent <= down.packets_sent
        assert sr.bytesSent <= down.bytes_sent
    finally:
        await station.close()
        await center.close()
