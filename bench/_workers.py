"""The benchmark's child processes: publisher, counting subscribers, a decoding
subscriber and the MediaRelay baseline server.

Each runs an asyncio loop and serves method calls from the orchestrator over a
pipe, one at a time: ``(method, args)`` in, ``("ok", result)`` or
``("error", traceback)`` out.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import fractions
import logging
import math
import random
import signal
import struct
import time
import traceback
from array import array
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

import av
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtpPacket

from bench._media import (
    AUDIO_FRAME,
    FPS,
    KEY_LENGTH,
    THUMB_FPS,
    Clip,
    SendLog,
    bitrate_bps,
    clip_tracks,
    load_clip,
    load_mid_clip,
    load_thumbnail_clip,
    payload_crc,
    vp8_frame_start,
)
from hub.aiortc_internals import (
    REPAIRED_RID_URI,
    RID_URI,
    ReceiverTap,
    RtpPacer,
    hear_keyframe_requests,
    negotiated_header_extensions,
    raw_sending,
    restrict_host_addresses,
)
from hub.client import HubClient, ReceivedTrack
from hub.peers import ParkedTrack

JOIN_BACKOFF = 0.5
JOIN_BACKOFF_MAX = 3.6
"""A station's rejoin backoff, doubling, as ``protocol.js``'s."""
JOIN_CONCURRENCY = 4
"""Joins in flight per worker: DTLS handshakes are CPU-heavy on two cores."""


def die_with_parent() -> None:
    """Linux: get SIGTERM when the orchestrator dies, however it dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def child_main(role: str, conn: Connection) -> None:
    """Entry point of every child process."""
    die_with_parent()
    # Ctrl-C reaches the whole process group; the orchestrator alone handles it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    restrict_host_addresses(["127.0.0.1"])
    roles: dict[str, Callable[[], Any]] = {
        "publisher": Publisher,
        "subscribers": Subscribers,
        "decoder": Decoder,
        "baseline": BaselineServer,
        "stations": Stations,
        "console": Console,
    }
    asyncio.run(_serve(roles[role](), conn))


async def _serve(handler: Any, conn: Connection) -> None:
    try:
        while True:
            try:
                method, args = await asyncio.to_thread(conn.recv)
            except EOFError:
                return
            try:
                result = await getattr(handler, method)(*args)
            except Exception:
                conn.send(("error", traceback.format_exc()))
            else:
                conn.send(("ok", result))
            if method == "close":
                return
    finally:
        await handler.close()


def _peer_connection() -> RTCPeerConnection:
    # Explicit empty list: aiortc's default is a public STUN server.
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


class Counter:
    """What one subscriber received: packets and frames always; while recording,
    each video packet's clip frame index, payload CRC-32 and arrival time (monotonic,
    which Linux shares between processes)."""

    __slots__ = (
        "_frame",
        "_frame_ts",
        "arrival_at",
        "arrival_crc",
        "arrival_frame",
        "audio_packets",
        "frames",
        "keys",
        "past_descriptor",
        "recording",
        "video_packets",
    )

    def __init__(self, keys: dict[bytes, int], past_descriptor: bool = False) -> None:
        self.keys = keys
        self.past_descriptor = past_descriptor
        """CRC-32 of what follows the VP8 descriptor (:func:`payload_crc`)."""
        self.audio_packets = 0
        self.video_packets = 0
        self.frames = 0
        self.recording = False
        self.arrival_frame = array("i")
        self.arrival_crc = array("I")
        self.arrival_at = array("d")
        self._frame = -1
        self._frame_ts = -1

    def on_packet(self, kind: str, packet: RtpPacket) -> None:
        now = time.monotonic()
        if kind != "video":
            self.audio_packets += 1
            return
        self.video_packets += 1
        self.frames += packet.marker
        if not self.recording:
            return
        payload = packet.payload
        start = vp8_frame_start(payload)
        if start is not None:
            self._frame = self.keys.get(payload[start : start + KEY_LENGTH], -1)
            self._frame_ts = packet.timestamp
        elif packet.timestamp != self._frame_ts:
            self._frame = -1  # the frame's first packet was lost: unknown frame
        if self._frame >= 0:
            self.arrival_frame.append(self._frame)
            self.arrival_crc.append(payload_crc(payload, self.past_descriptor))
            self.arrival_at.append(now)

    def snapshot(self) -> tuple[int, int, int]:
        return self.video_packets, self.audio_packets, self.frames

    def take_arrivals(self) -> tuple[array[int], array[int], array[float]]:
        arrivals = self.arrival_frame, self.arrival_crc, self.arrival_at
        self.arrival_frame, self.arrival_crc, self.arrival_at = array("i"), array("I"), array("d")
        return arrivals


class RawReceiver:
    """A plain aiortc peer connection that answers an offer and counts what it
    receives without decoding: the direct path and the baseline's subscribers."""

    def __init__(self, keys: dict[bytes, int], past_descriptor: bool = False) -> None:
        self.counter = Counter(keys, past_descriptor)
        self.pc = _peer_connection()
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        receiver = next(t.receiver for t in self.pc.getTransceivers() if t.receiver.track is track)
        kind = track.kind
        counter = self.counter
        ReceiverTap(receiver, lambda packet: counter.on_packet(kind, packet))

    async def answer(self, offer: str) -> str:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return str(self.pc.localDescription.sdp)


class Publisher:
    """Sends the clip to the hub (as a HubClient) and over plain peer connections
    (the direct path, the baseline server)."""

    def __init__(self) -> None:
        self.clip = Clip(video=[], audio=[])
        self.client: HubClient | None = None
        self.pcs: dict[str, RTCPeerConnection] = {}
        self.logs: dict[str, SendLog] = {}
        self.pacing_bps: float | None = None
        self.layers: list[tuple[str, Packetized, int]] = []
        """With simulcast: each layer's rid, its packetized clip and frame rate."""
        self.simulcast: SimulcastSender | None = None

    async def load(
        self, pacing_factor: float, simulcast: bool = False
    ) -> tuple[dict[bytes, int], float | None]:
        """Encode (or read) the clip: its frame keys for the subscribers, and the rate
        the video is paced at (``pacing_factor`` × its bitrate; 0: not paced). With
        ``simulcast`` the two lower layers too (the thumbnail clip, the mid clip), and
        the pace is of the three layers' sum, as libwebrtc's pacer paces them."""
        self.clip = await asyncio.to_thread(load_clip)
        bps = bitrate_bps(self.clip.video, FPS)
        if simulcast:
            low, mid = await asyncio.to_thread(lambda: (load_thumbnail_clip(), load_mid_clip()))
            self.layers = [
                ("l", Packetized(low), THUMB_FPS),
                ("m", Packetized(mid), FPS),
                ("h", Packetized(self.clip), FPS),
            ]
            bps += bitrate_bps(low.video, THUMB_FPS) + bitrate_bps(mid.video, FPS)
        self.pacing_bps = pacing_factor * bps or None
        return self.clip.frame_keys(), self.pacing_bps

    async def publish(self, ws_url: str, token: str, keyframes_on_request: bool = False) -> None:
        """Publish the clip through the hub; with ``keyframes_on_request`` its video
        answers the hub's keyframe requests as a browser's encoder does."""
        self.client = HubClient(ws_url, token, decode=False)
        await self.client.connect()
        video, audio = clip_tracks(self.clip)
        log = self.logs["hub"] = SendLog()
        await self.client.publish(
            {"camera": video, "microphone": audio}, pacing_bps=self.pacing_bps, on_send=log
        )
        if keyframes_on_request:
            assert self.client.publisher is not None
            for sender in self.client.publisher.getSenders():
                if sender.track is video:
                    hear_keyframe_requests(sender, video.request_keyframe)

    async def publish_simulcast(self, ws_url: str, token: str) -> dict[str, int]:
        """Publish the camera as a browser's simulcast (rids l, m, h, lowest first)
        and the clip's microphone: negotiated by aiortc with the offer rewritten as a
        browser writes it (:func:`simulcast_offer`), each layer's RTP written
        straight to SRTP (:class:`SimulcastSender`). Each layer's SSRC, by rid."""
        assert self.layers, "load(..., simulcast=True) first"
        self.client = HubClient(ws_url, token, decode=False)
        await self.client.connect()
        camera = ParkedTrack("video")
        _, audio = clip_tracks(self.clip)
        vp8 = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.name in ("VP8", "rtx")]
        rids = [rid for rid, _, _ in self.layers]
        await self.client.publish(
            {"camera": camera, "microphone": audio},
            preferences={"camera": vp8},
            offer_filter=lambda sdp: simulcast_offer(sdp, rids),
        )
        pc = self.client.publisher
        assert pc is not None
        transceiver = next(t for t in pc.getTransceivers() if t.sender.track is camera)
        mid = str(transceiver.mid)
        answered = answered_section(self.client.publisher_answer, mid)
        if f"a=simulcast:recv {';'.join(rids)}" not in answered:
            raise RuntimeError(f"the hub did not answer the simulcast: {answered}")
        ids = extmap_ids(answered)
        if MID_URI not in ids or RID_URI not in ids:
            raise RuntimeError(f"the hub did not answer the mid and rid extensions: {ids}")
        # The top layer's sends, by what follows each VP8 descriptor: the hub
        # renumbers the picture ids of a simulcast track.
        log = self.logs["hub"] = SendLog(past_descriptor=True)
        self.simulcast = SimulcastSender(
            transceiver,
            [(rid, clip.video, fps) for rid, clip, fps in self.layers],
            mid,
            ids[MID_URI],
            ids[RID_URI],
            self.pacing_bps,
            {rids[-1]: log},
        )
        return self.simulcast.ssrcs

    async def unpublish(self) -> None:
        if self.simulcast is not None:
            self.simulcast.close()
            self.simulcast = None
        if self.client is not None:
            await self.client.close()
            self.client = None

    async def offer(self, path: str) -> str:
        pc = self.pcs[path] = _peer_connection()
        for track in clip_tracks(self.clip):
            transceiver = pc.addTransceiver(track, direction="sendonly")
            if track.kind == "video":
                # A VP8 bitstream goes out as VP8 only.
                transceiver.setCodecPreferences(
                    [
                        c
                        for c in RTCRtpSender.getCapabilities("video").codecs
                        if c.name in ("VP8", "rtx")
                    ]
                )
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)

    async def accept(self, path: str, answer: str) -> None:
        pc = self.pcs[path]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        senders = pc.getSenders()
        video = [s for s in senders if s.kind == "video"]
        self.logs[path] = log = SendLog(past_descriptor=bool(self.layers))
        RtpPacer(senders[0].transport, video, self.pacing_bps, log)

    async def sent_log(self, path: str) -> tuple[array[int], array[float]]:
        """(payload CRC-32, send time) of every RTP packet sent on ``path``."""
        log = self.logs[path]
        return log.crcs, log.at

    async def close(self) -> None:
        await self.unpublish()
        for pc in self.pcs.values():
            await pc.close()
        self.pcs.clear()


MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
SIMULCAST_EXTMAP = ((10, RID_URI), (11, REPAIRED_RID_URI))
"""The rid header extensions as Chromium numbers them (the hub's own offers too)."""


def simulcast_offer(sdp: str, rids: Sequence[str]) -> str:
    """aiortc's offer made to look like a browser's simulcast offer: in each video
    m-line, the rid header extensions (if missing), ``a=rid:<rid> send`` for each
    layer and ``a=simulcast:send`` listing them lowest first, and no ``a=ssrc``
    lines (a browser's simulcast names its SSRCs in the packets, by rid)."""
    sections = sdp.split("\r\nm=")
    for i, section in enumerate(sections[1:], start=1):
        if not section.startswith("video "):
            continue
        lines = [
            line
            for line in section.split("\r\n")
            if not line.startswith(("a=ssrc:", "a=ssrc-group:"))
        ]
        extmaps = [j for j, line in enumerate(lines) if line.startswith("a=extmap:")]
        uris = {lines[j].split(" ", 1)[1] for j in extmaps}
        at = extmaps[-1] + 1 if extmaps else len(lines)
        lines[at:at] = [f"a=extmap:{n} {uri}" for n, uri in SIMULCAST_EXTMAP if uri not in uris]
        end = len(lines) - 1 if lines[-1] == "" else len(lines)
        lines[end:end] = [f"a=rid:{rid} send" for rid in rids] + [
            f"a=simulcast:send {';'.join(rids)}"
        ]
        sections[i] = "\r\n".join(lines)
    return "\r\nm=".join(sections)


def answered_section(sdp: str, mid: str) -> str:
    """The m-section of ``sdp`` with ``a=mid:<mid>`` (empty if none)."""
    for section in sdp.split("\r\nm=")[1:]:
        if f"\r\na=mid:{mid}\r\n" in f"\r\n{section}\r\n":
            return section
    return ""


def extmap_ids(section: str) -> dict[str, int]:
    """Header extension URI → id, as an m-section's ``a=extmap`` lines give them."""
    ids: dict[str, int] = {}
    for line in section.split("\r\n"):
        if line.startswith("a=extmap:"):
            number, uri = line[9:].split(" ", 1)
            ids[uri.split(" ", 1)[0]] = int(number.split("/", 1)[0])
    return ids


def _one_byte_extensions(elements: list[tuple[int, bytes]]) -> bytes:
    """An RTP header extension block of one-byte elements (RFC 8285), padded."""
    body = b"".join(bytes([ext_id << 4 | (len(data) - 1)]) + data for ext_id, data in elements)
    body += bytes(-len(body) % 4)
    return b"\xbe\xde" + struct.pack("!H", len(body) // 4) + body


class SimulcastSender:
    """Writes each simulcast layer's RTP straight to SRTP through the camera
    transceiver's transport, as a browser's simulcast sends it: each layer its own
    SSRC and sequence, every packet naming its mid and rid (one-byte header
    extensions), frames in real time, a clock shared by the layers, and the packets
    of all layers through one pacer at ``pacing_bps`` (None: each frame at once).
    Keyframe requests are not answered: the clips have a keyframe every second."""

    def __init__(
        self,
        transceiver: Any,
        layers: list[tuple[str, list[list[bytes]], int]],
        mid: str,
        mid_id: int,
        rid_id: int,
        pacing_bps: float | None,
        on_send: dict[str, Callable[[bytes], None]] | None = None,
    ) -> None:
        own_ssrc, self.payload_type, self.writer = raw_sending(transceiver)
        self.layers = layers
        taken = {own_ssrc}
        self.ssrcs: dict[str, int] = {}
        for rid, _, _ in layers:
            ssrc = own_ssrc
            while ssrc in taken:
                ssrc = random.getrandbits(32)
            taken.add(ssrc)
            self.ssrcs[rid] = ssrc
        self.extensions = {
            rid: _one_byte_extensions([(mid_id, mid.encode()), (rid_id, rid.encode())])
            for rid, _, _ in layers
        }
        self.seconds_per_byte = 8 / pacing_bps if pacing_bps else 0.0
        self.packets_sent = 0
        self.on_send = on_send or {}
        """rid → what sees each of its RTP packets as it leaves (before SRTP)."""
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        ts_base = random.getrandbits(32)
        seqs = {rid: random.getrandbits(16) for rid, _, _ in self.layers}
        next_frame = {rid: 0 for rid, _, _ in self.layers}
        queue: collections.deque[tuple[bytes, Callable[[bytes], None] | None]]
        queue = collections.deque()
        send = self.writer.srtp_socket.send
        start = time.monotonic()
        next_send = start
        while True:
            now = time.monotonic()
            wake = now + 0.1
            for rid, frames, fps in self.layers:
                index = next_frame[rid]
                logged = self.on_send.get(rid)
                while start + index / fps <= now:
                    payloads = frames[index % len(frames)]
                    timestamp = (ts_base + index * 90000 // fps) & 0xFFFFFFFF
                    last = len(payloads) - 1
                    for i, payload in enumerate(payloads):
                        header = _RTP_HEADER.pack(
                            0x90,
                            (0x80 if i == last else 0) | self.payload_type,
                            seqs[rid],
                            timestamp,
                            self.ssrcs[rid],
                        )
                        seqs[rid] = (seqs[rid] + 1) & 0xFFFF
                        queue.append((header + self.extensions[rid] + payload, logged))
                    index += 1
                next_frame[rid] = index
                wake = min(wake, start + index / fps)
            while queue:
                if next_send > now:
                    wake = min(wake, next_send)
                    break
                data, log = queue.popleft()
                if log is not None:
                    log(data)
                send(data)
                self.packets_sent += 1
                next_send = max(next_send, now) + len(data) * self.seconds_per_byte
            await asyncio.sleep(max(0.0, wake - time.monotonic()))

    def close(self) -> None:
        self._task.cancel()
        self.writer.close()


class Subscribers:
    """Many HubClients that count without decoding, plus raw receivers."""

    def __init__(self) -> None:
        self.keys: dict[bytes, int] = {}
        self.past_descriptor = False
        self.clients: list[tuple[HubClient, Counter]] = []
        self.raw: dict[str, list[RawReceiver]] = {}

    async def setup(self, keys: dict[bytes, int], past_descriptor: bool = False) -> None:
        """The clip's frame keys; ``past_descriptor``: arrivals are logged by the CRC of
        what follows the VP8 descriptor (a simulcast publisher's, whose picture ids the
        hub renumbers), as the publisher logs its sends."""
        self.keys = keys
        self.past_descriptor = past_descriptor

    async def join(self, ws_url: str, tokens: list[str]) -> None:
        limit = asyncio.Semaphore(JOIN_CONCURRENCY)

        async def join_one(token: str) -> None:
            counter = Counter(self.keys, self.past_descriptor)

            def on_rtp(received: ReceivedTrack, packet: RtpPacket) -> None:
                counter.on_packet(received.track.kind, packet)

            client = HubClient(ws_url, token, decode=False, lightweight=True, on_rtp=on_rtp)
            self.clients.append((client, counter))
            async with limit:
                await client.connect(timeout=30)

        await asyncio.gather(*(join_one(token) for token in tokens))

    async def answer(self, group: str, offers: list[str]) -> list[str]:
        receivers = [RawReceiver(self.keys, self.past_descriptor) for _ in offers]
        self.raw.setdefault(group, []).extend(receivers)
        return [await r.answer(offer) for r, offer in zip(receivers, offers, strict=True)]

    def _counters(self) -> dict[str, list[Counter]]:
        groups = {group: [r.counter for r in receivers] for group, receivers in self.raw.items()}
        return {"hub": [counter for _, counter in self.clients], **groups}

    async def snapshot(self, recording: bool | None = None) -> dict[str, Any]:
        """Each counter's (video packets, audio packets, frames) now, by group; start
        or stop recording arrivals at the same instant when asked."""
        groups = self._counters()
        now = time.monotonic()
        counts = {group: [c.snapshot() for c in counters] for group, counters in groups.items()}
        if recording is not None:
            for counters in groups.values():
                for c in counters:
                    c.recording = recording
        return {"at": now, **counts}

    async def arrivals(self, group: str) -> list[tuple[array[int], array[int], array[float]]]:
        return [c.take_arrivals() for c in self._counters()[group]]

    async def leave(self, group: str) -> None:
        if group == "hub":
            await asyncio.gather(*(client.close() for client, _ in self.clients))
            self.clients.clear()
        else:
            for r in self.raw.pop(group, []):
                await r.pc.close()

    async def close(self) -> None:
        await self.leave("hub")
        for group in list(self.raw):
            await self.leave(group)


class Decoder:
    """One HubClient that decodes the video, to prove the forwarded frames are good."""

    def __init__(self) -> None:
        self.client: HubClient | None = None
        self.frames = 0
        self.sizes: set[tuple[int, int]] = set()
        self.readers: list[asyncio.Task[None]] = []

    async def join(self, ws_url: str, token: str) -> None:
        self.client = HubClient(ws_url, token, decode=True)
        await self.client.connect(timeout=30)

    async def status(self) -> dict[str, Any]:
        """Starts reading once both tracks arrived; frames decoded so far."""
        assert self.client is not None
        tracks = [t.track for t in self.client.received.values()]
        if not self.readers and len(tracks) == 2:
            # Read audio too: an unread aiortc track queues decoded frames forever.
            self.readers = [asyncio.create_task(self._read(t)) for t in tracks]
        return {"at": time.monotonic(), "frames": self.frames, "sizes": sorted(self.sizes)}

    async def packets_received(self) -> int:
        assert self.client is not None and self.client.subscriber is not None
        total = 0
        for transceiver in self.client.subscriber.getTransceivers():
            for stats in (await transceiver.receiver.getStats()).values():
                if stats.type == "inbound-rtp":
                    total += stats.packetsReceived
        return total

    async def _read(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if isinstance(frame, av.VideoFrame):
                    self.frames += 1
                    self.sizes.add((frame.width, frame.height))
        except MediaStreamError:
            pass

    async def close(self) -> None:
        for task in self.readers:
            task.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
        self.readers.clear()
        if self.client is not None:
            await self.client.close()
            self.client = None


class BaselineServer:
    """aiortc's own way to fan out: decode the publisher once (``MediaRelay``),
    encode again for every subscriber."""

    def __init__(self) -> None:
        self.relay = MediaRelay()
        self.tracks: list[MediaStreamTrack] = []
        self.publisher: RTCPeerConnection | None = None
        self.subscribers: list[RTCPeerConnection] = []

    async def accept_publisher(self, offer: str) -> str:
        pc = self.publisher = _peer_connection()
        pc.on("track", self.tracks.append)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return str(pc.localDescription.sdp)

    async def offers(self, count: int) -> list[str]:
        offers = []
        for _ in range(count):
            pc = _peer_connection()
            self.subscribers.append(pc)
            for track in self.tracks:
                pc.addTrack(self.relay.subscribe(track))
            await pc.setLocalDescription(await pc.createOffer())
            offers.append(str(pc.localDescription.sdp))
        return offers

    async def accept(self, answers: list[str]) -> None:
        for pc, answer in zip(self.subscribers, answers, strict=True):
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    async def packets_sent(self) -> int:
        total = 0
        for pc in self.subscribers:
            for sender in pc.getSenders():
                for stats in (await sender.getStats()).values():
                    if stats.type == "outbound-rtp":
                        total += stats.packetsSent
        return total

    async def close(self) -> None:
        for pc in [*self.subscribers, *([self.publisher] if self.publisher else [])]:
            await pc.close()
        self.subscribers.clear()
        self.publisher = None


# --- bench.county: stations and the center's console -------------------------


class _DecodeErrors(logging.Handler):
    """Counts aiortc's "failed to decode" warnings: its decoder thread logs them and
    drops the frame, nothing else tells."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.by_codec: collections.Counter[str] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        if "failed to decode" in record.getMessage():
            self.count += 1
            # aiortc's arguments: the kind, the codec, the error
            args = record.args if isinstance(record.args, tuple) else ()
            self.by_codec[" ".join(map(str, args))] += 1


class Packetized:
    """A station's clip as RTP payloads, packetized once per process: each video
    frame's payloads (VP8 descriptors as aiortc writes them), each Opus packet."""

    def __init__(self, clip: Clip) -> None:
        vp8 = Vp8Encoder()
        self.video = [vp8.pack(_packet(frame, i, 6000))[0] for i, frame in enumerate(clip.video)]
        self.audio = clip.audio


def _packet(data: bytes, index: int, step: int) -> av.Packet:
    packet = av.Packet(data)
    packet.pts = index * step
    packet.time_base = fractions.Fraction(1, 90000)
    return packet


_RTP_HEADER = struct.Struct("!BBHII")
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"


class RawTrack:
    """One track a station writes itself (:func:`~hub.aiortc_internals.raw_sending`).
    A microphone's packets carry their audio level (RFC 6464) where it was negotiated,
    as a browser's do: 127, silence."""

    __slots__ = ("extension", "next_frame", "payload_type", "seq", "ssrc", "ts_base", "writer")

    def __init__(self, transceiver: Any) -> None:
        self.ssrc, self.payload_type, self.writer = raw_sending(transceiver)
        self.seq = random.getrandbits(16)
        self.ts_base = random.getrandbits(32)
        self.next_frame = 0
        self.extension = b""
        if transceiver.kind == "audio":
            for ext in negotiated_header_extensions(transceiver):
                if ext.uri == AUDIO_LEVEL_URI:
                    self.extension = _one_byte_extensions([(ext.id, bytes([127]))])

    def send(self, payloads: list[bytes], timestamp: int, marker_last: bool) -> None:
        last = len(payloads) - 1
        first = 0x90 if self.extension else 0x80
        for i, payload in enumerate(payloads):
            marker = 0x80 if marker_last and i == last else 0
            header = _RTP_HEADER.pack(
                first,
                marker | self.payload_type,
                self.seq,
                (self.ts_base + timestamp) & 0xFFFFFFFF,
                self.ssrc,
            )
            self.seq = (self.seq + 1) & 0xFFFF
            self.writer.srtp_socket.send(header + self.extension + payload)


class Station:
    """One site of bench.county: publishes a thumbnail camera and a silent microphone
    (the pre-packetized clip, written straight to SRTP: aiortc's send path would cost
    the load generator more than the hub), receives the stage and counts the
    lecturer's frames (marker bits) without decoding; a probe decodes everything it
    receives instead. Pauses its camera while the hub says ``quality`` ``paused``, and
    its microphone while ``microphone`` is ``paused``, as a browser does."""

    def __init__(
        self, ws_url: str, token: str, clip: Packetized, lecturer: str, probe: bool
    ) -> None:
        self.client = HubClient(ws_url, token, decode=probe, on_datagram=self._on_datagram)
        self.probe = probe
        self.lecturer_identity = lecturer
        self.lecturer: str | None = None
        """The lecturer's sid, once joined."""
        self.clip = clip
        self.video: RawTrack | None = None
        self.audio: RawTrack | None = None
        self.started_at = 0.0
        self.join_at = math.nan
        self.first_frame_at: float | None = None
        self.joined_at: float | None = None
        """When the hub's ``joined`` came (the websocket and the token done)."""
        self.first_media_at: float | None = None
        """When the first media datagram came (the subscriber's DTLS done)."""
        self.lecturer_frames = 0
        self.error: str | None = None
        self.attempts = 1
        self.joined = False
        self.paused = False
        self.microphone_paused = False
        self._read = 0
        self._readers: dict[str, asyncio.Task[None]] = {}

    def _on_datagram(self, received: ReceivedTrack, data: bytes) -> None:
        if self.first_media_at is None:
            self.first_media_at = time.monotonic()
        # The marker bit ends a video frame; SRTP leaves it in the clear.
        if data[1] & 0x80 and received.info.get("participant") == self.lecturer:
            if received.track.kind == "video":
                self._lecturer_frame()

    def _lecturer_frame(self) -> None:
        self.lecturer_frames += 1
        if self.first_frame_at is None:
            self.first_frame_at = time.monotonic()

    async def join(self, at: float, give_up_at: float) -> None:
        """Join at ``at``; a join that fails is tried again after a backoff, as
        ``protocol.js`` does, until ``give_up_at``. Join time counts from the first."""
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        self.join_at = time.monotonic()
        backoff = JOIN_BACKOFF
        while True:
            try:
                await self._join_once()
                self.error = None
                return
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {exc}"
            self.attempts += 1
            if time.monotonic() + backoff > give_up_at:
                return
            await self.client.close()
            await asyncio.sleep(backoff)
            backoff = min(2 * backoff, JOIN_BACKOFF_MAX)
            self.client = HubClient(
                self.client.url, self.client.token, decode=self.probe, on_datagram=self._on_datagram
            )

    async def _join_once(self) -> None:
        joined = await self.client.connect(timeout=60)
        self.joined_at = time.monotonic()
        self.lecturer = next(
            (p["sid"] for p in joined["participants"] if p["identity"] == self.lecturer_identity),
            None,
        )
        self.joined = True
        parked = {"camera": ParkedTrack("video"), "microphone": ParkedTrack("audio")}
        await self.client.publish(dict(parked), timeout=60)
        assert self.client.publisher is not None
        for transceiver in self.client.publisher.getTransceivers():
            if transceiver.sender.track is parked["camera"]:
                self.video = RawTrack(transceiver)
            elif transceiver.sender.track is parked["microphone"]:
                self.audio = RawTrack(transceiver)
        self.started_at = time.monotonic()

    def send_due(self, now: float) -> None:
        """Send what the clip has due by ``now`` (camera and microphone not while paused)."""
        elapsed = now - self.started_at
        audio, video, clip = self.audio, self.video, self.clip
        if audio is not None:
            due = int(elapsed * 50) + 1
            if self.microphone_paused:
                audio.next_frame = max(audio.next_frame, due)
            while audio.next_frame < due:
                index = audio.next_frame
                audio.send([clip.audio[index % len(clip.audio)]], index * AUDIO_FRAME, False)
                audio.next_frame += 1
        if video is not None:
            due = int(elapsed * THUMB_FPS) + 1
            if self.paused:
                # Skipped, not queued: viewers start again at the clip's next keyframe.
                video.next_frame = max(video.next_frame, due)
                return
            while video.next_frame < due:
                index = video.next_frame
                frame = index % len(clip.video)
                video.send(clip.video[frame], index * 90000 // THUMB_FPS, True)
                video.next_frame += 1

    def follow(self) -> None:
        """Act on the hub's new messages (pause, resume); probes start reading."""
        messages = self.client.messages
        for message in messages[self._read :]:
            kind = message.get("type")
            if kind in ("joined", "quality"):  # ``joined`` says how to start
                self.paused = message.get("level" if kind == "quality" else "quality") == "paused"
                self.microphone_paused = message.get("microphone") == "paused"
        self._read = len(messages)
        if self.probe:
            for mid, received in self.client.received.items():
                if mid not in self._readers:
                    self._readers[mid] = asyncio.create_task(self._decode(received))

    async def _decode(self, received: ReceivedTrack) -> None:
        # Read every track, audio too: an unread aiortc track queues frames forever.
        try:
            while True:
                frame = await received.track.recv()
                lecturer = received.info.get("participant") == self.lecturer
                if lecturer and isinstance(frame, av.VideoFrame):
                    self._lecturer_frame()
        except MediaStreamError:
            pass

    def status(
        self,
    ) -> tuple[
        bool,
        float,
        float | None,
        int,
        bool,
        str | None,
        str,
        int,
        float | None,
        float | None,
        bool,
    ]:
        return (
            self.joined,
            self.join_at,
            self.first_frame_at,
            self.lecturer_frames,
            self.paused,
            self.error,
            f"{'probe' if self.probe else 'station'} tracks={len(self.client.received)}",
            self.attempts,
            self.joined_at,
            self.first_media_at,
            self.microphone_paused,
        )

    async def close(self) -> None:
        for task in self._readers.values():
            task.cancel()
        await asyncio.gather(*self._readers.values(), return_exceptions=True)
        await self.client.close()


class Stations:
    """Many :class:`Station` s in one process, joining at the times they are given."""

    def __init__(self) -> None:
        self.clip: Packetized | None = None
        self.stations: list[Station] = []
        self.joins: list[asyncio.Task[None]] = []
        self.decode_errors = _DecodeErrors()
        logging.getLogger("aiortc.rtcrtpreceiver").addHandler(self.decode_errors)
        self._follower: asyncio.Task[None] | None = None
        self._sender: asyncio.Task[None] | None = None

    async def setup(self) -> None:
        self.clip = Packetized(await asyncio.to_thread(load_thumbnail_clip))

    async def storm(
        self,
        ws_url: str,
        lecturer: str,
        joins: list[tuple[str, float]],
        probe: bool,
        give_up_at: float,
    ) -> None:
        """Start joining: each (token, monotonic time to send its join at); failed
        joins are tried again until ``give_up_at``."""
        assert self.clip is not None
        for token, at in joins:
            station = Station(ws_url, token, self.clip, lecturer, probe)
            self.stations.append(station)
            self.joins.append(asyncio.create_task(station.join(at, give_up_at)))
        if self._follower is None:
            self._follower = asyncio.create_task(self._follow())
            self._sender = asyncio.create_task(self._send())

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            for station in self.stations:
                station.follow()

    async def _send(self) -> None:
        """Every station's media, one pass every 20 ms (an Opus packet's time)."""
        while True:
            await asyncio.sleep(0.02)
            now = time.monotonic()
            for station in self.stations:
                station.send_due(now)

    async def status(self) -> dict[str, Any]:
        return {
            "at": time.monotonic(),
            "stations": [s.status() for s in self.stations],
            "decode_errors": self.decode_errors.count,
            "decode_errors_by_codec": dict(self.decode_errors.by_codec),
        }

    async def close(self) -> None:
        for task in (self._follower, self._sender):
            if task is not None:
                task.cancel()
        for task in self.joins:
            task.cancel()
        await asyncio.gather(*self.joins, return_exceptions=True)
        await asyncio.gather(*(s.close() for s in self.stations), return_exceptions=True)
        self.stations.clear()


class Console:
    """The center's console: a moderator that calls stations on stage, shows one page
    of the wall, and counts what the hub sends it (SRTP datagram bytes)."""

    def __init__(self) -> None:
        self.client: HubClient | None = None
        self.bytes = 0

    async def join(self, ws_url: str, token: str) -> None:
        self.client = HubClient(ws_url, token, decode=False, on_datagram=self._on_datagram)
        await self.client.connect(timeout=30)

    def _on_datagram(self, received: ReceivedTrack, data: bytes) -> None:
        self.bytes += len(data)

    def _sids(self, identities: list[str]) -> list[str]:
        assert self.client is not None
        known = {p["identity"]: p["sid"] for p in self.client.joined["participants"]}
        for message in self.client.messages:
            if message.get("type") == "participant_joined":
                known[message["participant"]["identity"]] = message["participant"]["sid"]
        return [known[i] for i in identities if i in known]

    async def stage(self, identities: list[str]) -> int:
        assert self.client is not None
        sids = self._sids(identities)
        for sid in sids:
            await self.client.send(
                {"type": "moderate", "action": "stage", "participant": sid, "on_stage": True}
            )
        return len(sids)

    async def view(self, identities: list[str]) -> None:
        """Tell the hub which tiles the console shows (PROTOCOL.md, ``view``)."""
        assert self.client is not None
        await self.client.send({"type": "view", "tiles": self._sids(identities), "listen": []})

    async def status(self) -> dict[str, Any]:
        assert self.client is not None
        received = list(self.client.received.values())
        return {
            "at": time.monotonic(),
            "bytes": self.bytes,
            "tracks": len(received),
        }

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None
