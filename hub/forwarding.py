"""The forwarding path: encoded RTP in, rewritten RTP out, nothing decoded.

Knows nothing of rooms (LiveKit's ``pkg/sfu``). An :class:`UpTrack` is one received
track; a :class:`DownTrack` is one sending slot in a subscriber's peer connection;
a :class:`Subscription` ties one to the other and does the per-pair rewriting:
SSRC, sequence number, timestamp, payload type, keyframe gating.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiortc.rtp import RtpPacket

from hub import red
from hub.codecs import VP8, frame_is_keyframe, keyframe_start, vp8_picture_ids
from hub.fastpath import DownTrackCore, SrtpSocket, fanout
from hub.retransmission import RetransmitBudget, Verdict
from hub.video_yield import VideoYield

logger = logging.getLogger(__name__)

_HEADER = struct.Struct("!BBHII")
_RTX_OSN = struct.Struct("!H")
_ONE_BYTE_EXTENSIONS = b"\xbe\xde\x00\x01"
"""RFC 8285's one-byte header extensions, one 32-bit word of them: abs-send-time."""
HISTORY_SIZE = 2048
"""Packets kept per track for NACKs: over 1 s at 2,000 packets/s (~20 Mbps)."""
PAD_DEPTH = 64
"""Packets back from the newest that padding copies, at most, per call."""
KEYFRAME_INTERVAL = 0.5
"""At most one keyframe request per publisher per this many seconds."""
_NTP_EPOCH_OFFSET = 2208988800


@dataclass
class ForwardingStats:
    """Counters for /metrics, shared by every track of one hub."""

    packets_received: int = 0
    packets_forwarded: int = 0
    bytes_forwarded: int = 0
    keyframe_requests: int = 0
    """PLIs actually sent to publishers, after coalescing."""
    keyframe_requests_coalesced: int = 0
    nacks_received: int = 0
    retransmissions: int = 0
    retransmissions_declined: int = 0
    """NACKed packets not resent: repeated too soon or too often, too old, over budget."""
    video_yields: int = 0
    """Times a video down track was held because its subscriber's link could not carry it."""
    probes: int = 0
    """Times a subscriber's link was probed with padding before a move up a layer."""
    probes_failed: int = 0
    """Probes its estimate fell during: the layer stayed."""
    padding_bytes: int = 0
    """Bytes of probing padding sent (RTX copies of packets already sent)."""
    frames_to_sinks: int = 0
    silence_withheld: int = 0
    """Silent microphone packets not forwarded (:class:`SilenceGate`)."""
    red_packets_received: int = 0
    """RED (RFC 2198) packets from publishers, malformed ones included."""
    red_packets_forwarded: int = 0
    """RED packets sent to subscribers that took RED."""


@dataclass(frozen=True, slots=True)
class CodecInfo:
    """The codec of an up track, as negotiated with its publisher."""

    name: str
    """``VP8``, ``H264`` or ``opus``."""
    mime_type: str
    clock_rate: int
    parameters: dict[str, str | int | None] = field(default_factory=dict)
    channels: int | None = None
    red_payload_type: int | None = None
    """RED (RFC 2198) wrapping this codec, when negotiated: packets may come either way."""


class PacketHistory:
    """The last :data:`HISTORY_SIZE` packets of one up track, by sequence number."""

    __slots__ = ("_slots",)

    def __init__(self) -> None:
        self._slots: list[tuple[int, int, int, bytes] | None] = [None] * HISTORY_SIZE

    def add(self, seq: int, timestamp: int, marker: int, payload: bytes) -> None:
        self._slots[seq % HISTORY_SIZE] = (seq, timestamp, marker, payload)

    def get(self, seq: int) -> tuple[int, int, int, bytes] | None:
        entry = self._slots[seq % HISTORY_SIZE]
        return entry if entry is not None and entry[0] == seq else None


class KeyframeRequester:
    """Coalesces keyframe requests for one publisher: at most one PLI per interval,
    and a request inside the interval is sent when it ends, not dropped."""

    def __init__(
        self,
        send_pli: Callable[[], None],
        stats: ForwardingStats,
        interval: float = KEYFRAME_INTERVAL,
    ) -> None:
        self._send_pli = send_pli
        self._stats = stats
        self._interval = interval
        self._last = -interval
        self._timer: asyncio.TimerHandle | None = None

    def request(self) -> None:
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._fire()
            return
        self._stats.keyframe_requests_coalesced += 1
        if self._timer is None:
            delay = self._last + self._interval - now
            self._timer = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        if self._timer is not None:
            self._timer.cancel()  # a direct request took the place of the pending one
            self._timer = None
        self._last = time.monotonic()
        self._stats.keyframe_requests += 1
        self._send_pli()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


FrameConsumer = Callable[[str, bytes, int, bool, float], None]
"""Receives (codec, frame, unwrapped RTP timestamp, keyframe, arrival time.time())."""

_FANOUT_START_GAP = 3000
"""What :func:`hub.fastpath.fanout` adds to a video slot's clock when it starts anew."""
_MIN_LAYER_GAP = 1 / 30
"""Seconds a layer move advances the clock at least: a receiver drops a keyframe
whose timestamp is not ahead of the last frame it decoded (libwebrtc's frame buffer),
and a lower layer's keyframe can be of the very picture last sent from the higher one."""


class Vp8Numbering:
    """One numbering of VP8 PictureIDs and TL0PICIDXs for all layers of an up track.

    Each simulcast layer numbers its pictures on its own, from a random start: a
    subscriber moved from one to another saw them jump, backwards as often as not,
    and libwebrtc drops a keyframe whose PictureID is behind the last it decoded (a
    freeze until the numbers catch up, or the next keyframe). Here every layer's
    numbers are shifted so that each of its keyframes comes right after the highest
    number any layer has had: a subscriber sees them only move forward, and a jump
    only at a keyframe. Rewritten once as packets arrive, not per subscriber."""

    __slots__ = ("_offsets", "_picture_head", "_tl0_head")

    def __init__(self, layers: int) -> None:
        self._offsets = [(0, 0)] * layers
        """Per layer: (PictureID shift, TL0PICIDX shift) since its last keyframe."""
        self._picture_head = -1
        self._tl0_head = -1

    def rewrite(self, index: int, payload: bytes, keyframe: bool) -> bytes:
        picture_at, picture, tl0_at = vp8_picture_ids(payload)
        if picture_at < 0:
            return payload
        tl0 = payload[tl0_at] if tl0_at >= 0 else 0
        if keyframe:
            self._offsets[index] = (
                (self._picture_head + 1 - picture) & 0x7FFF,
                (self._tl0_head + 1 - tl0) & 0xFF,
            )
        picture_shift, tl0_shift = self._offsets[index]
        out = (picture + picture_shift) & 0x7FFF
        if self._picture_head < 0 or not (out - self._picture_head) & 0x4000:
            self._picture_head = out
        rewritten = bytearray(payload)
        rewritten[picture_at] = 0x80 | out >> 8
        rewritten[picture_at + 1] = out & 0xFF
        if tl0_at >= 0:
            out_tl0 = (tl0 + tl0_shift) & 0xFF
            if self._tl0_head < 0 or not (out_tl0 - self._tl0_head) & 0x80:
                self._tl0_head = out_tl0
            rewritten[tl0_at] = out_tl0
        return bytes(rewritten)


SILENT_LEVEL = 127
"""RFC 6464's audio level of digital silence (-127 dBov): a muted or silent microphone."""


class SilenceGate:
    """Withholds a microphone's digital silence from its subscribers, as the
    publisher's Opus DTX would have (Jitsi's bridge discards silence likewise).

    Browsers send a muted microphone (``track.enabled = false``) as a packet every 20 ms
    with audio level 127; at a county lecture the stations on stage listen most of the
    time, and each of their microphones would cost every station 50 packets a second.
    A live room's noise is never 127: only digital silence is withheld. After
    :attr:`HANGOVER` silent packets in a row only one in :attr:`KEEPALIVE` goes on,
    as DTX sends a comfort-noise update every 400 ms; the first packet with sound goes
    at once. The packets that go are renumbered without gaps, so a receiver sees a
    pause in time, not loss. Packets without a level (a publisher that does not send
    the extension) all go. Sinks take frames elsewhere (:meth:`UpTrack.on_frame`) and
    keep every packet."""

    HANGOVER = 50
    """1 s: pauses between words pass untouched, and so does a source that is silent
    between short sounds (Chromium's fake microphone beeps every 500 ms)."""
    KEEPALIVE = 20

    __slots__ = ("_run", "withheld")

    def __init__(self) -> None:
        self._run = 0
        """Silent packets in a row, up to the last one seen."""
        self.withheld = 0
        """Packets not forwarded so far: what later sequence numbers are moved down by."""

    def admit(self, seq: int, new: bool, level: int | None) -> int | None:
        """The sequence number to forward a packet as, or None to withhold it.
        ``new``: it is the highest sequence number so far (not a late one)."""
        silent = level is not None and level >= SILENT_LEVEL
        if not new:
            # A late packet's place among those renumbered is unknown; one of silence
            # is not missed.
            return None if silent or self._run > self.HANGOVER else (seq - self.withheld) & 0xFFFF
        self._run = self._run + 1 if silent else 0
        if self._run > self.HANGOVER and (self._run - self.HANGOVER) % self.KEEPALIVE:
            self.withheld += 1
            return None
        return (seq - self.withheld) & 0xFFFF


class Layer:
    """One encoding of an up track: a simulcast layer (its rid), or the whole track.

    Each has its own SSRC, sequence numbers, clock and keyframes, so its own packet
    history, keyframe requests and down tracks; a down track moves from one layer to
    another only at a keyframe of the target (see :meth:`Subscription.move`)."""

    __slots__ = (
        "_bytes_measured",
        "_highest_seq",
        "_keyframe",
        "_last_arrival",
        "_mid_frame",
        "bitrate_bps",
        "bytes_received",
        "downs",
        "history",
        "incoming",
        "index",
        "leaving",
        "media_ssrc",
        "packets_received",
        "rid",
        "silence",
        "up",
    )

    def __init__(self, up: UpTrack, index: int, rid: str | None) -> None:
        self.up = up
        self.index = index
        """Its place in ``up.layers`` (0: the lowest)."""
        self.rid = rid
        self.history: PacketHistory | None = None
        """Kept only while someone receives the layer (a subscription): of 190 stations
        off stage nobody receives most, and a full history is ~2 MB of video."""
        self.downs: list[DownTrackCore] = []
        """The down tracks sending this layer, not held: what fanout() takes."""
        self.incoming: list[Subscription] = []
        """Subscriptions moving here at this layer's next keyframe."""
        self.leaving: list[DownTrack] = []
        """Video down tracks held (audio only, a link that cannot carry it) that stop at
        the end of the frame they are in: a receiver given part of a frame, then the
        next keyframe numbered without a gap, takes the part for a whole frame (aiortc
        and GStreamer decode it, and fail)."""
        self.media_ssrc: int | None = None
        self.packets_received = 0
        self.bytes_received = 0
        self.bitrate_bps: float | None = None
        """What it carried over the last :meth:`UpTrack.measure`; None: nothing arrived."""
        self._bytes_measured = 0
        self._highest_seq = -1
        self._keyframe: tuple[int, int, int | None] | None = None
        """(first sequence number, timestamp, last sequence number once seen) of a
        keyframe arriving for a move here."""
        self._last_arrival = 0.0
        self._mid_frame = False
        """The last new packet did not end its frame."""
        self.silence = SilenceGate() if up.kind == "audio" else None

    def on_rtp(self, packet: RtpPacket) -> None:
        """Called for each media packet of this layer (after RTX unwrapping)."""
        up = self.up
        if up.closed:
            return
        payload = packet.payload
        seq = packet.sequence_number
        timestamp = packet.timestamp
        marker = packet.marker
        self.media_ssrc = packet.ssrc
        self.packets_received += 1
        new = self._highest_seq < 0 or not (seq - self._highest_seq) & 0x8000
        if new:
            # Not a repair or a sender's probe (RTX of what it sent): the rate layer
            # choice weighs is the layer's own.
            self._highest_seq = seq
            self.bytes_received += len(payload)
            self._mid_frame = not marker
        up.packets_received += 1
        up.bytes_received += len(payload)
        stats = up.stats
        stats.packets_received += 1
        level = packet.extensions.audio_level
        if level is not None:
            up.audio_level = level[1]
            up.audio_level_at = time.monotonic()
        if self.history is None and not self.downs and not self.incoming:
            # Nobody receives this layer (a simulcast layer no subscriber takes, a
            # track only sinks take): nothing to keep, rewrite or send.
            self._last_arrival = time.monotonic()
            return
        keyframe = up.kind == "video" and keyframe_start(up.codec.name, payload)
        if up.vp8 is not None:
            payload = up.vp8.rewrite(self.index, payload, keyframe and new)
        if self.silence is not None:
            admitted = self.silence.admit(seq, new, None if level is None else level[1])
            if admitted is None:
                stats.silence_withheld += 1
                self._last_arrival = time.monotonic()
                return
            seq = admitted
        history = self.history
        if history is not None:
            history.add(seq, timestamp, marker, payload)
        downs = self.downs
        if self.incoming:
            moved = self._watch_keyframe(seq, timestamp, marker, keyframe and new, new)
            if moved:
                downs = [down for down in downs if down not in moved]
        self._last_arrival = time.monotonic()
        if up.muted or not downs:
            return
        ntp = _ntp_now()
        if up.codec.red_payload_type is None:
            sent, plain, wants_keyframe = fanout(
                downs, seq, timestamp, marker, payload, keyframe, ntp, _abs_send_time(ntp)
            )
            if wants_keyframe:
                self.request_keyframe()  # a subscription waits to start
        else:
            is_red = packet.payload_type == up.codec.red_payload_type
            stats.red_packets_received += is_red
            sent, plain = _fan_out_red(downs, seq, timestamp, marker, payload, is_red, ntp, stats)
        stats.packets_forwarded += sent
        stats.bytes_forwarded += plain
        if marker and self.leaving:
            for down in self.leaving:
                self.downs.remove(down)
                down.leaving_from = None
            self.leaving.clear()

    def stop_sending(self, down: DownTrack) -> None:
        """``down`` is held: video at the end of the frame it is in, if any; audio now."""
        if down.video and self._mid_frame:
            self.leaving.append(down)
            down.leaving_from = self
        else:
            self.downs.remove(down)

    def still_leaving(self, down: DownTrack) -> bool:
        """``down`` is let go: True if it never stopped (held and let go within one
        frame of this layer). Else it is gone from wherever it was leaving."""
        leaving = down.leaving_from
        if leaving is None:
            return False
        if leaving is self:
            self.leaving.remove(down)
            down.leaving_from = None
            return True
        leaving.forget(down)
        return False

    def forget(self, down: DownTrack) -> None:
        """Stop a leaving ``down`` now, mid-frame or not: its subscription ended."""
        self.leaving.remove(down)
        self.downs.remove(down)
        down.leaving_from = None

    def _watch_keyframe(
        self, seq: int, timestamp: int, marker: int, keyframe: bool, new: bool
    ) -> list[DownTrackCore]:
        """Subscriptions wait to move here: once a keyframe of this layer is whole in
        the history (its marker packet, nothing missing), they move, and are sent it
        (the down tracks returned have had the current packet). Until then their old
        layer goes on: a keyframe takes a while to arrive (tens of packets, paced by
        the sender), and a switch at its first packet froze the picture that long."""
        if keyframe and (self._keyframe is None or self._keyframe[1] != timestamp):
            # Its first packet: an H.264 keyframe's IDR starts after its SPS and PPS,
            # which the move must send too.
            self._keyframe = (seq, timestamp, None)
        if self._keyframe is None:
            return []
        first, keyframe_ts, last = self._keyframe
        history = self.history
        if timestamp != keyframe_ts:
            if new:  # the next frame began before it was whole: another keyframe
                self._keyframe = None
                self.request_keyframe()
            return []  # else a repair of an older frame, or a sender's probe
        if history is None:
            return []
        if marker:
            last = seq
            self._keyframe = (first, keyframe_ts, last)
        if last is None:
            return []
        count = ((last - first) & 0xFFFF) + 1
        if any(history.get((first + i) & 0xFFFF) is None for i in range(count)):
            return []  # a packet still missing: its repair may come in time
        self._keyframe = None
        return self._take_incoming(first, count)

    def _take_incoming(self, first: int, count: int) -> list[DownTrackCore]:
        """This layer's keyframe of ``count`` packets from ``first`` is whole: the
        subscriptions waiting move here and are sent it, continuing their clock by
        the time that passed since their old layer's last packet (layers' RTP clocks
        differ: only time relates them). Returns the down tracks sent it."""
        now = time.monotonic()
        clock_rate = self.up.codec.clock_rate
        moved: list[DownTrackCore] = []
        for subscription in self.incoming:
            old = subscription.layer
            down = subscription.down
            if not down.held:
                old.downs.remove(down)
                self.downs.append(down)
                moved.append(down)
            if down.started:
                elapsed = max(now - old._last_arrival, _MIN_LAYER_GAP)
                advance = round(elapsed * clock_rate) - _FANOUT_START_GAP
                down.last_timestamp = (down.last_timestamp + advance) & 0xFFFFFFFF
                down.started = False
            subscription.layer = self
            old.release()
        self.incoming.clear()
        history = self.history
        if not moved or history is None or self.up.muted:
            return []
        stats = self.up.stats
        for i in range(count):
            entry = history.get((first + i) & 0xFFFF)
            assert entry is not None  # checked whole by _watch_keyframe
            seq, timestamp, marker, payload = entry
            ntp = _ntp_now()
            sent, plain, _ = fanout(
                moved, seq, timestamp, marker, payload, i == 0, ntp, _abs_send_time(ntp)
            )
            stats.packets_forwarded += sent
            stats.bytes_forwarded += plain
        return moved

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe of this layer (coalesced per up track)."""
        up = self.up
        if self not in up._keyframes_wanted:
            up._keyframes_wanted.append(self)
        up.keyframes.request()

    def hold(self) -> None:
        """Someone receives this layer: keep its history."""
        if self.history is None:
            self.history = PacketHistory()

    def release(self) -> None:
        """Drop the history once nobody receives this layer or moves to it."""
        if not self.incoming and not any(s.layer is self for s in self.up.subscriptions):
            self.history = None


class SinkSwitch:
    """Which simulcast layer the sinks (recorder, live HLS, restream) take, and their
    clock across a change of layer.

    The top while it flows. A sender whose uplink cannot afford it stops sending its
    top layer (libwebrtc does): after :attr:`QUIET` without it, the sinks take the
    highest layer still flowing, from that layer's next keyframe (asked for), rather
    than nothing; and the top again from its first keyframe once it flows. Layers'
    RTP clocks differ: the sinks' clock goes on by the time that passed."""

    QUIET = 1.0
    """Seconds without a layer's packets before it counts as stopped."""

    __slots__ = (
        "_ask",
        "_clock_rate",
        "_last_out",
        "_last_rtp",
        "_last_wall",
        "_next_out",
        "_seen",
        "index",
        "pending",
    )

    def __init__(self, layers: int, clock_rate: int, ask_keyframe: Callable[[int], None]) -> None:
        self.index = layers - 1
        """The layer the sinks take."""
        self.pending: int | None = None
        """The layer they move to at its next keyframe."""
        self._seen = [-math.inf] * layers
        self._ask = ask_keyframe
        self._clock_rate = clock_rate
        self._last_rtp: int | None = None
        self._last_out = 0
        self._last_wall = 0.0
        self._next_out = 0
        """The sinks' timestamp for the first frame after a change of layer."""

    def note(self, index: int, keyframe: bool, now: float) -> bool:
        """A media packet of layer ``index`` (``keyframe``: it starts one) arrived at
        ``now``; True if the sinks move to that layer with it (assembly starts again)."""
        seen = self._seen
        seen[index] = now
        flowing = [i for i, at in enumerate(seen) if now - at < self.QUIET]
        target = flowing[-1] if flowing else self.index
        if target == self.index:
            self.pending = None
            return False
        if self.pending != target:
            self.pending = target
            self._ask(target)
        if index != target or not keyframe:
            return False
        self.index, self.pending = target, None
        if self._last_rtp is not None:
            elapsed = max(now - self._last_wall, 1 / 30)
            self._next_out = self._last_out + round(elapsed * self._clock_rate)
        self._last_rtp = None
        return True

    def clock(self, rtp_timestamp: int, now: float) -> int:
        """The sinks' timestamp of a frame of the current layer (first frame: 0)."""
        if self._last_rtp is None:
            out = self._next_out
        else:
            delta = (rtp_timestamp - self._last_rtp) & 0xFFFFFFFF
            out = self._last_out + (delta - (1 << 32) if delta & 0x80000000 else delta)
        self._last_rtp, self._last_out, self._last_wall = rtp_timestamp, out, now
        return out


class UpTrack:
    """One track received from a publisher, fanned out to its subscriptions.

    Its :attr:`layers` are the simulcast encodings, lowest first, or one layer for a
    track sent once; packets reach a layer through its :meth:`Layer.on_rtp`."""

    def __init__(
        self,
        kind: str,
        codec: CodecInfo,
        stats: ForwardingStats,
        request_keyframe: Callable[[Layer], None],
        rids: tuple[str, ...] = (),
    ) -> None:
        """``request_keyframe`` asks the publisher for a keyframe of one layer (its
        ``media_ssrc``, once known); ``rids`` names the simulcast layers, lowest first."""
        self.kind = kind
        self.codec = codec
        self.stats = stats
        self.closed = False
        self.layers = [Layer(self, index, rid) for index, rid in enumerate(rids or (None,))]
        self._request_keyframe = request_keyframe
        self._keyframes_wanted: list[Layer] = []
        self.keyframes = KeyframeRequester(self._send_plis, stats)
        """One for all layers: libwebrtc makes every layer's keyframe at once and
        drops a request within 300 ms of the one before, whichever layer it names
        (a top layer asked for right after another went unanswered)."""
        self.vp8 = Vp8Numbering(len(rids)) if len(rids) > 1 and codec.name == VP8 else None
        """Simulcast VP8 only: its layers' picture numbers made one."""
        self.subscriptions: list[Subscription] = []
        self.frame_consumers: list[FrameConsumer] = []
        self.sink = SinkSwitch(
            len(self.layers), codec.clock_rate, lambda i: self.layers[i].request_keyframe()
        )
        self.muted = False
        self.audio_level: int = 127
        """Last audio level the publisher reported (0 loudest … 127 silence)."""
        self.audio_level_at = 0.0
        self.bytes_received = 0
        self.packets_received = 0
        self._red_sent_timestamp: int | None = None
        """The (unwrapped) timestamp of the last Opus packet sinks had of a RED frame."""

    def _send_plis(self) -> None:
        wanted, self._keyframes_wanted = self._keyframes_wanted, []
        for layer in wanted:
            self._request_keyframe(layer)

    @property
    def top(self) -> Layer:
        """The highest layer: what a track sent once is, and what sinks take while it
        flows (:class:`SinkSwitch`)."""
        return self.layers[-1]

    @property
    def simulcast(self) -> bool:
        return len(self.layers) > 1

    def on_rtp(self, packet: RtpPacket) -> None:
        """A packet of a track sent once (its only layer)."""
        self.layers[0].on_rtp(packet)

    def measure(self, interval: float) -> None:
        """Each layer's bit rate over the last ``interval`` seconds (what layer
        choice weighs against each subscriber's estimate)."""
        for layer in self.layers:
            sent = layer.bytes_received - layer._bytes_measured
            layer._bytes_measured = layer.bytes_received
            layer.bitrate_bps = sent * 8 / interval if sent else None

    def media_ssrcs(self) -> list[int]:
        """The SSRCs the layers arrived on so far."""
        return [layer.media_ssrc for layer in self.layers if layer.media_ssrc is not None]

    def request_keyframe(self) -> None:
        """Ask for a keyframe of every layer someone receives (a camera resumed or
        changed size, a stalled track flows again), coalesced per layer."""
        for layer in self.layers:
            sinks = self.frame_consumers and layer.index in (self.sink.index, self.sink.pending)
            if layer.downs or layer.incoming or sinks:
                layer.request_keyframe()

    def on_frame(self, codec: str, data: bytes, timestamp: int) -> None:
        """Complete encoded frames of the top layer, for sinks (recorder, live HLS);
        never decoded."""
        if self.closed or self.muted or not self.frame_consumers:
            return
        if codec != red.NAME:
            self._to_sinks(codec, data, timestamp)
            return
        for at, block in self._unsent_red_blocks(data, timestamp):
            self._to_sinks(self.codec.name, block, at)

    def _unsent_red_blocks(self, data: bytes, timestamp: int) -> list[tuple[int, bytes]]:
        """The Opus packets a RED frame carries that the sinks have not had, oldest
        first, with their timestamps: its primary block, after copies of packets lost
        before it (late beats never). Nothing from a malformed one."""
        blocks = red.red_blocks(data)
        if blocks is None:
            return []
        last = self._red_sent_timestamp
        unsent: list[tuple[int, bytes]] = []
        # In time order, each timestamp once: whatever the publisher wrote, a muxer
        # takes nothing else.
        for at, block in sorted((timestamp - b.timestamp_offset, b.data) for b in blocks):
            if block and (at == timestamp if last is None else at > last):
                unsent.append((at, block))
                last = at
        self._red_sent_timestamp = last
        return unsent

    def _to_sinks(self, codec: str, data: bytes, timestamp: int) -> None:
        keyframe = self.kind == "video" and frame_is_keyframe(codec, data)
        arrival = time.time()
        self.stats.frames_to_sinks += 1
        for consumer in self.frame_consumers:
            consumer(codec, data, timestamp, keyframe, arrival)

    def close(self) -> None:
        self.closed = True
        self.keyframes.close()
        for subscription in list(self.subscriptions):
            subscription.close()


class DownTrack(DownTrackCore):
    """One sending slot (a sendonly transceiver) in a subscriber's peer connection.

    It outlives the subscriptions bound to it, one at a time: a new publication on
    the same slot continues its SSRC's sequence and timestamp, as a receiver's
    SRTP and jitter buffer require. What each forwarded packet touches (sequence,
    clock, counters, the bound subscription's offsets) is in :class:`DownTrackCore`.
    """

    __slots__ = (
        "_rtx_seq",
        "audio_only",
        "budget",
        "fit",
        "held",
        "kind",
        "leaving_from",
        "lost",
        "lost_at",
        "nacked",
        "on_estimate",
        "red_block_type",
        "rtx_payload_type",
        "rtx_ssrc",
        "stats",
        "subscription",
    )

    def __init__(self, kind: str, ssrc: int, rtx_ssrc: int, stats: ForwardingStats) -> None:
        super().__init__(kind == "video", ssrc)
        self.kind = kind
        self.rtx_ssrc = rtx_ssrc
        self.stats = stats
        self.rtx_payload_type: int | None = None
        self.subscription: Subscription | None = None
        self._rtx_seq = 0
        self.budget = RetransmitBudget()
        self.audio_only = False
        """Held by the subscriber's choice (see :meth:`hold`)."""
        self.fit = VideoYield()
        """Held because the subscriber's link cannot carry this video."""
        self.held = False
        """Sends nothing: either of the two."""
        self.leaving_from: Layer | None = None
        """The layer it is still sending the current frame of, once held."""
        self.lost = 0.0
        """Fraction of this track the subscriber last reported lost."""
        self.lost_at = 0.0
        """When (monotonic) it reported that."""
        self.nacked = 0
        """Sequence numbers its subscriber asked to have resent, so far."""
        self.on_estimate: Callable[[], None] | None = None
        """Called after each new estimate (REMB): the layer may have to change."""
        self.red_block_type: int | None = None
        """While it sends RED: the payload type its subscriber gave the wrapped codec
        (Opus), which RED's blocks name. None: it sends the codec plain."""

    def configure(
        self,
        srtp_socket: SrtpSocket,
        payload_type: int,
        rtx_payload_type: int | None,
        abs_send_time_id: int | None,
        red_payload_type: int | None = None,
    ) -> None:
        """Apply what the last negotiation settled for this slot; with
        ``red_payload_type``, it sends RED wrapping ``payload_type``."""
        self.srtp_socket = srtp_socket
        self.payload_type = payload_type if red_payload_type is None else red_payload_type
        self.red_block_type = None if red_payload_type is None else payload_type
        self.rtx_payload_type = rtx_payload_type
        self.abs_send_time_id = abs_send_time_id if abs_send_time_id and self.video else 0

    def write_rtx(self, seq: int, timestamp: int, marker: int, payload: bytes) -> None:
        """Resend a packet, on the RTX stream when one was negotiated (RFC 4588)."""
        if self.rtx_payload_type is None or self.srtp_socket is None:
            ntp = _ntp_now()
            plain = self.write(seq, timestamp, marker, payload, ntp, _abs_send_time(ntp))
            if plain >= 0:
                self.stats.packets_forwarded += 1
                self.stats.bytes_forwarded += plain
                self.stats.retransmissions += 1
            return
        if self._send_rtx(seq, timestamp, marker, payload):
            self.stats.retransmissions += 1

    def _send_rtx(self, seq: int, timestamp: int, marker: int, payload: bytes) -> bool:
        """One packet on the RTX stream, stamped with its send time as media is: the
        subscriber's estimate weighs it with the rest."""
        srtp_socket = self.srtp_socket
        if self.rtx_payload_type is None or srtp_socket is None:
            return False
        self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
        ext = self.abs_send_time_id
        header = _HEADER.pack(
            0x90 if ext else 0x80,
            (marker << 7) | self.rtx_payload_type,
            self._rtx_seq,
            timestamp,
            self.rtx_ssrc,
        )
        if ext:
            header += _ONE_BYTE_EXTENSIONS + bytes(((ext << 4) | 2,)) + _abs_send_time(_ntp_now())
        return srtp_socket.send(header + _RTX_OSN.pack(seq) + payload)

    async def on_nack(self, seq: int) -> None:
        """The subscriber lost ``seq``: answer from the hub's own history."""
        self.stats.nacks_received += 1
        self.nacked += 1
        if self.subscription is not None:
            self.subscription.retransmit(seq)

    def hold(self, held: bool) -> None:
        """Audio-only mode on or off: send nothing while ``held``, so nothing crosses
        the subscriber's link, not even to be dropped. Let go, the video starts
        again at a keyframe."""
        self.audio_only = held
        self._follow()

    def _fit(self, estimate_bps: float | None) -> None:
        """Video yields first: held while the subscriber's estimate cannot carry it."""
        now = time.monotonic()
        budget = self.budget
        budget.note_media(self.bytes_sent, now)
        media_bps = budget.media_bps
        subscription = self.subscription
        target = subscription.target.bitrate_bps if subscription is not None else None
        if target is not None:
            # Just moved down (the link fell short of a higher layer): what it sent
            # lately is that layer's rate; whether the link carries the layer it now
            # sends is the question.
            media_bps = min(media_bps, target)
        was = self.fit.held
        if self.fit.update(estimate_bps, media_bps, now) and not was:
            self.stats.video_yields += 1
            # Nothing is measured while held: try again after the back-off.
            asyncio.get_running_loop().call_later(self.fit.retry_after, self._fit, None)
        self._follow()

    def _follow(self) -> None:
        held = self.audio_only or self.fit.held
        if held == self.held:
            return
        self.held = held
        subscription = self.subscription
        if subscription is None or subscription.closed:
            return
        layer = subscription.layer
        if held:
            layer.stop_sending(self)
        elif not layer.still_leaving(self):
            self.started = False
            layer.downs.append(self)
            if self.video:
                layer.request_keyframe()

    def on_feedback(self, rtt: float | None, estimate_bps: int | None, lost: float | None) -> None:
        """The subscriber's receiver report (round trip, seconds; fraction lost) or its
        REMB (this track's part of it): what the retransmission budget follows."""
        if rtt is not None:
            self.budget.rtt = rtt
        if lost is not None:
            self.lost = lost
            self.lost_at = time.monotonic()
        if estimate_bps is not None:
            self.budget.estimate_bps = estimate_bps
            if self.on_estimate is not None:
                self.on_estimate()
            subscription = self.subscription
            lowest = subscription is None or subscription.target is subscription.up.layers[0]
            if self.video and lowest:
                self._fit(estimate_bps)  # with layers, a lower one is tried first

    def on_pli(self) -> None:
        """The subscriber asked for a keyframe: pass it on to the publisher, coalesced."""
        if self.subscription is not None:
            self.subscription.layer.request_keyframe()


class Subscription:
    """One subscriber receiving one up track through one down track, from one of
    its layers at a time.

    The rewriting itself (start at a keyframe, sequence and timestamp offsets) runs
    in :func:`hub.fastpath.fanout`, on the down track's :class:`DownTrackCore`."""

    __slots__ = ("closed", "down", "layer", "up")

    def __init__(self, up: UpTrack, down: DownTrack, layer: int | None = None) -> None:
        """Starts on layer ``layer`` (an index of ``up.layers``), by default the top."""
        if down.subscription is not None:
            down.subscription.close()
        self.up = up
        self.down = down
        self.layer = up.layers[-1 if layer is None else layer]
        self.closed = False
        down.started = False
        down.subscription = self
        up.subscriptions.append(self)
        self.layer.hold()
        if down.held:
            return
        self.layer.downs.append(down)
        if up.kind == "video":
            self.layer.request_keyframe()

    @property
    def target(self) -> Layer:
        """The layer this subscription sends, or is moving to."""
        return next((layer for layer in self.up.layers if self in layer.incoming), self.layer)

    def move(self, index: int) -> None:
        """Send layer ``index`` from its next keyframe on (asked for now); until then
        the current layer goes on, so the subscriber never waits on nothing."""
        if self.closed:
            return
        target = self.up.layers[index]
        for layer in self.up.layers:
            if self in layer.incoming:
                layer.incoming.remove(self)
                layer.release()
        if target is self.layer:
            return
        target.hold()
        target.incoming.append(self)
        target.request_keyframe()

    def retransmit(self, out_seq: int) -> None:
        down = self.down
        if self.closed or not down.started:
            return
        seq = (out_seq - down.seq_offset) & 0xFFFF
        if (seq - down.first_seq) & 0x8000:
            return  # sent before a move: of another layer (or publication)
        history = self.layer.history
        entry = history.get(seq) if history is not None else None
        if entry is None:
            return
        _, timestamp, marker, payload = entry
        out_ts = (timestamp + down.ts_offset) & 0xFFFFFFFF
        behind = (down.last_timestamp - out_ts) & 0xFFFFFFFF
        age = 0.0 if behind & 0x80000000 else behind / self.up.codec.clock_rate
        now = time.monotonic()
        budget = down.budget
        budget.note_media(down.bytes_sent, now)
        verdict = budget.decide(out_seq, age, len(payload), now)
        if verdict is Verdict.SEND:
            down.write_rtx(out_seq, out_ts, marker, payload)
            return
        down.stats.retransmissions_declined += 1
        if verdict.needs_keyframe and down.video and budget.keyframe_due(now):
            self.layer.request_keyframe()  # a keyframe repairs what resends cannot

    def pad(self, size: int) -> int:
        """Send about ``size`` bytes of padding: RTX copies of the packets last sent,
        newest first (a receiver drops what it has; libwebrtc pads so too), to show
        whether the subscriber's link carries more. Bytes sent; 0 if nothing can be."""
        down = self.down
        history = self.layer.history
        if self.closed or down.held or not down.started or history is None:
            return 0
        sent = 0
        out_seq = down.next_seq
        for _ in range(PAD_DEPTH):
            if sent >= size:
                break
            out_seq = (out_seq - 1) & 0xFFFF
            seq = (out_seq - down.seq_offset) & 0xFFFF
            if (seq - down.first_seq) & 0x8000:
                break  # before this subscription's start
            entry = history.get(seq)
            if entry is None:
                continue
            _, timestamp, marker, payload = entry
            out_ts = (timestamp + down.ts_offset) & 0xFFFFFFFF
            if not down._send_rtx(out_seq, out_ts, marker, payload):
                break
            sent += len(payload)
        down.stats.padding_bytes += sent
        return sent

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        up = self.up
        if self in up.subscriptions:
            up.subscriptions.remove(self)
            if not self.down.held:
                self.layer.downs.remove(self.down)
            elif self.down.leaving_from is not None:
                self.down.leaving_from.forget(self.down)
            for layer in up.layers:
                if self in layer.incoming:
                    layer.incoming.remove(self)
                layer.release()
        if self.down.subscription is self:
            self.down.subscription = None


def _fan_out_red(
    downs: list[DownTrackCore],
    seq: int,
    timestamp: int,
    marker: int,
    payload: bytes,
    is_red: bool,
    ntp: int,
    stats: ForwardingStats,
) -> tuple[int, int]:
    """Audio from a publisher that negotiated RED, to down tracks grouped by the form
    they take: plain Opus (a RED packet's primary block) or RED whose blocks name
    their subscriber's Opus number. Each form is made once, and each group gets one
    fan-out; a malformed RED packet goes nowhere. Returns (sent, plain bytes)."""
    groups: dict[int | None, list[DownTrackCore]] = {}
    for down in downs:
        # A bare core (tools, tests) has no RED: it takes plain Opus.
        key = down.red_block_type if isinstance(down, DownTrack) else None
        groups.setdefault(key, []).append(down)
    abs3 = _abs_send_time(ntp)
    sent = plain = 0
    for block_type, group in groups.items():
        if block_type is None:
            form = red.red_primary(payload) if is_red else payload
        elif is_red:
            form = red.red_retagged(payload, block_type)
        else:
            form = red.red_single(payload, block_type)
        if form is not None:
            count, size, _ = fanout(group, seq, timestamp, marker, form, False, ntp, abs3)
            sent += count
            plain += size
            if block_type is not None:
                stats.red_packets_forwarded += count
    return sent, plain


def downstream_loss(up: UpTrack) -> float:
    """The worst loss (0-1) a subscriber of ``up`` reports: what its publisher's
    encoder is told, to protect its audio for them (Opus in-band FEC)."""
    return max((s.down.lost for s in up.subscriptions), default=0.0)


def _abs_send_time(ntp: int) -> bytes:
    """abs-send-time: 24 bits of 6.18 fixed-point seconds."""
    return ((ntp >> 14) & 0xFFFFFF).to_bytes(3, "big")


def _ntp_now() -> int:
    now = time.time() + _NTP_EPOCH_OFFSET
    return (int(now) << 32) | int((now % 1) * (1 << 32))
