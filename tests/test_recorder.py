"""Recorder: remuxed files that decode, crash safety, a real full disk."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import av
import pytest

from media.muxing import ffmpeg_exe
from media.recorder import MANIFEST, Recorder
from media.testing import VideoCodec, interleave, make_clip, play
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent


def decoded(path: Path, kind: str) -> tuple[int, float, float]:
    """(frames decoded, first pts in s, span first→last frame in s) of one stream."""
    with av.open(str(path)) as container:
        streams = container.streams.video if kind == "video" else container.streams.audio
        frames: Iterator[Any] = container.decode(streams[0])
        times = [frame.time or 0.0 for frame in frames]
    return len(times), times[0], times[-1] - times[0]


def manifest(directory: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((directory / MANIFEST).read_text())
    return result


@pytest.mark.parametrize("codec", ["H264", "VP8"])
async def test_recorder_writes_one_decodable_file_per_track(
    tmp_path: Path, codec: VideoCodec
) -> None:
    clip = make_clip(codec, 3.0)
    recorder = Recorder(tmp_path)
    recorder.add_track(clip.video)
    recorder.add_track(clip.audio)
    recorder.on_stage_change(["center"], time.time())
    await play(
        recorder,
        interleave(
            [(clip.video.track_id, clip.video_frames), (clip.audio.track_id, clip.audio_frames)]
        ),
        speed=float("inf"),
    )
    assert manifest(tmp_path)["status"] == "recording"
    await recorder.close()

    info = manifest(tmp_path)
    assert info["status"] == "stopped" and info["error"] is None
    assert info["ended_at"] >= info["started_at"]
    assert info["stage"][0]["stage"] == ["center"]
    files = {track["kind"]: tmp_path / track["file"] for track in info["tracks"]}
    assert {track["codec"] for track in info["tracks"]} == {codec, "opus"}
    assert all(track["start"] <= track["end"] for track in info["tracks"])

    frames, _, span = decoded(files["video"], "video")
    assert frames == len(clip.video_frames) == 90
    assert span == pytest.approx(89 / 30, abs=0.01)
    frames, _, span = decoded(files["audio"], "audio")
    assert frames == len(clip.audio_frames) == 150
    assert span == pytest.approx(149 * 0.02, abs=0.01)
    assert not (tmp_path / ".manifest-reserve").exists()


async def test_video_starts_at_a_keyframe_and_late_tracks_line_up(tmp_path: Path) -> None:
    clip = make_clip("H264", 2.0, gop=30)
    requested: list[str] = []
    recorder = Recorder(tmp_path, request_keyframe=requested.append)
    recorder.add_track(clip.video)
    # The first 10 frames precede no keyframe (as when joining mid-GOP): dropped.
    late = [replace(f, arrival=f.arrival + 1.0) for f in clip.video_frames[20:]]
    await play(recorder, [(clip.video.track_id, f) for f in late], speed=4.0)
    await recorder.close()

    info = manifest(tmp_path)
    (track,) = info["tracks"]
    frames, first, _ = decoded(tmp_path / track["file"], "video")
    assert frames == 30  # from the keyframe at index 30 to the end
    assert requested == [clip.video.track_id]  # asked once while waiting (rate-limited)
    # pts 0 is the recording's start: the track begins where its first frame arrived.
    assert first == pytest.approx(track["start"] - info["started_at"], abs=0.05)
    assert first > 0.2


async def test_a_track_without_frames_leaves_no_entry(tmp_path: Path) -> None:
    clip = make_clip("VP8", 0.5)
    recorder = Recorder(tmp_path)
    recorder.add_track(clip.video)
    recorder.add_track(clip.audio)
    for frame in clip.audio_frames:
        recorder.on_frame(clip.audio.track_id, frame)
    recorder.remove_track(clip.audio.track_id)
    await recorder.close()
    assert [t["kind"] for t in manifest(tmp_path)["tracks"]] == ["audio"]


CRASH_SCRIPT = """
import asyncio, sys
from pathlib import Path
from media.recorder import Recorder
from media.testing import interleave, make_clip, play

async def main() -> None:
    clip = make_clip("H264", 1.0)
    recorder = Recorder(Path(sys.argv[1]))
    recorder.add_track(clip.video)
    recorder.add_track(clip.audio)
    stream = interleave([(clip.video.track_id, clip.video_frames),
                         (clip.audio.track_id, clip.audio_frames)])
    print("recording", flush=True)
    await play(recorder, stream, loops=30)

asyncio.run(main())
"""


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def test_a_killed_recording_still_plays(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", CRASH_SCRIPT, str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    processes.append(process)
    assert process.stdout is not None
    assert process.stdout.readline() == b"recording\n"
    time.sleep(3.0)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)

    info = manifest(tmp_path)
    assert info["status"] == "recording"  # never closed, yet the manifest is whole
    assert len(info["tracks"]) == 2
    for track in info["tracks"]:
        # The manifest was kept up to date while frames flowed (every 2 s).
        assert track["end"] - track["start"] >= 1.5
        path = tmp_path / track["file"]
        check = subprocess.run(
            [ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "null", "-"],
            capture_output=True,
            timeout=30,
        )
        assert check.returncode == 0, check.stderr.decode()
        frames, _, span = decoded(path, track["kind"])
        assert span >= 1.5, (track["file"], frames, span)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 200 KiB tmpfs: writes past it fail with ENOSPC."""
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mountpoint)],
        capture_output=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {result.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


async def test_a_full_disk_fails_the_recording_and_keeps_what_was_written(
    tiny_disk: Path,
) -> None:
    errors: list[str] = []
    clip = make_clip("H264", 2.0)
    directory = tiny_disk / "room"
    recorder = Recorder(directory, on_error=errors.append)
    recorder.add_track(clip.video)
    recorder.add_track(clip.audio)
    stream = interleave(
        [(clip.video.track_id, clip.video_frames), (clip.audio.track_id, clip.audio_frames)]
    )
    # ~30 KB/s of video: 200 KiB fill up within a few loops, fed faster than real time.
    feeding = play(recorder, stream, speed=8.0, loops=20)
    await feeding
    await wait_until(lambda: None if errors else "no error reported yet", timeout=10)
    await recorder.close()

    print(errors)
    assert "No space left" in errors[0], errors
    info = manifest(directory)
    assert info["status"] == "failed"
    assert info["error"] == errors[0]
    video = next(t for t in info["tracks"] if t["kind"] == "video")
    frames, _, span = decoded(directory / video["file"], "video")
    assert frames > 30 and span > 1.0


async def test_recording_costs_little_cpu(tmp_path: Path) -> None:
    """A remux, not a transcode: 10 s of H.264 + Opus take well under a
    second of CPU (the goal is ~1% of a core per stream; asserted loosely)."""
    clip = make_clip("H264", 10.0)
    stream = interleave(
        [(clip.video.track_id, clip.video_frames), (clip.audio.track_id, clip.audio_frames)]
    )
    recorder = Recorder(tmp_path)
    recorder.add_track(clip.video)
    recorder.add_track(clip.audio)
    before = time.process_time()
    await play(recorder, stream, speed=float("inf"))
    await recorder.close()
    used = time.process_time() - before
    print(f"CPU for 10 s of recording: {used:.3f} s ({used / 10:.1%} of a core)")
    assert used < 1.0


async def test_a_slow_disk_drops_frames_and_never_blocks_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clip = make_clip("H264", 3.0, gop=15)
    write = Recorder._write

    def slow_write(self: Recorder, track_id: str, frame: Any) -> None:
        time.sleep(0.02)  # a disk that manages 50 frames/s at best
        write(self, track_id, frame)

    monkeypatch.setattr(Recorder, "_write", slow_write)
    recorder = Recorder(tmp_path, queue_size=5)
    recorder.add_track(clip.video)
    started = time.perf_counter()
    for frame in clip.video_frames:
        recorder.on_frame(clip.video.track_id, frame)
    feeding = time.perf_counter() - started
    await recorder.close()

    assert feeding < 0.5  # 90 blocking writes would take 1.8 s
    (track,) = manifest(tmp_path)["tracks"]
    with av.open(str(tmp_path / track["file"])) as container:
        times = [
            (float(p.pts * p.time_base), p.is_keyframe)
            for p in container.demux(video=0)
            if p.pts is not None
        ]
    assert 0 < len(times) < len(clip.video_frames)
    assert times[0][1]
    # After every gap (dropped frames) the file resumes at a keyframe: it decodes.
    for (before, _), (after, keyframe) in itertools.pairwise(times):
        if after - before > 1.5 / 30:
            assert keyframe, (before, after)
