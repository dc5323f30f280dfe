"""The forwarding path: encoded RTP in, rewritten RTP out, nothing decoded.

Knows nothing of rooms (LiveKit's ``pkg/sfu``). An :class:`UpTrack` is one received
track; a :class:`DownTrack` is one sending slot in a subscriber's peer connection;
a :class:`Subscription` ties one to the other and does the per-pair rewriting:
SSRC, sequence number, timestamp, payload type, keyframe gating.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiortc.rtp import RtpPacket

from hub.codecs import frame_is_keyframe, keyframe_start

logger = logging.getLogger(__name__)

_HEADER = struct.Struct("!BBHII")
_RTX_OSN = struct.Struct("!H")
HISTORY_SIZE = 2048
"""Packets kept per track for NACKs: over 1 s at 2,000 packets/s (~20 Mbps)."""
NACK_HOLDOFF = 0.05
"""A NACKed packet is resent at most once per this many seconds: receivers repeat
their whole missing list at each new loss."""
REPORT_EVERY_MASK = 7
"""Sender Report figures are refreshed every 8th packet (a consistent snapshot)."""
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
    frames_to_sinks: int = 0


@dataclass(frozen=True, slots=True)
class CodecInfo:
    """The codec of an up track, as negotiated with its publisher."""

    name: str
    """``VP8``, ``H264`` or ``opus``."""
    mime_type: str
    clock_rate: int
    parameters: dict[str, str | int | None] = field(default_factory=dict)
    channels: int | None = None


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


class UpTrack:
    """One track received from a publisher, fanned out to its subscriptions."""

    def __init__(
        self,
        kind: str,
        codec: CodecInfo,
        stats: ForwardingStats,
        request_keyframe: Callable[[], None],
    ) -> None:
        self.kind = kind
        self.codec = codec
        self.stats = stats
        self.history = PacketHistory()
        self.keyframes = KeyframeRequester(request_keyframe, stats)
        self.subscriptions: list[Subscription] = []
        self.frame_consumers: list[FrameConsumer] = []
        self.media_ssrc: int | None = None
        self.muted = False
        self.audio_level: int = 127
        """Last audio level the publisher reported (0 loudest … 127 silence)."""
        self.audio_level_at = 0.0
        self.bytes_received = 0
        self.packets_received = 0
        self.closed = False

    def on_rtp(self, packet: RtpPacket) -> None:
        """Called for each media packet the publisher sends (after RTX unwrapping)."""
        if self.closed:
            return
        payload = packet.payload
        seq = packet.sequence_number
        timestamp = packet.timestamp
        marker = packet.marker
        self.media_ssrc = packet.ssrc
        self.packets_received += 1
        self.bytes_received += len(payload)
        self.stats.packets_received += 1
        level = packet.extensions.audio_level
        if level is not None:
            self.audio_level = level[1]
            self.audio_level_at = time.monotonic()
        self.history.add(seq, timestamp, marker, payload)
        if self.muted or not self.subscriptions:
            return
        keyframe = self.kind == "video" and keyframe_start(self.codec.name, payload)
        ntp = _ntp_now()
        abs3 = _abs_send_time(ntp)
        datagrams = []
        for subscription in self.subscriptions:
            datagram = subscription.forward(seq, timestamp, marker, payload, keyframe, ntp, abs3)
            if datagram is not None:
                datagrams.append(datagram)
        for sendto, data, addr in datagrams:
            sendto(data, addr)

    def on_frame(self, codec: str, data: bytes, timestamp: int) -> None:
        """Complete encoded frames, for sinks (recorder, live HLS); never decoded."""
        if self.closed or self.muted or not self.frame_consumers:
            return
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


Datagram = tuple[Callable[[bytes, Any], None], bytes, Any]
"""(sendto, protected packet, address): a packet ready to leave. A fan-out seals
every copy first and then makes its syscalls in one run: the SRTP contexts and
the kernel's send path each stay warm in the CPU's caches."""


class Writer(Protocol):
    """Where a down track's packets go: the subscriber's SRTP transport."""

    def ready(self) -> bool: ...

    def seal(self, data: bytes) -> Datagram | None: ...

    def send(self, data: bytes) -> bool: ...


class DownTrack:
    """One sending slot (a sendonly transceiver) in a subscriber's peer connection.

    It outlives the subscriptions bound to it, one at a time: a new publication on
    the same slot continues its SSRC's sequence and timestamp, as a receiver's
    SRTP and jitter buffer require.
    """

    __slots__ = (
        "_ext_lead",
        "_first_byte",
        "_report",
        "_resent",
        "_rtx_seq",
        "abs_send_time_id",
        "bytes_sent",
        "kind",
        "last_timestamp",
        "next_seq",
        "packets_sent",
        "payload_type",
        "rtx_payload_type",
        "rtx_ssrc",
        "ssrc",
        "stats",
        "subscription",
        "writer",
    )

    def __init__(
        self,
        kind: str,
        ssrc: int,
        rtx_ssrc: int,
        report: Callable[[int, int, int, int], None],
        stats: ForwardingStats,
    ) -> None:
        self.kind = kind
        self.ssrc = ssrc
        self.rtx_ssrc = rtx_ssrc
        self.writer: Writer | None = None
        self._report = report
        self.stats = stats
        self.payload_type: int | None = None
        self.rtx_payload_type: int | None = None
        self.abs_send_time_id: int | None = None
        self.subscription: Subscription | None = None
        # Start below 32768 so SRTP's rollover guess cannot go wrong early on.
        self.next_seq = ssrc & 0x7FFF
        self.last_timestamp = (ssrc * 2654435761) & 0xFFFFFFFF
        self._rtx_seq = 0
        # When each sequence number was last resent, to answer a NACK once per holdoff.
        self._resent: dict[int, float] = {}
        self._first_byte = 0x80
        self._ext_lead = b""
        self.packets_sent = 0
        self.bytes_sent = 0

    def configure(
        self,
        writer: Writer,
        payload_type: int,
        rtx_payload_type: int | None,
        abs_send_time_id: int | None,
    ) -> None:
        """Apply what the last negotiation settled for this slot."""
        self.writer = writer
        self.payload_type = payload_type
        self.rtx_payload_type = rtx_payload_type
        self.abs_send_time_id = abs_send_time_id if self.kind == "video" else None
        if self.abs_send_time_id is None:
            self._first_byte, self._ext_lead = 0x80, b""
        else:  # one-byte header extension, one word: abs-send-time's 3 bytes
            self._first_byte = 0x90
            self._ext_lead = b"\xbe\xde\x00\x01" + bytes(((self.abs_send_time_id << 4) | 2,))

    def ready(self) -> bool:
        return self.payload_type is not None and self.writer is not None and self.writer.ready()

    def seal(
        self, seq: int, timestamp: int, marker: int, payload: bytes, ntp: int, abs3: bytes
    ) -> Datagram | None:
        """One packet, protected and ready to send; ``abs3`` is its abs-send-time,
        computed once per packet."""
        pt = self.payload_type
        writer = self.writer
        if pt is None or writer is None:
            return None
        header = _HEADER.pack(self._first_byte, (marker << 7) | pt, seq, timestamp, self.ssrc)
        lead = self._ext_lead
        data = b"".join((header, lead, abs3, payload)) if lead else header + payload
        datagram = writer.seal(data)
        if datagram is None:
            return None
        self.packets_sent = sent = self.packets_sent + 1
        self.bytes_sent += len(payload)
        stats = self.stats
        stats.packets_forwarded += 1
        stats.bytes_forwarded += len(data)
        if not sent & REPORT_EVERY_MASK:
            self._report(timestamp, ntp, sent, self.bytes_sent)
        return datagram

    def write_rtx(self, seq: int, timestamp: int, marker: int, payload: bytes) -> None:
        """Resend a packet, on the RTX stream when one was negotiated (RFC 4588)."""
        now = time.monotonic()
        if now - self._resent.get(seq, -NACK_HOLDOFF) < NACK_HOLDOFF:
            return
        if len(self._resent) > HISTORY_SIZE:
            self._resent.clear()
        self._resent[seq] = now
        if self.rtx_payload_type is None or self.writer is None:
            ntp = _ntp_now()
            datagram = self.seal(seq, timestamp, marker, payload, ntp, _abs_send_time(ntp))
            if datagram is not None:
                sendto, data, addr = datagram
                sendto(data, addr)
                self.stats.retransmissions += 1
            return
        self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
        data = (
            _HEADER.pack(
                0x80, (marker << 7) | self.rtx_payload_type, self._rtx_seq, timestamp, self.rtx_ssrc
            )
            + _RTX_OSN.pack(seq)
            + payload
        )
        if self.writer.send(data):
            self.stats.retransmissions += 1

    async def on_nack(self, seq: int) -> None:
        """The subscriber lost ``seq``: answer from the hub's own history."""
        self.stats.nacks_received += 1
        if self.subscription is not None:
            self.subscription.retransmit(seq)

    def on_pli(self) -> None:
        """The subscriber asked for a keyframe: pass it on to the publisher, coalesced."""
        if self.subscription is not None:
            self.subscription.up.keyframes.request()


class Subscription:
    """One subscriber receiving one up track through one down track."""

    __slots__ = ("_first_seq", "_seq_offset", "_ts_offset", "closed", "down", "started", "up")

    def __init__(self, up: UpTrack, down: DownTrack) -> None:
        if down.subscription is not None:
            down.subscription.close()
        self.up = up
        self.down = down
        self.started = False
        self.closed = False
        self._seq_offset = 0
        self._ts_offset = 0
        self._first_seq = 0
        down.subscription = self
        up.subscriptions.append(self)
        if up.kind == "video":
            up.keyframes.request()

    def forward(
        self,
        seq: int,
        timestamp: int,
        marker: int,
        payload: bytes,
        keyframe: bool,
        ntp: int,
        abs3: bytes,
    ) -> Datagram | None:
        down = self.down
        if not self.started:
            if not down.ready():
                return None
            if self.up.kind == "video" and not keyframe:
                self.up.keyframes.request()
                return None
            self.started = True
            self._first_seq = seq
            self._seq_offset = (down.next_seq - seq) & 0xFFFF
            # Continue the slot's clock a little after its last packet.
            gap = 3000 if self.up.kind == "video" else 960
            self._ts_offset = (down.last_timestamp + gap - timestamp) & 0xFFFFFFFF
        elif (seq - self._first_seq) & 0x8000:
            return None  # older than where this subscription started
        out_seq = (seq + self._seq_offset) & 0xFFFF
        out_ts = (timestamp + self._ts_offset) & 0xFFFFFFFF
        if not (out_seq - down.next_seq) & 0x8000:
            down.next_seq = (out_seq + 1) & 0xFFFF
            down.last_timestamp = out_ts
        return down.seal(out_seq, out_ts, marker, payload, ntp, abs3)

    def retransmit(self, out_seq: int) -> None:
        if not self.started:
            return
        seq = (out_seq - self._seq_offset) & 0xFFFF
        entry = self.up.history.get(seq)
        if entry is None:
            return
        _, timestamp, marker, payload = entry
        self.down.write_rtx(out_seq, (timestamp + self._ts_offset) & 0xFFFFFFFF, marker, payload)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self in self.up.subscriptions:
            self.up.subscriptions.remove(self)
        if self.down.subscription is self:
            self.down.subscription = None


def _abs_send_time(ntp: int) -> bytes:
    """abs-send-time: 24 bits of 6.18 fixed-point seconds."""
    return ((ntp >> 14) & 0xFFFFFF).to_bytes(3, "big")


def _ntp_now() -> int:
    now = time.time() + _NTP_EPOCH_OFFSET
    return (int(now) << 32) | int((now % 1) * (1 << 32))
