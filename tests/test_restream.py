"""Restream: a real ffmpeg RTMP receiver on 127.0.0.1 gets the stage, and again after
it dropped; VP8 is transcoded once for all targets."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import av
import pytest

from media.muxing import ffmpeg_exe
from media.restream import Restreamer, TargetState, hide_key
from media.testing import VideoCodec, ffmpeg_children, interleave, make_clip, play
from tests.helpers import tones_over_time, wait_until
from tests.hubserver import free_port

Receiver = Callable[[int, Path], subprocess.Popen[bytes]]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """Starts ``ffmpeg -listen 1`` RTMP receivers; kills any left at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def start(port: int, out: Path) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [
                ffmpeg_exe(), "-v", "error", "-listen", "1", "-timeout", "20",
                "-i", f"rtmp://127.0.0.1:{port}/live/test", "-c", "copy", "-y", str(out),
            ],
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def received(path: Path) -> tuple[dict[str, str], float]:
    """Codecs by stream type and the video's decoded span in seconds."""
    with av.open(str(path)) as container:
        codecs: dict[str, str] = {s.type: s.codec_context.name for s in container.streams}
        times = [frame.time or 0.0 for frame in container.decode(video=0)]
    return codecs, times[-1] - times[0]


@asynccontextmanager
async def feeding(restreamer: Restreamer, codec: VideoCodec, loops: int) -> AsyncIterator[None]:
    clip = make_clip(codec, 2.0, gop=30)
    restreamer.add_track(clip.video)
    restreamer.add_track(clip.audio)
    restreamer.on_stage_change(["center"], time.time())
    stream = interleave(
        [(clip.video.track_id, clip.video_frames), (clip.audio.track_id, clip.audio_frames)]
    )
    task = asyncio.create_task(play(restreamer, stream, loops=loops))
    try:
        yield
    finally:
        task.cancel()
        await restreamer.close()


def state_is(restreamer: Restreamer, target: str, wanted: TargetState) -> Callable[[], str | None]:
    def check() -> str | None:
        status = restreamer.status()[target]
        return None if status.state == wanted else f"{status.state} ({status.error})"

    return check


async def wait_exit(process: subprocess.Popen[bytes]) -> None:
    await wait_until(lambda: None if process.poll() is not None else "still running", 15)


async def test_the_stage_reaches_an_rtmp_receiver(tmp_path: Path, receiver: Receiver) -> None:
    port, out = free_port(), tmp_path / "out.flv"
    listening = receiver(port, out)
    restreamer = Restreamer(video_size=(320, 180))
    async with feeding(restreamer, "H264", loops=5):
        target = restreamer.start_target(f"rtmp://127.0.0.1:{port}/live/test")
        await wait_until(state_is(restreamer, target, "live"), 15)
        await asyncio.sleep(3)
        await restreamer.stop_target(target)
        assert restreamer.status()[target].state == "stopped"
    await wait_exit(listening)
    codecs, span = received(out)
    assert codecs == {"video": "h264", "audio": "aac"}
    assert span >= 2.0
    assert restreamer.processes_started == 1 and not restreamer.transcoding


async def test_the_restream_carries_every_voice_on_stage(
    tmp_path: Path, receiver: Receiver
) -> None:
    port, out = free_port(), tmp_path / "out.flv"
    listening = receiver(port, out)
    restreamer = Restreamer(video_size=(320, 180))
    lecturer = make_clip("H264", 2.0, gop=30, tone=440)
    station = make_clip("H264", 2.0, gop=30, participant="st-042", tone=1000)
    for track in (lecturer.video, lecturer.audio, station.audio):
        restreamer.add_track(track)
    restreamer.on_stage_change(["center", "st-042"], time.time())
    stream = interleave(
        [(lecturer.video.track_id, lecturer.video_frames),
         (lecturer.audio.track_id, lecturer.audio_frames),
         (station.audio.track_id, station.audio_frames)]
    )  # fmt: skip
    task = asyncio.create_task(play(restreamer, stream, loops=3))
    try:
        target = restreamer.start_target(f"rtmp://127.0.0.1:{port}/live/test")
        await wait_until(state_is(restreamer, target, "live"), 15)
        await asyncio.wait_for(task, 15)
        await restreamer.stop_target(target)
    finally:
        task.cancel()
        await restreamer.close()
    await wait_exit(listening)
    heard = tones_over_time(out, (440, 1000))
    assert len(heard) >= 3 and all(tones == {440, 1000} for _, tones in heard[:-1]), heard


async def test_a_dropped_receiver_is_reconnected(tmp_path: Path, receiver: Receiver) -> None:
    port = free_port()
    first = receiver(port, tmp_path / "first.flv")
    restreamer = Restreamer(video_size=(320, 180), retry_initial=0.2, retry_max=1.0)
    states: list[TargetState] = []
    async with feeding(restreamer, "H264", loops=10):
        target = restreamer.start_target(f"rtmp://127.0.0.1:{port}/live/test")

        async def record() -> None:
            while True:
                state = restreamer.status()[target].state
                if not states or states[-1] != state:
                    states.append(state)
                await asyncio.sleep(0.05)

        recording = asyncio.create_task(record())
        await wait_until(state_is(restreamer, target, "live"), 15)
        first.kill()
        await wait_until(state_is(restreamer, target, "retrying"), 15)
        assert restreamer.status()[target].error
        second = receiver(port, tmp_path / "second.flv")
        await wait_until(state_is(restreamer, target, "live"), 20)
        await asyncio.sleep(2.5)
        recording.cancel()
        await restreamer.stop_target(target)
    await wait_exit(second)
    assert states[:2] == ["connecting", "live"]
    assert states.index("retrying") < len(states) - 1 - states[::-1].index("live")
    assert restreamer.status()[target].attempts >= 2
    codecs, span = received(tmp_path / "second.flv")
    assert codecs["video"] == "h264" and span >= 1.0


async def test_vp8_is_transcoded_once_for_all_targets(tmp_path: Path, receiver: Receiver) -> None:
    ports = [free_port(), free_port()]
    outs = [tmp_path / "a.flv", tmp_path / "b.flv"]
    listening = [receiver(port, out) for port, out in zip(ports, outs, strict=True)]
    restreamer = Restreamer(video_size=(320, 180))
    async with feeding(restreamer, "VP8", loops=4):
        targets = [restreamer.start_target(f"rtmp://127.0.0.1:{p}/live/test") for p in ports]
        for target in targets:
            await wait_until(state_is(restreamer, target, "live"), 20)
        assert ffmpeg_children("libx264") == 1
        assert restreamer.processes_started == 1 and restreamer.transcoding
        await asyncio.sleep(2.5)
        # Stopping one target leaves the other one live.
        await restreamer.stop_target(targets[0])
        await wait_exit(listening[0])
        await asyncio.sleep(1)
        assert [restreamer.status()[t].state for t in targets] == ["stopped", "live"]
    for process in listening:
        await wait_exit(process)
    for out in outs:
        codecs, span = received(out)
        assert codecs == {"video": "h264", "audio": "aac"} and span >= 1.5


async def test_a_target_that_never_answers_fails_and_says_why(tmp_path: Path) -> None:
    errors: list[str] = []
    restreamer = Restreamer(
        video_size=(320, 180), retry_initial=0.1, max_attempts=2, on_error=errors.append
    )
    async with feeding(restreamer, "H264", loops=6):
        target = restreamer.start_target(f"rtmp://127.0.0.1:{free_port()}/live/secret-key")
        await wait_until(state_is(restreamer, target, "failed"), 20)
        await wait_until(lambda: None if errors else "no error reported", 5)
    status = restreamer.status()[target]
    assert status.attempts == 2 and status.error
    assert "secret-key" not in status.url and "secret-key" not in errors[0]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rtmp://live.example/app/abc123", "rtmp://live.example/app/***"),
        ("rtmp://live.example/app", "rtmp://live.example/app"),
        ("rtmp://live.example/app/", "rtmp://live.example/app/"),
        ("rtmp://live.example/app/abc123/", "rtmp://live.example/app/***"),
        ("rtmp://live.example:1935/app/inst/abc123", "rtmp://live.example:1935/app/***"),
        ("rtmp://live.example//abc123", "rtmp://live.example//***"),
        ("rtmps://u:pa55word@live.example/app/abc123", "rtmps://u:***@live.example/app/***"),
        ("rtmp://u@live.example/app", "rtmp://u@live.example/app"),
        (
            "rtmps://live-api.example:443/rtmp/abc123?s_sc=sig-9f3e&s_vt=api",
            "rtmps://live-api.example:443/rtmp/***?s_sc=***&s_vt=***",
        ),
        ("rtmp://live.example/app?key=abc123", "rtmp://live.example/app?key=***"),
        ("rtmp://live.example/app?abc123&a=", "rtmp://live.example/app?***&a=***"),
        ("rtmp://live.example/app#abc123", "rtmp://live.example/app#***"),
        ("rtmp://[::1/app/abc123", "rtmp://***"),
    ],
)
def test_stream_keys_are_hidden(url: str, shown: str) -> None:
    assert hide_key(url) == shown


async def test_a_failing_target_tells_no_secret_in_its_error(tmp_path: Path) -> None:
    """Whatever ffmpeg says about the URL, its password, key and query stay hidden."""
    errors: list[str] = []
    restreamer = Restreamer(
        video_size=(320, 180), retry_initial=0.1, max_attempts=1, on_error=errors.append
    )
    secrets = ("pa55word", "secret-key", "sig-9f3e")
    url = f"rtmp://u:pa55word@127.0.0.1:{free_port()}/live/secret-key?sig=sig-9f3e"
    async with feeding(restreamer, "H264", loops=6):
        target = restreamer.start_target(url)
        await wait_until(state_is(restreamer, target, "failed"), 20)
        await wait_until(lambda: None if errors else "no error reported", 5)
    status = restreamer.status()[target]
    assert status.error
    for text in (status.url, status.error, errors[0]):
        assert not [s for s in secrets if s in text], text


async def test_targets_reconnect_when_the_room_ffmpeg_is_replaced(
    tmp_path: Path, receiver: Receiver
) -> None:
    port = free_port()
    first = receiver(port, tmp_path / "first.flv")
    restreamer = Restreamer(video_size=(320, 180), retry_initial=0.2, retry_max=1.0)
    async with feeding(restreamer, "H264", loops=10):
        target = restreamer.start_target(f"rtmp://127.0.0.1:{port}/live/test")
        await wait_until(state_is(restreamer, target, "live"), 15)
        process = restreamer._process
        assert process is not None
        process.kill()  # the room's ffmpeg dies: a new one starts at the next keyframe
        await wait_exit(first)  # the push ended cleanly, so did that receiver
        second = receiver(port, tmp_path / "second.flv")
        await wait_until(state_is(restreamer, target, "live"), 20)
        await asyncio.sleep(2.5)
        await restreamer.stop_target(target)
    await wait_exit(second)
    assert restreamer.processes_started == 2 and restreamer.error is None
    for name in ("first.flv", "second.flv"):
        codecs, span = received(tmp_path / name)
        assert codecs == {"video": "h264", "audio": "aac"} and span >= 1.0
