"""Synthetic encoded frames for tests: real encoders, realistic RTP timestamps.

A short clip is generated with ffmpeg's ``lavfi`` sources through PyAV, encoded the
way a WebRTC publisher would (H.264 Annex-B without B-frames, VP8, 20 ms Opus) and
wrapped as :class:`EncodedFrame` sequences, so sinks can be tested without a hub.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import av

from media.frames import EncodedFrame, FrameSink, TrackInfo
from media.muxing import ffmpeg_exe

VideoCodec = Literal["VP8", "H264"]

VIDEO_CLOCK = 90_000
AUDIO_CLOCK = 48_000
OPUS_FRAME_SAMPLES = 960
"""20 ms at 48 kHz: what browsers send."""


@dataclass(frozen=True, slots=True)
class Clip:
    """A synthetic publication pair: video and audio frames with their track infos."""

    video: TrackInfo
    audio: TrackInfo
    video_frames: list[EncodedFrame]
    audio_frames: list[EncodedFrame]


def encode_video(
    codec: VideoCodec,
    seconds: float,
    *,
    fps: int = 30,
    size: tuple[int, int] = (320, 180),
    gop: int = 30,
    start_ts: int = 1_234_567,
    start_arrival: float = 0.0,
) -> list[EncodedFrame]:
    """Encode ``seconds`` of a test pattern; RTP timestamps advance 90000/fps per frame."""
    width, height = size
    source = av.open(f"testsrc=size={width}x{height}:rate={fps}", format="lavfi")
    encoder = av.CodecContext.create("libx264" if codec == "H264" else "libvpx", "w")
    encoder.width = width
    encoder.height = height
    encoder.pix_fmt = "yuv420p"
    encoder.time_base = Fraction(1, fps)
    encoder.framerate = Fraction(fps, 1)
    encoder.gop_size = gop
    encoder.bit_rate = 300_000
    if codec == "H264":
        # What WebRTC publishers send: constrained baseline, no B-frames, SPS/PPS in-band.
        encoder.options = {"preset": "ultrafast", "tune": "zerolatency", "profile": "baseline"}
    else:
        encoder.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    total = round(seconds * fps)
    packets: list[Any] = []
    try:
        for index, frame in enumerate(source.decode(video=0)):
            if index >= total:
                break
            picture = frame.reformat(format="yuv420p")
            picture.pts = index
            picture.time_base = encoder.time_base
            # lavfi marks every frame I, which encoders take as a forced keyframe.
            picture.pict_type = av.video.frame.PictureType.NONE
            packets.extend(encoder.encode(picture))
        packets.extend(encoder.encode(None))
    finally:
        source.close()
    step = VIDEO_CLOCK // fps
    return [
        EncodedFrame(
            codec=codec,
            data=bytes(packet),
            timestamp=start_ts + index * step,
            clock_rate=VIDEO_CLOCK,
            keyframe=packet.is_keyframe,
            arrival=start_arrival + index / fps,
        )
        for index, packet in enumerate(packets)
    ]


def encode_opus(
    seconds: float,
    *,
    start_ts: int = 7_654_321,
    start_arrival: float = 0.0,
    frequency: int = 440,
) -> list[EncodedFrame]:
    """Encode ``seconds`` of a sine tone as 20 ms Opus packets."""
    source = av.open(f"sine=frequency={frequency}:sample_rate={AUDIO_CLOCK}", format="lavfi")
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate = AUDIO_CLOCK
    encoder.layout = "mono"
    encoder.format = "s16"
    encoder.bit_rate = 32_000
    resampler = av.AudioResampler(
        format="s16", layout="mono", rate=AUDIO_CLOCK, frame_size=OPUS_FRAME_SAMPLES
    )
    total = round(seconds * AUDIO_CLOCK / OPUS_FRAME_SAMPLES)
    packets: list[Any] = []
    samples = 0
    try:
        for frame in source.decode(audio=0):
            for chunk in resampler.resample(frame):
                if len(packets) >= total:
                    break
                chunk.pts = samples
                samples += chunk.samples
                packets.extend(encoder.encode(chunk))
            if samples >= total * OPUS_FRAME_SAMPLES:
                break
        packets.extend(encoder.encode(None))
    finally:
        source.close()
    return [
        EncodedFrame(
            codec="opus",
            data=bytes(packet),
            timestamp=start_ts + index * OPUS_FRAME_SAMPLES,
            clock_rate=AUDIO_CLOCK,
            keyframe=True,
            arrival=start_arrival + index * OPUS_FRAME_SAMPLES / AUDIO_CLOCK,
        )
        for index, packet in enumerate(packets[:total])
    ]


def make_clip(
    video_codec: VideoCodec,
    seconds: float,
    *,
    participant: str = "center",
    video_source: Literal["camera", "screen"] = "camera",
    gop: int = 30,
    size: tuple[int, int] = (320, 180),
    tone: int = 440,
) -> Clip:
    """A camera (or screen) plus microphone publication of one participant; the
    microphone sends a sine tone of ``tone`` Hz."""
    video = TrackInfo(
        track_id=f"{participant}-{video_source}",
        kind="video",
        codec=video_codec,
        source=video_source,
        participant=participant,
        label=f"{participant} {video_source}",
    )
    audio = TrackInfo(
        track_id=f"{participant}-microphone",
        kind="audio",
        codec="opus",
        source="microphone",
        participant=participant,
        label=f"{participant} microphone",
    )
    return Clip(
        video=video,
        audio=audio,
        video_frames=encode_video(video_codec, seconds, gop=gop, size=size),
        audio_frames=encode_opus(seconds, frequency=tone),
    )


def interleave(
    tracks: Sequence[tuple[str, Sequence[EncodedFrame]]],
) -> list[tuple[str, EncodedFrame]]:
    """Merge per-track frame lists into one arrival-ordered stream."""
    merged = [(track_id, frame) for track_id, frames in tracks for frame in frames]
    merged.sort(key=lambda item: item[1].arrival)
    return merged


async def play(
    sink: FrameSink,
    stream: Sequence[tuple[str, EncodedFrame]],
    *,
    speed: float = 1.0,
    loops: int = 1,
) -> None:
    """Feed ``stream`` to ``sink`` paced at ``speed`` × real time (``inf`` = no pacing).

    Arrival times become the start time plus media time (the wall clock at speed 1)
    and RTP timestamps keep advancing across ``loops``, as from a live publisher.
    """
    if not stream:
        return
    first = stream[0][1].arrival
    span = stream[-1][1].arrival - first + 1 / 30
    started = time.time()
    for loop_index in range(loops):
        for track_id, frame in stream:
            media_time = loop_index * span + frame.arrival - first
            delay = started + media_time / speed - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            step = round(span * frame.clock_rate) * loop_index
            sink.on_frame(
                track_id,
                replace(frame, timestamp=frame.timestamp + step, arrival=started + media_time),
            )
        await asyncio.sleep(0)


def ffmpeg_children(pattern: str) -> int:
    """ffmpeg processes started by this process whose arguments include ``pattern``
    (how tests count transcoders)."""
    count = 0
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if parent == os.getpid() and command[0] == ffmpeg_exe().encode():
            count += pattern.encode() in command
    return count
