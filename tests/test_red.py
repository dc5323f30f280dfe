"""RED (RFC 2198): payloads read without decoding (blocks, primary, retagging;
malformed payloads give None, never an exception), and its negotiation."""

from __future__ import annotations

import random
import re
import struct
from collections.abc import Callable

import aiortc.rtcpeerconnection
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.codecs.opus import OpusEncoder
from aiortc.rtp import RtpPacket

from hub.aiortc_internals import (
    InternalsChanged,
    accept_offered_payload_types,
    check_internals,
    install_red,
    negotiated_codecs,
    raw_sending,
)
from hub.client import HubClient
from hub.fastpath import DownTrackCore
from hub.forwarding import CodecInfo, DownTrack, ForwardingStats, Subscription, UpTrack
from hub.ids import RoomName
from hub.peers import ParkedTrack, audio_preferences, codec_info, make_peer_connection
from hub.red import (
    RedBlock,
    fmtp,
    red_blocks,
    red_primary,
    red_retagged,
    red_single,
    redundant_payload_types,
)
from tests.helpers import HeardSound, SrtpWire, ToneTrack, first_track, wait_until
from tests.hubserver import RunningHub


def redundant_header(payload_type: int, offset: int, length: int) -> bytes:
    """F=1, block PT (7 bits), timestamp offset (14 bits), block length (10 bits)."""
    return bytes((0x80 | payload_type,)) + ((offset << 10) | length).to_bytes(3, "big")


def red(primary: bytes, *older: tuple[int, bytes], payload_type: int = 111) -> bytes:
    """A RED payload: ``older`` (timestamp offset, data), oldest first, then ``primary``."""
    headers = b"".join(redundant_header(payload_type, o, len(d)) for o, d in older)
    return headers + bytes((payload_type,)) + b"".join(d for _, d in older) + primary


def test_a_primary_block_alone() -> None:
    payload = red(b"opus-now")
    assert payload == b"\x6fopus-now"
    assert red_blocks(payload) == [RedBlock(111, 0, b"opus-now")]
    assert red_primary(payload) == b"opus-now"


def test_redundant_blocks_come_first_with_their_offsets_and_lengths() -> None:
    payload = red(b"now", (1920, b"two-ago"), (960, b"one-ago!"))
    assert red_blocks(payload) == [
        RedBlock(111, 1920, b"two-ago"),
        RedBlock(111, 960, b"one-ago!"),
        RedBlock(111, 0, b"now"),
    ]
    assert red_primary(payload) == b"now"


def test_the_largest_offset_and_length_fit_their_bits() -> None:
    big = bytes(range(256)) * 4  # 1,024 bytes: one more than 10 bits hold
    payload = red(b"p", (0x3FFF, big[:1023]))
    assert red_blocks(payload) == [RedBlock(111, 0x3FFF, big[:1023]), RedBlock(111, 0, b"p")]


def test_retagging_names_the_receivers_opus_in_every_block() -> None:
    payload = red(b"now", (960, b"before"))
    retagged = red_retagged(payload, 96)
    assert retagged is not None
    assert [b.payload_type for b in red_blocks(retagged) or []] == [96, 96]
    assert [b.data for b in red_blocks(retagged) or []] == [b"before", b"now"]
    assert red_retagged(payload, 111) is payload  # nothing to change: no copy


def test_a_single_block_wraps_plain_opus() -> None:
    assert red_blocks(red_single(b"opus", 96)) == [RedBlock(96, 0, b"opus")]


@pytest.mark.parametrize(
    "payload",
    [
        b"",  # nothing at all
        b"\xef",  # F set: a 4-byte header cut to one
        b"\xef\x00\x3c",  # cut to three
        redundant_header(111, 960, 4),  # headers never end (no F=0 header)
        redundant_header(111, 960, 40) + b"\x6f" + b"short",  # block longer than the rest
        redundant_header(111, 960, 3) + b"\x6f" + b"abc",  # an empty primary
        b"\x6f",  # an empty primary alone
    ],
)
def test_malformed_payloads_give_none(payload: bytes) -> None:
    blocks = red_blocks(payload)
    assert red_primary(payload) is None
    if blocks is None:
        assert red_retagged(payload, 96) is None
    else:  # well formed, but nothing to play
        assert blocks[-1].data == b""


def test_random_bytes_never_raise() -> None:
    rng = random.Random(2198)
    for _ in range(20_000):
        payload = rng.randbytes(rng.randrange(0, 40))
        blocks = red_blocks(payload)
        primary = red_primary(payload)
        retagged = red_retagged(payload, 96)
        assert (blocks is None) == (retagged is None)
        if primary is not None:
            assert blocks is not None and blocks[-1].data == primary


def test_format_parameters_name_the_wrapped_payload_type() -> None:
    assert fmtp(111) == "111/111"
    assert redundant_payload_types({"111/111": None}) == [111, 111]
    assert redundant_payload_types({"minptime": 10}) is None
    assert redundant_payload_types({"111/x": None}) is None
    assert redundant_payload_types({"300/300": None}) is None


# --- negotiation: RED where the hub's preferences name it, first ---------------


def chromium_numbering(sdp: str) -> str:
    """An aiortc offer of Opus and RED renumbered as Chromium 156 numbers them:
    ``m=audio … 111 63``, ``a=fmtp:63 111/111``."""
    opus = re.search(r"a=rtpmap:(\d+) opus/48000/2", sdp)
    red_pt = re.search(r"a=rtpmap:(\d+) red/48000/2", sdp)
    assert opus is not None and red_pt is not None, sdp
    numbers = {opus[1]: "111", red_pt[1]: "63"}  # at once: aiortc's RED may be 111
    return re.sub(r"(?<=[ :/])(\d+)(?=[ /\r])", lambda n: numbers.get(n[1], n[1]), sdp)


def audio_formats(sdp: str) -> list[str]:
    m_line = re.search(r"m=audio \d+ \S+ ([\d ]+)\r", sdp)
    assert m_line is not None, sdp
    return m_line[1].split()


async def negotiate(
    offer_red: bool, answer_red: bool, munge: Callable[[str], str] = str
) -> tuple[RTCPeerConnection, RTCPeerConnection, str]:
    install_red()
    accept_offered_payload_types()
    offerer, answerer = make_peer_connection([]), make_peer_connection([])
    sending = offerer.addTransceiver("audio", direction="sendonly")
    receiving = answerer.addTransceiver("audio", direction="recvonly")
    if offer_red:
        sending.setCodecPreferences(audio_preferences())
    if answer_red:
        receiving.setCodecPreferences(audio_preferences())
    await offerer.setLocalDescription(await offerer.createOffer())
    offer = munge(offerer.localDescription.sdp)
    await answerer.setRemoteDescription(RTCSessionDescription(offer, "offer"))
    await answerer.setLocalDescription(await answerer.createAnswer())
    return offerer, answerer, answerer.localDescription.sdp


async def test_a_chromium_offer_of_red_is_answered_red_first_naming_its_opus() -> None:
    offerer, answerer, answer = await negotiate(True, True, chromium_numbering)
    try:
        # A browser sends the answer's first codec: RED, wrapping Opus 111.
        assert audio_formats(answer)[:2] == ["63", "111"]
        assert "a=rtpmap:63 red/48000/2" in answer
        assert "a=fmtp:63 111/111" in answer
        codec = codec_info(answerer.getTransceivers()[0])
        assert codec is not None and codec.name == "opus" and codec.red_payload_type == 63
    finally:
        await offerer.close()
        await answerer.close()


async def test_aiortc_peers_never_negotiate_red_by_default() -> None:
    """aiortc can neither send nor decode RED: its own peers (the Python client) must
    not get it, the hub's offering it or not."""
    for offer_red, answer_red in ((False, False), (True, False), (False, True)):
        offerer, answerer, answer = await negotiate(offer_red, answer_red)
        try:
            assert "red/48000" not in answer
            if not offer_red:
                assert "red/48000" not in offerer.localDescription.sdp
            codec = codec_info(answerer.getTransceivers()[0])
            assert codec is not None and codec.name == "opus" and codec.red_payload_type is None
        finally:
            await offerer.close()
            await answerer.close()


async def test_red_of_a_codec_the_answer_does_not_take_is_refused() -> None:
    def red_of_g722(sdp: str) -> str:
        return re.sub(r"a=fmtp:(\d+) \d+/\d+", r"a=fmtp:\1 9/9", chromium_numbering(sdp))

    offerer, answerer, answer = await negotiate(True, True, red_of_g722)
    try:
        assert "red/48000" not in answer
        assert audio_formats(answer)[0] == "111"
    finally:
        await offerer.close()
        await answerer.close()


@pytest.mark.parametrize("name", ["find_common_codecs", "filter_preferred_codecs"])
async def test_what_red_negotiation_relies_on_is_checked(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(aiortc.rtcpeerconnection, name)
    with pytest.raises(InternalsChanged, match=name):
        await check_internals()


# --- through the hub: a publisher sending RED, a subscriber without it ---------


def red_packet(primary: bytes, previous: bytes | None, opus_pt: int) -> bytes:
    """What Chromium sends: the Opus packet before (960 samples back), then this one."""
    older = ((960, previous),) if previous else ()
    return red(primary, *older, payload_type=opus_pt)


async def test_a_plain_subscriber_and_the_sinks_get_opus_from_a_red_publisher(
    hub_server: RunningHub,
) -> None:
    center = HubClient(hub_server.ws, hub_server.token("red", "C", "center"))
    station = HubClient(hub_server.ws, hub_server.token("red", "S1", "station"))
    try:
        await center.connect()
        # aiortc cannot send RED: its sender stays parked and the test writes the RTP.
        await center.publish(
            {"microphone": ParkedTrack("audio")},
            preferences={"microphone": audio_preferences()},
        )
        assert center.publisher is not None
        transceiver = center.publisher.getTransceivers()[0]
        ssrc, red_pt, writer = raw_sending(transceiver)
        wrapper = negotiated_codecs(transceiver)[0]
        assert wrapper.name == "red" and wrapper.payloadType == red_pt
        opus_pt = (redundant_payload_types(wrapper.parameters) or [-1])[0]

        room = hub_server.hub.rooms[RoomName("red")]
        participant = room.by_identity("C")  # type: ignore[arg-type]
        assert participant is not None
        publication = next(iter(participant.publications.values()))
        assert publication.up.codec.name == "opus"
        assert publication.up.codec.red_payload_type == red_pt
        to_sink: list[tuple[str, bytes]] = []
        publication.up.frame_consumers.append(
            lambda codec, data, ts, key, at: to_sink.append((codec, data))
        )
        publication.tap.set_frame_callback(publication.up.on_frame)

        await station.connect()
        received = await first_track(station, "microphone")
        sound = HeardSound(received.track)
        tone, encoder = ToneTrack(440), OpusEncoder()
        sent: list[bytes] = []
        seq, previous = 1000, None
        for n in range(150):  # 3 s of sound, paced by the tone track
            frame = await tone.recv()
            payloads, timestamp = encoder.encode(frame)
            for opus in payloads:
                payload = red_packet(opus, previous, opus_pt)
                if n == 50:
                    payload = b"\xef\x00"  # malformed: dropped, nothing else
                else:
                    sent.append(opus)
                header = struct.pack("!BBHII", 0x80, red_pt, seq, timestamp, ssrc)
                writer.srtp_socket.send(header + payload)
                seq, previous = seq + 1, opus
        await wait_until(lambda: None if sound.tones([440, 880]) == {440} else "no 440 Hz yet")
        await sound.close()
        # The sinks got the primary blocks: Opus packets as the encoder made them.
        assert len(to_sink) > 100
        assert {codec for codec, _ in to_sink} == {"opus"}
        assert {data for _, data in to_sink} <= set(sent)
    finally:
        await station.close()
        await center.close()


# --- the fan-out: each form made once per packet, one fan-out per group --------


def test_red_subscribers_get_red_retagged_and_the_others_its_primary_block() -> None:
    stats = ForwardingStats()
    opus = CodecInfo("opus", "audio/opus", 48000, channels=2, red_payload_type=63)
    up = UpTrack("audio", opus, stats, lambda layer: None)
    wires = [SrtpWire() for _ in range(3)]
    downs = [DownTrack("audio", 0x1000 + i, 0x2000 + i, stats) for i in range(3)]
    # A station that took RED (Opus 96, RED 120), one that did not, a bare core.
    downs[0].configure(wires[0].srtp_socket, 96, None, None, red_payload_type=120)
    downs[1].configure(wires[1].srtp_socket, 96, None, None)
    bare = DownTrackCore(False, 0x3000)
    bare.srtp_socket, bare.payload_type = wires[2].srtp_socket, 111
    for down in downs[:2]:
        Subscription(up, down)
    up.layers[0].downs.append(bare)

    def rtp(seq: int, payload_type: int, payload: bytes) -> RtpPacket:
        p = RtpPacket(payload_type=payload_type, sequence_number=seq, timestamp=960 * seq)
        p.ssrc, p.payload = 4242, payload
        return p

    up.on_rtp(rtp(1, 63, red(b"now", (960, b"before"))))
    up.on_rtp(rtp(2, 63, b"\xef\x00"))  # malformed: to nobody
    up.on_rtp(rtp(3, 111, b"plain"))  # plain Opus from a RED publisher
    got = [[RtpPacket.parse(d) for d in wire.sent] for wire in wires]
    assert [(p.payload_type, p.payload) for p in got[0]] == [
        (120, red(b"now", (960, b"before"), payload_type=96)),
        (120, red_single(b"plain", 96)),
    ]
    assert [(p.payload_type, p.payload) for p in got[1]] == [(96, b"now"), (96, b"plain")]
    assert [(p.payload_type, p.payload) for p in got[2]] == [(111, b"now"), (111, b"plain")]
    assert (stats.red_packets_received, stats.red_packets_forwarded) == (2, 2)
    # One sequence each, with the malformed packet's number left out as a loss.
    for packets in got:
        assert (packets[1].sequence_number - packets[0].sequence_number) & 0xFFFF == 2
    for wire in wires:
        wire.close()


def test_sinks_get_opus_and_a_lost_packet_from_the_copy_in_the_next() -> None:
    opus = CodecInfo("opus", "audio/opus", 48000, channels=2, red_payload_type=63)
    up = UpTrack("audio", opus, ForwardingStats(), lambda layer: None)
    frames: list[tuple[str, bytes, int]] = []
    up.frame_consumers.append(lambda codec, data, ts, key, at: frames.append((codec, data, ts)))
    up.on_frame("red", red(b"p0", (960, b"older")), 0)  # the first: its primary alone
    up.on_frame("red", red(b"p1", (960, b"p0")), 960)
    # p2 (at 1920) was lost on the way in: the next packet carries it.
    up.on_frame("red", red(b"p3", (1920, b"p1"), (960, b"p2")), 2880)
    up.on_frame("red", b"\xef\x00", 3840)  # malformed: nothing
    up.on_frame("red", red(b"p3", (960, b"p2")), 2880)  # a duplicate: nothing
    # Blocks out of order, one timestamp twice: in time order, each once.
    up.on_frame("red", red(b"p6", (960, b"p5"), (1920, b"p4"), (960, b"p5again")), 5760)
    assert frames == [
        ("opus", b"p0", 0),
        ("opus", b"p1", 960),
        ("opus", b"p2", 1920),
        ("opus", b"p3", 2880),
        ("opus", b"p4", 3840),
        ("opus", b"p5", 4800),
        ("opus", b"p6", 5760),
    ]
