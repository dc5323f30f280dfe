"""Records a room's stage from encoded frames: one Matroska/WebM file per publication.

Nothing is decoded or re-encoded: frames are remuxed as they arrive. Each file is
written with small clusters and flushed after every packet, so a process killed
mid-recording leaves files that play up to their last second or so. The manifest
``recording.json`` (tracks, stage timeline, status) is replaced atomically on
every change. All disk work happens in one worker thread per recording.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import av

from media.frames import EncodedFrame, TrackInfo
from media.muxing import (
    KeyframeGate,
    KeyframeRequests,
    TrackClock,
    Worker,
    add_stream,
    loop_callback,
    make_packet,
)

log = logging.getLogger(__name__)

MANIFEST = "recording.json"
RESERVE = ".manifest-reserve"
RESERVE_BYTES = 64 * 1024
"""Kept on disk while recording and released on a write error, so that the
final manifest (status "failed" and the error) still fits on a full disk."""

Status = Literal["recording", "stopped", "failed"]

# Matroska clusters of at most ~1 s and a flush after each packet bound what a
# crash loses; Cues and Duration are only written by a clean close.
_MUX_OPTIONS = {"cluster_time_limit": "1000", "flush_packets": "1"}
MANIFEST_INTERVAL = 2.0
"""Seconds between manifest rewrites while frames flow (track ``end`` times)."""


@dataclass
class TrackEntry:
    """One publication's file in the manifest."""

    track_id: str
    kind: str
    codec: str
    source: str
    participant: str
    label: str
    file: str
    start: float | None = None
    """``time.time()`` of the first frame written (video starts at a keyframe)."""
    end: float | None = None
    """When the track was removed or the recording ended; while recording, the
    arrival of the last frame written (the manifest is rewritten every few seconds)."""


@dataclass
class StageEntry:
    at: float
    stage: list[str]


@dataclass
class Manifest:
    """The content of ``recording.json``. File pts 0 is ``started_at`` in every file."""

    started_at: float
    ended_at: float | None = None
    status: Status = "recording"
    error: str | None = None
    tracks: list[TrackEntry] = field(default_factory=list)
    stage: list[StageEntry] = field(default_factory=list)


@dataclass
class _Add:
    track: TrackInfo


@dataclass
class _Frame:
    track_id: str
    frame: EncodedFrame


@dataclass
class _Remove:
    track_id: str
    at: float


@dataclass
class _Stage:
    entry: StageEntry


@dataclass
class _Close:
    at: float


_Command = _Add | _Frame | _Remove | _Stage | _Close


@dataclass
class _Output:
    entry: TrackEntry
    path: Path
    container: Any = None
    stream: Any = None
    clock: TrackClock | None = None


def _file_name(index: int, track: TrackInfo) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", track.track_id)[:60]
    extension = "mkv" if track.codec == "H264" else "webm"
    return f"{index:02d}-{track.source}-{safe}.{extension}"


class Recorder:
    """A :class:`~media.frames.FrameSink` that records every track it is given.

    ``request_keyframe(track_id)`` asks the hub for a keyframe when a video track
    waits for one (WebRTC senders send them on request only). ``on_error(message)``
    is called once, on the event loop that created the recorder, when it fails
    (disk full, write error); the recording then stops, keeps what was written and
    says why in the manifest.
    """

    def __init__(
        self,
        directory: Path,
        *,
        on_error: Callable[[str], None] | None = None,
        request_keyframe: Callable[[str], None] | None = None,
        queue_size: int = 1200,
    ) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.manifest = Manifest(started_at=time.time())
        self._on_error = loop_callback(on_error)
        self._gate = KeyframeGate()
        self._keyframes = KeyframeRequests(request_keyframe)
        self._tracks: set[str] = set()
        self._outputs: dict[str, _Output] = {}
        self._dropped = 0
        self._failed = False
        self._closed = False
        self._manifest_written = 0.0
        self._reserve_space()
        self._write_manifest()
        self._worker: Worker[_Command] = Worker(
            f"recorder:{directory.name}", self._handle, queue_size, batch_interval=0.1
        )

    # --- FrameSink, called on the event loop: only queue work -----------------

    def add_track(self, track: TrackInfo) -> None:
        if track.track_id in self._tracks or self._closed:
            return
        self._tracks.add(track.track_id)
        self._submit(_Add(track))

    def remove_track(self, track_id: str) -> None:
        if track_id not in self._tracks:
            return
        self._tracks.discard(track_id)
        self._gate.close(track_id)
        self._submit(_Remove(track_id, time.time()))

    def on_frame(self, track_id: str, frame: EncodedFrame) -> None:
        if track_id not in self._tracks or self._failed:
            return
        if not self._gate.admit(track_id, frame):
            self._keyframes.ask(track_id)  # a video file starts at a keyframe
            return
        if not self._worker.submit(_Frame(track_id, frame)):
            # The disk is not keeping up: drop, and resume this track at a keyframe.
            self._dropped += 1
            self._gate.close(track_id)
            if self._dropped == 1 or self._dropped % 100 == 0:
                log.warning("recorder %s: dropped %d frames", self.directory, self._dropped)

    def on_stage_change(self, stage: list[str], at: float) -> None:
        self._submit(_Stage(StageEntry(at=at, stage=list(stage))))

    async def close(self) -> None:
        """Finish every file (Matroska cues and duration) and the manifest; the final
        manifest stays readable as :attr:`manifest`."""
        if not self._closed:
            self._closed = True
            self._tracks.clear()
            self._submit(_Close(time.time()))
            await asyncio.to_thread(self._worker.join)

    def _submit(self, command: _Command) -> None:
        self._worker.submit(command, droppable=False)

    # --- the worker thread -------------------------------------------------------

    def _handle(self, command: _Command) -> None:
        if self._failed and not isinstance(command, _Close):
            return
        try:
            match command:
                case _Frame(track_id, frame):
                    self._write(track_id, frame)
                case _Add(track):
                    self._add(track)
                case _Remove(track_id, at):
                    self._finish(track_id, at)
                    self._write_manifest()
                case _Stage(entry):
                    self.manifest.stage.append(entry)
                    self._write_manifest()
                case _Close(at):
                    self._close_all(at)
        except Exception as error:
            self._fail(error)

    def _add(self, track: TrackInfo) -> None:
        index = len(self.manifest.tracks)
        name = _file_name(index, track)
        entry = TrackEntry(
            track_id=track.track_id,
            kind=track.kind,
            codec=track.codec,
            source=track.source,
            participant=track.participant,
            label=track.label,
            file=name,
        )
        self.manifest.tracks.append(entry)
        self._outputs[track.track_id] = _Output(entry=entry, path=self.directory / name)
        self._write_manifest()

    def _write(self, track_id: str, frame: EncodedFrame) -> None:
        output = self._outputs.get(track_id)
        if output is None:
            return
        if output.container is None:
            fmt = "matroska" if frame.codec == "H264" else "webm"
            output.container = av.open(str(output.path), "w", format=fmt, options=_MUX_OPTIONS)
            output.stream = add_stream(output.container, frame)
            output.clock = TrackClock(origin=self.manifest.started_at)
            output.entry.start = frame.arrival
            self._write_manifest()
        assert output.clock is not None
        output.container.mux(make_packet(output.stream, frame, output.clock.pts(frame)))
        # While recording, ``end`` is the last frame written: after a crash the
        # manifest still says, to within a few seconds, what each file holds.
        output.entry.end = frame.arrival
        now = time.monotonic()
        if now - self._manifest_written >= MANIFEST_INTERVAL:
            self._write_manifest()

    def _finish(self, track_id: str, at: float) -> None:
        output = self._outputs.pop(track_id, None)
        if output is None:
            return
        output.entry.end = at
        if output.container is None:
            # Nothing arrived (or no keyframe): no file, so no entry either.
            self.manifest.tracks.remove(output.entry)
            return
        output.container.close()

    def _close_all(self, at: float) -> None:
        for track_id in list(self._outputs):
            try:
                self._finish(track_id, at)
            except Exception as error:
                # The trailer of one file failed: the others still get theirs.
                self._fail(error)
        self.manifest.ended_at = at
        if not self._failed:
            self.manifest.status = "stopped"
        self._release_reserve()
        self._write_manifest()

    def _fail(self, error: Exception) -> None:
        if self._failed:
            return
        self._failed = True
        message = f"recording failed: {error}"
        log.error("recorder %s: %s", self.directory, message)
        self.manifest.status = "failed"
        self.manifest.error = message
        self.manifest.ended_at = time.time()
        for track_id in list(self._outputs):
            with contextlib.suppress(Exception):
                # Its trailer may not fit either; the clusters written so far play.
                self._finish(track_id, self.manifest.ended_at)
        self._outputs.clear()
        self._release_reserve()
        try:
            self._write_manifest()
        except OSError:
            log.exception("recorder %s: cannot write the failed manifest", self.directory)
        self._on_error(message)

    # --- manifest ----------------------------------------------------------------

    def _write_manifest(self) -> None:
        self._manifest_written = time.monotonic()
        path = self.directory / MANIFEST
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(asdict(self.manifest), indent=2))
        os.replace(temporary, path)

    def _reserve_space(self) -> None:
        (self.directory / RESERVE).write_bytes(b"\0" * RESERVE_BYTES)

    def _release_reserve(self) -> None:
        (self.directory / RESERVE).unlink(missing_ok=True)
