"""The retransmission budget with real aiortc peers: a station whose link loses most
of what the hub resends gets each packet at most three times, and no more bytes of
resends than its share of the bandwidth it reports (REMB)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from aiortc.rtp import RtpPacket

from hub.aiortc_internals import drop_received
from hub.client import HubClient
from hub.forwarding import DownTrack
from hub.ids import RoomName
from hub.retransmission import BURST, MAX_RESENDS, SHARE
from tests.helpers import NoisyVideo, first_track, wait_until
from tests.hubserver import RunningHub
from tests.test_forwarding_e2e import decode_frames


class BadLink:
    """Loses every third media packet of the station's video and nearly every resend,
    so the station NACKs the same packets again and again; counts what was resent."""

    def __init__(self, down: DownTrack) -> None:
        self.media_ssrc = down.ssrc
        self.rtx_ssrc = down.rtx_ssrc
        self.media = 0
        self.resends: Counter[int] = Counter()
        """Times each original sequence number arrived resent."""
        self.resent_bytes = 0

    def lost(self, packet: bytes) -> bool:
        ssrc = int.from_bytes(packet[8:12], "big")
        if ssrc == self.rtx_ssrc:
            # The payload starts with the original sequence number (RFC 4588).
            self.resends[int.from_bytes(RtpPacket.parse(packet).payload[:2], "big")] += 1
            self.resent_bytes += len(packet)
            return sum(self.resends.values()) % 10 != 0
        if ssrc == self.media_ssrc:
            self.media += 1
            return self.media % 3 == 0
        return False


async def test_a_station_that_keeps_nacking_gets_a_bounded_share(hub_server: RunningHub) -> None:
    center = HubClient(hub_server.ws, hub_server.token("rb", "C", "center"))
    station = HubClient(hub_server.ws, hub_server.token("rb", "S1", "station"))
    try:
        await center.connect()
        await center.publish({"camera": NoisyVideo()})
        await station.connect()
        track = (await first_track(station, "camera")).track
        await decode_frames(track, 3)
        participant = hub_server.hub.rooms[RoomName("rb")].by_identity("S1")  # type: ignore[arg-type]
        assert participant is not None and participant.subscriber is not None
        down = next(s.down for s in participant.subscriber.slots if s.down.kind == "video")
        await wait_until(
            lambda: None if down.budget.estimate_bps else "no REMB from the station yet"
        )
        link = BadLink(down)
        assert station.subscriber is not None
        drop_received(station.subscriber, link.lost)
        stats = hub_server.hub.stats
        nacks, declined = stats.nacks_received, stats.retransmissions_declined
        started = time.monotonic()
        estimates: list[int] = []

        async def follow_estimate() -> None:
            while True:
                estimates.append(down.budget.estimate_bps or 0)
                await asyncio.sleep(0.1)

        follower = asyncio.create_task(follow_estimate())
        await asyncio.sleep(6)
        follower.cancel()
        elapsed = time.monotonic() - started
        assert stats.nacks_received - nacks > 500  # the station NACKed over and over
        assert link.resends and max(link.resends.values()) <= MAX_RESENDS
        assert stats.retransmissions_declined - declined > 0
        allowed = SHARE * max(estimates) / 8 * (elapsed + BURST)
        assert 0 < link.resent_bytes <= allowed
    finally:
        await station.close()
        await center.close()
