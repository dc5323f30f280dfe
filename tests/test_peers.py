"""SDP checks, the announced address, and which receiving codec takes a stream."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from aiortc.rtcrtpparameters import RTCRtpCodecCapability

from hub import peers
from hub.aiortc_internals import install_h264_profiles, install_red
from hub.forwarding import CodecInfo, ForwardingStats, UpTrack
from hub.ids import PublicationID
from hub.peers import (
    BACK_OFF,
    PROBE_SECONDS,
    PROBE_WARMUP,
    RECOVER_UP_AFTER,
    RECOVERY,
    SIMULCAST_START_KBPS,
    UP_AFTER,
    SdpError,
    SendingPeer,
    announce,
    answer_layers,
    carry_rank,
    make_peer_connection,
    offered_layers,
    parse_sdp,
    preferences_for,
)
from hub.policy import UP_MARGIN

ANSWER = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n"
    "a=candidate:1 1 UDP 2130706431 192.0.2.2 50000 typ host\r\n"
    "a=candidate:2 1 UDP 2130706431 127.0.0.1 50001 typ host\r\n"
    "a=candidate:3 1 UDP 1694498815 203.0.113.9 50002 typ srflx raddr 192.0.2.2 rport 50000\r\n"
    "a=end-of-candidates\r\n"
)


def test_announced_address_replaces_host_candidates_and_comes_first() -> None:
    out = announce(ANSWER, "10.1.2.3")
    candidates = [line for line in out.split("\r\n") if line.startswith("a=candidate")]
    assert candidates[0] == "a=candidate:1 1 UDP 2130706431 10.1.2.3 50000 typ host"
    assert "10.1.2.3 50001 typ host" in candidates[1]
    assert "typ srflx" in candidates[2]  # relayed/reflexive ones untouched, after hosts
    assert out.split("\r\n")[-2] == "a=end-of-candidates"


def test_first_gather_address_leads_without_an_announced_one() -> None:
    out = announce(ANSWER, None, gather_first="127.0.0.1")
    candidates = [line for line in out.split("\r\n") if line.startswith("a=candidate")]
    assert " 127.0.0.1 50001 " in candidates[0]


@pytest.mark.parametrize(
    ("sdp", "reason"),
    [
        ("", "empty"),
        ("hello", "v=0"),
        ("v=0\r\n" + "a=x\r\n" * 20000, "larger"),
        ("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n", "mid"),
        ("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n", "ICE"),
        ("v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n", "no audio"),
    ],
)
def test_bad_sdp_is_refused_with_a_reason(sdp: str, reason: str) -> None:
    with pytest.raises(SdpError, match=reason):
        parse_sdp(sdp)


def h264(profile_level_id: str, mode: str = "1") -> RTCRtpCodecCapability:
    return RTCRtpCodecCapability(
        "video/H264",
        90000,
        parameters={"packetization-mode": mode, "profile-level-id": profile_level_id},
    )


def publisher(profile_level_id: str) -> CodecInfo:
    return CodecInfo(
        "H264",
        "video/H264",
        90000,
        {"packetization-mode": "1", "profile-level-id": profile_level_id},
    )


# (publisher's profile-level-id, receiver's codec, carried?) — H.264 Annex A.2.
CARRIES = [
    ("64001f", h264("64001f"), True),
    ("640028", h264("64001f"), True),  # level may differ
    ("64001f", h264("f4001f"), True),  # High 4:4:4 Predictive decoders take High
    ("64001f", h264("4d001f"), False),
    ("64001f", h264("64001f", mode="0"), False),  # the hub forwards FU-A
    ("4d001f", h264("64001f"), True),
    ("4d001f", h264("42e01f"), False),
    ("42e01f", h264("42001f"), True),  # Baseline decoders take Constrained Baseline
    ("42e01f", h264("4d001f"), True),
    ("42001f", h264("42e01f"), False),  # but not the other way round
    ("640c1f", h264("64001f"), True),
    ("64001f", RTCRtpCodecCapability("video/VP8", 90000), False),
]


@pytest.mark.parametrize(("sent", "receiver", "carried"), CARRIES)
def test_an_h264_stream_goes_to_receivers_whose_profile_decodes_it(
    sent: str, receiver: RTCRtpCodecCapability, carried: bool
) -> None:
    assert (carry_rank(receiver, publisher(sent)) is not None) is carried


def test_preferences_put_the_same_profile_first_then_those_that_decode_it() -> None:
    install_h264_profiles()
    preferred = preferences_for("video", publisher("64001f"))
    profiles = [c.parameters.get("profile-level-id") for c in preferred if c.name == "H264"]
    assert profiles == ["64001f", "f4001f"]
    assert preferred[-1].name == "rtx"
    vp8 = CodecInfo("VP8", "video/VP8", 90000)
    assert [c.name for c in preferences_for("video", vp8) if c.name != "rtx"] == ["VP8"]
    opus = CodecInfo("opus", "audio/opus", 48000, {"useinbandfec": 1}, 2)
    install_red()  # RED first, for subscribers who take it
    assert [c.name for c in preferences_for("audio", opus)] == ["red", "opus"]


OFFER_HEAD = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
M_LINE = (
    "m={kind} 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:{mid}\r\na=sendonly\r\n"
    "a=rtpmap:96 VP8/90000\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\n"
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\na=setup:actpass\r\n"
)


@pytest.mark.parametrize(
    ("group", "mids"),
    [("a=group:BUNDLE 0 1\r\n", ["1"]), ("a=group:BUNDLE 0 7\r\n", ["0"])],
)
def test_a_bundle_naming_an_m_line_that_is_not_there_is_refused(
    group: str, mids: list[str]
) -> None:
    """aiortc accepted such an offer and then failed to answer it (its connect task and
    createAnswer raised AttributeError): an m-line deleted from a valid offer did it."""
    sdp = OFFER_HEAD + group + "".join(M_LINE.format(kind="video", mid=mid) for mid in mids)
    with pytest.raises(SdpError, match="BUNDLE"):
        parse_sdp(sdp)


def test_a_bundle_of_every_m_line_passes() -> None:
    lines = "".join(M_LINE.format(kind=k, mid=m) for k, m in (("video", "0"), ("audio", "1")))
    assert [m.mid for m in parse_sdp(OFFER_HEAD + "a=group:BUNDLE 0 1\r\n" + lines)] == ["0", "1"]


SIMULCAST_OFFER_TAIL = (
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\n"
    "a=mid:1\r\n"
    "a=sendonly\r\n"
    "a=rid:l send\r\n"
    "a=rid:m send\r\n"
    "a=rid:h send\r\n"
    "a=simulcast:send l;~m;h,x\r\n"
)


def test_offered_layers_reads_simulcast_lowest_first_and_answer_layers_receives_them() -> None:
    offer = "v=0\r\ns=-\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n" + SIMULCAST_OFFER_TAIL
    assert offered_layers(offer) == {"1": ("l", "m", "h")}
    answer = (
        "v=0\r\ns=-\r\nm=audio 9 x 111\r\na=mid:0\r\nm=video 9 x 96\r\na=mid:1\r\na=recvonly\r\n"
    )
    answered = answer_layers(answer, offered_layers(offer))
    video = answered.split("m=video")[1]
    assert "a=rid:l recv\r\na=rid:m recv\r\na=rid:h recv\r\na=simulcast:recv l;m;h\r\n" in video
    assert "a=rid" not in answered.split("m=video")[0]
    assert answer_layers(answer, {}) == answer


@dataclass
class _Published:
    """What a slot reads of a publication: its id and its up track."""

    id: PublicationID
    up: UpTrack


def _three_layers(stats: ForwardingStats) -> UpTrack:
    """A VP8 up track in three layers, at 150 kbps, 500 kbps and 1.5 Mbps."""
    codec = CodecInfo(name="VP8", mime_type="video/VP8", clock_rate=90000)
    up = UpTrack("video", codec, stats, lambda layer: None, ("l", "m", "h"))
    for layer, rate in zip(up.layers, (150_000, 500_000, 1_500_000), strict=True):
        layer.bitrate_bps = rate
    return up


async def test_a_simulcast_slot_follows_its_cap_and_a_falling_estimate() -> None:
    stats = ForwardingStats()
    peer = SendingPeer(make_peer_connection([]), stats)
    try:
        slot = peer.add_slot("video")
        up = _three_layers(stats)
        published = _Published(PublicationID("PUB_simulcast"), up)
        slot.bind(published)  # type: ignore[arg-type]
        assert slot.subscription is not None
        target = lambda: slot.subscription.target.rid  # noqa: E731
        assert target() == "h"  # the stage's picture, nothing heard of the link yet
        slot.hook.remb_bps = 1_000_000
        slot.follow_layer()
        assert target() == "h"  # below what h needs, but not falling: still growing
        slot.hook.remb_bps = 800_000
        slot.follow_layer()
        assert target() == "m"  # falling: down at once to what fits
        slot.follow_layer()
        assert target() == "m"
        # The same link's estimate over one more stream (its first RTX packets:
        # Chromium's figure halved then) is another measure, not a fall.
        slot.hook.remb_bps, slot.hook.remb_ssrcs = 600_000, (1, 2)
        slot.follow_layer()
        assert target() == "m"
        # UP_AFTER seconds on m without a shortfall: the estimate shows no room for h
        # (it grows only with what arrives), so the link is probed first, padded up to
        # h's rate; the estimate falling meanwhile ends the probe, and m stays.
        slot._steady_since -= UP_AFTER + 1
        slot.follow_layer()
        assert target() == "m" and stats.probes == 1
        slot.hook.remb_bps = 560_000
        slot.follow_layer()
        assert target() == "m" and stats.probes_failed == 1
        slot.follow_layer()
        assert stats.probes == 1  # the next probe waits longer
        slot._steady_since -= BACK_OFF * UP_AFTER + 1
        slot.follow_layer()
        assert stats.probes == 2 and target() == "m"
        # The estimate holds for the probe's length (after a second of warming up the
        # RTX stream, which the estimate named none of): h, from its next keyframe.
        await asyncio.sleep(PROBE_WARMUP + PROBE_SECONDS + 0.2)
        assert target() == "h" and stats.probes_failed == 1
        peer.set_cap("low")  # 流畅
        assert target() == "l"
        peer.set_cap("auto")  # chosen afresh: the link corrects it if it falls short
        assert target() == "h"
        peer.set_shows({published.id: "tile"})
        assert target() == "l"
    finally:
        await peer.close()


async def test_a_probe_climbs_layer_by_layer_and_the_link_keeps_what_it_carried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """From the lowest layer one probe pads up to the middle layer's rate (with the
    headroom a move up needs), then, that carried, to the top's; the estimate falling
    in the second step moves the subscription to the middle layer (carried), and the
    next try waits longer; the estimate still falling just after is the probe's own
    doing, not the layer's. A probe carried to the top moves there at once."""
    monkeypatch.setattr(peers, "PROBE_SECONDS", 0.3)
    monkeypatch.setattr(peers, "PROBE_WARMUP", 0.1)
    monkeypatch.setattr(peers, "PROBE_AFTERMATH", 0.1)
    stats = ForwardingStats()
    peer = SendingPeer(make_peer_connection([]), stats)
    try:
        slot = peer.add_slot("video")
        up = _three_layers(stats)
        slot.bind(_Published(PublicationID("PUB_climb"), up))  # type: ignore[arg-type]
        assert slot.subscription is not None
        target = lambda: slot.subscription.target.rid  # noqa: E731
        slot.hook.remb_bps = 1_000_000
        slot.follow_layer()
        slot.hook.remb_bps = 200_000
        slot.follow_layer()
        assert target() == "l"  # fallen: 200 kbps fits only l
        for step in range(2):
            slot._steady_since -= slot._up_after + 1
            slot.follow_layer()
            probe = slot._probe
            assert probe is not None and probe.target == 1 and target() == "l"
            assert probe.bytes_per_second == (500_000 * UP_MARGIN - 150_000) / 8
            await asyncio.sleep(0.1 + 0.3 + 0.1)
            assert slot._probe is probe and probe.target == 2 and probe.carried == 1
            assert probe.bytes_per_second == (1_500_000 * UP_MARGIN - 150_000) / 8
            assert target() == "l"
            if step == 0:
                slot.hook.remb_bps = 180_000  # the top's rate did not fit
                slot.follow_layer()
                assert slot._probe is None and target() == "m" and stats.probes_failed == 1
                assert slot._up_after == UP_AFTER * BACK_OFF
                slot.hook.remb_bps = 100_000
                slot.follow_layer()
                assert target() == "m"  # the probe's own aftermath
                await asyncio.sleep(0.15)
                slot.hook.remb_bps = 90_000
                slot.follow_layer()
                assert target() == "l"
        await asyncio.sleep(0.3 + 0.1)
        assert slot._probe is None and target() == "h" and stats.probes == 2
        assert slot._up_after == UP_AFTER
    finally:
        await peer.close()


async def test_tries_up_back_off_slowly_after_a_drop_from_a_held_layer_else_far() -> None:
    """A failed try up waits longer each time: up to a minute on a link that never
    held the layer (a narrow one, each probe a burst over it), up to 8 s for a minute
    after the link fell short of a layer it had held (a drop that passes)."""
    peer = SendingPeer(make_peer_connection([]), ForwardingStats())
    try:
        slot = peer.add_slot("video")
        now = 1000.0
        waits = []
        for _ in range(8):
            slot._back_off(2, now)
            waits.append(slot._up_after)
        assert waits == [10.0, 20.0, 40.0, 60.0, 60.0, 60.0, 60.0, 60.0]
        slot._up_after = UP_AFTER
        slot._dropped = (2, now)  # held h, then fell short of it
        waits = []
        for _ in range(3):
            slot._back_off(2, now + 30)
            waits.append(slot._up_after)
        assert waits == [RECOVER_UP_AFTER] * 3
        slot._back_off(2, now + RECOVERY)  # a drop that lasts: far again
        assert slot._up_after == RECOVER_UP_AFTER * BACK_OFF
    finally:
        await peer.close()


def test_a_simulcast_answer_starts_the_sender_at_its_layers_sum() -> None:
    """``x-google-start-bitrate`` on every video codec of a simulcast m-line (an fmtp
    line added, or an existing one extended), on no other m-line."""
    answer = (
        "v=0\r\ns=-\r\nm=video 9 x 96 97 98\r\na=mid:0\r\na=rtpmap:96 VP8/90000\r\n"
        "a=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\na=rtpmap:98 H264/90000\r\n"
        "a=fmtp:98 packetization-mode=1\r\nm=video 9 x 96\r\na=mid:1\r\n"
        "a=rtpmap:96 VP8/90000\r\n"
    )
    answered = answer_layers(answer, {"0": ("l", "m", "h")})
    start = f"x-google-start-bitrate={SIMULCAST_START_KBPS}"
    simulcast, single = answered.split("m=video")[1:]
    assert f"a=rtpmap:96 VP8/90000\r\na=fmtp:96 {start}\r\n" in simulcast
    assert f"a=fmtp:98 packetization-mode=1;{start}\r\n" in simulcast
    assert "a=fmtp:97 apt=96\r\n" in simulcast  # not on RTX
    assert "start-bitrate" not in single
