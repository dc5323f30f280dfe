"""Shared helpers for the sinks that mux encoded frames without decoding them.

The recorder, the live HLS packager and the restreamer all need the same few
things: keyframe gating, RTP-timestamp → pts arithmetic, PyAV streams whose
parameters come from the bitstream (H.264 SPS/PPS, picture size) and a worker
thread behind a bounded queue so the hub's event loop never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Generic, TypeVar

import av
import imageio_ffmpeg

from media.frames import Codec, EncodedFrame

log = logging.getLogger(__name__)

T = TypeVar("T")

PYAV_CODEC: dict[Codec, str] = {"H264": "h264", "VP8": "vp8", "opus": "opus"}
_START_CODE = re.compile(b"\x00\x00\x01")
_SPS, _PPS = 7, 8


def ffmpeg_exe() -> str:
    """The ffmpeg binary shipped with imageio-ffmpeg."""
    return str(imageio_ffmpeg.get_ffmpeg_exe())


def h264_parameter_sets(access_unit: bytes) -> bytes:
    """The SPS and PPS NAL units of an Annex-B access unit, with 4-byte start codes.

    Given as Annex-B extradata, the Matroska and MP4 muxers turn it into ``avcC``
    and rewrite the Annex-B packets as length-prefixed NAL units.
    """
    starts = [match.end() for match in _START_CODE.finditer(access_unit)]
    units = []
    for index, start in enumerate(starts):
        end = starts[index + 1] - 3 if index + 1 < len(starts) else len(access_unit)
        unit = access_unit[start:end].rstrip(b"\x00")
        if unit and unit[0] & 0x1F in (_SPS, _PPS):
            units.append(b"\x00\x00\x00\x01" + unit)
    return b"".join(units)


def picture_size(codec: Codec, keyframe: bytes) -> tuple[int, int]:
    """Width and height from a keyframe's headers (a bitstream parser, not a decoder)."""
    parser: Any = av.CodecContext.create(PYAV_CODEC[codec], "r")
    parser.parse(keyframe)
    parser.parse(None)
    return int(parser.width), int(parser.height)


def add_stream(container: Any, first: EncodedFrame) -> Any:
    """Add a stream for ``first``'s codec to an output container, time base 1/clock."""
    stream = container.add_stream(PYAV_CODEC[first.codec], rate=first.clock_rate)
    stream.time_base = Fraction(1, first.clock_rate)
    if first.codec == "opus":
        stream.codec_context.layout = "stereo"
        return stream
    width, height = picture_size(first.codec, first.data)
    if width and height:
        stream.codec_context.width = width
        stream.codec_context.height = height
    if first.codec == "H264":
        stream.codec_context.extradata = h264_parameter_sets(first.data)
    return stream


def make_packet(stream: Any, frame: EncodedFrame, pts: int) -> Any:
    """An ``av.Packet`` for ``frame`` at ``pts`` (in the stream's 1/clock time base)."""
    packet = av.Packet(frame.data)
    packet.stream = stream
    packet.time_base = Fraction(1, frame.clock_rate)
    packet.pts = packet.dts = pts
    packet.is_keyframe = frame.keyframe
    return packet


@dataclass
class TrackClock:
    """Maps a track's RTP timestamps onto a shared timeline starting at ``origin``.

    The first frame is placed by its arrival time (so tracks that start later line
    up with the others); later frames follow their RTP timestamps, which are
    smoother than arrival times. pts never goes backwards.
    """

    origin: float
    """``time.time()`` of the timeline's zero."""
    first_ts: int | None = None
    offset: int = 0
    last_pts: int = -1

    def pts(self, frame: EncodedFrame) -> int:
        if self.first_ts is None:
            self.first_ts = frame.timestamp
            placed = round((frame.arrival - self.origin) * frame.clock_rate)
            # A clock that takes over from another source (``last_pts`` set) starts
            # after it, even if that source ran ahead of the wall clock.
            after = self.last_pts + frame.clock_rate // 50 if self.last_pts >= 0 else 0
            self.offset = max(placed, after)
        pts = self.offset + frame.timestamp - self.first_ts
        pts = max(pts, self.last_pts + 1)
        self.last_pts = pts
        return pts


@dataclass
class KeyframeGate:
    """Lets a video track through from its first keyframe on; audio always passes.

    ``close`` it again after a frame was dropped: what follows would not decode.
    """

    open_tracks: set[str] = field(default_factory=set)

    def admit(self, track_id: str, frame: EncodedFrame) -> bool:
        if frame.codec == "opus" or track_id in self.open_tracks:
            return True
        if frame.keyframe:
            self.open_tracks.add(track_id)
            return True
        return False

    def close(self, track_id: str) -> None:
        self.open_tracks.discard(track_id)


class KeyframeRequests:
    """Asks the hub for keyframes (``request(track_id)``), at most once per
    ``interval`` seconds and track: the hub forwards each ask as a PLI."""

    def __init__(self, request: Callable[[str], None] | None, interval: float = 1.0) -> None:
        self._request = request
        self._interval = interval
        self._last: dict[str, float] = {}

    def ask(self, track_id: str, *, now_please: bool = False) -> None:
        """Ask for a keyframe of ``track_id``; ``now_please`` skips the rate limit."""
        if self._request is None:
            return
        now = time.monotonic()
        last = self._last.get(track_id)
        if now_please or last is None or now - last >= self._interval:
            self._last[track_id] = now
            self._request(track_id)


class _Stop:
    pass


class Worker(Generic[T]):
    """A thread that handles items from a queue, off the event loop.

    Droppable items (frames) are refused once ``maxsize`` items wait; control
    items (track added, closed) are always queued: there are few of them.
    """

    def __init__(
        self,
        name: str,
        handle: Callable[[T], None],
        maxsize: int = 600,
        batch_interval: float = 0.0,
    ) -> None:
        """``batch_interval`` > 0: after the first item the thread waits that long and
        takes everything queued meanwhile, so it wakes a few times a second instead of
        once a frame (thread switches, not muxing, are what a frame costs)."""
        self._handle = handle
        self._maxsize = maxsize
        self._batch_interval = batch_interval
        self._queue: queue.Queue[T | _Stop] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: T, *, droppable: bool = True) -> bool:
        """Queue ``item``; False (and nothing queued) when it is droppable and the
        queue is full."""
        if droppable and self._queue.qsize() >= self._maxsize:
            return False
        self._queue.put_nowait(item)
        return True

    def join(self) -> None:
        """Handle what is queued, then stop. Blocks: call it through a thread."""
        self._queue.put_nowait(_Stop())
        self._thread.join()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            if self._batch_interval > 0:
                time.sleep(self._batch_interval)
                with contextlib.suppress(queue.Empty):
                    while True:
                        batch.append(self._queue.get_nowait())
            for item in batch:
                if isinstance(item, _Stop):
                    return
                try:
                    self._handle(item)
                except Exception:
                    # A handler reports its own failures; this keeps the thread alive.
                    log.exception("worker %s: unhandled error", self._thread.name)


def loop_callback(callback: Callable[[str], None] | None) -> Callable[[str], None]:
    """Wrap ``callback`` so a worker thread can call it: it then runs on the loop that
    was running when this was called (or directly when there was none)."""
    if callback is None:
        return lambda message: None
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return callback
    target = callback

    def call(message: str) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
            loop.call_soon_threadsafe(target, message)

    return call
