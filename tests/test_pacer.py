"""The publisher-side pacer: a large frame leaves spread out at the paced rate."""

from __future__ import annotations

import time

from aiortc import MediaStreamTrack, RTCSessionDescription
from aiortc.rtp import RtpPacket

from hub.aiortc_internals import ReceiverTap, RtpPacer, restrict_host_addresses
from hub.peers import make_peer_connection
from tests.helpers import EncodedFrames, wait_until

FRAME_BYTES = 30_000
FRAMES = 3


async def send_frames(rate_bps: float | None) -> tuple[list[tuple[int, float]], int]:
    """(RTP timestamp, send time) of every packet sent, and packets received."""
    restrict_host_addresses(["127.0.0.1"])
    sender_pc, receiver_pc = make_peer_connection([]), make_peer_connection([])
    received: list[RtpPacket] = []

    @receiver_pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        transceiver = next(t for t in receiver_pc.getTransceivers() if t.receiver.track is track)
        ReceiverTap(transceiver.receiver, received.append, bypass=True)

    sent: list[tuple[int, float]] = []
    track = EncodedFrames(FRAME_BYTES, 0.5)
    transceiver = sender_pc.addTransceiver(track, direction="sendonly")
    await sender_pc.setLocalDescription(await sender_pc.createOffer())
    await receiver_pc.setRemoteDescription(sender_pc.localDescription)
    await receiver_pc.setLocalDescription(await receiver_pc.createAnswer())
    RtpPacer(
        transceiver.sender.transport,
        [transceiver.sender],
        rate_bps,
        lambda data: sent.append((int.from_bytes(data[4:8], "big"), time.monotonic())),
    )
    answer = receiver_pc.localDescription
    await sender_pc.setRemoteDescription(RTCSessionDescription(sdp=answer.sdp, type=answer.type))
    try:
        await wait_until(
            lambda: None if track.taken > FRAMES else f"{track.taken} frames taken", 20
        )
        await wait_until(lambda: None if len(received) >= len(sent) else "receiving", 5)
    finally:
        await sender_pc.close()
        await receiver_pc.close()
    return sent, len(received)


def frame_spans(sent: list[tuple[int, float]]) -> list[float]:
    """How long each whole frame took to leave, first packet to last."""
    times: dict[int, list[float]] = {}
    for timestamp, at in sent:
        times.setdefault(timestamp, []).append(at)
    return [max(ts) - min(ts) for ts in list(times.values())[:FRAMES]]


async def test_a_large_frame_leaves_at_the_paced_rate() -> None:
    rate_bps = 1_000_000
    sent, received = await send_frames(rate_bps)
    assert received >= len(sent) > FRAMES * 20
    expected = FRAME_BYTES * 8 / rate_bps  # 0.24 s
    for span in frame_spans(sent):
        assert expected * 0.8 < span < expected * 3, (span, expected)


async def test_without_a_rate_a_frame_leaves_at_once_and_is_still_reported() -> None:
    sent, received = await send_frames(None)
    assert received >= len(sent) > FRAMES * 20
    assert max(frame_spans(sent)) < 0.1
