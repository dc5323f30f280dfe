"""RTCP with real aiortc peers: NACKs answered over RTX from the hub's own history,
Sender Reports that match what was forwarded, and a lossy publisher's uplink repaired
by the hub's NACKs."""

from __future__ import annotations

import asyncio

from aiortc import VideoStreamTrack

from hub.aiortc_internals import drop_received, drop_sent
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
        self.dropped: list[int] = []
        """Sequence numbers of the packets lost."""

    def lost(self, packet: bytes) -> bool:
        if int.from_bytes(packet[8:12], "big") == self.media_ssrc:
            self.count += 1
            if self.count % 10 == 0:
                self.dropped.append(int.from_bytes(packet[2:4], "big"))
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
        assert len(lossy.dropped) > 10
        assert stats.nacks_received > nacks
        assert stats.retransmissions - resent >= len(lossy.dropped) * 0.8
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


async def test_a_lossy_publisher_uplink_is_repaired_by_the_hubs_nacks(
    hub_server: RunningHub,
) -> None:
    """The publisher's media takes the hub's direct receive path, which must still
    see gaps and NACK them: the publisher resends over RTX (aiortc's path), and the
    hub's history, which answers the stations, ends up whole."""
    center = HubClient(hub_server.ws, hub_server.token("u", "C", "center"))
    station = HubClient(hub_server.ws, hub_server.token("u", "S1", "station"))
    try:
        await center.connect()
        await center.publish({"camera": VideoStreamTrack()})  # small frames, few packets
        await station.connect()
        track = (await first_track(station, "camera")).track
        await decode_frames(track, 3)
        room = hub_server.hub.rooms[RoomName("u")]
        lecturer = room.by_identity("C")  # type: ignore[arg-type]
        assert lecturer is not None
        camera = next(iter(lecturer.publications.values()))
        up = camera.up
        assert up.top.media_ssrc is not None
        lossy = LossyLink(up.top.media_ssrc)
        assert center.publisher is not None
        drop_sent(center.publisher, lossy.lost)
        received, direct = up.packets_received, camera.tap.packets_direct
        frames = await decode_frames(track, 120, timeout=20)
        assert len(lossy.dropped) > 10 and len(frames) == 120
        await asyncio.sleep(0.5)  # the last NACKs' answers
        assert up.packets_received - received < 2000  # all still in the history
        # Each packet lost on the way in reached the hub after all, resent after its
        # NACK: its history, which answers the stations' NACKs, is whole.
        history = up.top.history
        assert history is not None
        assert [seq for seq in lossy.dropped[:-2] if history.get(seq) is None] == []
        # And the rest came the direct way.
        assert camera.tap.packets_direct - direct > (up.packets_received - received) / 2
        # The hub's receiver reports, made of what the direct way counted, tell the
        # publisher what its uplink lost.
        await asyncio.sleep(1.6)  # over one receiver report interval (0.5-1.5 s)
        sender = next(t.sender for t in center.publisher.getTransceivers() if t.kind == "video")
        report = await sender.getStats()
        rr = next(s for s in report.values() if s.type == "remote-inbound-rtp")
        assert len(lossy.dropped) // 2 <= rr.packetsLost <= len(lossy.dropped) + 5
    finally:
        await station.close()
        await center.close()
