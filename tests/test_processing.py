"""Library processing and its job runner, with the real ffmpeg on real files.

The media helpers at the top also serve tests/test_library_http.py.
"""

from __future__ import annotations

import array
import asyncio
import datetime
import json
import math
import os
import shutil
import struct
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import av
import imageio_ffmpeg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from media.frames import EncodedFrame, Kind, Source
from media.jobs import JobRunner, JobStatus
from media.library import ItemStatus, Library, Theme, create_tables, jobs_table
from media.processing import (
    CANVAS,
    NICENESS,
    Beside,
    MediaInfo,
    ProcessingError,
    Processor,
    ProgramSpan,
    Recording,
    StageChange,
    Track,
    beside_timeline,
    choose_lecturer,
    heard,
    load_recording,
    program_timeline,
    run_ffmpeg,
    stage_intervals,
)
from media.recorder import Recorder
from media.testing import interleave, make_clip, play
from tests.helpers import tones_over_time, wait_until

T0 = 1_700_000_000.0
SECONDS = 4.0


# --- making real media --------------------------------------------------------------


def ffmpeg_make(*args: str) -> None:
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    subprocess.run([exe, "-nostdin", "-v", "error", "-y", *args], check=True, timeout=60)


def make_video(path: Path, codec: str, seconds: float = SECONDS, pattern: str = "testsrc") -> Path:
    """A video-only file: H.264 High (as OBS sends) or VP8 (as browsers send)."""
    source = ["-f", "lavfi", "-i", f"{pattern}=size=320x240:rate=25", "-t", str(seconds)]
    if codec == "H264":
        encode = ["-c:v", "libx264", "-profile:v", "high", "-pix_fmt", "yuv420p", "-g", "25"]
        encode += ["-preset", "veryfast"]
    else:
        encode = ["-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "300k"]
    ffmpeg_make(*source, *encode, str(path))
    return path


def make_audio_file(path: Path, seconds: float = SECONDS) -> Path:
    """An Opus-only file, as the recorder writes a microphone (two channels, like WebRTC)."""
    ffmpeg_make(
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
        "-t", str(seconds), "-ac", "2", "-c:a", "libopus", str(path),
    )  # fmt: skip
    return path


def make_recording(directory: Path, video_codec: str = "H264") -> Path:
    """A Recording directory: the center lectures (camera + microphone from T0) alone on
    stage; station st01, off stage, shares its screen from T0+1 (the composite shows
    it beside the lecturer, the program does not)."""
    directory.mkdir(parents=True, exist_ok=True)
    ext = "mkv" if video_codec == "H264" else "webm"
    make_video(directory / f"camera.{ext}", video_codec)
    make_audio_file(directory / "mic.mkv", SECONDS - 0.2)
    make_video(directory / "screen.webm", "VP8", SECONDS - 1, pattern="testsrc2")

    def track(
        tid: str, kind: str, codec: str, source: str, who: str, file: str, start: float
    ) -> dict[str, Any]:
        return {
            "track_id": tid, "kind": kind, "codec": codec, "source": source,
            "participant": who, "label": who.upper(), "file": file,
            "start": T0 + start, "end": T0 + SECONDS,
        }  # fmt: skip

    manifest = {
        "started_at": T0,
        "ended_at": T0 + SECONDS,
        "status": "stopped",
        "error": None,
        "tracks": [
            track("v1", "video", video_codec, "camera", "center", f"camera.{ext}", 0),
            track("a1", "audio", "opus", "microphone", "center", "mic.mkv", 0.2),
            track("s1", "video", "VP8", "screen", "st01", "screen.webm", 1),
        ],
        "stage": [{"at": T0, "stage": ["center"]}],
    }
    (directory / "recording.json").write_text(json.dumps(manifest))
    return directory


def video_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(container.streams.video[0]) if p.size]


def top_level_boxes(path: Path) -> list[str]:
    data = path.read_bytes()
    boxes, pos = [], 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
        boxes.append(kind.decode("latin-1"))
        pos += size or len(data)
    return boxes


def ffmpeg_processes(marker: str) -> list[int]:
    """Pids of running processes whose command line mentions ``marker``."""
    found = []
    for pid in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if pid.isdigit() and marker.encode() in cmdline and b"ffmpeg" in cmdline:
            found.append(int(pid))
    return found


@pytest.fixture(scope="session")
def h264_recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_recording(tmp_path_factory.mktemp("rec-h264"), "H264")


@pytest.fixture(scope="session")
def vp8_recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_recording(tmp_path_factory.mktemp("rec-vp8"), "VP8")


async def no_progress(percent: float) -> None:
    pass


async def process(
    tmp_path: Path, source: Path, kind: str = "recording", layout: str = "lecturer"
) -> tuple[Path, float]:
    item_id = "0" * 32
    duration = await Processor(tmp_path / "library").process(
        item_id,
        kind,  # type: ignore[arg-type]
        [source],
        layout,  # type: ignore[arg-type]
        no_progress,
    )
    return tmp_path / "library" / item_id, duration


# --- choosing what to show: pure functions ------------------------------------------


def rec(
    tracks: list[tuple[str, Kind, Source, float, float]], stage: list[tuple[float, list[str]]]
) -> Recording:
    """A Recording from (participant, kind, source, start, end) rows, times from 0."""
    return Recording(
        directory=Path("/nowhere"),
        started_at=0.0,
        ended_at=100.0,
        status="stopped",
        error=None,
        tracks=[
            Track(
                track_id=f"{who}-{source}",
                kind=kind,
                codec="VP8" if kind == "video" else "opus",
                source=source,
                participant=who,
                label=who,
                file=Path(f"/nowhere/{who}-{source}"),
                start=start,
                end=end,
            )
            for who, kind, source, start, end in tracks
        ],
        stage=[StageChange(at=at, stage=s) for at, s in stage],
    )


def test_stage_intervals_run_until_the_next_change_and_the_end() -> None:
    r = rec([], [(0, ["a"]), (10, ["a", "b"]), (30, ["b"])])
    assert stage_intervals(r) == {"a": [(0, 10), (10, 30)], "b": [(10, 30), (30, 100)]}


@pytest.mark.parametrize(
    ("stage", "expected"),
    [
        ([(0, ["a"]), (10, ["b"])], "a"),  # the first lecturer on stage, however long
        ([(0, ["b", "a"])], "b"),  # the first in stage order
        ([(0, ["nobody-with-video"]), (20, ["b"])], "b"),  # only those with a camera count
        ([], "a"),  # no stage: the earliest camera
    ],
)
def test_choose_lecturer(stage: list[tuple[float, list[str]]], expected: str) -> None:
    r = rec(
        [
            ("a", "video", "camera", 0, 100),
            ("b", "video", "camera", 5, 100),
            ("b", "video", "screen", 1, 100),
            ("nobody-with-video", "audio", "microphone", 0, 100),
        ],
        stage,
    )
    assert choose_lecturer(r) == expected


def test_the_program_follows_the_stage_over_a_recording() -> None:
    r = rec(
        [
            ("a", "video", "camera", 0, 100),
            ("a", "audio", "microphone", 0, 100),
            ("b", "video", "camera", 0, 100),
            ("b", "audio", "microphone", 0, 100),
            ("b", "video", "screen", 30, 50),
            ("c", "audio", "microphone", 0, 100),
        ],
        [(0, ["a"]), (20, ["a", "b"]), (40, ["a"]), (60, ["a", "b"]), (70, ["a"])],
    )
    a_cam, a_mic, _, b_mic, b_screen, _ = r.tracks
    # b's voice while b is on stage, b's screen while both run; c never (off stage).
    assert program_timeline(r) == [
        ProgramSpan(0, 20, a_cam, (a_mic,)),
        ProgramSpan(20, 30, a_cam, (a_mic, b_mic)),
        ProgramSpan(30, 40, b_screen, (a_mic, b_mic)),
        ProgramSpan(40, 60, a_cam, (a_mic,)),
        ProgramSpan(60, 70, a_cam, (a_mic, b_mic)),
        ProgramSpan(70, 100, a_cam, (a_mic,)),
    ]
    assert heard(program_timeline(r), 10, 80) == {
        a_mic: [(0, 80)],
        b_mic: [(10, 30), (50, 60)],
    }


def test_a_plain_lecture_is_one_program_span() -> None:
    r = rec([("a", "video", "camera", 5, 100), ("a", "audio", "microphone", 6, 90)], [(0, ["a"])])
    camera, mic = r.tracks
    assert program_timeline(r) == [
        ProgramSpan(5, 6, camera, ()),
        ProgramSpan(6, 90, camera, (mic,)),
        ProgramSpan(90, 100, camera, ()),
    ]


def test_beside_timeline_prefers_a_screen_then_a_station_on_stage() -> None:
    r = rec(
        [
            ("a", "video", "camera", 0, 100),
            ("b", "video", "camera", 0, 100),
            ("c", "video", "screen", 60, 80),
        ],
        [(0, ["a"]), (20, ["a", "b"]), (40, ["a"])],
    )
    lecturer, b_camera, c_screen = r.tracks
    assert beside_timeline(r, lecturer, 90) == [
        Beside(20, 40, b_camera),
        Beside(60, 80, c_screen),
    ]


def test_a_manifest_cannot_point_outside_its_recording(
    tmp_path: Path, h264_recording: Path
) -> None:
    manifest = json.loads((h264_recording / "recording.json").read_text())
    manifest["tracks"][0]["file"] = "../../etc/passwd"
    (tmp_path / "recording.json").write_text(json.dumps(manifest))
    with pytest.raises(ProcessingError, match="outside the recording"):
        load_recording(tmp_path)


def test_a_crashed_manifest_loads(tmp_path: Path, h264_recording: Path) -> None:
    recording = tmp_path / "rec"
    shutil.copytree(h264_recording, recording)
    manifest = json.loads((recording / "recording.json").read_text())
    manifest.update(ended_at=None, status="recording")
    manifest["tracks"][1]["end"] = None  # still open when the hub died
    no_frame_yet = {**manifest["tracks"][0], "track_id": "v2", "start": None, "end": None}
    manifest["tracks"].append({**no_frame_yet, "file": "never-written.mkv"})
    (recording / "recording.json").write_text(json.dumps(manifest))
    loaded = load_recording(recording)
    assert [t.track_id for t in loaded.tracks] == ["v1", "a1", "s1"]
    assert loaded.tracks[1].end == math.inf
    assert loaded.ended_at == T0 + SECONDS  # the latest time the manifest knows


@pytest.mark.parametrize(
    ("codec", "pix_fmt", "remux"),
    [("h264", "yuv420p", True), ("h264", "yuv420p10le", False), ("vp8", "yuv420p", False)],
)
def test_only_browser_playable_h264_is_remuxed(codec: str, pix_fmt: str, remux: bool) -> None:
    info = MediaInfo(
        duration=1, video_stream=0, video_codec=codec, pix_fmt=pix_fmt, audio_codec=None
    )
    assert info.remuxable is remux


# --- ffmpeg runs -----------------------------------------------------------------


async def test_run_ffmpeg_reports_progress_up_to_100() -> None:
    import ffmpeg

    seen: list[float] = []

    async def record(percent: float) -> None:
        seen.append(percent)

    graph = ffmpeg.input("testsrc=size=160x90:rate=25:duration=3", f="lavfi").output("-", f="null")
    await run_ffmpeg(graph, duration=3.0, progress=record)
    assert seen and seen[-1] == 100.0
    assert seen == sorted(seen)


async def test_run_ffmpeg_failure_carries_ffmpegs_message(tmp_path: Path) -> None:
    import ffmpeg

    graph = ffmpeg.input(str(tmp_path / "missing.mkv")).output(str(tmp_path / "out.mp4"))
    with pytest.raises(ProcessingError, match="No such file"):
        await run_ffmpeg(graph, duration=1.0, progress=no_progress)


async def test_ffmpeg_runs_at_low_priority_and_is_killed_when_cancelled(tmp_path: Path) -> None:
    import ffmpeg

    marker = tmp_path / "never-finishes.mp4"
    started = asyncio.Event()

    async def on_progress(percent: float) -> None:
        started.set()

    # -re paces reading at real time: 600 s would never finish within the test.
    graph = ffmpeg.input("testsrc=size=160x90:rate=25:duration=600", f="lavfi", re=None).output(
        str(marker)
    )
    task = asyncio.create_task(run_ffmpeg(graph, duration=600, progress=on_progress))
    await asyncio.wait_for(started.wait(), 20)
    [pid] = ffmpeg_processes(str(marker))
    assert os.getpriority(os.PRIO_PROCESS, pid) >= NICENESS  # live forwarding comes first
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ffmpeg_processes(str(marker)) == []


# --- processing a recording ---------------------------------------------------------


async def test_h264_recording_is_remuxed_not_reencoded(
    tmp_path: Path, h264_recording: Path
) -> None:
    out, duration = await process(tmp_path, h264_recording)
    # Bit-identical video packets: no encoder ran (an encoder never reproduces them).
    assert video_packets(out / "video.mp4") == video_packets(h264_recording / "camera.mkv")
    with av.open(str(out / "video.mp4")) as mp4:
        assert mp4.streams.video[0].codec_context.name == "h264"
        assert mp4.streams.video[0].codec_context.profile == "High"
        assert mp4.streams.audio[0].codec_context.name == "aac"
        assert mp4.streams.audio[0].codec_context.channels == 1  # speech: half the encode
    assert abs(duration - SECONDS) <= 0.5


async def test_outputs_play_hls_faststart_mp4_and_a_jpeg_poster(
    tmp_path: Path, h264_recording: Path
) -> None:
    out, duration = await process(tmp_path, h264_recording)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("seg_")) == [
        "index.m3u8",
        "poster.jpg",
        "video.mp4",
    ]
    playlist = (out / "index.m3u8").read_text()
    assert "#EXT-X-PLAYLIST-TYPE:VOD" in playlist and "#EXT-X-ENDLIST" in playlist
    with av.open(str(out / "index.m3u8")) as hls:
        video_frames = sum(1 for _ in hls.decode(video=0))
    with av.open(str(out / "index.m3u8")) as hls:
        audio_frames = sum(1 for _ in hls.decode(audio=0))
    assert video_frames == 25 * SECONDS
    assert audio_frames > 0
    boxes = top_level_boxes(out / "video.mp4")
    assert boxes.index("moov") < boxes.index("mdat")
    poster = (out / "poster.jpg").read_bytes()
    assert poster[:3] == b"\xff\xd8\xff" and poster[-2:] == b"\xff\xd9"
    with av.open(str(out / "poster.jpg")) as jpeg:
        frame = next(jpeg.decode(video=0))
        assert (frame.width, frame.height) == (320, 240)
    assert abs(duration - SECONDS) <= 0.5


async def test_vp8_recording_is_transcoded_to_h264(tmp_path: Path, vp8_recording: Path) -> None:
    out, duration = await process(tmp_path, vp8_recording)
    with av.open(str(out / "video.mp4")) as mp4:
        assert mp4.streams.video[0].codec_context.name == "h264"
        assert mp4.streams.audio[0].codec_context.name == "aac"
    with av.open(str(out / "index.m3u8")) as hls:
        assert sum(1 for _ in hls.decode(video=0)) >= 25 * SECONDS - 2
    assert abs(duration - SECONDS) <= 0.5


def mean_luma(frame: Any, x0: int, x1: int, y0: int, y1: int) -> float:
    plane = frame.reformat(format="gray").planes[0]
    data, stride = bytes(plane), plane.line_size
    total = sum(sum(data[y * stride + x0 : y * stride + x1]) for y in range(y0, y1))
    return total / ((x1 - x0) * (y1 - y0))


async def test_composite_follows_the_stage_timeline(tmp_path: Path, h264_recording: Path) -> None:
    out, duration = await process(tmp_path, h264_recording, layout="composite")
    assert abs(duration - SECONDS) <= 0.5
    with av.open(str(out / "video.mp4")) as mp4:
        stream = mp4.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (1280, 720)
        frames = {round(float(f.time), 2): f for f in mp4.decode(stream)}
    before, during = frames[0.48], frames[3.0]
    # Before the screen share (t < 1) the lecturer fills the height, 4:3 centred: the far
    # right is black. During it, the screen sits in the right third.
    assert mean_luma(before, 1150, 1280, 300, 420) < 5
    assert mean_luma(during, 900, 1240, 300, 420) > 30


def loudness(path: Path, start: float, end: float) -> float:
    """Mean absolute sample value of the first channel between two times."""
    total, count = 0.0, 0
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            if frame.time is not None and start <= frame.time < end:
                assert frame.format.name == "fltp"  # the AAC decoder's: a float plane each
                samples = array.array("f", bytes(frame.planes[0]))
                total += sum(abs(x) for x in samples[: frame.samples])
                count += frame.samples
    return total / max(count, 1)


async def test_composite_hears_a_station_only_while_it_is_on_stage(
    tmp_path: Path, h264_recording: Path
) -> None:
    recording = tmp_path / "rec"
    shutil.copytree(h264_recording, recording)
    ffmpeg_make(  # a silent lecturer, so all that is heard is the station
        "-f", "lavfi", "-i", "anullsrc=r=48000:cl=stereo", "-t", str(SECONDS),
        "-c:a", "libopus", str(recording / "mic.mkv"),
    )  # fmt: skip
    make_audio_file(recording / "st01-mic.mkv")
    manifest = json.loads((recording / "recording.json").read_text())
    manifest["tracks"].append(
        {**manifest["tracks"][1], "track_id": "a2", "participant": "st01", "start": T0,
         "file": "st01-mic.mkv"}
    )  # fmt: skip
    manifest["stage"].append({"at": T0 + 2, "stage": ["center", "st01"]})
    (recording / "recording.json").write_text(json.dumps(manifest))
    out, _ = await process(tmp_path, recording, layout="composite")
    # st01's screen is shown from t=1, but its voice is the program's (heard) only from
    # when it is on stage, t=2.
    assert loudness(out / "video.mp4", 0.1, 1.9) < 0.001
    assert loudness(out / "video.mp4", 2.3, 3.5) > 0.05


# --- a recording made by the real Recorder -------------------------------------------


@dataclass(frozen=True)
class RecorderOutput:
    finished: Path
    """Closed cleanly."""
    crashed: Path
    """A copy taken before close(): what a killed hub leaves (no trailers, no ends)."""


async def record_with_the_recorder(directory: Path) -> RecorderOutput:
    """Station st01, off stage, shares its screen from 0 s; the center holds the stage,
    its camera and microphone join at 1 s: the lecturer's files start late."""
    center = make_clip("H264", 3.0)
    station = make_clip("VP8", 4.0, participant="st01", video_source="screen")

    def late(frames: list[EncodedFrame]) -> list[EncodedFrame]:
        return [replace(f, arrival=f.arrival + 1.0) for f in frames]

    stream = interleave(
        [
            (station.video.track_id, station.video_frames),
            (station.audio.track_id, station.audio_frames),
            (center.video.track_id, late(center.video_frames)),
            (center.audio.track_id, late(center.audio_frames)),
        ]
    )
    recorder = Recorder(directory / "finished")
    for track in (station.video, station.audio, center.video, center.audio):
        recorder.add_track(track)
    recorder.on_stage_change(["center"], time.time())
    await play(recorder, stream)  # real time: the manifest's start and end are wall clock
    await asyncio.sleep(0.3)  # the recorder's thread writes what it was given
    shutil.copytree(directory / "finished", directory / "crashed")
    await recorder.close()
    return RecorderOutput(directory / "finished", directory / "crashed")


@pytest.fixture(scope="session")
def recorder_output(tmp_path_factory: pytest.TempPathFactory) -> RecorderOutput:
    return asyncio.run(record_with_the_recorder(tmp_path_factory.mktemp("recorder")))


async def test_a_recorders_recording_is_remuxed_from_its_late_start(
    tmp_path: Path, recorder_output: RecorderOutput
) -> None:
    recording = load_recording(recorder_output.finished)
    assert choose_lecturer(recording) == "center"
    camera = next(t for t in recording.tracks if t.track_id == "center-camera")
    out, duration = await process(tmp_path, recorder_output.finished)
    assert video_packets(out / "video.mp4") == video_packets(camera.file)
    assert abs(duration - 3.0) <= 0.5


async def test_a_recorders_recording_makes_a_composite_as_long_as_the_lecture(
    tmp_path: Path, recorder_output: RecorderOutput
) -> None:
    # The camera file starts at 1 s on the recording's clock and its container says
    # 4 s: the program is its 3 s, not 4.
    out, duration = await process(tmp_path, recorder_output.finished, layout="composite")
    assert abs(duration - 3.0) <= 0.5
    with av.open(str(out / "video.mp4")) as mp4:
        assert mp4.streams.video[0].codec_context.width == 1280


async def test_a_recording_cut_short_by_a_crash_is_still_processed(
    tmp_path: Path, recorder_output: RecorderOutput
) -> None:
    manifest = json.loads((recorder_output.crashed / "recording.json").read_text())
    assert manifest["ended_at"] is None and manifest["status"] == "recording"
    camera = next(
        t for t in load_recording(recorder_output.crashed).tracks if t.track_id == "center-camera"
    )
    written = video_packets(camera.file)  # how much depends on the recorder thread's pace
    assert written
    out, duration = await process(tmp_path, recorder_output.crashed)
    # Matroska written packet by packet (no index, no duration): all of it is in the item.
    assert video_packets(out / "video.mp4") == written
    assert abs(duration - len(written) / 30) <= 0.5  # make_clip's 30 fps
    with av.open(str(out / "index.m3u8")) as hls:
        assert sum(1 for _ in hls.decode(video=0)) == len(written)


async def record_a_screen_share_on_stage(directory: Path) -> Path:
    """The center lectures for 6 s (a 4:3 camera, a 440 Hz voice); station st01 (a 16:9
    screen share, a 1 kHz voice) publishes from 1 s to 5 s and is on stage from 2 s to
    4 s. Recorded by the real Recorder in real time."""
    center = make_clip("H264", 6.0, size=(320, 240), tone=440)
    station = make_clip(
        "H264", 4.0, participant="st01", video_source="screen", size=(640, 360), tone=1000
    )
    late = [
        (track.track_id, [replace(f, arrival=f.arrival + 1.0) for f in frames])
        for track, frames in ((station.video, station.video_frames),
                              (station.audio, station.audio_frames))
    ]  # fmt: skip
    stream = interleave(
        [(center.video.track_id, center.video_frames),
         (center.audio.track_id, center.audio_frames), *late]
    )  # fmt: skip
    recorder = Recorder(directory)
    for track in (center.video, center.audio, station.video, station.audio):
        recorder.add_track(track)
    now = time.time()  # play() starts its clock now: stage times on the same clock
    recorder.on_stage_change(["center"], now)
    recorder.on_stage_change(["center", "st01"], now + 2.0)
    recorder.on_stage_change(["center"], now + 4.0)
    await play(recorder, stream)
    await recorder.close()
    return directory


async def test_the_library_item_follows_the_program_picture_and_voices(tmp_path: Path) -> None:
    recording = await record_a_screen_share_on_stage(tmp_path / "rec")
    out, duration = await process(tmp_path, recording)
    assert abs(duration - 6.0) <= 0.5
    with av.open(str(out / "video.mp4")) as mp4:
        stream = mp4.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == CANVAS
        # The 4:3 camera leaves black bars left and right of the 16:9 canvas; the
        # screen fills it (testsrc's right-hand bar is white).
        right_bar = [
            (float(f.time), mean_luma(f, 1180, 1280, 300, 420))
            for f in mp4.decode(stream)
            if f.time is not None and round(f.time * 25) % 12 == 0
        ]
    camera = [t for t, luma in right_bar if luma < 5]
    screen = [t for t, luma in right_bar if luma > 30]
    assert len(camera) + len(screen) == len(right_bar), right_bar
    assert screen and 1.9 <= min(screen) and max(screen) <= 4.1, right_bar
    assert min(camera) < 1.0 and max(camera) > 5.0, right_bar
    tones = tones_over_time(out / "video.mp4", (440, 1000))
    on_stage = [h for t, h in tones if 2.2 <= t <= 3.5]
    off_stage = [h for t, h in tones if t <= 1.5 or 4.3 <= t <= 5.5]
    assert len(on_stage) >= 2 and all(h == {440, 1000} for h in on_stage), tones
    assert len(off_stage) >= 4 and all(h == {440} for h in off_stage), tones


# --- uploads ----------------------------------------------------------------------


async def test_the_parts_of_a_recording_a_restart_cut_are_joined_in_order(
    tmp_path: Path, h264_recording: Path, vp8_recording: Path
) -> None:
    """A hub restart cuts a recording into parts: one item holds them all, in order,
    the H.264 ones joined as they are (no encoder runs), and a part nobody published in
    (an empty restart) is left out."""
    empty = tmp_path / "empty-part"
    empty.mkdir()
    manifest = {"started_at": T0, "ended_at": T0 + 1, "status": "stopped", "tracks": []}
    (empty / "recording.json").write_text(json.dumps({**manifest, "error": None, "stage": []}))
    item = "1" * 32
    library = tmp_path / "library"
    duration = await Processor(library).process(
        item, "recording", [h264_recording, empty, h264_recording], "lecturer", no_progress
    )
    assert abs(duration - 2 * SECONDS) <= 1.0
    joined = video_packets(library / item / "video.mp4")
    source = video_packets(h264_recording / "camera.mkv")
    # Copied, not encoded: every packet holds the recorded one's coded picture (the
    # joining may write parameter sets into keyframes); an encoder makes other bytes.
    assert len(joined) == 2 * len(source)
    assert all(r[-200:] in j for j, r in zip(joined, 2 * source, strict=True))
    # parts unlike each other (a VP8 camera transcoded, then an H.264 one remuxed: other
    # parameter sets) are joined by encoding, at the first one's size
    mixed = "2" * 32
    duration = await Processor(library).process(
        mixed, "recording", [vp8_recording, h264_recording], "lecturer", no_progress
    )
    assert abs(duration - 2 * SECONDS) <= 1.0
    with av.open(str(library / mixed / "video.mp4")) as mp4:
        assert mp4.streams.video[0].codec_context.name == "h264"
        frames = sum(1 for _ in mp4.decode(video=0))
    assert frames >= 2 * SECONDS * 20  # every part's pictures, decodable


async def test_an_h264_upload_is_remuxed(tmp_path: Path) -> None:
    upload = tmp_path / "talk.mp4"
    ffmpeg_make(
        "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-f", "lavfi",
        "-i", "sine=sample_rate=48000", "-t", "3", "-c:v", "libx264", "-preset", "ultrafast",
        "-pix_fmt", "yuv420p", "-c:a", "aac", str(upload),
    )  # fmt: skip
    out, duration = await process(tmp_path, upload, kind="upload")
    assert video_packets(out / "video.mp4") == video_packets(upload)
    assert abs(duration - 3) <= 0.5


async def test_a_vp8_upload_is_transcoded(tmp_path: Path) -> None:
    upload = tmp_path / "talk.webm"
    ffmpeg_make(
        "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-f", "lavfi",
        "-i", "sine=sample_rate=48000", "-t", "3", "-c:v", "libvpx", "-deadline", "realtime",
        "-cpu-used", "8", "-c:a", "libopus", str(upload),
    )  # fmt: skip
    out, duration = await process(tmp_path, upload, kind="upload")
    with av.open(str(out / "video.mp4")) as mp4:
        assert mp4.streams.video[0].codec_context.name == "h264"
        assert mp4.streams.audio[0].codec_context.name == "aac"
    assert abs(duration - 3) <= 0.5


# --- the job runner -----------------------------------------------------------------


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'jobs.sqlite3'}")
    await create_tables(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def library(engine: AsyncEngine, tmp_path: Path) -> Library:
    return Library(engine, tmp_path / "library")


def runner(engine: AsyncEngine, library: Library, **kwargs: Any) -> JobRunner:
    options: dict[str, Any] = {"backoff": 0.05, "poll_interval": 0.2, **kwargs}
    return JobRunner(engine, library, Processor(library.library_dir), **options)


async def new_item(library: Library) -> str:
    item = await library.create(title="讲座", theme=Theme.THEORY, date=datetime.date(2026, 5, 1))
    return item.id


async def job_status(jobs: JobRunner, job_id: str, *wanted: JobStatus) -> str | None:
    job = await jobs.get(job_id)
    assert job is not None
    return None if job.status in wanted else f"job is {job.status} ({job.error})"


async def test_a_job_reports_progress_from_0_to_100_and_makes_the_item_ready(
    engine: AsyncEngine, library: Library, vp8_recording: Path
) -> None:
    jobs = runner(engine, library)
    item_id = await new_item(library)
    job = await jobs.submit(item_id, "recording", [vp8_recording], layout="composite")
    assert (job.status, job.progress) == (JobStatus.QUEUED, 0.0)
    seen: list[float] = []

    async def done() -> str | None:
        current = await jobs.get(job.id)
        assert current is not None
        seen.append(current.progress)
        return None if current.status == JobStatus.DONE else f"job is {current.status}"

    await jobs.start()
    try:
        await wait_until(done, timeout=60, interval=0.02)
    finally:
        await jobs.close()
    assert seen == sorted(seen) and seen[0] == 0.0 and seen[-1] == 100.0
    item = await library.get(item_id)
    assert item is not None and item.status == ItemStatus.READY
    assert item.duration is not None and abs(item.duration - SECONDS) <= 0.5
    assert (library.library_dir / item_id / "index.m3u8").is_file()


async def test_a_failing_job_is_retried_with_backoff_then_failed_with_its_error(
    engine: AsyncEngine, library: Library, tmp_path: Path, h264_recording: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(h264_recording, broken)
    (broken / "camera.mkv").write_bytes(b"this is not a matroska file" * 100)
    jobs = runner(engine, library, max_attempts=3, backoff=0.5)
    item_id = await new_item(library)
    job = await jobs.submit(item_id, "recording", [broken])
    waits: dict[int, float] = {}

    async def until_failed() -> str | None:
        current = await jobs.get(job.id)
        assert current is not None
        if current.status == JobStatus.QUEUED and current.error is not None:
            waits[current.attempts] = current.run_after - current.updated_at
        return None if current.status == JobStatus.FAILED else f"job is {current.status}"

    await jobs.start()
    try:
        await wait_until(until_failed, timeout=30, interval=0.01)
    finally:
        await jobs.close()
    # Waiting to retry, with the error already visible: 0.5 s, then 1 s (less the time
    # the row update itself took).
    assert 0 < waits[1] <= 0.5 < waits[2] <= 1.0
    failed = await jobs.get(job.id)
    assert failed is not None
    assert failed.attempts == 3
    assert failed.error is not None and "ProcessingError" in failed.error
    item = await library.get(item_id)
    assert item is not None and item.status == ItemStatus.FAILED
    assert not (library.library_dir / item_id).exists()


async def test_closing_mid_job_requeues_it_and_a_new_runner_finishes_it(
    engine: AsyncEngine, library: Library, vp8_recording: Path
) -> None:
    item_id = await new_item(library)
    first = runner(engine, library)
    job = await first.submit(item_id, "recording", [vp8_recording], layout="composite")
    await first.start()
    try:
        await wait_until(lambda: job_status(first, job.id, JobStatus.RUNNING), interval=0.01)
    finally:
        await first.close()
    interrupted = await first.get(job.id)
    assert interrupted is not None
    assert (interrupted.status, interrupted.attempts) == (JobStatus.QUEUED, 0)
    assert ffmpeg_processes(item_id) == []

    second = runner(engine, library)
    await second.start()
    try:
        await wait_until(lambda: job_status(second, job.id, JobStatus.DONE), timeout=60)
    finally:
        await second.close()
    item = await library.get(item_id)
    assert item is not None and item.status == ItemStatus.READY


async def test_a_job_left_running_by_a_dead_runner_is_taken_when_its_lease_runs_out(
    engine: AsyncEngine, library: Library, h264_recording: Path
) -> None:
    item_id = await new_item(library)
    jobs = runner(engine, library, lease=1.5)
    job = await jobs.submit(item_id, "recording", [h264_recording])
    left_at = time.time()
    async with engine.begin() as conn:  # what a killed process leaves behind
        await conn.execute(
            jobs_table.update().values(status="running", attempts=1, updated_at=left_at)
        )
    await jobs.start()
    try:
        # Its lease still runs: it might be alive on another node.
        await asyncio.sleep(0.5)
        held = await jobs.get(job.id)
        assert held is not None and (held.status, held.attempts) == (JobStatus.RUNNING, 1)
        await wait_until(lambda: job_status(jobs, job.id, JobStatus.DONE), timeout=30)
    finally:
        await jobs.close()
    done = await jobs.get(job.id)
    assert done is not None and done.attempts == 2
    item = await library.get(item_id)
    assert item is not None and item.status == ItemStatus.READY


async def test_a_runner_whose_job_was_taken_stops_and_writes_nothing(
    engine: AsyncEngine, library: Library, vp8_recording: Path
) -> None:
    item_id = await new_item(library)
    jobs = runner(engine, library, lease=60.0)
    job = await jobs.submit(item_id, "recording", [vp8_recording], layout="composite")
    await jobs.start()
    try:
        await wait_until(lambda: job_status(jobs, job.id, JobStatus.RUNNING), interval=0.01)
        await wait_until(
            lambda: None if ffmpeg_processes(item_id) else "no ffmpeg yet", interval=0.01
        )
        async with engine.begin() as conn:  # another node's claim, after a pause of this one
            await conn.execute(
                jobs_table.update().values(attempts=2, progress=0.0, updated_at=time.time())
            )
        # Its next progress write finds the job taken: the processing stops.
        await wait_until(
            lambda: (
                f"ffmpeg {ffmpeg_processes(item_id)} goes on" if ffmpeg_processes(item_id) else None
            ),
            timeout=20,
        )
        await asyncio.sleep(0.5)
    finally:
        await jobs.close()
    taken = await jobs.get(job.id)
    assert taken is not None
    assert (taken.status, taken.attempts, taken.progress) == (JobStatus.RUNNING, 2, 0.0)
    item = await library.get(item_id)
    assert item is not None and item.status == ItemStatus.PROCESSING


async def test_discarding_an_items_jobs_stops_its_running_attempt(
    engine: AsyncEngine, library: Library, vp8_recording: Path
) -> None:
    item_id = await new_item(library)
    jobs = runner(engine, library)
    job = await jobs.submit(item_id, "recording", [vp8_recording], layout="composite")
    await jobs.start()
    try:
        await wait_until(lambda: job_status(jobs, job.id, JobStatus.RUNNING), interval=0.01)
        await jobs.discard(item_id)
        assert ffmpeg_processes(item_id) == []
        assert await jobs.get(job.id) is None
    finally:
        await jobs.close()
