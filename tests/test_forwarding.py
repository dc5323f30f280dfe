"""The forwarding path's rewriting, keyframe gating, coalescing and NACK answers,
on real RTP bytes (parsed back with aiortc's own parser)."""

from __future__ import annotations

import asyncio
import itertools

from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket, unwrap_rtx

from hub.codecs import h264_keyframe_start, vp8_keyframe_start
from hub.forwarding import (
    HISTORY_SIZE,
    CodecInfo,
    DownTrack,
    ForwardingStats,
    KeyframeRequester,
    Subscription,
    UpTrack,
)
from tests.helpers import SrtpWire

VP8 = CodecInfo(name="VP8", mime_type="video/VP8", clock_rate=90000)
ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
VP8_KEY = bytes([0x10, 0x00, 0x9D, 0x01, 0x2A])  # S=1, PID=0; P bit 0: key frame
VP8_DELTA = bytes([0x10, 0x01, 0x00])  # S=1, P bit 1: delta frame
VP8_CONT = bytes([0x00, 0x55, 0x66])  # continuation of a frame


def packet(seq: int, ts: int, payload: bytes, marker: int = 0) -> RtpPacket:
    p = RtpPacket(payload_type=96, sequence_number=seq, timestamp=ts, marker=marker, ssrc=1111)
    p.payload = payload
    p.extensions.mid = "0"
    p.extensions.audio_level = (True, 30)
    return p


def make_pair(
    stats: ForwardingStats, plis: list[int], abs_id: int | None = None
) -> tuple[UpTrack, DownTrack, SrtpWire]:
    up = UpTrack("video", VP8, stats, lambda layer: plis.append(1))
    down = DownTrack("video", 0xABCDEF01, 0x01020304, stats)
    wire = SrtpWire()
    down.configure(
        wire.srtp_socket, payload_type=100, rtx_payload_type=101, abs_send_time_id=abs_id
    )
    return up, down, wire


async def test_subscription_starts_at_keyframe_and_rewrites_headers() -> None:
    stats = ForwardingStats()
    plis: list[int] = []
    up, down, wire = make_pair(stats, plis)
    Subscription(up, down)
    up.on_rtp(packet(65534, 1000, VP8_DELTA))
    up.on_rtp(packet(65535, 1000, VP8_CONT, marker=1))
    assert wire.sent == []  # nothing before a keyframe
    await asyncio.sleep(0)
    assert plis  # and the publisher was asked for one
    up.on_rtp(packet(0, 4000, VP8_KEY))
    up.on_rtp(packet(1, 4000, VP8_CONT, marker=1))
    up.on_rtp(packet(2, 7000, VP8_DELTA, marker=1))
    out = [RtpPacket.parse(b) for b in wire.sent]
    assert [p.ssrc for p in out] == [0xABCDEF01] * 3
    assert [p.payload_type for p in out] == [100] * 3
    seqs = [p.sequence_number for p in out]
    assert seqs == [seqs[0], (seqs[0] + 1) & 0xFFFF, (seqs[0] + 2) & 0xFFFF]
    assert out[1].timestamp == out[0].timestamp
    assert (out[2].timestamp - out[0].timestamp) & 0xFFFFFFFF == 3000
    assert [p.marker for p in out] == [0, 1, 1]
    assert [p.payload for p in out] == [VP8_KEY, VP8_CONT, VP8_DELTA]  # unchanged


async def test_sender_report_figures_are_consistent_snapshots_of_what_was_sent() -> None:
    stats = ForwardingStats()
    up, down, wire = make_pair(stats, [])
    Subscription(up, down)
    reports = []
    for i in range(20):
        up.on_rtp(packet(i, 3000 * i, VP8_KEY if i == 0 else VP8_DELTA, marker=1))
        reports.append(down.report)
    out = [RtpPacket.parse(b) for b in wire.sent]
    assert reports[:7] == [None] * 7  # nothing to report before the 8th packet
    assert reports[7:15] == [reports[7]] * 8 and reports[15:] == [reports[15]] * 5
    for report, count in ((reports[7], 8), (reports[15], 16)):  # refreshed every 8th
        assert report is not None
        rtp_timestamp, _ntp, packets, octets = report
        assert rtp_timestamp == out[count - 1].timestamp
        assert packets == count
        assert octets == sum(len(p.payload) for p in out[:count])


async def test_publisher_extensions_are_not_copied_only_negotiated_ones_written() -> None:
    stats = ForwardingStats()
    up, down, wire = make_pair(stats, [], abs_id=3)
    Subscription(up, down)
    up.on_rtp(packet(10, 0, VP8_KEY, marker=1))
    raw = wire.sent[0]
    assert raw[0] & 0x10  # extension bit
    assert raw[12:16] == b"\xbe\xde\x00\x01"  # one-byte header, one word
    assert raw[16] >> 4 == 3 and raw[16] & 0x0F == 2  # abs-send-time only (3 bytes)
    up2, down2, wire2 = make_pair(stats, [], abs_id=None)
    Subscription(up2, down2)
    up2.on_rtp(packet(10, 0, VP8_KEY, marker=1))
    assert not wire2.sent[0][0] & 0x10  # nothing negotiated: no extension at all
    assert RtpPacket.parse(wire2.sent[0]).payload == VP8_KEY


async def test_a_new_publication_on_the_same_slot_continues_sequence_and_clock() -> None:
    stats = ForwardingStats()
    up, down, wire = make_pair(stats, [])
    first = Subscription(up, down)
    up.on_rtp(packet(100, 9000, VP8_KEY, marker=1))
    other = UpTrack("video", VP8, stats, lambda layer: None)
    Subscription(other, down)  # replaces the first on this slot
    assert first.closed and first not in up.subscriptions
    other.on_rtp(packet(40000, 123456, VP8_KEY, marker=1))
    a, b = (RtpPacket.parse(x) for x in wire.sent)
    assert b.sequence_number == (a.sequence_number + 1) & 0xFFFF
    assert 0 < (b.timestamp - a.timestamp) & 0xFFFFFFFF < 90000


async def test_nack_is_answered_from_history_over_rtx() -> None:
    stats = ForwardingStats()
    up, down, wire = make_pair(stats, [])
    Subscription(up, down)
    for i in range(50):
        up.on_rtp(packet(1000 + i, 3000 * i, VP8_KEY if i == 0 else VP8_DELTA, marker=1))
    lost = RtpPacket.parse(wire.sent[20])
    wire.sent.clear()
    await down.on_nack(lost.sequence_number)
    assert len(wire.sent) == 1
    rtx = RtpPacket.parse(wire.sent[0])
    assert rtx.ssrc == 0x01020304 and rtx.payload_type == 101
    original = unwrap_rtx(rtx, payload_type=100, ssrc=0xABCDEF01)
    assert original.sequence_number == lost.sequence_number
    assert original.timestamp == lost.timestamp and original.payload == lost.payload
    assert stats.nacks_received == 1 and stats.retransmissions == 1


async def test_padding_is_rtx_copies_of_the_newest_packets_stamped_with_their_send_time() -> None:
    """A probe's padding (:meth:`Subscription.pad`): copies of what the subscriber was
    last sent, newest first, on the RTX stream, each with abs-send-time (a receiver's
    estimate weighs only what carries it), about as many bytes as asked; counted
    apart from resends."""
    stats = ForwardingStats()
    up, down, wire = make_pair(stats, [], abs_id=3)
    subscription = Subscription(up, down)
    assert subscription.pad(10_000) == 0  # nothing sent yet: nothing to copy
    for i in range(50):
        payload = (VP8_KEY if i == 0 else VP8_DELTA) + bytes(97)
        up.on_rtp(packet(1000 + i, 3000 * i, payload, marker=1))
    extensions = HeaderExtensionsMap()
    extensions.configure(
        RTCRtpParameters(headerExtensions=[RTCRtpHeaderExtensionParameters(3, ABS_SEND_TIME)])
    )
    originals = {p.sequence_number: p for p in map(RtpPacket.parse, wire.sent)}
    wire.sent.clear()
    sent = subscription.pad(1_000)
    assert 1_000 <= sent < 1_000 + 100  # ten packets of 100 bytes: stops once it is there
    copies = [RtpPacket.parse(data, extensions) for data in wire.sent]
    assert all(c.ssrc == 0x01020304 and c.payload_type == 101 for c in copies)
    assert all(c.extensions.abs_send_time is not None for c in copies)
    unwrapped = [unwrap_rtx(c, payload_type=100, ssrc=0xABCDEF01) for c in copies]
    newest = max(originals)
    assert [u.sequence_number for u in unwrapped] == [newest - i for i in range(len(copies))]
    for u in unwrapped:
        original = originals[u.sequence_number]
        assert (u.payload, u.timestamp) == (original.payload, original.timestamp)
    assert stats.padding_bytes == sent and stats.retransmissions == 0
    down.hold(True)
    assert subscription.pad(1_000) == 0  # a held video is sent nothing, padding neither


async def test_a_repeated_nack_is_answered_once_per_round_trip() -> None:
    stats = ForwardingStats()
    up, down, wire = make_pair(stats, [])
    Subscription(up, down)
    for i in range(10):
        up.on_rtp(packet(i, 3000 * i, VP8_KEY if i == 0 else VP8_DELTA, marker=1))
    lost = RtpPacket.parse(wire.sent[5]).sequence_number
    wire.sent.clear()
    down.on_feedback(0.04, None, None)  # the subscriber's receiver report
    for _ in range(5):  # aiortc repeats its whole missing list at each new loss
        await down.on_nack(lost)
    assert len(wire.sent) == 1
    await asyncio.sleep(0.05)
    await down.on_nack(lost)  # still missing a round trip later: resent again
    assert len(wire.sent) == 2
    assert stats.retransmissions_declined == 4


async def test_a_nack_for_stale_media_asks_for_a_keyframe_instead() -> None:
    stats = ForwardingStats()
    plis: list[int] = []
    up, down, wire = make_pair(stats, plis)
    Subscription(up, down)
    for i in range(60):  # two seconds of 30 fps video
        up.on_rtp(packet(i, 3000 * i, VP8_KEY if i == 0 else VP8_DELTA, marker=1))
    stale = RtpPacket.parse(wire.sent[5]).sequence_number
    recent = RtpPacket.parse(wire.sent[50]).sequence_number
    wire.sent.clear()
    plis.clear()
    up.keyframes._last = -1.0  # the subscription's own request is long past
    await down.on_nack(stale)
    assert wire.sent == [] and plis == [1]
    await down.on_nack(recent)
    assert len(wire.sent) == 1


async def test_a_subscriber_that_nacks_everything_gets_a_bounded_share() -> None:
    stats = ForwardingStats()
    plis: list[int] = []
    up, down, wire = make_pair(stats, plis)
    Subscription(up, down)
    down.on_feedback(0.001, 200_000, None)  # a 200 kbit link, the shortest holdoff
    payload = VP8_DELTA + bytes(1000)
    for i in range(300):
        up.on_rtp(packet(i, 300 * i, VP8_KEY if i == 0 else payload, marker=1))
    first = RtpPacket.parse(wire.sent[0]).sequence_number
    wire.sent.clear()
    for i in range(300):
        await down.on_nack((first + i) & 0xFFFF)
    resent = sum(len(p) for p in wire.sent)
    assert 0 < resent <= 0.25 * 200_000 / 8 * 0.5 + 1100  # the bucket's depth, no more
    assert plis  # the rest is left to a keyframe


async def test_history_holds_more_than_a_second_of_video() -> None:
    assert HISTORY_SIZE >= 160 * 2  # 1.5 Mbps VP8 is ~160 packets/s
    stats = ForwardingStats()
    up, down, wire = make_pair(stats, [])
    Subscription(up, down)
    for i in range(400):  # under a second of media, at 430 packets/s
        up.on_rtp(packet(i, 200 * i, VP8_KEY if i == 0 else VP8_DELTA, marker=1))
    oldest = RtpPacket.parse(wire.sent[0])
    wire.sent.clear()
    await down.on_nack(oldest.sequence_number)
    assert len(wire.sent) == 1  # 400 packets later, still answerable


async def test_keyframe_requests_are_coalesced_but_never_dropped() -> None:
    stats = ForwardingStats()
    sent: list[float] = []
    loop = asyncio.get_running_loop()
    requester = KeyframeRequester(lambda: sent.append(loop.time()), stats, interval=0.2)
    for _ in range(100):
        requester.request()
    assert len(sent) == 1
    await asyncio.sleep(0.35)
    assert len(sent) == 2  # the burst's tail was sent once the interval ended
    assert sent[1] - sent[0] >= 0.19
    assert stats.keyframe_requests == 2 and stats.keyframe_requests_coalesced == 99
    requester.close()


async def test_a_late_timer_does_not_send_a_second_keyframe_request() -> None:
    stats = ForwardingStats()
    sent: list[float] = []
    requester = KeyframeRequester(lambda: sent.append(0.0), stats, interval=0.2)
    requester.request()
    requester.request()  # inside the interval: a timer is pending
    requester._last -= 0.2  # the loop ran late: the interval is over before the timer fired
    requester.request()  # sent at once, in place of the pending one
    await asyncio.sleep(0.3)
    assert len(sent) == 2
    requester.close()


async def test_subscriber_pli_reaches_the_publisher_coalesced() -> None:
    stats = ForwardingStats()
    plis: list[int] = []
    up, down, _ = make_pair(stats, plis)
    Subscription(up, down)
    plis.clear()
    up.keyframes._last = -1.0  # the subscription's own request is long past
    for _ in range(20):
        down.on_pli()
    assert len(plis) == 1


async def test_muted_publication_forwards_nothing() -> None:
    stats = ForwardingStats()
    up, down, wire = make_pair(stats, [])
    Subscription(up, down)
    up.on_rtp(packet(1, 0, VP8_KEY, marker=1))
    up.muted = True
    up.on_rtp(packet(2, 3000, VP8_DELTA, marker=1))
    assert len(wire.sent) == 1


def test_keyframe_detection_on_real_payload_shapes() -> None:
    assert vp8_keyframe_start(VP8_KEY)
    assert not vp8_keyframe_start(VP8_DELTA)
    assert not vp8_keyframe_start(VP8_CONT)
    # X=1, I=1 with a 15-bit picture id, then a key frame header.
    assert vp8_keyframe_start(bytes([0x90, 0x80, 0x81, 0x23, 0x10]))
    assert not vp8_keyframe_start(bytes([0x90, 0x80, 0x81, 0x23, 0x11]))
    sps = bytes([0x67, 0x64, 0x00, 0x1F])
    pps = bytes([0x68, 0xEE])
    stap_a = bytes([0x18]) + len(sps).to_bytes(2, "big") + sps + len(pps).to_bytes(2, "big") + pps
    assert h264_keyframe_start(stap_a)
    assert h264_keyframe_start(bytes([0x65, 0x88]))  # IDR slice
    assert h264_keyframe_start(bytes([0x7C, 0x85, 0x00]))  # FU-A start of an IDR
    assert not h264_keyframe_start(bytes([0x7C, 0x05, 0x00]))  # FU-A middle
    assert not h264_keyframe_start(bytes([0x41, 0x9A]))  # non-IDR slice
    assert not h264_keyframe_start(b"")


async def test_history_is_kept_only_while_someone_receives() -> None:
    stats = ForwardingStats()
    up, down, _ = make_pair(stats, [])
    up.on_rtp(packet(1, 3000, VP8_KEY, marker=1))
    assert up.top.history is None  # nobody receives it: nothing kept
    subscription = Subscription(up, down)
    up.on_rtp(packet(2, 6000, VP8_DELTA, marker=1))
    assert up.top.history is not None and up.top.history.get(2) is not None
    subscription.close()
    assert up.top.history is None


async def test_a_held_down_track_is_sent_nothing_and_restarts_at_a_keyframe() -> None:
    stats = ForwardingStats()
    plis: list[int] = []
    up, down, wire = make_pair(stats, plis)
    subscription = Subscription(up, down)
    up.on_rtp(packet(1, 0, VP8_KEY, marker=1))
    down.hold(True)  # audio-only mode
    up.on_rtp(packet(2, 3000, VP8_DELTA, marker=1))
    assert len(wire.sent) == 1 and down not in up.top.downs
    up.keyframes._last = -1.0
    plis.clear()
    down.hold(False)
    assert plis == [1]  # let go: the publisher is asked for a keyframe
    up.on_rtp(packet(3, 6000, VP8_DELTA, marker=1))
    assert len(wire.sent) == 1  # and nothing before it
    up.on_rtp(packet(4, 9000, VP8_KEY, marker=1))
    assert len(wire.sent) == 2
    down.hold(True)
    subscription.close()  # closing a held subscription leaves the fan-out as it was
    assert up.top.downs == [] and up.subscriptions == []
    Subscription(up, down)  # a new publication on a held slot stays held
    assert up.top.downs == []


async def test_video_held_mid_frame_stops_at_the_frames_end_never_in_it() -> None:
    """A receiver given part of a frame, then the next keyframe numbered without a
    gap, would decode the part as a whole frame (aiortc does, and fails)."""
    stats = ForwardingStats()
    plis: list[int] = []
    up, down, wire = make_pair(stats, plis)
    Subscription(up, down)
    up.on_rtp(packet(1, 0, VP8_KEY, marker=1))
    up.on_rtp(packet(2, 3000, VP8_DELTA))
    down.hold(True)  # the link cannot carry it: mid-frame
    up.on_rtp(packet(3, 3000, VP8_CONT))
    up.on_rtp(packet(4, 3000, VP8_CONT, marker=1))  # the frame's end still goes
    up.on_rtp(packet(5, 6000, VP8_DELTA, marker=1))  # the next frame does not
    assert [RtpPacket.parse(d).marker for d in wire.sent] == [1, 0, 0, 1]
    assert down not in up.top.downs and up.top.leaving == []
    down.hold(False)  # back from the next keyframe
    up.on_rtp(packet(6, 9000, VP8_KEY, marker=1))
    # held and let go within one frame: it never stopped, no keyframe needed
    up.on_rtp(packet(7, 12000, VP8_DELTA))
    down.hold(True)
    down.hold(False)
    up.on_rtp(packet(8, 12000, VP8_CONT, marker=1))
    up.on_rtp(packet(9, 15000, VP8_DELTA, marker=1))
    out = [RtpPacket.parse(d) for d in wire.sent]
    # after the pause the clock goes on one frame after its last packet (3000)
    assert [p.timestamp - out[0].timestamp for p in out[4:]] == [6000, 9000, 9000, 12000]
    seqs = [p.sequence_number for p in out]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
    # a subscription that ends while its down track is leaving takes it out at once
    up.on_rtp(packet(10, 18000, VP8_DELTA))
    down.hold(True)
    assert down in up.top.downs and down.leaving_from is up.top
    down.subscription.close()  # type: ignore[union-attr]
    assert up.top.downs == [] and up.top.leaving == [] and down.leaving_from is None
