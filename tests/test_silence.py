"""A microphone's digital silence (audio level 127) is withheld from subscribers as
DTX would withhold it: a keepalive every 400 ms, sound again at once, sequence
numbers without gaps. Synthetic RTP through the real fan-out, then real aiortc
peers through a real hub."""

from __future__ import annotations

import asyncio
from itertools import pairwise

from aiortc.rtp import RtpPacket

from hub.client import HubClient, ReceivedTrack
from hub.forwarding import CodecInfo, DownTrack, ForwardingStats, SilenceGate, Subscription, UpTrack
from tests.helpers import HeardSound, SrtpWire, ToneTrack, wait_until
from tests.hubserver import RunningHub

OPUS = CodecInfo(name="opus", mime_type="audio/opus", clock_rate=48000, channels=2)


class Microphone:
    """Packets as a browser sends them: 20 ms apart, each with its audio level."""

    def __init__(self, up: UpTrack) -> None:
        self.up, self.seq, self.ts = up, 65530, 1000

    def send(self, level: int | None, count: int = 1) -> None:
        for _ in range(count):
            p = RtpPacket(payload_type=111, sequence_number=self.seq, timestamp=self.ts, ssrc=77)
            if level is not None:
                p.extensions.audio_level = (level < 127, level)
            p.payload = bytes([0xF8, 0xFF, 0xFE]) if level == 127 else b"\xfc" + bytes(40)
            self.up.on_rtp(p)
            self.seq = (self.seq + 1) & 0xFFFF
            self.ts = (self.ts + 960) & 0xFFFFFFFF


def setup() -> tuple[ForwardingStats, SrtpWire, Microphone]:
    stats = ForwardingStats()
    up = UpTrack("audio", OPUS, stats, lambda layer: None)
    down = DownTrack("audio", 0x0BADCAFE, 0, stats)
    wire = SrtpWire()
    down.configure(wire.srtp_socket, payload_type=109, rtx_payload_type=None, abs_send_time_id=0)
    Subscription(up, down)
    return stats, wire, Microphone(up)


def test_silence_is_withheld_after_a_hangover_with_a_keepalive_every_400_ms() -> None:
    stats, wire, mic = setup()
    hangover, keepalive = SilenceGate.HANGOVER, SilenceGate.KEEPALIVE
    silent = hangover + 3 * keepalive + 7
    mic.send(level=30, count=5)  # speech
    mic.send(level=127, count=silent)
    mic.send(level=40, count=3)  # speech again
    out = [RtpPacket.parse(data) for data in wire.sent]
    # 5 spoken, the hangover, one in 20 of the other silent ones, then 3 spoken
    assert len(out) == 5 + hangover + 3 + 3
    assert stats.silence_withheld == silent - hangover - 3
    # the receiver sees a pause in time, never a gap in the numbering
    seqs = [p.sequence_number for p in out]
    assert all((b - a) & 0xFFFF == 1 for a, b in pairwise(seqs))
    gaps = [((b.timestamp - a.timestamp) & 0xFFFFFFFF) // 960 for a, b in pairwise(out)]
    passed = 5 + hangover  # packets 20 ms apart
    assert gaps[: passed - 1] == [1] * (passed - 1)
    assert gaps[passed - 1 : passed + 2] == [keepalive] * 3
    # sound goes at once: the first spoken packet right after the last keepalive
    assert gaps[-3:] == [7 + 1, 1, 1]
    assert [len(p.payload) for p in out[-3:]] == [41, 41, 41]


def test_a_publisher_without_audio_levels_is_forwarded_whole() -> None:
    stats, wire, mic = setup()
    mic.send(level=None, count=60)
    assert len(wire.sent) == 60 and stats.silence_withheld == 0


def test_a_late_packet_of_silence_is_not_forwarded_and_speech_is_renumbered() -> None:
    gate = SilenceGate()
    for seq in range(100, 100 + SilenceGate.HANGOVER + 5):
        gate.admit(seq, new=True, level=127)
    assert gate.withheld == 5
    assert gate.admit(101, new=False, level=127) is None
    assert gate.admit(101, new=False, level=20) is None  # from before the pause
    assert gate.admit(200, new=True, level=20) == 195


async def test_a_silent_stage_microphone_costs_its_listeners_a_packet_every_400_ms(
    hub_server: RunningHub,
) -> None:
    """A station on stage that listens: its subscribers get its silence as DTX would
    send it, and its voice at once, in order, decodable."""
    arrivals: list[tuple[float, int]] = []

    def on_rtp(track: ReceivedTrack, packet: RtpPacket) -> None:
        if track.track.kind == "audio":
            arrivals.append((asyncio.get_running_loop().time(), packet.sequence_number))

    speech = ToneTrack(440)
    center = HubClient(hub_server.ws, hub_server.token("quiet", "C", "center"))
    listener = HubClient(
        hub_server.ws, hub_server.token("quiet", "S1", "station"), decode=False, on_rtp=on_rtp
    )
    decoder = HubClient(hub_server.ws, hub_server.token("quiet", "S2", "station"))
    try:
        await center.connect()
        await center.publish({"microphone": speech})
        await listener.connect()
        await decoder.connect()
        await wait_until(lambda: None if len(arrivals) > 50 else f"{len(arrivals)} packets")
        await wait_until(lambda: None if decoder.tracks_of("microphone") else "no track")
        heard = HeardSound(decoder.tracks_of("microphone")[0].track)
        speech.speaking = False
        await asyncio.sleep(SilenceGate.HANGOVER * 0.02 + 0.3)  # and what was on its way
        quiet_from = len(arrivals)
        await asyncio.sleep(2.0)
        quiet = arrivals[quiet_from:]
        speech.speaking = True
        await asyncio.sleep(1.0)
        spoken = arrivals[quiet_from + len(quiet) :]
        # 2 s of silence: 5 keepalives (DTX's rate), not 100 packets
        assert 3 <= len(quiet) <= 7, quiet
        assert len(spoken) >= 40  # 50 a second again
        seqs = [seq for _, seq in arrivals]
        assert all((b - a) & 0xFFFF == 1 for a, b in pairwise(seqs)), "a gap"
        assert hub_server.hub.stats.silence_withheld >= 90
        # what follows the silence decodes, as the tone
        assert heard.tones([440, 1000], seconds=0.5) == {440}
        await heard.close()
    finally:
        await decoder.close()
        await listener.close()
        await center.close()
