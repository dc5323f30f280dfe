"""Low-latency HLS of a room's stage for households: fMP4 (CMAF) parts and segments.

One ffmpeg per room (see :mod:`media.stagefeed`) writes fragmented MP4 to a pipe,
a fragment every ~0.2 s and at every keyframe. This module cuts that byte stream
at box boundaries: ``ftyp``+``moov`` is the initialization section, each
``moof``+``mdat`` one partial segment, and parts are grouped into ~1 s segments
that start at a keyframe when one comes in time. Each ffmpeg (an epoch, see
:mod:`media.stagefeed`) has its own ``init{n}.mp4`` behind an EXT-X-DISCONTINUITY.
The playlist carries the LL-HLS tags (EXT-X-PART, EXT-X-PART-INF,
EXT-X-SERVER-CONTROL with CAN-BLOCK-RELOAD, EXT-X-PRELOAD-HINT); blocking reloads
are answered by :meth:`HlsPackager.playlist`.

Threads: the reader thread writes the files and builds an immutable
:class:`PlaylistState`, then hands it to the event loop, where requests wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from media.stagefeed import StageFeed

PLAYLIST = "index.m3u8"
# A player starts at an independent part (a segment's first) about PART-HOLD-BACK
# behind the live edge, and stays as far behind as it started: hls.js 1.7 with its
# defaults sat 2.4-3.7 s behind with 2 s segments and 0.334 s parts, 1.3-1.6 s with
# 1 s segments and 0.25 s parts (tests/browser/test_hls_latency.py).
SEGMENT_TARGET = 1.0
"""Seconds of a segment, and between the keyframes a segment starts on."""
PART_TARGET = 0.25
"""Seconds of a partial segment at most."""
PART_HOLD_BACK = 3
"""PART-HOLD-BACK, in part targets (the spec's recommended minimum)."""
KEYFRAME_LEAD = 0.25
"""Seconds before a segment's target length when a keyframe is asked for (and from
when one ends the segment): a round trip to the publisher and its encoder."""


# --- ISO BMFF, as much as a fragment's duration and keyframe flag need ------------


def boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of each box in ``data[start:end]``."""
    end = len(data) if end is None else end
    while start + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, start)
        header = 8
        if size == 1:
            size = struct.unpack_from(">Q", data, start + 8)[0]
            header = 16
        elif size == 0:
            size = end - start
        yield kind, start + header, start + size
        start += size


def child(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    for found, payload, box_end in boxes(data, start, end):
        if found == kind:
            return payload, box_end
    return None


def read_box(stream: IO[bytes]) -> tuple[bytes, bytes] | None:
    """The next top-level box of ``stream`` as (type, whole box), None at the end."""
    header = _read_exactly(stream, 8)
    if header is None:
        return None
    size, kind = struct.unpack(">I4s", header)
    if size == 1:
        large = _read_exactly(stream, 8)
        if large is None:
            return None
        header += large
        size = struct.unpack(">Q", large)[0]
    body = _read_exactly(stream, size - len(header))
    return None if body is None else (kind, header + body)


def _read_exactly(stream: IO[bytes], size: int) -> bytes | None:
    chunks = []
    while size > 0:
        chunk = stream.read(size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


@dataclass(frozen=True, slots=True)
class TrackDefaults:
    timescale: int
    video: bool
    duration: int = 0
    flags: int = 0


_NON_SYNC = 0x10000


def parse_moov(moov: bytes) -> dict[int, TrackDefaults]:
    """Timescale, handler and ``trex`` defaults of each track, by track id."""
    tracks: dict[int, tuple[int, bool]] = {}
    defaults: dict[int, tuple[int, int]] = {}
    for kind, payload, end in boxes(moov, 8):
        if kind == b"trak":
            tkhd = child(moov, payload, end, b"tkhd")
            mdia = child(moov, payload, end, b"mdia")
            if tkhd is None or mdia is None:
                continue
            version = moov[tkhd[0]]
            track_id = struct.unpack_from(">I", moov, tkhd[0] + (20 if version else 12))[0]
            mdhd = child(moov, *mdia, b"mdhd")
            hdlr = child(moov, *mdia, b"hdlr")
            if mdhd is None or hdlr is None:
                continue
            version = moov[mdhd[0]]
            timescale = struct.unpack_from(">I", moov, mdhd[0] + (20 if version else 12))[0]
            tracks[track_id] = (timescale, moov[hdlr[0] + 8 : hdlr[0] + 12] == b"vide")
        elif kind == b"mvex":
            for sub, sub_payload, _ in boxes(moov, payload, end):
                if sub == b"trex":
                    track_id, _, duration, _, flags = struct.unpack_from(
                        ">5I", moov, sub_payload + 4
                    )
                    defaults[track_id] = (duration, flags)
    return {
        track_id: TrackDefaults(timescale, video, *defaults.get(track_id, (0, 0)))
        for track_id, (timescale, video) in tracks.items()
    }


@dataclass(frozen=True, slots=True)
class Fragment:
    duration: float
    """Seconds, from the video track when the fragment has video samples."""
    independent: bool
    """Its first video sample is a keyframe."""


def parse_moof(moof: bytes, tracks: dict[int, TrackDefaults]) -> Fragment:
    durations: dict[bool, float] = {}
    independent = False
    for kind, payload, end in boxes(moof, 8):
        if kind != b"traf":
            continue
        tfhd = child(moof, payload, end, b"tfhd")
        if tfhd is None:
            continue
        flags = struct.unpack_from(">I", moof, tfhd[0])[0] & 0xFFFFFF
        track = tracks.get(struct.unpack_from(">I", moof, tfhd[0] + 4)[0])
        if track is None:
            continue
        offset = tfhd[0] + 8 + (8 if flags & 0x01 else 0) + (4 if flags & 0x02 else 0)
        default_duration, default_flags = track.duration, track.flags
        if flags & 0x08:
            default_duration = struct.unpack_from(">I", moof, offset)[0]
            offset += 4
        offset += 4 if flags & 0x10 else 0
        if flags & 0x20:
            default_flags = struct.unpack_from(">I", moof, offset)[0]
        ticks, first_flags = 0, None
        for sub, sub_payload, _ in boxes(moof, payload, end):
            if sub != b"trun":
                continue
            run_flags, count = struct.unpack_from(">II", moof, sub_payload)
            run_flags &= 0xFFFFFF
            position = sub_payload + 8 + (4 if run_flags & 0x01 else 0)
            first_sample_flags = None
            if run_flags & 0x04:
                first_sample_flags = struct.unpack_from(">I", moof, position)[0]
                position += 4
            for index in range(count):
                duration, sample_flags = default_duration, default_flags
                if run_flags & 0x100:
                    duration = struct.unpack_from(">I", moof, position)[0]
                    position += 4
                position += 4 if run_flags & 0x200 else 0
                if run_flags & 0x400:
                    sample_flags = struct.unpack_from(">I", moof, position)[0]
                    position += 4
                position += 4 if run_flags & 0x800 else 0
                if index == 0 and first_sample_flags is not None:
                    sample_flags = first_sample_flags
                if first_flags is None:
                    first_flags = sample_flags
                ticks += duration
        durations[track.video] = durations.get(track.video, 0.0) + ticks / track.timescale
        if track.video and first_flags is not None:
            independent = not first_flags & _NON_SYNC
    seconds = durations.get(True) or durations.get(False, 0.0)
    return Fragment(duration=seconds, independent=independent)


# --- the playlist ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Part:
    name: str
    duration: float
    independent: bool


@dataclass(frozen=True, slots=True)
class Segment:
    msn: int
    parts: tuple[Part, ...]
    discontinuity: int = 0
    """The discontinuity sequence number of its epoch (its ffmpeg), which names
    its initialization section."""
    name: str | None = None
    """Set once the segment is complete."""

    @property
    def duration(self) -> float:
        return sum(part.duration for part in self.parts)


def part_name(msn: int, index: int) -> str:
    return f"part{msn}.{index}.m4s"


def segment_name(msn: int) -> str:
    return f"seg{msn}.m4s"


def init_name(discontinuity: int) -> str:
    return f"init{discontinuity}.mp4"


@dataclass(frozen=True, slots=True)
class PlaylistState:
    """What the playlist shows at one moment; rendered on request."""

    target_duration: int
    part_target: float
    segments: tuple[Segment, ...] = ()
    """Completed segments in the window, then the one being written (no name yet)."""
    files: frozenset[str] = frozenset()
    """Every name that may be served (the window plus a short grace)."""
    ended: bool = False
    """The stream is over: EXT-X-ENDLIST, no preload hint."""

    @property
    def position(self) -> tuple[int, int] | None:
        """(msn, part index) of the newest part."""
        for segment in reversed(self.segments):
            if segment.parts:
                return segment.msn, len(segment.parts) - 1
        return None

    @property
    def playable(self) -> bool:
        """Enough media for a player to start: three target durations of complete
        segments (the spec's minimum HOLD-BACK; Chromium's native HLS fails on a
        shorter live playlist and does not retry), or the stream has ended."""
        complete = sum(segment.duration for segment in self.segments if segment.name)
        return self.ended or complete >= 3 * self.target_duration

    def has(self, msn: int, part: int | None) -> bool:
        """The blocking-reload condition: that part (or whole segment) is listed."""
        position = self.position
        if position is None:
            return False
        return position >= ((msn + 1, 0) if part is None else (msn, part))

    def preload_hint(self) -> str | None:
        if self.ended or not self.segments:
            return None
        current = self.segments[-1]
        return part_name(current.msn, len(current.parts))

    def render(self, parts_for_last: int = 3) -> str:
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:9",
            f"#EXT-X-TARGETDURATION:{self.target_duration}",
            "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,"
            f"PART-HOLD-BACK={PART_HOLD_BACK * self.part_target:.3f}",
            f"#EXT-X-PART-INF:PART-TARGET={self.part_target:.3f}",
            f"#EXT-X-MEDIA-SEQUENCE:{self.segments[0].msn if self.segments else 0}",
            "#EXT-X-DISCONTINUITY-SEQUENCE:"
            f"{self.segments[0].discontinuity if self.segments else 0}",
        ]
        with_parts = {segment.msn for segment in self.segments[-parts_for_last:]}
        previous: Segment | None = None
        for segment in self.segments:
            if not segment.parts:
                continue
            if previous is None or segment.discontinuity != previous.discontinuity:
                if previous is not None:
                    lines.append("#EXT-X-DISCONTINUITY")
                lines.append(f'#EXT-X-MAP:URI="{init_name(segment.discontinuity)}"')
            previous = segment
            if segment.msn in with_parts:
                for part in segment.parts:
                    independent = ",INDEPENDENT=YES" if part.independent else ""
                    lines.append(
                        f'#EXT-X-PART:DURATION={part.duration:.5f},URI="{part.name}"{independent}'
                    )
            if segment.name is not None:
                lines += [f"#EXTINF:{segment.duration:.5f},", segment.name]
        hint = self.preload_hint()
        if hint is not None:
            lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{hint}"')
        if self.ended:
            lines.append("#EXT-X-ENDLIST")
        return "\n".join(lines) + "\n"


@dataclass
class _Segmenter:
    """Groups parts into segments, writes the files, slides the window (reader thread)."""

    directory: Path
    segment_target: float
    target_duration: int
    window: int
    want_keyframe: Callable[[], None]
    msn: int = 0
    asked: bool = False
    parts: list[tuple[Part, bytes]] = field(default_factory=list)
    done: list[Segment] = field(default_factory=list)
    ended: bool = False
    discontinuity: int = -1
    """Of the current epoch; -1 before the first."""
    epoch_parts: int = 0

    def start_epoch(self, init: bytes) -> None:
        """A new ffmpeg wrote its initialization section (``ftyp`` + ``moov``)."""
        if self.discontinuity < 0 or self.epoch_parts:
            self.discontinuity += 1
        self.epoch_parts = 0
        (self.directory / init_name(self.discontinuity)).write_bytes(init)

    def end_epoch(self) -> None:
        """That ffmpeg ended: its last segment is complete, however short."""
        if self.parts:
            self._complete()

    def add(self, fragment: Fragment, data: bytes) -> None:
        current = sum(part.duration for part, _ in self.parts)
        if self.parts and (
            (fragment.independent and current >= self.segment_target - KEYFRAME_LEAD)
            # EXTINF rounded must not exceed the target duration: cut without a keyframe.
            or current + fragment.duration >= self.target_duration + 0.5
        ):
            self._complete()
            current = 0.0
        part = Part(part_name(self.msn, len(self.parts)), fragment.duration, fragment.independent)
        (self.directory / part.name).write_bytes(data)
        self.parts.append((part, data))
        self.epoch_parts += 1
        if not self.asked and current + part.duration >= self.segment_target - KEYFRAME_LEAD:
            # WebRTC publishers send keyframes only when asked: ask in time for the
            # next segment to start on one.
            self.asked = True
            self.want_keyframe()

    def _complete(self) -> None:
        name = segment_name(self.msn)
        (self.directory / name).write_bytes(b"".join(data for _, data in self.parts))
        parts = tuple(part for part, _ in self.parts)
        self.done.append(Segment(self.msn, parts, self.discontinuity, name))
        self.msn += 1
        self.parts = []
        self.asked = False
        # Files live two segments past the playlist window: in-flight requests finish.
        while len(self.done) > self.window + 2:
            old = self.done.pop(0)
            stale = [str(old.name), *(part.name for part in old.parts)]
            if old.discontinuity not in {self.discontinuity, self.done[0].discontinuity}:
                stale.append(init_name(old.discontinuity))
            for name in stale:
                (self.directory / name).unlink(missing_ok=True)

    def state(self, part_target: float) -> PlaylistState:
        current = Segment(self.msn, tuple(part for part, _ in self.parts), self.discontinuity)
        listed = self.done[-self.window :] if self.ended else [*self.done[-self.window :], current]
        names = {init_name(self.discontinuity), *(part.name for part in current.parts)}
        for segment in self.done:
            names.update((str(segment.name), init_name(segment.discontinuity)))
            names.update(part.name for part in segment.parts)
        return PlaylistState(
            target_duration=self.target_duration,
            part_target=part_target,
            segments=tuple(listed),
            files=frozenset(names),
            ended=self.ended,
        )


class HlsPackager(StageFeed):
    """A :class:`~media.frames.FrameSink` publishing the stage as LL-HLS in ``directory``.

    Create it on the event loop that will serve the playlist. ``segment_target`` and
    ``part_target`` are in seconds; ``window`` segments stay in the playlist.
    """

    def __init__(
        self,
        directory: Path,
        *,
        segment_target: float = SEGMENT_TARGET,
        part_target: float = PART_TARGET,
        window: int = 10,
        request_keyframe: Callable[[str], None] | None = None,
        on_error: Callable[[str], None] | None = None,
        video_size: tuple[int, int] = (1280, 720),
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for stale in [*directory.glob("*.m4s"), *directory.glob("init*.mp4")]:
            stale.unlink(missing_ok=True)
        self.directory = directory
        self.part_target = part_target
        self._loop = asyncio.get_running_loop()
        self._segmenter = _Segmenter(
            directory, segment_target, math.ceil(segment_target), window, self._keyframe_due
        )
        self.state = PlaylistState(math.ceil(segment_target), part_target)
        self._changed = asyncio.Event()
        super().__init__(
            directory.name,
            request_keyframe=request_keyframe,
            on_error=on_error,
            video_size=video_size,
            keyframe_interval=segment_target,
        )

    def output_args(self) -> list[str]:
        # Fragments at ~3/4 of the part target (ffmpeg closes a fragment on the first
        # frame past it), and at every keyframe so segments can start on one.
        fragment_us = int(self.part_target * 0.75 * 1_000_000)
        return [
            "-f", "mp4",
            "-movflags", "frag_keyframe+empty_moov+default_base_moof",
            "-frag_duration", str(fragment_us),
            "-flush_packets", "1",
            "pipe:1",
        ]  # fmt: skip

    def _keyframe_due(self) -> None:
        if not self.transcoding:  # ffmpeg places the transcode's keyframes itself
            self.want_keyframe()

    def consume_output(self, stdout: IO[bytes]) -> None:
        init: list[bytes] = []
        tracks: dict[int, TrackDefaults] = {}
        moof: bytes | None = None
        while (box := read_box(stdout)) is not None:
            kind, data = box
            if kind in (b"ftyp", b"moov"):
                init.append(data)
                if kind == b"moov":
                    tracks = parse_moov(data)
                    self._segmenter.start_epoch(b"".join(init))
            elif kind == b"moof":
                moof = data
            elif kind == b"mdat" and moof is not None:
                self._segmenter.add(parse_moof(moof, tracks), moof + data)
                moof = None
                self._publish_threadsafe(self._segmenter.state(self.part_target))

    def end_of_epoch(self) -> None:
        self._segmenter.end_epoch()
        self._publish_threadsafe(self._segmenter.state(self.part_target))

    async def close(self) -> None:
        """Finish the stream; the playlist then ends with EXT-X-ENDLIST."""
        await super().close()
        self._segmenter.ended = True
        self._publish(self._segmenter.state(self.part_target))

    def _publish_threadsafe(self, state: PlaylistState) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
            self._loop.call_soon_threadsafe(self._publish, state)

    def _publish(self, state: PlaylistState) -> None:
        self.state = state
        self._changed.set()
        self._changed = asyncio.Event()

    # --- serving, on the event loop ------------------------------------------------

    def validate(self, msn: int | None, part: int | None) -> str | None:
        """Why a blocking-reload request is invalid (HTTP 400), or None."""
        if part is not None and msn is None:
            return "_HLS_part without _HLS_msn"
        if (msn is not None and msn < 0) or (part is not None and part < 0):
            return "negative _HLS_msn or _HLS_part"
        position = self.state.position
        newest = position[0] if position else 0
        if msn is not None and msn > newest + 2:
            return f"_HLS_msn={msn} is more than two segments ahead of {newest}"
        return None

    async def _within_reload_time(self, ready: Callable[[PlaylistState], bool]) -> None:
        """Wait until ``ready(self.state)``, at most three target durations (the
        spec's bound). Not less: a cache in front keeps a reload that timed out for a
        second, and every player would wait on that stale answer (or, once it expired,
        all reach the hub) when the stream merely hiccups."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3 * self.state.target_duration):
                while not ready(self.state):
                    await self._changed.wait()

    async def wait_for(self, msn: int, part: int | None) -> bool:
        """Blocking reload: wait until the playlist lists part ``part`` of segment
        ``msn`` (the whole segment when ``part`` is None), at most 3 target durations.
        True if it does; :attr:`state` then renders that playlist."""
        await self._within_reload_time(lambda state: state.has(msn, part))
        return self.state.has(msn, part)

    async def file(self, name: str) -> Path | None:
        """The path of a produced file, None for any other name. The hinted next part
        is waited for, as LL-HLS clients request it before it exists, until it is
        there or the hint moved on (its segment ended before it)."""
        if name == self.state.preload_hint():
            await self._within_reload_time(
                lambda state: name in state.files or state.preload_hint() != name
            )
        if name not in self.state.files:
            return None
        return self.directory / name
