"""Simulcast layers of an up track: a subscription moves between them only at a
keyframe of the target layer, and its subscriber sees one continuous stream (one
SSRC, consecutive sequence numbers, a clock that moves on by the time that passed).
Synthetic RTP through the real fan-out, parsed back with aiortc's parser."""

from __future__ import annotations

import asyncio
import itertools

from aiortc.rtp import RtpPacket

from hub.forwarding import (
    CodecInfo,
    DownTrack,
    ForwardingStats,
    Layer,
    SinkSwitch,
    Subscription,
    UpTrack,
)
from tests.helpers import SrtpWire

VP8 = CodecInfo(name="VP8", mime_type="video/VP8", clock_rate=90000)
KEY = bytes([0x10, 0x00, 0x9D, 0x01, 0x2A])
DELTA = bytes([0x10, 0x01, 0x00])


class Source:
    """One layer's packets as a simulcast sender numbers them: its own SSRC, its
    own random sequence and clock, frames 3000 ticks apart; the payload's last byte
    says which layer sent it."""

    def __init__(self, layer: Layer, ssrc: int, seq: int, ts: int, tag: int) -> None:
        self.layer, self.ssrc, self.seq, self.ts, self.tag = layer, ssrc, seq, ts, tag

    def frame(self, key: bool = False) -> None:
        for i in range(2):
            p = RtpPacket(
                payload_type=96,
                sequence_number=self.seq,
                timestamp=self.ts,
                marker=i,
                ssrc=self.ssrc,
            )
            p.payload = (KEY if key and i == 0 else DELTA) + bytes([self.tag])
            self.layer.on_rtp(p)
            self.seq = (self.seq + 1) & 0xFFFF
        self.ts = (self.ts + 3000) & 0xFFFFFFFF


def setup() -> tuple[UpTrack, list[str | None], DownTrack, SrtpWire, list[Source]]:
    stats = ForwardingStats()
    asked: list[str | None] = []
    up = UpTrack("video", VP8, stats, lambda layer: asked.append(layer.rid), ("l", "m", "h"))
    down = DownTrack("video", 0x0BADCAFE, 0x0BADCAFF, stats)
    wire = SrtpWire()
    down.configure(wire.srtp_socket, payload_type=100, rtx_payload_type=101, abs_send_time_id=0)
    sources = [
        Source(up.layers[0], 111, 65000, 4_000_000_000, 0),
        Source(up.layers[1], 222, 100, 5000, 1),
        Source(up.layers[2], 333, 30000, 2_000_000_000, 2),
    ]
    return up, asked, down, wire, sources


def all_frames(sources: list[Source], key: bool = False) -> None:
    for source in sources:
        source.frame(key)


async def test_a_subscription_moves_to_another_layer_at_its_keyframe_in_one_stream() -> None:
    up, asked, down, wire, sources = setup()
    subscription = Subscription(up, down, layer=0)
    assert asked == ["l"]  # it starts at a keyframe of its own layer
    all_frames(sources, key=True)
    all_frames(sources)
    subscription.move(2)
    assert subscription.target is up.layers[2]
    await asyncio.sleep(0.6)  # requests are coalesced per up track: the next one
    assert asked == ["l", "h"]
    all_frames(sources)  # no keyframe of h yet: l goes on
    await asyncio.sleep(0.1)
    sources[2].frame(key=True)
    sources[0].frame()
    sources[1].frame(key=True)  # a keyframe of a layer nobody moves to changes nothing
    all_frames(sources)
    out = [RtpPacket.parse(data) for data in wire.sent]
    tags = [p.payload[-1] for p in out]
    assert tags == [0] * 6 + [2] * 4  # l until h's keyframe, then h only
    assert out[6].payload[0] == KEY[0] and out[6].payload[2:5] == KEY[2:5]
    assert {p.ssrc for p in out} == {0x0BADCAFE}
    seqs = [p.sequence_number for p in out]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
    advance = (out[6].timestamp - out[5].timestamp) & 0xFFFFFFFF
    assert 8000 <= advance <= 12000  # ~0.1 s at 90 kHz: the time that passed
    assert (out[8].timestamp - out[6].timestamp) & 0xFFFFFFFF == 3000  # h's own pace
    assert subscription.layer is up.layers[2] and down in up.layers[2].downs
    assert up.layers[0].downs == [] and up.layers[0].history is None


async def test_a_move_to_a_keyframe_of_the_same_picture_still_moves_the_clock_on() -> None:
    up, _, down, wire, sources = setup()
    subscription = Subscription(up, down, layer=2)
    sources[2].frame(key=True)
    subscription.move(0)
    sources[0].frame(key=True)  # at once: the lower layer's copy of that picture
    a, b = (RtpPacket.parse(data) for data in wire.sent[1:3])
    assert b.sequence_number == (a.sequence_number + 1) & 0xFFFF
    assert 2900 <= (b.timestamp - a.timestamp) & 0xFFFFFFFF <= 3300


async def test_nacks_are_answered_from_the_layer_sent_and_never_across_a_move() -> None:
    up, _, down, wire, sources = setup()
    subscription = Subscription(up, down, layer=1)
    sources[1].frame(key=True)
    before = RtpPacket.parse(wire.sent[0])
    subscription.move(0)
    sources[0].frame(key=True)
    after = RtpPacket.parse(wire.sent[2])
    sent = len(wire.sent)
    subscription.retransmit(before.sequence_number)  # of layer m: gone with the move
    assert len(wire.sent) == sent
    subscription.retransmit(after.sequence_number)
    assert len(wire.sent) == sent + 1
    resent = RtpPacket.parse(wire.sent[-1])
    assert resent.payload[2:] == after.payload and resent.payload_type == 101


async def test_moving_back_before_the_keyframe_cancels_the_move() -> None:
    up, _, down, wire, sources = setup()
    subscription = Subscription(up, down, layer=0)
    all_frames(sources, key=True)
    subscription.move(2)
    subscription.move(0)
    assert up.layers[2].incoming == [] and up.layers[2].history is None
    all_frames(sources, key=True)
    assert {RtpPacket.parse(data).payload[-1] for data in wire.sent} == {0}


async def test_a_held_subscription_moves_and_restarts_on_its_new_layer() -> None:
    up, _, down, wire, sources = setup()
    subscription = Subscription(up, down, layer=2)
    down.hold(True)
    subscription.move(0)
    all_frames(sources, key=True)  # held: the move happens, nothing is sent
    assert subscription.layer is up.layers[0] and wire.sent == []
    down.hold(False)
    all_frames(sources, key=True)
    assert {RtpPacket.parse(data).payload[-1] for data in wire.sent} == {0}


async def test_a_track_sent_once_is_one_layer() -> None:
    stats = ForwardingStats()
    up = UpTrack("video", VP8, stats, lambda layer: None)
    assert len(up.layers) == 1 and up.top is up.layers[0] and not up.simulcast
    assert up.layers[0].rid is None


def packet(ssrc: int, seq: int, ts: int, payload: bytes, marker: int) -> RtpPacket:
    p = RtpPacket(payload_type=96, sequence_number=seq, timestamp=ts, marker=marker, ssrc=ssrc)
    p.payload = payload
    return p


async def test_the_old_layer_goes_on_until_the_new_ones_keyframe_is_whole() -> None:
    up, _, down, wire, sources = setup()
    subscription = Subscription(up, down, layer=0)
    sources[0].frame(key=True)
    subscription.move(2)
    high = up.layers[2]
    high.on_rtp(packet(333, 10, 9000, KEY + b"\x02", 0))  # the keyframe begins
    sources[0].frame()  # meanwhile a frame of l: still sent
    high.on_rtp(packet(333, 12, 9000, DELTA + b"\x02", 1))  # its end, 11 missing
    sources[0].frame()  # incomplete: l goes on
    assert subscription.layer is up.layers[0]
    high.on_rtp(packet(333, 11, 9000, DELTA + b"\x02", 0))  # repaired (RTX): whole
    assert subscription.layer is high
    high.on_rtp(packet(333, 13, 12000, DELTA + b"\x02", 1))
    sources[0].frame()
    out = [RtpPacket.parse(data) for data in wire.sent]
    assert [p.payload[-1] for p in out] == [0] * 6 + [2] * 4
    seqs = [p.sequence_number for p in out]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
    assert [p.marker for p in out[6:]] == [0, 0, 1, 1]  # the keyframe in order, once
    assert out[6].payload[:5] == KEY


async def test_a_keyframe_not_whole_before_the_next_frame_waits_for_another() -> None:
    up, asked, down, wire, sources = setup()
    subscription = Subscription(up, down, layer=0)
    sources[0].frame(key=True)
    subscription.move(2)
    high = up.layers[2]
    up.keyframes._last = -1.0
    asked.clear()
    high.on_rtp(packet(333, 10, 9000, KEY + b"\x02", 0))
    high.on_rtp(packet(333, 12, 12000, DELTA + b"\x02", 1))  # 11, its end, lost
    assert subscription.layer is up.layers[0] and asked == ["h"]
    high.on_rtp(packet(333, 13, 15000, KEY + b"\x02", 1))  # a keyframe of one packet
    assert subscription.layer is high
    assert RtpPacket.parse(wire.sent[-1]).payload[:5] == KEY


def vp8(picture: int, tl0: int, key: bool) -> bytes:
    """A VP8 payload descriptor as Chromium writes it (X, I with 15 bits, L), then
    the payload header's first byte (P bit clear: a key frame)."""
    return bytes([0x90, 0xC0, 0x80 | picture >> 8, picture & 0xFF, tl0, 0x00 if key else 0x01])


def read_ids(payload: bytes) -> tuple[int, int]:
    return ((payload[2] & 0x7F) << 8) | payload[3], payload[4]


async def test_vp8_picture_numbers_only_move_forward_across_a_move() -> None:
    up, _, down, wire, _ = setup()
    low, high = up.layers[0], up.layers[2]
    subscription = Subscription(up, down, layer=0)
    state = {"l": (5000, 100, 60000), "h": (100, 3, 1000)}  # picture, tl0, seq: h behind

    def frame(layer: Layer, rid: str, key: bool = False) -> None:
        picture, tl0, seq = state[rid]
        continuation = bytes([0x80, 0xC0, 0x80 | picture >> 8, picture & 0xFF, tl0, 0])
        for marker in (0, 1):
            payload = continuation if marker else vp8(picture, tl0, key)
            layer.on_rtp(packet(7 if rid == "l" else 9, seq, picture * 3000, payload, marker))
            seq = (seq + 1) & 0xFFFF
        state[rid] = ((picture + 1) & 0x7FFF, (tl0 + 1) & 0xFF, seq)

    frame(low, "l", key=True)
    frame(high, "h", key=True)
    for _ in range(3):
        frame(low, "l")
        frame(high, "h")
    subscription.move(2)
    frame(high, "h", key=True)
    for _ in range(3):
        frame(low, "l")
        frame(high, "h")
    out = [RtpPacket.parse(data) for data in wire.sent]
    ids = [read_ids(p.payload) for p in out if p.marker == 0]
    pictures = [picture for picture, _ in ids]
    tl0s = [tl0 for _, tl0 in ids]
    assert len(ids) == 8  # 4 frames of l, then 4 of h
    assert all(0 < (b - a) & 0x7FFF < 0x4000 for a, b in itertools.pairwise(pictures))
    assert all(0 < (b - a) & 0xFF < 0x80 for a, b in itertools.pairwise(tl0s))
    assert all((b - a) & 0x7FFF == 1 for a, b in itertools.pairwise(pictures[4:]))


def test_sinks_take_the_highest_flowing_layer_from_its_keyframe_on_one_clock() -> None:
    """The recorder's layer: the top while it flows; a second without it, the
    highest one still flowing, from that layer's keyframe (asked for); the top again
    from its first keyframe. The sinks' clock goes on by the time that passed."""
    asked: list[int] = []
    sink = SinkSwitch(3, 90000, asked.append)
    assert sink.note(2, True, 0.0) is False and sink.index == 2
    assert sink.clock(1_000_000, 0.0) == 0
    for t in range(1, 30):  # a second of all three layers
        for index in range(3):
            assert sink.note(index, False, t / 30) is False
    assert sink.clock(1_000_000 + 3000 * 29, 29 / 30) == 3000 * 29
    # the top stops: a second later the middle layer is asked for, taken at its keyframe
    for t in range(30, 61):
        sink.note(0, False, t / 30)
        sink.note(1, False, t / 30)
    assert asked == [1] and sink.pending == 1 and sink.index == 2
    assert sink.note(1, True, 61 / 30) is True and sink.index == 1 and sink.pending is None
    out = sink.clock(77_000, 61 / 30)  # another layer's clock, another origin
    assert out == 3000 * 29 + round(32 / 30 * 90000)  # the time that passed
    assert sink.clock(77_000 + 3000, 62 / 30) == out + 3000
    # the top flows again: taken back at its first keyframe, not before
    assert sink.note(2, False, 63 / 30) is False and sink.pending == 2 and asked == [1, 2]
    assert sink.note(2, True, 64 / 30) is True and sink.index == 2


async def test_a_video_held_mid_frame_while_moving_layers_comes_back_on_the_new_one() -> None:
    up, _, down, wire, sources = setup()
    subscription = Subscription(up, down, layer=0)
    all_frames(sources, key=True)
    subscription.move(2)
    low, high = sources[0], sources[2]
    p = packet(111, low.seq, low.ts, DELTA + b"\x00", 0)  # the first half of a frame of l
    up.layers[0].on_rtp(p)
    down.hold(True)  # its link cannot carry it: it stops at that frame's end
    assert down.leaving_from is up.layers[0]
    high.frame(key=True)  # the move completes meanwhile: held, it is not sent h yet
    assert subscription.layer is up.layers[2] and down not in up.layers[2].downs
    up.layers[0].on_rtp(packet(111, (low.seq + 1) & 0xFFFF, low.ts, DELTA + b"\x00", 1))
    assert down.leaving_from is None and down not in up.layers[0].downs
    sent = len(wire.sent)
    down.hold(False)  # let go: from h's next keyframe
    assert down in up.layers[2].downs and down not in up.layers[0].downs
    high.frame()
    assert len(wire.sent) == sent
    high.frame(key=True)
    out = [RtpPacket.parse(data) for data in wire.sent[sent:]]
    assert [p.payload[-1] for p in out] == [2, 2] and out[0].payload[:5] == KEY
    seqs = [RtpPacket.parse(d).sequence_number for d in wire.sent]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))


async def test_a_move_to_an_h264_keyframe_starts_at_its_sps_and_pps() -> None:
    """An H.264 keyframe: a STAP-A of SPS and PPS, then the IDR in fragments (the IDR's
    first fragment starts a keyframe too). A subscription moving to that layer is
    sent all of it from the STAP-A: without SPS and PPS the IDR does not decode, and
    a capped station went on showing the top layer's last picture (the browser test
    of H.264 simulcast failed so in 1 run of 5)."""
    stats = ForwardingStats()
    h264 = CodecInfo(name="H264", mime_type="video/H264", clock_rate=90000)
    up = UpTrack("video", h264, stats, lambda layer: None, ("l", "h"))
    down = DownTrack("video", 0x0BADCAFE, 0x0BADCAFF, stats)
    wire = SrtpWire()
    down.configure(wire.srtp_socket, payload_type=100, rtx_payload_type=101, abs_send_time_id=0)
    stap_a = bytes([24, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xCE])  # SPS, PPS
    idr_start, idr_end = bytes([28, 0x85, 1]), bytes([28, 0x45, 2])  # FU-A of an IDR
    delta = bytes([0x41, 3])  # a non-IDR slice

    def send(layer: int, seq: int, ts: int, payload: bytes, marker: int) -> None:
        p = RtpPacket(payload_type=96, sequence_number=seq, timestamp=ts, marker=marker)
        p.ssrc = 100 + layer
        p.payload = payload
        up.layers[layer].on_rtp(p)

    subscription = Subscription(up, down, layer=1)
    for layer in (0, 1):
        for i, payload in enumerate((stap_a, idr_start, idr_end)):
            send(layer, i, 0, payload, int(i == 2))
    subscription.move(0)
    send(1, 3, 3000, delta, 1)
    wire.sent.clear()
    for i, payload in enumerate((stap_a, idr_start, idr_end)):
        send(0, 4 + i, 6000, payload, int(i == 2))
    out = [RtpPacket.parse(data).payload for data in wire.sent]
    assert out == [stap_a, idr_start, idr_end]
    assert subscription.layer is up.layers[0]
