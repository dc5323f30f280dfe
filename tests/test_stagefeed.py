"""Which tracks make the stage stream, source switches, silence for a mute stage."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import av
import pytest

from media.hls import HlsPackager
from media.stagefeed import MAX_RESTARTS, assign_slots
from media.testing import Clip, interleave, make_clip, play
from tests.helpers import tones_over_time, wait_until


@pytest.mark.parametrize(
    ("slots", "voices", "expected"),
    [
        ((None, None, None), ["a"], ("a", None, None)),
        # A station called on stage takes a free slot; the lecturer keeps its own.
        (("a", None, None), ["a", "b"], ("a", "b", None)),
        # Sent back, it frees its slot; the others stay where they are.
        (("a", "b", "c"), ["a", "c"], ("a", None, "c")),
        ((None, "b", None), ["a", "b", "c"], ("a", "b", "c")),
        # More voices than slots: the last in stage order are left out.
        (("a", None), ["a", "b", "c"], ("a", "b")),
        (("a", "b"), [], (None, None)),
    ],
)
def test_voices_keep_their_slots(
    slots: tuple[str | None, ...], voices: list[str], expected: tuple[str | None, ...]
) -> None:
    assert assign_slots(slots, voices) == expected


def picture_sizes(directory: Path, segments: list[str]) -> list[tuple[int, int]]:
    """Frame sizes of the segments played in a row, as a player does."""
    path = directory / "played.mp4"
    path.write_bytes(b"".join((directory / name).read_bytes() for name in ["init0.mp4", *segments]))
    with av.open(str(path)) as container:
        return [(frame.width, frame.height) for frame in container.decode(video=0)]


async def test_a_screen_share_takes_over_at_its_keyframe(tmp_path: Path) -> None:
    requested: list[str] = []
    packager = HlsPackager(tmp_path, request_keyframe=requested.append)
    camera = make_clip("H264", 2.0, gop=60)
    screen = make_clip("H264", 3.0, gop=60, video_source="screen", size=(640, 360))
    packager.add_track(camera.video)
    packager.add_track(camera.audio)
    packager.on_stage_change(["center"], time.time())
    try:
        stream = interleave(
            [(camera.video.track_id, camera.video_frames),
             (camera.audio.track_id, camera.audio_frames)]
        )  # fmt: skip
        await play(packager, stream, speed=4.0, loops=2)
        packager.add_track(screen.video)
        # The camera when selected (and ahead of segment ends), the screen once added.
        assert requested[0] == camera.video.track_id
        assert requested[-1] == screen.video.track_id
        # Mid-GOP frames of the screen are not used; its keyframe (frame 60) switches.
        frames = [(screen.video.track_id, f) for f in screen.video_frames[30:]]
        await play(packager, frames, speed=4.0)
    finally:
        await packager.close()
    await asyncio.sleep(0.1)
    sizes = picture_sizes(tmp_path, [str(segment.name) for segment in packager.state.segments])
    assert sizes[0] == (320, 180) and sizes[-1] == (640, 360)
    # Camera for 4 s, then the screen from its keyframe on (frames 60..89).
    assert sizes.count((640, 360)) == 30 and sizes.count((320, 180)) == 120


async def test_a_stage_without_microphone_still_streams_with_silence(tmp_path: Path) -> None:
    packager = HlsPackager(tmp_path)
    clip = make_clip("H264", 2.0, gop=60)
    packager.add_track(clip.video)
    try:
        await play(
            packager, [(clip.video.track_id, f) for f in clip.video_frames], speed=4, loops=3
        )
        await wait_until(lambda: None if len(packager.state.segments) > 1 else "no segment", 10)
    finally:
        await packager.close()
    directory = tmp_path
    path = directory / "check.mp4"
    path.write_bytes((directory / "init0.mp4").read_bytes() + (directory / "seg0.m4s").read_bytes())
    with av.open(str(path)) as container:
        assert container.streams.audio[0].codec_context.name == "aac"
        samples = sum(frame.samples for frame in container.decode(audio=0))
    assert samples / 48_000 > 1.0


async def killed(packager: HlsPackager, times: int) -> None:
    """Kill the room's ffmpeg ``times`` times, each time once its successor runs."""
    for count in range(1, times + 1):

        def running(count: int = count) -> str | None:
            return None if packager.processes_started == count else "no new ffmpeg yet"

        await wait_until(lambda: None if packager.state.position else "no part yet", 10)
        await wait_until(running, 10)
        process = packager._process
        assert process is not None
        process.kill()


def start(packager: HlsPackager, clip: Clip, loops: int) -> asyncio.Task[None]:
    """Publish ``clip`` (camera + microphone) to ``packager`` in real time."""
    packager.add_track(clip.video)
    packager.add_track(clip.audio)
    stream = interleave(
        [(clip.video.track_id, clip.video_frames), (clip.audio.track_id, clip.audio_frames)]
    )
    return asyncio.create_task(play(packager, stream, loops=loops))


async def test_a_dead_ffmpeg_is_replaced_at_the_next_keyframe(
    tmp_path: Path,
) -> None:
    errors: list[str] = []
    packager = HlsPackager(tmp_path, on_error=errors.append)
    feeding = start(packager, make_clip("H264", 2.0, gop=30), loops=3)
    try:
        await killed(packager, 1)
        await wait_until(lambda: None if packager.processes_started == 2 else "no restart", 10)
        await wait_until(
            lambda: None if "#EXT-X-DISCONTINUITY\n" in packager.state.render() else "no epoch 2",
            10,
        )
        await asyncio.wait_for(feeding, 10)
    finally:
        feeding.cancel()
        await packager.close()
    assert errors == [] and packager.error is None
    text = packager.state.render()
    assert '#EXT-X-MAP:URI="init1.mp4"' in text and (tmp_path / "init1.mp4").is_file()


async def test_an_ffmpeg_that_keeps_dying_fails_the_feed(
    tmp_path: Path,
) -> None:
    errors: list[str] = []
    packager = HlsPackager(tmp_path, on_error=errors.append)
    feeding = start(packager, make_clip("H264", 2.0, gop=30), loops=6)
    try:
        await killed(packager, MAX_RESTARTS)
        await wait_until(lambda: None if errors else "no error reported", 10)
        assert errors == [packager.error] and "ffmpeg stopped 3 times" in errors[0]
        await asyncio.wait_for(feeding, 15)  # frames keep coming, and are ignored
    finally:
        feeding.cancel()
        await packager.close()
    assert packager.processes_started == MAX_RESTARTS


async def test_a_source_with_another_codec_starts_a_new_epoch(tmp_path: Path) -> None:
    packager = HlsPackager(tmp_path, video_size=(320, 180))
    camera = make_clip("VP8", 2.0, gop=60)
    screen = make_clip("H264", 3.0, gop=60, video_source="screen", size=(640, 360))
    try:
        await start(packager, camera, loops=2)
        assert packager.transcoding
        packager.add_track(screen.video)
        await play(packager, [(screen.video.track_id, f) for f in screen.video_frames[30:]])
    finally:
        await packager.close()
    assert packager.processes_started == 2 and not packager.transcoding
    segments = packager.state.segments
    assert [s.discontinuity for s in segments] == sorted(s.discontinuity for s in segments)
    assert {s.discontinuity for s in segments} == {0, 1}
    assert "#EXT-X-DISCONTINUITY\n" in packager.state.render()
    for epoch, size in ((0, (320, 180)), (1, (640, 360))):
        names = [str(s.name) for s in segments if s.discontinuity == epoch]
        path = tmp_path / "played.mp4"
        path.write_bytes(
            b"".join((tmp_path / n).read_bytes() for n in [f"init{epoch}.mp4", *names])
        )
        with av.open(str(path)) as container:
            assert container.streams.video[0].codec_context.name == "h264"
            assert {(f.width, f.height) for f in container.decode(video=0)} == {size}


async def test_every_voice_on_stage_is_heard_and_one_sent_back_is_not(tmp_path: Path) -> None:
    packager = HlsPackager(tmp_path)
    lecturer = make_clip("H264", 2.0, gop=30, tone=440)
    station = make_clip("H264", 2.0, gop=30, participant="st-042", tone=1000)
    for track in (lecturer.video, lecturer.audio, station.video, station.audio):
        packager.add_track(track)
    packager.on_stage_change(["center", "st-042"], time.time())
    stream = interleave(
        [(track.track_id, frames) for track, frames in (
            (lecturer.video, lecturer.video_frames), (lecturer.audio, lecturer.audio_frames),
            (station.video, station.video_frames), (station.audio, station.audio_frames),
        )]
    )  # fmt: skip
    feeding = asyncio.create_task(play(packager, stream, loops=4))
    try:
        await asyncio.sleep(4.0)
        # Sent back, it still publishes (its frames still come): the rule leaves it out.
        packager.on_stage_change(["center"], time.time())
        await asyncio.wait_for(feeding, 10)
    finally:
        feeding.cancel()
        await packager.close()
    played = tmp_path / "played.mp4"
    played.write_bytes(
        b"".join(
            (tmp_path / name).read_bytes()
            for name in ["init0.mp4", *(str(s.name) for s in packager.state.segments)]
        )
    )
    heard = tones_over_time(played, (440, 1000))
    both = [at for at, tones in heard if tones == {440, 1000}]
    alone = [at for at, tones in heard if tones == {440}]
    assert packager.processes_started == 1
    # Both voices while both are on stage, the lecturer's alone after (to the end).
    assert both and alone and max(both) < 4.0 <= min(alone), heard
    assert all(tones == {440} for at, tones in heard if at >= 4.5), heard
    with av.open(str(played)) as container:
        # The picture stayed the lecturer's camera throughout.
        assert container.streams.video[0].codec_context.width == 320


async def test_a_voice_on_stage_that_sends_nothing_does_not_hold_the_others(
    tmp_path: Path,
) -> None:
    packager = HlsPackager(tmp_path)
    lecturer = make_clip("H264", 2.0, gop=30, tone=440)
    muted = make_clip("H264", 2.0, gop=30, participant="st-042", tone=1000)
    for track in (lecturer.video, lecturer.audio, muted.audio):
        packager.add_track(track)
    packager.on_stage_change(["center", "st-042"], time.time())
    stream = interleave(
        [(lecturer.video.track_id, lecturer.video_frames),
         (lecturer.audio.track_id, lecturer.audio_frames)]
    )  # fmt: skip
    try:
        await play(packager, stream, loops=2)
    finally:
        await packager.close()
    played = tmp_path / "played.mp4"
    names = ["init0.mp4", *(str(s.name) for s in packager.state.segments)]
    played.write_bytes(b"".join((tmp_path / name).read_bytes() for name in names))
    heard = tones_over_time(played, (440, 1000))
    # The lecturer throughout (the last window may be cut short by the end).
    assert len(heard) >= 6 and all(tones == {440} for _, tones in heard[:-1]), heard
