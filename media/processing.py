"""Offline library processing with ffmpeg: a Recording directory or an uploaded file
becomes HLS VOD + a faststart MP4 + a JPEG poster in ``<library_dir>/<item_id>/``.

A recording shows its program over time, by the rule households see live
(:mod:`media.program`; see :func:`program_timeline`): the screen share on stage while
there is one, else the lecturer's camera, and every voice on stage mixed. A picture
that never changes (the plain lecture) is remuxed (``-c:v copy``) unless it is VP8;
one that changes is transcoded once onto a :data:`CANVAS`. Audio becomes AAC
(microphones in mono): for a remuxed recording, that audio encode is most of the
processing time, and mixing several voices adds little to it.

The optional ``composite`` layout transcodes once, with ffmpeg's filter graph, into the
lecturer (:func:`choose_lecturer`) large and the screen share or a station on stage
beside it.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import math
import os
import shutil
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import av
import ffmpeg
import imageio_ffmpeg

from media.frames import Codec, Kind, Source
from media.program import lecturer, program

Layout = Literal["lecturer", "composite"]
JobKind = Literal["recording", "upload"]
Progress = Callable[[float], Awaitable[None]]
"""Receives the percentage done, 0 to 100."""

HLS_PLAYLIST = "index.m3u8"
MP4_FILE = "video.mp4"
POSTER_FILE = "poster.jpg"
MANIFEST = "recording.json"

CANVAS = (1280, 720)
"""Composite frame size."""
SIDE_BY_SIDE_MAIN = (854, 480)
SIDE_BY_SIDE_SIDE = (426, 240)
"""While something is beside the lecturer: the lecturer at 2/3 width, the other at 1/3."""


class ProcessingError(Exception):
    """Processing failed; the message says why (for ffmpeg: the end of its log)."""


@functools.cache
def ffmpeg_exe() -> str:
    return str(imageio_ffmpeg.get_ffmpeg_exe())


# --- probing -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MediaInfo:
    duration: float
    """Seconds; 0 when the container does not say."""
    video_stream: int | None
    """Index of the first video stream that is a video (not a cover picture)."""
    video_codec: str | None
    """FFmpeg's codec name (``h264``, ``vp8``…) of that stream."""
    pix_fmt: str | None
    audio_codec: str | None

    @property
    def remuxable(self) -> bool:
        """H.264 that every browser plays as it is (8-bit 4:2:0): copied, never re-encoded."""
        return self.video_codec == "h264" and self.pix_fmt in ("yuv420p", "yuvj420p")


COVER_PICTURE = av.stream.Disposition.attached_pic
"""A music file's cover art shows up as a one-frame video stream: it is not a video."""


def probe(path: Path) -> MediaInfo:
    """What a media file holds, read with PyAV (there is no ffprobe here).

    Raises ProcessingError for a file that is not media at all. Blocking: call it in a thread.
    """
    try:
        with av.open(str(path)) as container:
            videos = container.streams.video
            video = next((v for v in videos if not v.disposition & COVER_PICTURE), None)
            audio = next(iter(container.streams.audio), None)
            duration = container.duration / 1_000_000 if container.duration else 0.0
            return MediaInfo(
                duration=duration,
                video_stream=video.index if video else None,
                video_codec=video.codec_context.name if video else None,
                pix_fmt=video.codec_context.pix_fmt if video else None,
                audio_codec=audio.codec_context.name if audio else None,
            )
    except av.error.FFmpegError as e:
        raise ProcessingError(f"not a media file: {e}") from e


def stream_shape(path: Path) -> tuple[str, int, int, str, bytes, str | None, int | None]:
    """What decides whether two MP4s join without encoding: video codec, size, pixel
    format and parameter sets (one ``avcC`` serves the whole file); audio codec and
    rate. Blocking."""
    with av.open(str(path)) as container:
        video = container.streams.video[0].codec_context
        audio = next(iter(container.streams.audio), None)
        return (
            video.name,
            video.width,
            video.height,
            str(video.pix_fmt),
            bytes(video.extradata or b""),
            audio.codec_context.name if audio else None,
            audio.codec_context.sample_rate if audio else None,
        )


def probe_duration(path: Path) -> float:
    """A media file's duration in seconds (its container's). Blocking."""
    return probe(path).duration


def has_video(directory: Path) -> bool:
    """Whether a recording part has a video track with a file. Blocking."""
    try:
        recording = load_recording(directory)
    except ProcessingError:
        return False
    return any(t.kind == "video" for t in recording.tracks)


def media_span(path: Path) -> float:
    """Seconds from the first packet of a file's first stream to the end of its last.

    Not the container's duration: the recorder puts every file on the recording's clock,
    so a track that started late begins at a later timestamp, and a file cut short by a
    crash has no duration at all. Packets are read, never decoded; with an index (a
    cleanly closed file) only the first and the last few seconds are read.
    Blocking: call it in a thread.
    """
    try:
        span = _span(path, near_end=True)
        return span if span is not None else _span(path, near_end=False) or 0.0
    except av.error.FFmpegError as e:
        raise ProcessingError(f"unreadable media in {path.name}: {e}") from e


def _span(path: Path, *, near_end: bool) -> float | None:
    """The span, reading all packets or (``near_end``) the first and those of the last
    seconds; None when that seek found nothing (a duration guessed past the real end)."""
    with av.open(str(path)) as container:
        stream = container.streams[0]
        assert stream.time_base is not None
        spans = _packet_spans(container.demux(stream))
        first = next(spans, None)
        if first is None:
            raise ProcessingError(f"no packets in {path.name}")
        start, end = first
        if near_end and container.duration:
            with suppress(av.error.FFmpegError):
                # The demux below goes on from wherever this lands.
                container.seek(max(0, container.duration - 10_000_000), backward=True)
                spans = _packet_spans(container.demux(stream))
                after_seek = next(spans, None)
                if after_seek is None:
                    return None
                end = max(end, after_seek[1])
        for _, packet_end in spans:
            end = max(end, packet_end)
        return float((end - start) * stream.time_base)


def _packet_spans(packets: Iterable[av.Packet[Any]]) -> Iterator[tuple[int, int]]:
    """(pts, pts + duration) of each packet with a timestamp."""
    for packet in packets:
        if packet.pts is not None:
            yield packet.pts, packet.pts + (packet.duration or 0)


# --- the recording manifest ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Track:
    track_id: str
    kind: Kind
    codec: Codec
    source: Source
    participant: str
    label: str
    file: Path
    """Absolute path of the track's media file."""
    start: float
    end: float
    """``time.time()`` of the first and last frame."""


@dataclass(frozen=True, slots=True)
class StageChange:
    at: float
    stage: list[str]


@dataclass(frozen=True, slots=True)
class Recording:
    directory: Path
    started_at: float
    ended_at: float
    status: str
    error: str | None
    tracks: list[Track]
    stage: list[StageChange]


def load_recording(directory: Path) -> Recording:
    """Read ``recording.json``; ProcessingError when it is missing or malformed.

    A recording cut short (the hub killed) is processed too: a track that never got a
    frame (no ``start``, no file) is left out, one still open (no ``end``) runs to the
    end, and a recording never ended ends at the last time its manifest knows.
    """
    try:
        raw: dict[str, Any] = json.loads((directory / MANIFEST).read_text())
        tracks = [
            Track(
                track_id=str(t["track_id"]),
                kind=t["kind"],
                codec=t["codec"],
                source=t["source"],
                participant=str(t["participant"]),
                label=str(t.get("label", t["participant"])),
                file=_inside(directory, str(t["file"])),
                start=float(t["start"]),
                end=math.inf if t.get("end") is None else float(t["end"]),
            )
            for t in raw["tracks"]
            if t.get("start") is not None
        ]
        stage = sorted(
            (
                StageChange(at=float(s["at"]), stage=[str(p) for p in s["stage"]])
                for s in raw["stage"]
            ),
            key=lambda s: s.at,
        )
        started_at = float(raw["started_at"])
        known = [started_at, *(s.at for s in stage), *(t.start for t in tracks)]
        known += [t.end for t in tracks if t.end != math.inf]
        ended = raw.get("ended_at")
        return Recording(
            directory=directory,
            started_at=started_at,
            ended_at=max(known) if ended is None else float(ended),
            status=str(raw["status"]),
            error=raw.get("error"),
            tracks=[t for t in tracks if t.file.is_file()],
            stage=stage,
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ProcessingError(f"bad recording manifest in {directory}: {e!r}") from e


def _inside(directory: Path, name: str) -> Path:
    """A manifest's file name resolved, refused when it points outside the recording."""
    path = (directory / name).resolve()
    if not path.is_relative_to(directory.resolve()):
        raise ValueError(f"track file outside the recording: {name!r}")
    return path


def stage_intervals(recording: Recording) -> dict[str, list[tuple[float, float]]]:
    """For each identity, the ``time.time()`` intervals it spent on stage.

    Each stage entry holds until the next one; the last until the recording ended.
    """
    intervals: dict[str, list[tuple[float, float]]] = {}
    if not recording.stage:
        return intervals
    ends = [s.at for s in recording.stage[1:]] + [recording.ended_at]
    for change, end in zip(recording.stage, ends, strict=True):
        for identity in change.stage:
            if end > change.at:
                intervals.setdefault(identity, []).append((change.at, end))
    return intervals


def choose_lecturer(recording: Recording) -> str:
    """The participant whose program the library item shows: the program's lecturer
    (:func:`media.program.lecturer`, the rule households see live) at the first stage
    that has one; with no stage, the participants in the order their tracks started.
    A recording with screen shares only takes the first screen's participant.
    """
    tracks = sorted(recording.tracks, key=lambda t: t.start)
    videos = [t for t in tracks if t.kind == "video"]
    if not videos:
        raise ProcessingError("the recording has no video track")
    for change in recording.stage:
        chosen = lecturer(tracks, change.stage)
        if chosen is not None:
            return chosen
    return lecturer(tracks, []) or videos[0].participant


def _longest(tracks: Sequence[Track]) -> Track | None:
    return max(tracks, key=lambda t: t.end - t.start, default=None)


def lecturer_video(recording: Recording, lecturer: str) -> Track:
    """The lecturer's camera (else screen) video, the composite's main picture."""
    mine = [t for t in recording.tracks if t.participant == lecturer and t.kind == "video"]
    video = _longest([t for t in mine if t.source == "camera"]) or _longest(mine)
    if video is None:
        raise ProcessingError(f"{lecturer} has no video track")
    return video


@dataclass(frozen=True, slots=True)
class ProgramSpan:
    """A stretch of a recording's program that does not change."""

    start: float
    end: float
    """``time.time()``, like the manifest's."""
    video: Track | None
    voices: tuple[Track, ...]


def program_timeline(recording: Recording) -> list[ProgramSpan]:
    """The program (:func:`media.program.program`) over the recording: it changes only
    where a track starts or ends or the stage changes. Before the first stage entry no
    stage is known (everyone counts, as the rule says)."""
    tracks = sorted(recording.tracks, key=lambda t: t.start)
    end = recording.ended_at
    points = sorted(
        {end}
        | {t.start for t in tracks if t.start < end}
        | {t.end for t in tracks if t.end < end}
        | {s.at for s in recording.stage if s.at < end}
    )
    spans: list[ProgramSpan] = []
    for a, b in itertools.pairwise(points):
        mid = (a + b) / 2
        running = [t for t in tracks if t.start <= mid < t.end]
        stages = [s.stage for s in recording.stage if s.at <= mid]
        chosen = program(running, stages[-1] if stages else [])
        by_id = {t.track_id: t for t in running}
        video = by_id[chosen.video] if chosen.video is not None else None
        voices = tuple(by_id[v] for v in chosen.audio)
        if spans and spans[-1].end == a and (spans[-1].video, spans[-1].voices) == (video, voices):
            spans[-1] = ProgramSpan(spans[-1].start, b, video, voices)
        elif running:
            spans.append(ProgramSpan(a, b, video, voices))
    return spans


def heard(
    spans: Sequence[ProgramSpan], t0: float, duration: float
) -> dict[Track, list[tuple[float, float]]]:
    """For each voice of ``spans``, the seconds from ``t0`` it is heard, within
    ``[0, duration]``, adjoining stretches joined."""
    voices: dict[Track, list[tuple[float, float]]] = {}
    for span in spans:
        a, b = max(span.start - t0, 0.0), min(span.end - t0, duration)
        if b <= a:
            continue
        for voice in span.voices:
            stretches = voices.setdefault(voice, [])
            if stretches and stretches[-1][1] == a:
                stretches[-1] = (stretches[-1][0], b)
            else:
                stretches.append((a, b))
    return voices


@dataclass(frozen=True, slots=True)
class Beside:
    """One interval of the composite: ``track`` is shown beside the lecturer."""

    start: float
    end: float
    """Seconds from the start of the lecturer's video."""
    track: Track


def beside_timeline(recording: Recording, lecturer: Track, duration: float) -> list[Beside]:
    """What is shown beside the lecturer, following the stage timeline.

    A screen share wins; otherwise the first other participant on stage with a camera
    track running. Times are clipped to the program ``[0, duration]``.
    """
    t0 = lecturer.start
    videos = [t for t in recording.tracks if t.kind == "video" and t != lecturer]
    stage = stage_intervals(recording)
    points = sorted(
        {t0, t0 + duration}
        | {s.at for s in recording.stage}
        | {x for t in videos for x in (t.start, t.end)}
    )
    timeline: list[Beside] = []
    for a, b in itertools.pairwise(points):
        if a < t0 or b > t0 + duration or b <= a:
            continue
        mid = (a + b) / 2
        running = [t for t in videos if t.start <= mid < t.end]
        screens = [t for t in running if t.source == "screen"]
        stations = [
            t
            for t in running
            if t.source == "camera"
            and t.participant != lecturer.participant
            and any(x <= mid < y for x, y in stage.get(t.participant, []))
        ]
        if not screens and not stations:
            continue
        chosen = (screens or stations)[0]
        if timeline and timeline[-1].track == chosen and timeline[-1].end == a - t0:
            timeline[-1] = Beside(timeline[-1].start, b - t0, chosen)
        else:
            timeline.append(Beside(a - t0, b - t0, chosen))
    return timeline


# --- running ffmpeg ------------------------------------------------------------------


NICENESS = 10
"""Offline work yields the CPU to live forwarding, which shares the hub's two cores."""


async def run_ffmpeg(stream: Any, *, duration: float, progress: Progress) -> None:
    """Run an ffmpeg-python graph at low priority, reporting progress from ``-progress pipe:1``.

    The process is killed if this coroutine is cancelled. Raises ProcessingError with the
    tail of ffmpeg's log when it fails.
    """
    args = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-nostats"]
    args += ["-progress", "pipe:1", *ffmpeg.get_args(stream, overwrite_output=True)]
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    with suppress(OSError):  # it may have exited already
        os.setpriority(os.PRIO_PROCESS, proc.pid, NICENESS)
    log: deque[str] = deque(maxlen=20)

    async def read_log(stderr: asyncio.StreamReader) -> None:
        async for line in stderr:
            log.append(line.decode(errors="replace").rstrip())

    log_task = asyncio.create_task(read_log(proc.stderr))
    try:
        async for raw in proc.stdout:
            key, _, value = raw.decode(errors="replace").strip().partition("=")
            if key == "out_time_us" and value.isdigit() and duration > 0:
                await progress(min(100.0, int(value) / 1e6 / duration * 100))
            elif key == "progress" and value == "end":
                await progress(100.0)
        returncode = await proc.wait()
        await log_task
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log_task.cancel()
        with suppress(asyncio.CancelledError):
            await log_task
    if returncode != 0:
        raise ProcessingError(f"ffmpeg exited with {returncode}: " + "\n".join(log))


def _part(progress: Progress, lo: float, hi: float) -> Progress:
    """Map one step's 0–100 onto ``lo``–``hi`` of the whole job."""

    async def report(percent: float) -> None:
        await progress(lo + (hi - lo) * percent / 100)

    return report


def _fit(stream: Any, size: tuple[int, int]) -> Any:
    """Scale into ``size`` keeping the aspect ratio, black bars around."""
    w, h = size
    return stream.filter("scale", w, h, force_original_aspect_ratio="decrease").filter(
        "pad", w, h, "(ow-iw)/2", "(oh-ih)/2"
    )


def _canvas(duration: float) -> Any:
    w, h = CANVAS
    return ffmpeg.input(f"color=c=black:s={w}x{h}:r=25:d={duration:.3f}", f="lavfi")


def _placed_video(track: Track, t0: float) -> Any:
    """A track's video moved onto the program's clock, which starts at ``t0``."""
    offset = track.start - t0
    return ffmpeg.input(str(track.file))["v:0"].filter("setpts", f"PTS-STARTPTS+({offset:.3f})/TB")


def _aligned_audio(track: Track, t0: float) -> Any:
    """A track's audio moved onto the program's clock, which starts at ``t0``."""
    audio = ffmpeg.input(str(track.file))["a:0"].filter("asetpts", "PTS-STARTPTS")
    offset = track.start - t0
    if offset > 0:
        return audio.filter("adelay", delays=str(round(offset * 1000)), all=1)
    if offset < 0:
        return audio.filter("atrim", start=-offset).filter("asetpts", "PTS-STARTPTS")
    return audio


def _between(intervals: Iterable[tuple[float, float]]) -> str:
    return "+".join(f"between(t,{a:.3f},{b:.3f})" for a, b in intervals) or "0"


def _times(timeline: Iterable[Beside]) -> list[tuple[float, float]]:
    return [(b.start, b.end) for b in timeline]


def _program_sound(spans: Sequence[ProgramSpan], t0: float, duration: float) -> Any | None:
    """Every voice of the program on the clock that starts at ``t0``, each heard only
    while it is in the program (a station sent back is not), mixed; None when silent."""
    sounds = [
        _aligned_audio(voice, t0).filter("volume", 0, enable=f"not({_between(stretches)})")
        for voice, stretches in heard(spans, t0, duration).items()
    ]
    if len(sounds) <= 1:
        return sounds[0] if sounds else None
    # normalize=0: each voice at its own level, as live.
    return ffmpeg.filter(sounds, "amix", inputs=len(sounds), duration="longest", normalize=0)


X264 = {
    "vcodec": "libx264",
    "preset": "veryfast",
    "crf": 23,
    "pix_fmt": "yuv420p",
    "force_key_frames": "expr:gte(t,n_forced*2)",
}
"""Transcoding settings; a keyframe every 2 s so HLS segments cut evenly."""
AAC = {"acodec": "aac", "audio_bitrate": "128k"}
MICROPHONE_AAC = {"acodec": "aac", "audio_bitrate": "96k", "ac": 1}
"""Microphones are speech, and WebRTC Opus is mono content in two channels: encoding one
channel nearly halves the AAC encoder's time, which is most of a remuxed recording's."""


# --- the processor -----------------------------------------------------------------


class Processor:
    """Turns a recording directory or an uploaded file into a library item's files."""

    def __init__(self, library_dir: Path, *, hls_time: float = 6.0) -> None:
        self.library_dir = library_dir
        self.hls_time = hls_time

    async def process(
        self,
        item_id: str,
        kind: JobKind,
        sources: list[Path],
        layout: Layout,
        progress: Progress,
    ) -> float:
        """Make ``<library_dir>/<item_id>/``; returns the program's duration in seconds.
        ``sources``: the uploaded file, or the recording's directories, one per part (a
        hub restart cuts a recording into parts), joined in order.

        Work happens in ``<item_id>.partial`` and replaces the item's folder only when
        complete, so a half-made item is never served and a retry starts clean.
        """
        work = self.library_dir / f"{item_id}.partial"
        await asyncio.to_thread(_fresh_dir, work)
        try:
            mp4 = work / MP4_FILE
            await progress(0.0)
            if kind == "upload":
                await self._upload_mp4(sources[0], mp4, _part(progress, 0, 85))
            else:
                await self._recording_parts_mp4(sources, layout, mp4, _part(progress, 0, 85))
            info = await asyncio.to_thread(probe, mp4)
            await self._hls(mp4, work, info.duration, _part(progress, 85, 97))
            await self._poster(mp4, work / POSTER_FILE, info.duration)
            await asyncio.to_thread(_replace_dir, self.library_dir / item_id, work)
        finally:
            await asyncio.to_thread(shutil.rmtree, work, ignore_errors=True)
        await progress(100.0)
        return info.duration

    async def _upload_mp4(self, source: Path, mp4: Path, progress: Progress) -> None:
        info = await asyncio.to_thread(probe, source)
        if info.video_codec is None:
            raise ProcessingError("the upload has no video stream")
        inp = ffmpeg.input(str(source))
        video, codec = _program_video(inp[str(info.video_stream)], info)
        streams = [video]
        if info.audio_codec is not None:
            streams.append(inp["a:0"])
            codec |= {"acodec": "copy"} if info.audio_codec == "aac" else AAC
        out = ffmpeg.output(*streams, str(mp4), movflags="+faststart", **codec)
        await run_ffmpeg(out, duration=info.duration, progress=progress)

    async def _recording_parts_mp4(
        self, directories: list[Path], layout: Layout, mp4: Path, progress: Progress
    ) -> None:
        """One MP4 of a recording's parts, in order: each made as a whole recording
        would be, then joined. A part that holds no video (a restart nobody published
        after) is left out."""
        usable = [d for d in directories if await asyncio.to_thread(has_video, d)]
        if len(usable) <= 1:
            # One part, or none with video: processed as it is, so the error says why.
            await self._recording_mp4((usable or directories)[0], layout, mp4, progress)
            return
        made: list[Path] = []
        for n, directory in enumerate(usable):
            part = mp4.with_name(f"part-{n:02d}.mp4")
            share = 80 / len(usable)
            await self._recording_mp4(
                directory, layout, part, _part(progress, n * share, (n + 1) * share)
            )
            made.append(part)
        await self._join(made, mp4, _part(progress, 80, 100))
        for part in made:
            await asyncio.to_thread(part.unlink)

    async def _join(self, parts: list[Path], mp4: Path, progress: Progress) -> None:
        """Parts alike (codec, size, sound) are joined as they are, without encoding;
        others (the camera changed its size across a restart) to the first one's size."""
        infos = [await asyncio.to_thread(stream_shape, part) for part in parts]
        duration = sum([await asyncio.to_thread(probe_duration, part) for part in parts])
        if all(shape == infos[0] for shape in infos):
            listing = mp4.with_name("parts.txt")
            listing.write_text("".join(f"file '{part.name}'\n" for part in parts))
            out = ffmpeg.output(
                ffmpeg.input(str(listing), f="concat", safe=0),
                str(mp4),
                c="copy",
                movflags="+faststart",
            )
            await run_ffmpeg(out, duration=duration, progress=progress)
            await asyncio.to_thread(listing.unlink)
            return
        width, height = infos[0][1], infos[0][2]
        streams: list[Any] = []
        with_audio = all(shape[5] is not None for shape in infos)
        for part in parts:
            inp = ffmpeg.input(str(part))
            streams.append(
                inp["v:0"]
                .filter("scale", width, height, force_original_aspect_ratio="decrease")
                .filter("pad", width, height, "(ow-iw)/2", "(oh-ih)/2")
                .filter("setsar", 1)
            )
            if with_audio:
                streams.append(inp["a:0"])
        joined = ffmpeg.concat(*streams, v=1, a=1 if with_audio else 0).node
        outputs = [joined[0], joined[1]] if with_audio else [joined[0]]
        codec: dict[str, Any] = dict(X264) | (MICROPHONE_AAC if with_audio else {})
        out = ffmpeg.output(*outputs, str(mp4), movflags="+faststart", **codec)
        await run_ffmpeg(out, duration=duration, progress=progress)

    async def _recording_mp4(
        self, directory: Path, layout: Layout, mp4: Path, progress: Progress
    ) -> None:
        recording = await asyncio.to_thread(load_recording, directory)
        spans = program_timeline(recording)
        if layout == "composite":
            video = lecturer_video(recording, choose_lecturer(recording))
            duration = await asyncio.to_thread(media_span, video.file)
            out = self._composite(recording, spans, video, duration, mp4)
            await run_ffmpeg(out, duration=duration, progress=progress)
            return
        pictures = [span for span in spans if span.video is not None]
        if not pictures:
            raise ProcessingError("the recording has no video track")
        if len({span.video for span in pictures}) == 1:
            # One picture throughout (the plain lecture): remuxed when it can be. The
            # probe decides, not the manifest: the file is what gets muxed.
            picture = pictures[0].video
            assert picture is not None
            info = await asyncio.to_thread(probe, picture.file)
            t0, duration = picture.start, await asyncio.to_thread(media_span, picture.file)
            stream, codec = _program_video(ffmpeg.input(str(picture.file))["v:0"], info)
        else:
            t0, duration = pictures[0].start, pictures[-1].end - pictures[0].start
            stream, codec = self._switching(pictures, t0, duration), dict(X264)
        streams = [stream]
        sound = _program_sound(spans, t0, duration)
        if sound is not None:
            streams.append(sound)
            codec |= MICROPHONE_AAC
        # Cut at the picture's end: a microphone that ran on would freeze the last frame.
        out = ffmpeg.output(*streams, str(mp4), t=f"{duration:.3f}", movflags="+faststart", **codec)
        await run_ffmpeg(out, duration=duration, progress=progress)

    def _switching(self, pictures: Sequence[ProgramSpan], t0: float, duration: float) -> Any:
        """A picture that changes over time: each source on the canvas while it is
        the program's, black where none is."""
        out = _canvas(duration)
        shown: dict[Track, list[tuple[float, float]]] = {}
        for span in pictures:
            assert span.video is not None
            shown.setdefault(span.video, []).append((span.start - t0, span.end - t0))
        for track, stretches in shown.items():
            out = out.overlay(
                _fit(_placed_video(track, t0), CANVAS),
                enable=_between(stretches),
                eof_action="pass",
            )
        return out

    def _composite(
        self,
        recording: Recording,
        spans: Sequence[ProgramSpan],
        lecturer: Track,
        duration: float,
        mp4: Path,
    ) -> Any:
        """Lecturer large; while something is beside them, side by side (2/3 + 1/3).
        The sound is the program's: every voice on stage, each while on stage.
        """
        timeline = beside_timeline(recording, lecturer, duration)
        h = CANVAS[1]
        canvas = _canvas(duration)
        camera = ffmpeg.input(str(lecturer.file))["v:0"].filter("setpts", "PTS-STARTPTS")
        if timeline:
            split = camera.split()
            full, small = split[0], split[1]
            beside = _between(_times(timeline))
            out = canvas.overlay(_fit(full, CANVAS), enable=f"not({beside})", eof_action="pass")
            main_h = SIDE_BY_SIDE_MAIN[1]
            out = out.overlay(
                _fit(small, SIDE_BY_SIDE_MAIN),
                x=0,
                y=(h - main_h) // 2,
                enable=beside,
                eof_action="pass",
            )
        else:
            out = canvas.overlay(_fit(camera, CANVAS), eof_action="pass")
        shown = list(dict.fromkeys(b.track for b in timeline))
        for track in shown:
            out = out.overlay(
                _fit(_placed_video(track, lecturer.start), SIDE_BY_SIDE_SIDE),
                x=SIDE_BY_SIDE_MAIN[0],
                y=(h - SIDE_BY_SIDE_SIDE[1]) // 2,
                enable=_between(_times(b for b in timeline if b.track == track)),
                eof_action="pass",
            )
        streams = [out]
        codec: dict[str, Any] = dict(X264)
        sound = _program_sound(spans, lecturer.start, duration)
        if sound is not None:
            streams.append(sound)
            codec |= MICROPHONE_AAC
        return ffmpeg.output(
            *streams, str(mp4), t=f"{duration:.3f}", movflags="+faststart", **codec
        )

    async def _hls(self, mp4: Path, work: Path, duration: float, progress: Progress) -> None:
        """HLS VOD cut from the finished MP4 without re-encoding."""
        out = ffmpeg.input(str(mp4)).output(
            str(work / HLS_PLAYLIST),
            c="copy",
            f="hls",
            hls_time=self.hls_time,
            hls_playlist_type="vod",
            hls_segment_filename=str(work / "seg_%05d.ts"),
        )
        await run_ffmpeg(out, duration=duration, progress=progress)

    async def _poster(self, mp4: Path, poster: Path, duration: float) -> None:
        """A frame a little way in (the first one is often black), at most 640 wide."""

        async def ignore(percent: float) -> None:
            pass

        seek = f"{min(duration * 0.1, 10.0):.3f}"
        frame = ffmpeg.input(str(mp4), ss=seek)["v:0"].filter("scale", "min(640,iw)", -2)
        out = frame.output(str(poster), vframes=1, **{"q:v": 3, "update": 1})
        await run_ffmpeg(out, duration=0, progress=ignore)


def _program_video(stream: Any, info: MediaInfo) -> tuple[Any, dict[str, Any]]:
    """The video stream and its codec options: remuxed when possible, else to H.264."""
    if info.remuxable:
        return stream, {"vcodec": "copy"}
    # yuv420p needs even dimensions: an odd-sized upload loses one pixel.
    return stream.filter("scale", "trunc(iw/2)*2", "trunc(ih/2)*2"), dict(X264)


def _fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def _replace_dir(final: Path, work: Path) -> None:
    shutil.rmtree(final, ignore_errors=True)
    work.rename(final)
