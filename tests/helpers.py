"""Test helpers shared by the suites."""

from __future__ import annotations

import array
import asyncio
import contextlib
import fractions
import math
import os
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import av
import pylibsrtp
import pytest
from aiortc.mediastreams import (
    AudioStreamTrack,
    MediaStreamError,
    MediaStreamTrack,
    VideoStreamTrack,
)
from av import AudioFrame, VideoFrame
from av.frame import Frame
from pylibsrtp import Policy, Session

from hub.aiortc_internals import aim_srtp_socket
from hub.client import HubClient, ReceivedTrack
from hub.fastpath import SrtpSocket


async def wait_until(
    check: Callable[[], Awaitable[str | None] | str | None],
    timeout: float = 10.0,
    interval: float = 0.05,
) -> None:
    """Wait until ``check`` returns None; it returns why it is not done yet otherwise,
    so a timeout says what was missing."""
    deadline = time.monotonic() + timeout
    reason: str | None = "never checked"
    while time.monotonic() < deadline:
        result = check()
        reason = await result if asyncio.iscoroutine(result) else result  # type: ignore[assignment]
        if reason is None:
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s: {reason}")


async def first_track(client: HubClient, source: str) -> ReceivedTrack:
    """The first track of ``source`` (camera, microphone, screen) ``client`` receives,
    once it has one."""
    await wait_until(lambda: None if client.tracks_of(source) else f"no {source} yet")
    return client.tracks_of(source)[0]


class EncodedFrames(MediaStreamTrack):
    """Random "VP8 frames" of ``size`` bytes as encoded packets, one every ``interval``
    seconds: aiortc packetizes them without encoding, so each leaves as one burst of
    RTP packets. ``taken`` counts the frames aiortc took."""

    kind = "video"

    def __init__(self, size: int, interval: float) -> None:
        super().__init__()
        self.size = size
        self.interval = interval
        self.taken = 0

    async def recv(self) -> av.Packet[Any]:
        if self.taken:
            await asyncio.sleep(self.interval)
        packet = av.Packet(os.urandom(self.size))
        packet.pts = round(self.taken * self.interval * 90000)
        packet.time_base = fractions.Fraction(1, 90000)
        self.taken += 1
        return packet


class NoisyVideo(VideoStreamTrack):
    """Random pixels: every frame is large when encoded, as a real camera's are."""

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = VideoFrame(640, 360, "yuv420p")
        for plane in frame.planes:
            plane.update(os.urandom(plane.buffer_size))
        frame.pts, frame.time_base = pts, time_base
        return frame


@contextmanager
def small_disk(path: Path, size: str = "400k") -> Iterator[Path]:
    """A tiny tmpfs mounted at ``path``: a real ENOSPC once it is full (needs root)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (needs root): {mounted.stderr.decode()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


REPLAYED = b"(refused by the receiver's SRTP: a replay)"


class SrtpWire:
    """A real SRTP link on loopback: an :class:`~hub.fastpath.SrtpSocket` (or the
    Python twin's, ``srtp_socket``) aimed at a socket whose datagrams are unprotected
    with the same key; ``sent`` is every plain packet that arrived so far, and
    :data:`REPLAYED` for each the receiver refused as a replay. With ``shared`` it
    sends from (a duplicate descriptor of) that socket, as the hub's peers on one
    UDP port do, else from a socket of its own."""

    def __init__(self, srtp_socket: Any = None, shared: socket.socket | None = None) -> None:
        key = os.urandom(30)
        # As aiortc's: a packet resent without RTX keeps its sequence number.
        tx_policy = Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND)
        tx_policy.allow_repeat_tx = True
        self._tx = Session(tx_policy)
        self._rx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND))
        if shared is not None:
            self._out = socket.socket(fileno=os.dup(shared.fileno()))
        else:
            self._out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._out.bind(("127.0.0.1", 0))
        self._in = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._in.bind(("127.0.0.1", 0))
        self._in.setblocking(False)
        self.srtp_socket = SrtpSocket() if srtp_socket is None else srtp_socket
        host, port = self._in.getsockname()
        aim_srtp_socket(self.srtp_socket, self._tx, self._out, host, port)
        self._received: list[bytes] = []

    @property
    def sent(self) -> list[bytes]:
        while True:
            try:
                data = self._in.recv(2048)
            except BlockingIOError:
                break
            rtcp = 192 <= data[1] <= 223
            try:
                plain = self._rx.unprotect_rtcp(data) if rtcp else self._rx.unprotect(data)
            except pylibsrtp.Error:
                plain = REPLAYED
            self._received.append(plain)
        return self._received

    def close(self) -> None:
        self.srtp_socket.close()
        self._out.close()
        self._in.close()


TONE_RATE = 8_000
"""Decoded sound is resampled to this rate before looking for tones (under 4 kHz)."""


def tone_share(samples: Sequence[int], frequency: float, rate: int = TONE_RATE) -> float:
    """The share of ``samples``' power at ``frequency`` (Goertzel: one bin of a DFT):
    about 1 for that tone alone, 1/2 for it beside another as loud, 0 without it."""
    coefficient = 2 * math.cos(2 * math.pi * frequency / rate)
    s1 = s2 = 0.0
    energy = 0.0
    for x in samples:
        s1, s2 = x + coefficient * s1 - s2, s1
        energy += x * x
    if energy == 0:
        return 0.0
    power = s1 * s1 + s2 * s2 - coefficient * s1 * s2
    return power / (len(samples) * energy / 2)


def tones_over_time(
    path: Path, frequencies: Sequence[int], window: float = 0.5, floor: float = 0.1
) -> list[tuple[float, set[int]]]:
    """(start in seconds, the tones heard) of each ``window`` of ``path``'s decoded
    sound; a tone is heard when it holds more than ``floor`` of the window's power."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=TONE_RATE)
    samples = array.array("h")
    start: float | None = None
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            if start is None:
                start = float(frame.time or 0.0)
            for chunk in resampler.resample(frame):
                samples.frombytes(bytes(chunk.planes[0])[: chunk.samples * 2])
    size = round(window * TONE_RATE)
    return [
        (
            (start or 0.0) + offset / TONE_RATE,
            tones_in(samples[offset : offset + size], frequencies, floor),
        )
        for offset in range(0, len(samples) - size + 1, size)
    ]


def tones_in(samples: Sequence[int], frequencies: Sequence[int], floor: float = 0.1) -> set[int]:
    """The ``frequencies`` that hold more than ``floor`` of the power of ``samples``
    (at :data:`TONE_RATE`)."""
    return {f for f in frequencies if tone_share(samples, f) > floor}


class ToneTrack(AudioStreamTrack):
    """A microphone saying a sine tone of ``frequency`` Hz while ``speaking``, silent
    otherwise; aiortc's sender reports its audio level in each packet, as browsers do."""

    def __init__(self, frequency: int, amplitude: int = 8_000) -> None:
        super().__init__()
        self.frequency = frequency
        self.amplitude = amplitude
        self.speaking = True
        self._sent = 0

    async def recv(self) -> Frame:
        frame = await super().recv()
        assert isinstance(frame, AudioFrame)
        if self.speaking:
            step = 2 * math.pi * self.frequency / frame.sample_rate
            tone = array.array(
                "h",
                (
                    round(self.amplitude * math.sin(step * (self._sent + n)))
                    for n in range(frame.samples)
                ),
            )
            frame.planes[0].update(tone.tobytes())
        self._sent += frame.samples
        return frame


class HeardSound:
    """Decodes what an aiortc receiver gets of an audio track, at :data:`TONE_RATE` mono,
    so a test can ask which tones it heard lately."""

    def __init__(self, track: MediaStreamTrack) -> None:
        self.samples = array.array("h")
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=TONE_RATE)
        self._task = asyncio.create_task(self._read(track))

    async def _read(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                assert isinstance(frame, AudioFrame)
                for chunk in self._resampler.resample(frame):
                    self.samples.frombytes(bytes(chunk.planes[0])[: chunk.samples * 2])

    def tones(self, frequencies: Sequence[int], seconds: float = 0.5) -> set[int]:
        """The tones of the last ``seconds``."""
        return tones_in(self.samples[-round(seconds * TONE_RATE) :], frequencies)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
