"""Live LL-HLS: playlist rules, blocking reload, real HTTP, real ffmpeg as a player."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from media.hls import HlsPackager, Part, PlaylistState, Segment
from media.live_http import live_router
from media.muxing import ffmpeg_exe
from media.testing import Clip, VideoCodec, ffmpeg_children, interleave, make_clip, play
from tests.helpers import wait_until


def test_playlist_state_blocking_condition() -> None:
    parts = (Part("part3.0.m4s", 0.3, True), Part("part3.1.m4s", 0.3, False))
    state = PlaylistState(2, 0.334, (Segment(2, parts, 0, "seg2.m4s"), Segment(3, parts)))
    assert state.position == (3, 1)
    assert state.has(3, 1) and state.has(3, 0) and state.has(2, None) and state.has(2, 9)
    assert not state.has(3, 2) and not state.has(3, None) and not state.has(4, 0)
    assert state.preload_hint() == "part3.2.m4s"
    text = state.render()
    assert "#EXT-X-MEDIA-SEQUENCE:2\n" in text
    assert '#EXT-X-PART:DURATION=0.30000,URI="part3.0.m4s",INDEPENDENT=YES\n' in text
    assert "#EXTINF:0.60000,\nseg2.m4s\n" in text
    assert text.endswith('#EXT-X-PRELOAD-HINT:TYPE=PART,URI="part3.2.m4s"\n')
    assert text.count("#EXT-X-MAP:") == 1 and "#EXT-X-DISCONTINUITY\n" not in text


def test_playlist_marks_a_new_epoch_with_a_discontinuity() -> None:
    part = (Part("p.m4s", 0.3, True),)
    segments = (Segment(7, part, 1, "seg7.m4s"), Segment(8, part, 2, "seg8.m4s"), Segment(9, ()))
    text = PlaylistState(2, 0.334, segments).render()
    assert "#EXT-X-DISCONTINUITY-SEQUENCE:1\n" in text
    assert text.index('#EXT-X-MAP:URI="init1.mp4"') < text.index("seg7.m4s")
    assert (
        text.index("seg7.m4s")
        < text.index("#EXT-X-DISCONTINUITY\n")
        < text.index('#EXT-X-MAP:URI="init2.mp4"')
        < text.index("seg8.m4s")
    )
    assert text.endswith('#EXT-X-PRELOAD-HINT:TYPE=PART,URI="part9.0.m4s"\n')


@dataclass
class Live:
    packager: HlsPackager
    base: str
    client: httpx.AsyncClient
    feeding: asyncio.Task[None]


def stream_of(clip: Clip) -> list[tuple[str, Any]]:
    return interleave(
        [(clip.video.track_id, clip.video_frames), (clip.audio.track_id, clip.audio_frames)]
    )


@pytest.fixture
def free_socket() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


@asynccontextmanager
async def start_live(
    directory: Path,
    sock: socket.socket,
    codec: VideoCodec,
    *,
    speed: float,
    loops: int,
    segment_target: float = 2.0,
) -> AsyncIterator[Live]:
    packager = HlsPackager(directory, video_size=(320, 180), segment_target=segment_target)
    app = FastAPI()
    app.include_router(live_router(lambda room: packager if room == "room" else None))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    clip = make_clip(codec, 2.0, gop=round(30 * segment_target))
    packager.add_track(clip.video)
    packager.add_track(clip.audio)
    packager.on_stage_change(["center"], time.time())
    feeding = asyncio.create_task(play(packager, stream_of(clip), speed=speed, loops=loops))
    host, port = sock.getsockname()
    async with httpx.AsyncClient(timeout=10) as client:
        try:
            yield Live(packager, f"http://{host}:{port}/live/room", client, feeding)
        finally:
            feeding.cancel()
            await packager.close()
            server.should_exit = True
            await serving


@pytest.fixture
async def live_h264(tmp_path: Path, free_socket: socket.socket) -> AsyncIterator[Live]:
    # 1 s segments: playable (3 target durations) after ~3.5 s of real time.
    async with start_live(
        tmp_path / "room", free_socket, "H264", speed=1.0, loops=5, segment_target=1.0
    ) as live:
        yield live


async def playable(live: Live) -> None:
    await wait_until(lambda: None if live.packager.state.playable else "not playable yet", 15)


def playlist_problems(text: str) -> str | None:
    """Why ``text`` is not a valid LL-HLS media playlist with media, or None."""
    lines = text.splitlines()
    if lines[0] != "#EXTM3U":
        return "no #EXTM3U"
    for tag in (
        "#EXT-X-TARGETDURATION:",
        "#EXT-X-PART-INF:PART-TARGET=",
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=",
        '#EXT-X-MAP:URI="init0.mp4"',
        "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=",
    ):
        if not any(line.startswith(tag) for line in lines):
            return f"missing {tag}"
    target = int(re.search(r"#EXT-X-TARGETDURATION:(\d+)", text)[1])  # type: ignore[index]
    part_target = float(re.search(r"PART-TARGET=([\d.]+)", text)[1])  # type: ignore[index]
    hold_back = float(re.search(r"PART-HOLD-BACK=([\d.]+)", text)[1])  # type: ignore[index]
    if hold_back < 2 * part_target:
        return "PART-HOLD-BACK under twice the part target"
    segments = [float(d) for d in re.findall(r"#EXTINF:([\d.]+),", text)]
    parts = [float(d) for d in re.findall(r"#EXT-X-PART:DURATION=([\d.]+)", text)]
    if not segments:
        return "no complete segment yet"
    if any(round(d) > target for d in segments):
        return f"a segment is longer than the target duration: {segments}"
    if any(d > part_target for d in parts):
        return f"a part is longer than the part target: {parts}"
    return None


async def test_live_playlist_parts_and_segments_over_http(live_h264: Live) -> None:
    live = live_h264
    text = ""

    async def ready() -> str | None:
        nonlocal text
        response = await live.client.get(f"{live.base}/index.m3u8")
        text = response.text
        return playlist_problems(text) if response.status_code == 200 else response.text

    await wait_until(ready, timeout=15)
    response = await live.client.get(f"{live.base}/index.m3u8")
    assert response.headers["content-type"] == "application/vnd.apple.mpegurl"
    # A shared cache keeps a plain playlist a second, browsers not at all.
    assert response.headers["cache-control"] == "public, max-age=0, s-maxage=1"

    init = await live.client.get(f"{live.base}/init0.mp4")
    assert init.status_code == 200 and init.headers["content-type"] == "video/mp4"
    assert "immutable" in init.headers["cache-control"]
    segment = re.search(r"^(seg\d+\.m4s)$", text, re.M)[1]  # type: ignore[index]
    part = re.search(r'URI="(part\d+\.\d+\.m4s)",INDEPENDENT=YES', text)[1]  # type: ignore[index]
    for name in (segment, part):
        media = await live.client.get(f"{live.base}/{name}")
        assert media.status_code == 200
        assert media.headers["content-type"] == "video/iso.segment"
        assert "immutable" in media.headers["cache-control"]
        path = live.packager.directory / f"check-{name}.mp4"
        path.write_bytes(init.content + media.content)
        with av.open(str(path)) as container:
            kinds = {stream.type: stream.codec_context.name for stream in container.streams}
            frames = sum(1 for _ in container.decode(video=0))
        assert kinds == {"video": "h264", "audio": "aac"}
        assert frames > 0


async def test_blocking_reload_waits_for_the_requested_part(live_h264: Live) -> None:
    live = live_h264
    await playable(live)
    position = live.packager.state.position
    assert position is not None
    msn, part = position[0], position[1] + 2  # two parts ahead: not there yet
    assert f"part{msn}.{part}.m4s" not in live.packager.state.files
    response = await live.client.get(
        f"{live.base}/index.m3u8", params={"_HLS_msn": msn, "_HLS_part": part}
    )
    assert response.status_code == 200
    assert response.headers["cache-control"] == "public, max-age=4"  # a CDN may share it
    after = live.packager.state
    assert after.has(msn, part)
    wanted = f"part{msn}.{part}.m4s" if after.position and after.position[0] == msn else None
    if wanted is not None:  # the segment may have ended earlier: then msn+1 is listed
        assert f'URI="{wanted}"' in response.text
        assert (live.packager.directory / wanted).is_file()
    else:
        assert f"part{msn + 1}.0.m4s" in response.text


async def test_http_rejects_bad_requests(live_h264: Live) -> None:
    live = live_h264
    get = live.client.get
    for params in ({"_HLS_msn": "x"}, {"_HLS_part": "1"}, {"_HLS_msn": "-1"}, {"_HLS_msn": 999}):
        response = await get(f"{live.base}/index.m3u8", params=params)
        assert response.status_code == 400, params
    # Digits str.isdigit() accepts but int() refuses or reads (superscript, Arabic-Indic),
    # and more digits than int() parses or an unsigned 64-bit integer holds.
    for value in ("²", "٣", "1²", "9" * 5000, str(2**64)):
        for params in ({"_HLS_msn": value}, {"_HLS_msn": "0", "_HLS_part": value}):
            response = await get(f"{live.base}/index.m3u8", params=params)
            assert response.status_code == 400, params
            assert "must be" in response.text, response.text
    assert (await get(f"{live.base.replace('room', 'nope')}/index.m3u8")).status_code == 404
    for name in ("..%2F..%2Fetc%2Fpasswd", "seg999.m4s", "index.m3u8.tmp", "%2Fetc%2Fpasswd"):
        assert (await get(f"{live.base}/{name}")).status_code == 404, name


async def test_a_malformed_player_id_changes_no_answer(live_h264: Live) -> None:
    """A shared cache keys playlists without ``player`` (deploy/nginx.conf): were a bad
    one refused, that refusal would be served to every player asking the same."""
    await playable(live_h264)
    for player in ("<script>", "x", "a" * 65):
        response = await live_h264.client.get(
            f"{live_h264.base}/index.m3u8", params={"player": player}
        )
        assert response.status_code == 200, response.text


async def test_ffmpeg_plays_the_live_playlist(live_h264: Live, tmp_path: Path) -> None:
    live = live_h264
    await playable(live)
    out = tmp_path / "played.mp4"
    player = await asyncio.create_subprocess_exec(
        ffmpeg_exe(), "-v", "error", "-i", f"{live.base}/index.m3u8",
        "-t", "3", "-c", "copy", str(out),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        _, errors = await asyncio.wait_for(player.communicate(), 20)
    finally:
        if player.returncode is None:
            player.kill()
            await player.wait()
    assert player.returncode == 0, errors.decode()
    with av.open(str(out)) as container:
        times = [frame.time or 0.0 for frame in container.decode(video=0)]
        assert container.streams.audio, "no audio in what ffmpeg played"
    assert times[-1] - times[0] >= 2.0


async def test_old_segments_leave_the_window_and_the_disk(
    tmp_path: Path, free_socket: socket.socket
) -> None:
    async with start_live(tmp_path / "room", free_socket, "H264", speed=6.0, loops=8) as live:
        live.packager._segmenter.window = 2
        await asyncio.wait_for(live.feeding, 20)
        await live.packager.close()
        await asyncio.sleep(0.1)  # the last state is handed over by call_soon_threadsafe
        state = live.packager.state
        assert state.ended and state.render().endswith("#EXT-X-ENDLIST\n")
        assert state.segments[0].msn >= 4 and len(state.segments) == 2
        on_disk = {path.name for path in live.packager.directory.glob("seg*.m4s")}
        last = state.segments[-1].msn
        assert on_disk == {f"seg{n}.m4s" for n in range(last - 3, last + 1)}
        assert not (live.packager.directory / "seg0.m4s").exists()


async def test_vp8_is_transcoded_once_however_many_viewers(
    tmp_path: Path, free_socket: socket.socket
) -> None:
    async with start_live(tmp_path / "room", free_socket, "VP8", speed=1.0, loops=3) as live:
        seen: list[int] = []

        async def viewer() -> None:
            for _ in range(20):
                response = await live.client.get(f"{live.base}/index.m3u8")
                names = re.findall(r'#EXT-X-PART:.*URI="(part[\d.]+m4s)"', response.text)
                if names:
                    await live.client.get(f"{live.base}/{names[-1]}")
                await asyncio.sleep(0.1)

        async def sampler() -> None:
            while True:
                seen.append(ffmpeg_children("libx264"))
                await asyncio.sleep(0.5)

        sampling = asyncio.create_task(sampler())
        await asyncio.gather(*(viewer() for _ in range(8)))
        sampling.cancel()
        assert live.packager.transcoding
        assert live.packager.processes_started == 1
        assert max(seen) == 1
        directory = live.packager.directory
        # The viewers' ~2.5 s can end before the first 2 s segment is out of the
        # transcoder on a loaded machine (a CI run read an empty directory).
        await wait_until(lambda: None if any(directory.glob("seg*.m4s")) else "no segment", 15)
        init = (directory / "init0.mp4").read_bytes()
        segment = next(directory.glob("seg*.m4s")).read_bytes()
        path = tmp_path / "check.mp4"
        path.write_bytes(init + segment)
        with av.open(str(path)) as container:
            assert container.streams.video[0].codec_context.name == "h264"
            assert sum(1 for _ in container.decode(video=0)) > 30


async def test_the_hinted_part_is_served_as_soon_as_it_exists(live_h264: Live) -> None:
    live = live_h264
    await wait_until(lambda: None if live.packager.state.position else "no part yet", 15)
    hint = live.packager.state.preload_hint()
    assert hint is not None and hint not in live.packager.state.files
    response = await live.client.get(f"{live.base}/{hint}")
    if response.status_code == 200:
        assert response.headers["content-type"] == "video/iso.segment"
        assert response.content == (live.packager.directory / hint).read_bytes()
    else:  # that segment ended instead: the hint named a part that never came
        position = live.packager.state.position
        hinted_msn = int(hint.removeprefix("part").split(".")[0])
        assert response.status_code == 404 and position is not None and position[0] > hinted_msn


async def test_a_long_gop_source_is_asked_for_keyframes_each_segment(tmp_path: Path) -> None:
    requested: list[str] = []
    packager = HlsPackager(tmp_path, request_keyframe=requested.append)
    clip = make_clip("H264", 6.0, gop=600)  # one keyframe, as WebRTC senders do
    packager.add_track(clip.video)
    packager.add_track(clip.audio)
    try:
        await play(packager, stream_of(clip), speed=4.0)
    finally:
        await packager.close()
    await asyncio.sleep(0.1)
    segments = packager.state.segments
    assert len(segments) >= 3
    assert all(segment.duration < 2.5 for segment in segments)
    # Once when the track was selected, then about once per segment.
    assert requested.count(clip.video.track_id) >= len(segments)


async def test_a_blocking_reload_that_times_out_is_cached_one_second(live_h264: Live) -> None:
    live = live_h264
    await playable(live)
    live.feeding.cancel()  # the publisher is gone: no next segment
    position = live.packager.state.position
    assert position is not None
    started = time.monotonic()
    response = await live.client.get(
        f"{live.base}/index.m3u8", params={"_HLS_msn": position[0] + 1, "_HLS_part": 0}
    )
    # Kept a second by a shared cache, so that its waiters share it (test_hls_cache).
    assert response.headers["cache-control"] == "public, max-age=0, s-maxage=1"
    assert response.status_code == 200
    # The spec's bound: three target durations.
    assert time.monotonic() - started >= 3 * live.packager.state.target_duration * 0.9


async def test_a_starting_stream_answers_503_until_playable(live_h264: Live) -> None:
    live = live_h264
    response = await live.client.get(f"{live.base}/index.m3u8")
    assert not live.packager.state.playable
    assert response.status_code == 503 and response.headers["retry-after"] == "2"
    await playable(live)
    response = await live.client.get(f"{live.base}/index.m3u8")
    assert response.status_code == 200 and playlist_problems(response.text) is None


PAGE = '<video id="v" src="/live/room/index.m3u8" muted autoplay playsinline></video>'


@pytest.mark.browser
async def test_chromium_plays_the_live_stream(
    tmp_path: Path, free_socket: socket.socket, chromium_path: str
) -> None:
    """A household's browser: native HLS in a plain <video>, across playlist reloads."""
    from playwright.async_api import async_playwright

    async with start_live(
        tmp_path / "room", free_socket, "H264", speed=1.0, loops=8, segment_target=1.0
    ) as live:
        await playable(live)
        base = live.base.removesuffix("/live/room")
        async with async_playwright() as playwright:
            context = await playwright.chromium.launch_persistent_context(
                str(tmp_path / "profile"),
                executable_path=chromium_path,
                headless=True,
                args=[
                    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--autoplay-policy=no-user-gesture-required",
                ],
            )  # fmt: skip
            try:
                page = await context.new_page()
                # The page comes from the same origin as the stream, served by the test.
                await page.route(
                    f"{base}/", lambda route: route.fulfill(body=PAGE, content_type="text/html")
                )
                await page.goto(f"{base}/")

                async def playing() -> str | None:
                    state = await page.evaluate(
                        "() => { const v = document.getElementById('v');"
                        " return [v.currentTime, v.error && v.error.message]; }"
                    )
                    if state[1]:
                        raise AssertionError(f"the player failed: {state[1]}")
                    return None if state[0] >= 3.0 else f"played {state[0]:.1f} s"

                await wait_until(playing, timeout=20, interval=0.5)
            finally:
                await context.close()
