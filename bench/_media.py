"""The benchmark's media: a pre-encoded clip, tracks that replay it in real time,
and the key that recognises a frame on the far side of the hub.

Encoding once and replaying ``av.Packet``s keeps the publisher cheap and steady
(aiortc packetizes them without encoding), so the machine's CPU goes to the hub.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import random
import struct
import tempfile
import time
import zlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

WIDTH, HEIGHT, FPS = 640, 360, 30
VIDEO_BITRATE = 1_600_000
"""libvpx undershoots on this pattern; 1.6 M gives about 1.5 Mbps on the wire."""
CLIP_SECONDS = 10
AUDIO_FRAME = 960
"""Opus samples per packet: 20 ms at 48 kHz."""
KEY_LENGTH = 24
"""Bytes at the start of a VP8 frame that tell the clip's frames apart."""

THUMB_WIDTH, THUMB_HEIGHT, THUMB_FPS = 320, 180, 15
THUMB_BITRATE = 150_000
"""A station's camera as a thumbnail: what it sends while off stage."""

MID_BITRATE = 500_000
"""The middle simulcast layer (``bench.fanout --simulcast``): the lecturer's picture
size at about a third of its bitrate."""

_MAGIC = b"PHBCLIP2"
_LENGTH = struct.Struct("!I")


@dataclass(frozen=True)
class Clip:
    video: list[bytes]
    """VP8 frames at the clip's rate, a keyframe every second."""
    audio: list[bytes]
    """Opus packets of 20 ms."""
    keyframes: list[bytes] = field(default_factory=list)
    """Each video frame again, encoded as a keyframe: what a replaying track sends in
    a frame's place when asked for a keyframe, as a browser's encoder answers a PLI
    (empty: it cannot, and viewers wait for the clip's next keyframe)."""

    def frame_keys(self) -> dict[bytes, int]:
        """Frame key → index in the clip; a key two frames share is left out."""
        seen: dict[bytes, int] = {}
        shared: set[bytes] = set()
        for index, frame in enumerate(self.video):
            key = frame[:KEY_LENGTH]
            if key in seen:
                shared.add(key)
            seen[key] = index
        return {key: index for key, index in seen.items() if key not in shared}


def load_clip() -> Clip:
    """The lecturer's clip, encoded on first use and cached in the temp directory."""
    return _cached(
        f"clip-v2-{VIDEO_BITRATE}",
        lambda: Clip(
            video=_encode_video(WIDTH, HEIGHT, FPS, VIDEO_BITRATE),
            audio=_encode_audio(tone=True),
            # A keyframe costs several frames' bits, as libwebrtc's does.
            keyframes=_encode_video(WIDTH, HEIGHT, FPS, 4 * VIDEO_BITRATE, gop=1),
        ),
    )


def load_thumbnail_clip() -> Clip:
    """A station's clip: a thumbnail camera and a silent microphone (Opus still sends
    a packet every 20 ms of silence, as a browser's does)."""
    return _cached(
        f"thumb-v1-{THUMB_BITRATE}",
        lambda: Clip(
            video=_encode_video(THUMB_WIDTH, THUMB_HEIGHT, THUMB_FPS, THUMB_BITRATE),
            audio=_encode_audio(tone=False),
        ),
    )


def load_mid_clip() -> Clip:
    """The middle layer of the simulcast lecturer: 640x360 30 fps at ~500 kbps, the
    same picture as :func:`load_clip`'s; video only (the microphone is the lecture
    clip's)."""
    return _cached(
        f"mid-v1-{MID_BITRATE}",
        lambda: Clip(video=_encode_video(WIDTH, HEIGHT, FPS, MID_BITRATE), audio=[]),
    )


def _cached(name: str, encode: Callable[[], Clip]) -> Clip:
    cache = Path(tempfile.gettempdir()) / f"practicehub-bench-{name}.bin"
    if cache.exists():
        try:
            return _read(cache.read_bytes())
        except ValueError:
            pass  # a truncated or foreign file: encode again
    clip = encode()
    partial = cache.with_suffix(f".{random.getrandbits(32):08x}.tmp")
    partial.write_bytes(_write(clip))
    partial.replace(cache)
    return clip


def _write(clip: Clip) -> bytes:
    parts = [_MAGIC, *(_LENGTH.pack(len(p)) for p in (clip.video, clip.audio, clip.keyframes))]
    for payload in (*clip.video, *clip.audio, *clip.keyframes):
        parts += [_LENGTH.pack(len(payload)), payload]
    return b"".join(parts)


def _read(data: bytes) -> Clip:
    if not data.startswith(_MAGIC):
        raise ValueError("not a clip")
    pos = len(_MAGIC)
    videos, audios, keyframes = (_LENGTH.unpack_from(data, pos + 4 * k)[0] for k in range(3))
    pos += 12
    payloads: list[bytes] = []
    for _ in range(videos + audios + keyframes):
        (size,) = _LENGTH.unpack_from(data, pos)
        payloads.append(data[pos + 4 : pos + 4 + size])
        pos += 4 + size
    if pos != len(data) or any(not p for p in payloads):
        raise ValueError("truncated clip")
    audio_end = videos + audios
    return Clip(payloads[:videos], payloads[videos:audio_end], payloads[audio_end:])


def _encode_video(width: int, height: int, fps: int, bitrate: int, gop: int = 0) -> list[bytes]:
    """A blocky noise texture panning diagonally: motion the encoder can follow,
    detail enough to spend the bitrate. A keyframe every ``gop`` frames (every
    second by default)."""
    gop = gop or fps
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height = width, height
    codec.pix_fmt = "yuv420p"
    codec.time_base = fractions.Fraction(1, fps)
    codec.framerate = fractions.Fraction(fps)
    codec.bit_rate = bitrate
    codec.gop_size = gop
    codec.options = {
        "deadline": "realtime",
        "cpu-used": "8",
        "lag-in-frames": "0",
        "auto-alt-ref": "0",
        "keyint_min": str(gop),
        "minrate": str(bitrate),
        "maxrate": str(bitrate),
    }
    block = 4
    rng = random.Random(20261129)
    coarse = [
        bytes(rng.randrange(256) for _ in range(2 * width // block))
        for _ in range(2 * height // block)
    ]
    rows = [bytes(v for v in row for _ in range(block)) for row in coarse for _ in range(block)]
    chroma = bytes([128]) * (width // 2 * height // 2)
    frames: list[bytes] = []
    for index in range(CLIP_SECONDS * fps):
        x, y = (index * 3) % width, (index * 2) % height
        picture = av.VideoFrame(width, height, "yuv420p")
        picture.planes[0].update(b"".join(rows[y + j][x : x + width] for j in range(height)))
        picture.planes[1].update(chroma)
        picture.planes[2].update(chroma)
        picture.pts = index
        frames += [bytes(p) for p in codec.encode(picture)]
    frames += [bytes(p) for p in codec.encode(None)]
    return frames


def _encode_audio(tone: bool) -> list[bytes]:
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = 48000
    codec.layout = "stereo"
    codec.format = "s16"
    codec.bit_rate = 48000
    codec.time_base = fractions.Fraction(1, 48000)
    packets: list[bytes] = []
    for index in range(CLIP_SECONDS * 50):
        samples = bytearray()
        for n in range(AUDIO_FRAME):
            phase = 2 * math.pi * 440 * (index * AUDIO_FRAME + n) / 48000
            value = int(8000 * math.sin(phase)) if tone else 0
            samples += value.to_bytes(2, "little", signed=True) * 2
        frame = av.AudioFrame(format="s16", layout="stereo", samples=AUDIO_FRAME)
        frame.planes[0].update(bytes(samples))
        frame.sample_rate = 48000
        frame.pts = index * AUDIO_FRAME
        packets += [bytes(p) for p in codec.encode(frame)]
    packets += [bytes(p) for p in codec.encode(None)]
    return packets


class PacedTrack(MediaStreamTrack):
    """Replays encoded payloads in a loop at their real-time pace, as ``av.Packet``s."""

    def __init__(
        self,
        kind: str,
        payloads: list[bytes],
        clock_rate: int,
        step: int,
        keyframes: list[bytes] | None = None,
    ) -> None:
        super().__init__()
        self.kind = kind
        self._payloads = payloads
        self._keyframes = keyframes or []
        self._keyframe_wanted = False
        self._step = step
        self._interval = step / clock_rate
        self._time_base = fractions.Fraction(1, clock_rate)
        self._index = 0
        self._start: float | None = None

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        due = self._start + self._index * self._interval
        if due > now:
            await asyncio.sleep(due - now)
        position = self._index % len(self._payloads)
        if self._keyframe_wanted:
            self._keyframe_wanted = False
            payload = self._keyframes[position % len(self._keyframes)]
        else:
            payload = self._payloads[position]
        packet = av.Packet(payload)
        packet.pts = self._index * self._step
        packet.time_base = self._time_base
        self._index += 1
        return packet

    def request_keyframe(self) -> None:
        """The next frame goes out as a keyframe (if the clip has them)."""
        self._keyframe_wanted = bool(self._keyframes)


def clip_tracks(clip: Clip) -> tuple[PacedTrack, PacedTrack]:
    """A (video, audio) pair replaying ``clip``; the video can answer keyframe
    requests where the clip has keyframes (``PacedTrack.request_keyframe``)."""
    return (
        PacedTrack("video", clip.video, 90000, 90000 // FPS, clip.keyframes),
        PacedTrack("audio", clip.audio, 48000, AUDIO_FRAME),
    )


def bitrate_bps(frames: list[bytes], fps: int) -> float:
    """The mean bitrate of a clip's frames played at ``fps``."""
    return sum(map(len, frames)) * 8 * fps / len(frames)


def rtp_payload(data: bytes) -> bytes:
    """The payload of a serialized RTP packet (after CSRCs and header extensions)."""
    start = 12 + 4 * (data[0] & 0x0F)
    if data[0] & 0x10:
        start += 4 + 4 * int.from_bytes(data[start + 2 : start + 4], "big")
    return data[start:]


class SendLog:
    """The moment each RTP packet left the publisher, by the CRC-32 of its payload:
    the hub forwards payloads unchanged, so a receiver finds its packet's send by
    the same CRC. VP8 payloads carry a picture id, so a looped clip's packets stay
    unique for 2^15 frames (18 min).

    With ``past_descriptor`` the CRC is of what follows the VP8 payload descriptor
    (:func:`payload_crc`): a simulcast track's picture ids are renumbered by the hub."""

    def __init__(self, past_descriptor: bool = False) -> None:
        self.crcs = array("I")
        self.at = array("d")
        self.past_descriptor = past_descriptor

    def __call__(self, data: bytes) -> None:
        self.crcs.append(payload_crc(rtp_payload(data), self.past_descriptor))
        self.at.append(time.monotonic())


def payload_crc(payload: bytes, past_descriptor: bool) -> int:
    """The CRC-32 of an RTP payload, or with ``past_descriptor`` of what follows its
    VP8 payload descriptor (RFC 7741): the frame's bytes, which the hub never changes,
    while it renumbers the descriptor's picture ids on a simulcast track. Those bytes
    repeat with the clip (every 10 s): a receiver's packet is matched to the latest
    send before it."""
    return zlib.crc32(payload[vp8_descriptor_length(payload) :] if past_descriptor else payload)


def vp8_descriptor_length(payload: bytes) -> int:
    """The length of the VP8 payload descriptor at the start of an RTP payload."""
    if not payload:
        return 0
    pos = 1
    if payload[0] & 0x80 and len(payload) > 1:  # X: an extension byte follows
        ext = payload[1]
        pos = 2
        if ext & 0x80:  # I: picture id, one byte or two (M bit)
            pos += 2 if len(payload) > pos and payload[pos] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            pos += 1
        if ext & 0x30:  # T or K: one byte for both
            pos += 1
    return min(pos, len(payload))


def vp8_frame_start(payload: bytes) -> int | None:
    """Where the VP8 frame begins in an RTP payload that starts a frame (RFC 7741
    descriptor, S=1 and partition 0), else None."""
    if len(payload) < 1 or payload[0] & 0x17 != 0x10:
        return None
    pos = 1
    if payload[0] & 0x80:  # X: an extension byte follows
        if len(payload) < 2:
            return None
        ext = payload[1]
        pos = 2
        if ext & 0x80:  # I: picture id, one byte or two (M bit)
            if len(payload) <= pos:
                return None
            pos += 2 if payload[pos] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            pos += 1
        if ext & 0x30:  # T or K: one byte for both
            pos += 1
    return pos if pos <= len(payload) else None
