"""The stage as one audio+video stream through one ffmpeg process per room.

Live HLS and the RTMP restream both need the same thing: the stage's picture and
every voice on stage, as H.264 + AAC. :class:`StageFeed` picks those tracks among
the ones it receives, remuxes their frames (no decoding) into a Matroska stream
written to an ffmpeg's stdin, and lets a subclass consume ffmpeg's output. H.264 is
copied; VP8 is transcoded by that single ffmpeg, whatever the number of viewers or
targets; Opus becomes AAC (HLS players on Safari/iOS and FLV need it).

What it shows is the program (:mod:`media.program`, the rule WHEP viewers and the
library follow too): its picture, and its voices mixed. A new picture takes over at
its first keyframe (``request_keyframe`` asks the hub for one). The Matroska stream
has :data:`VOICES` audio tracks, fixed for the life of an ffmpeg so that a stage
change needs no new one: each voice of the program holds a slot while it is on
stage (a station called on stage takes a free one, one sent back frees its own),
an empty slot carries Opus silence, and ffmpeg's ``amix`` adds them up.

One ffmpeg input has one video codec: a switch between VP8 and H.264 sources, or
an ffmpeg that died, ends the current ffmpeg and starts the next at the next
keyframe (an "epoch"; HLS marks it with a discontinuity, RTMP pushes reconnect).
After ``MAX_RESTARTS`` deaths within ``RESTART_WINDOW`` seconds the feed fails.
While a slot's audio does not flow, Opus silence fills the gap so that neither
ffmpeg's interleaving nor ``amix`` waits on a silent track.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any, Literal

import av

from media.frames import Codec, EncodedFrame, TrackInfo
from media.muxing import (
    KeyframeGate,
    KeyframeRequests,
    TrackClock,
    Worker,
    add_stream,
    ffmpeg_exe,
    loop_callback,
    make_packet,
)
from media.program import program

log = logging.getLogger(__name__)

Role = Literal["video", "audio"]

OPUS_SILENCE = bytes([0xF8, 0xFF, 0xFE])
"""One 20 ms CELT frame of silence."""
OPUS_FRAME = 960
SILENCE_AFTER = 0.25
"""Seconds a voice's audio may lag behind the video (or another voice) before
silence is inserted for it."""
VOICES = 4
"""Audio slots of the room's ffmpeg: the lecturer and three stations on stage heard
at once (a stage rarely holds more speakers; the first in stage order are heard). An
idle slot costs ffmpeg an Opus decode of 3-byte silence frames and the worker 50
tiny packets a second: with H.264 copied, ffmpeg took 2.5 % of a core instead of
2.1 % with one audio input (10 s, two runs each)."""
MAX_RESTARTS = 3
RESTART_WINDOW = 60.0

# Small clusters and a flush per packet: ffmpeg sees each frame at once.
_PIPE_MUX_OPTIONS = {"live": "1", "cluster_time_limit": "100", "flush_packets": "1"}


@dataclass
class _Item:
    role: Role
    track_id: str
    frame: EncodedFrame
    slot: int = 0
    """The audio slot (audio only)."""
    voices: tuple[str | None, ...] = ()
    """The slots' tracks when it was queued (audio only): the other slots get
    silence up to this voice (see :meth:`StageFeed._mux_audio`)."""


def assign_slots(slots: tuple[str | None, ...], voices: Sequence[str]) -> tuple[str | None, ...]:
    """The audio slots for ``voices`` (in stage order): a voice that has a slot keeps
    it (its clock goes on), a voice no longer heard frees its own, and a new one takes
    the first free slot. Voices beyond the slots are left out, the last in order."""
    heard = set(voices[: len(slots)])
    kept = [slot if slot in heard else None for slot in slots]
    for voice in voices[: len(slots)]:
        if voice not in kept:
            kept[kept.index(None)] = voice
    return tuple(kept)


class StageFeed:
    """A :class:`~media.frames.FrameSink` feeding the stage to one ffmpeg process.

    Subclasses give ffmpeg's output options (:meth:`output_args`) and read its
    stdout in a thread of their own (:meth:`consume_output`).
    """

    def __init__(
        self,
        name: str,
        *,
        request_keyframe: Callable[[str], None] | None = None,
        on_error: Callable[[str], None] | None = None,
        video_size: tuple[int, int] = (1280, 720),
        video_bitrate: str = "1500k",
        keyframe_interval: float = 2.0,
        queue_size: int = 300,
    ) -> None:
        self.name = name
        self.video_size = video_size
        self.video_bitrate = video_bitrate
        self.keyframe_interval = keyframe_interval
        """Seconds between the keyframes of a transcode (an HLS segment, an RTMP
        join point)."""
        self.error: str | None = None
        self.processes_started = 0
        """ffmpeg processes this feed started: one per room and epoch, whatever the
        number of viewers or targets."""
        self._keyframes = KeyframeRequests(request_keyframe)
        self._on_error = loop_callback(on_error)
        # Loop-side state.
        self._tracks: dict[str, TrackInfo] = {}
        self._stage: list[str] = []
        self._video: str | None = None
        self._pending_video: str | None = None
        self._voices: tuple[str | None, ...] = (None,) * VOICES
        """Slot → the track id of the voice it carries."""
        self._gate = KeyframeGate()
        self._keyframe_wanted = False
        self._closed = False
        # Worker-side state.
        self._process: subprocess.Popen[bytes] | None = None
        self._codec: Codec | None = None
        self._deaths: deque[float] = deque(maxlen=MAX_RESTARTS)
        self._container: Any = None
        self._video_stream: Any = None
        self._audio_streams: list[Any] = []
        self._clocks: dict[tuple[Role, int], tuple[str, TrackClock]] = {}
        self._origin = 0.0
        self._audio_next = [0] * VOICES
        """Per slot, the pts (48 kHz) where its next packet goes."""
        self._stderr_tail: deque[str] = deque(maxlen=20)
        self._threads: list[threading.Thread] = []
        self._worker: Worker[_Item] = Worker(f"stagefeed:{name}", self._handle, queue_size)

    # --- for subclasses ------------------------------------------------------------

    def output_args(self) -> list[str]:
        """ffmpeg options after the codec options, ending with the output."""
        raise NotImplementedError

    def consume_output(self, stdout: IO[bytes]) -> None:
        """Read ffmpeg's stdout to its end (runs in its own thread)."""
        raise NotImplementedError

    def end_of_epoch(self) -> None:
        """Called in the worker thread after an ffmpeg ended and its output was read,
        before the next one starts (or the feed closes)."""

    @property
    def transcoding(self) -> bool:
        """True when the main video is VP8, so ffmpeg encodes H.264."""
        return self._codec == "VP8"

    def want_keyframe(self) -> None:
        """Ask the hub for a keyframe of the main video (from any thread): a consumer
        that (re)starts needs one to begin."""
        self._keyframe_wanted = True

    def fail(self, message: str) -> None:
        """Record a failure once and report it through ``on_error`` (any thread)."""
        if self.error is None:
            self.error = message
            log.error("stage feed %s: %s", self.name, message)
            self._on_error(message)

    # --- FrameSink, on the event loop ---------------------------------------------

    def add_track(self, track: TrackInfo) -> None:
        self._tracks[track.track_id] = track
        self._reselect()

    def remove_track(self, track_id: str) -> None:
        if self._tracks.pop(track_id, None) is not None:
            self._gate.close(track_id)
            self._reselect()

    def on_stage_change(self, stage: list[str], at: float) -> None:
        self._stage = list(stage)
        self._reselect()

    def on_frame(self, track_id: str, frame: EncodedFrame) -> None:
        if self._closed or self.error is not None:
            return
        if track_id == self._pending_video:
            if not frame.keyframe:
                self._keyframes.ask(track_id)
                return
            self._gate.close(self._video or "")
            self._video, self._pending_video = track_id, None
        role: Role
        slot = 0
        if track_id == self._video:
            role = "video"
        elif track_id in self._voices:
            role, slot = "audio", self._voices.index(track_id)
        else:
            return
        if not self._gate.admit(track_id, frame):
            self._keyframes.ask(track_id)
            return
        if self._keyframe_wanted and role == "video":
            self._keyframe_wanted = False
            self._keyframes.ask(track_id, now_please=True)
        if not self._worker.submit(_Item(role, track_id, frame, slot, self._voices)):
            # ffmpeg is not keeping up: resume this track at its next keyframe.
            self._gate.close(track_id)

    async def close(self) -> None:
        """Finish the stream: ffmpeg gets end-of-file and writes its last output."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._shutdown)

    # --- selection ----------------------------------------------------------------------

    def _reselect(self) -> None:
        chosen = program(list(self._tracks.values()), self._stage)
        self._voices = assign_slots(self._voices, chosen.audio)
        video = chosen.video
        if video == self._video or video is None:
            self._pending_video = None
            if video is None:
                self._video = None
            return
        self._pending_video = video
        if self._video not in self._tracks:
            self._video = None
        self._keyframes.ask(video)

    # --- the worker thread: Matroska into ffmpeg ----------------------------------

    def _handle(self, item: _Item) -> None:
        if self.error is not None:
            return
        video = item.role == "video"
        try:
            if video and self._container is not None and item.frame.codec != self._codec:
                self._stop()  # a source with another codec: a new epoch
            if self._container is None:
                if not (video and item.frame.keyframe):
                    return  # an epoch starts at a video keyframe
                self._start(item.frame)
            if video:
                self._mux_video(item)
            else:
                self._mux_audio(item)
        except (OSError, av.FFmpegError, ValueError) as error:
            self._died("; ".join(self._stderr_tail) or str(error))

    def _died(self, detail: str) -> None:
        now = time.monotonic()
        self._deaths.append(now)
        self._stop()
        if len(self._deaths) == MAX_RESTARTS and now - self._deaths[0] < RESTART_WINDOW:
            self.fail(f"ffmpeg stopped {MAX_RESTARTS} times: {detail}")
            return
        log.warning("stage feed %s: ffmpeg stopped (%s); restarting", self.name, detail)
        self.want_keyframe()

    def _start(self, keyframe: EncodedFrame) -> None:
        process = subprocess.Popen(
            self._command(keyframe.codec),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        self._process = process
        self._codec = keyframe.codec
        self.processes_started += 1
        self._stderr_tail.clear()
        assert process.stdout is not None and process.stderr is not None
        self._spawn("output", self.consume_output, process.stdout)
        self._spawn("stderr", self._read_stderr, process.stderr)
        self._origin = keyframe.arrival
        self._clocks.clear()
        self._audio_next = [0] * VOICES
        self._container = av.open(process.stdin, "w", format="matroska", options=_PIPE_MUX_OPTIONS)
        self._video_stream = add_stream(self._container, keyframe)
        silence = EncodedFrame("opus", OPUS_SILENCE, 0, 48_000, True, keyframe.arrival)
        self._audio_streams = [add_stream(self._container, silence) for _ in range(VOICES)]

    def _command(self, codec: Codec) -> list[str]:
        if codec == "H264":
            video = ["-c:v", "copy"]
        else:
            width, height = self.video_size
            # Fixed output size: a source switch must not change the encoder's size.
            fit = (
                f"scale={width}:{height}:force_original_aspect_ratio=decrease,"
                f"pad={width}:{height}:(ow-iw)/2:(oh-ih)/2,format=yuv420p"
            )
            video = [
                "-vf", fit,
                "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency",
                "-b:v", self.video_bitrate, "-maxrate", self.video_bitrate,
                "-bufsize", self.video_bitrate,
                "-force_key_frames", f"expr:gte(t,n_forced*{self.keyframe_interval:g})",
            ]  # fmt: skip
        # normalize=0: a voice keeps its level however many slots are idle.
        mix = "".join(f"[0:a:{slot}]" for slot in range(VOICES))
        mix += f"amix=inputs={VOICES}:normalize=0:duration=longest[voices]"
        return [
            ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostats",
            "-probesize", "32", "-analyzeduration", "0",
            "-f", "matroska", "-i", "pipe:0",
            "-filter_complex", mix,
            "-map", "0:v:0", "-map", "[voices]",
            *video,
            "-c:a", "aac", "-b:a", "96k", "-ar", "48000", "-ac", "2",
            "-max_interleave_delta", "500000",
            *self.output_args(),
        ]  # fmt: skip

    def _spawn(self, what: str, target: Callable[[IO[bytes]], None], pipe: IO[bytes]) -> None:
        thread = threading.Thread(
            target=target, args=(pipe,), name=f"stagefeed:{self.name}:{what}", daemon=True
        )
        thread.start()
        self._threads.append(thread)

    def _read_stderr(self, stderr: IO[bytes]) -> None:
        for line in stderr:
            text = line.decode(errors="replace").strip()
            if text:
                self._stderr_tail.append(text)
                log.warning("ffmpeg %s: %s", self.name, text)

    def _clock(self, role: Role, slot: int, track_id: str) -> TrackClock:
        current = self._clocks.get((role, slot))
        if current is None or current[0] != track_id:
            # A new source in this place: placed by arrival, never before the last.
            clock = TrackClock(origin=self._origin)
            if current is not None:
                clock.last_pts = current[1].last_pts
            current = self._clocks[role, slot] = (track_id, clock)
        return current[1]

    def _mux_video(self, item: _Item) -> None:
        pts = self._clock("video", 0, item.track_id).pts(item.frame)
        self._container.mux(make_packet(self._video_stream, item.frame, pts))
        # A voice that sends nothing (muted, or none at all) must not hold the rest.
        limit = round((pts / item.frame.clock_rate - SILENCE_AFTER) * 48_000)
        for slot in range(VOICES):
            self._fill_silence(slot, limit)

    def _mux_audio(self, item: _Item) -> None:
        slot = item.slot
        pts = self._clock("audio", slot, item.track_id).pts(item.frame)
        if pts < self._audio_next[slot] - OPUS_FRAME // 2:
            return  # silence already covers this time
        # Silence up to it (a voice that starts or resumes); amix waits for every
        # slot, so the empty ones get silence as far, and a voice that sends nothing
        # (muted) as far as the video rule would, counting from this voice.
        self._fill_silence(slot, pts - OPUS_FRAME)
        self._container.mux(make_packet(self._audio_streams[slot], item.frame, pts))
        self._audio_next[slot] = pts + OPUS_FRAME
        quiet = pts - round(SILENCE_AFTER * 48_000)
        for other, voice in enumerate(item.voices):
            if other != slot:
                self._fill_silence(other, pts if voice is None else quiet)

    def _fill_silence(self, slot: int, limit: int) -> None:
        """Silence in ``slot`` from where it stands to ``limit`` (48 kHz pts)."""
        while self._audio_next[slot] <= limit:
            silence = EncodedFrame("opus", OPUS_SILENCE, 0, 48_000, True, 0.0)
            stream = self._audio_streams[slot]
            self._container.mux(make_packet(stream, silence, self._audio_next[slot]))
            self._audio_next[slot] += OPUS_FRAME

    def _stop(self) -> None:
        """End the current ffmpeg: end of input, wait for its output to be read."""
        container, process = self._container, self._process
        self._container = self._process = None
        if container is not None:
            try:
                container.close()
            except (OSError, av.FFmpegError, ValueError):
                log.debug("stage feed %s: ffmpeg's stdin already closed", self.name)
        if process is None:
            return
        if process.stdin is not None:
            try:
                process.stdin.close()
            except OSError:
                log.debug("stage feed %s: ffmpeg's stdin already closed", self.name)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()
        self.end_of_epoch()

    def _shutdown(self) -> None:
        self._worker.join()
        self._stop()
