"""Recording, live HLS and restream of a room's stage, started through the API:
encoded frames from real aiortc publishers, files checked with the real ffmpeg."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import av
import httpx
import imageio_ffmpeg
import pytest
from aiortc import RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from hub.client import HubClient
from hub.ids import RoomName
from tests.helpers import NoisyVideo, ToneTrack, small_disk, tones_over_time, wait_until
from tests.hubserver import RunningHub, free_port, running_hub
from tests.test_whip import whep_view


@asynccontextmanager
async def lecturing(hub_server: RunningHub, room: str) -> AsyncIterator[dict[str, str]]:
    """A center publishing camera and microphone in ``room``; yields its API headers."""
    center = HubClient(hub_server.ws, hub_server.token(room, "C", "center", name="市中心"))
    try:
        await center.connect()
        await center.publish({"camera": NoisyVideo(), "microphone": AudioStreamTrack()})
        yield {"Authorization": f"Bearer {hub_server.token(room, 'C', 'center')}"}
    finally:
        await center.close()


def check_recording(directory: Path) -> None:
    """Each track file decodes with the real ffmpeg and holds over 2 s."""
    files = sorted(p for p in Path(directory).iterdir() if p.suffix in (".mkv", ".webm"))
    assert len(files) == 2, files
    for file in files:
        decoded = subprocess.run(
            [
                imageio_ffmpeg.get_ffmpeg_exe(),
                "-v",
                "error",
                "-i",
                str(file),
                "-f",
                "null",
                "-",
            ],
            capture_output=True,
        )
        assert decoded.returncode == 0, decoded.stderr
        with av.open(str(file)) as container:
            stream = container.streams[0]
            duration = float(container.duration or 0) / av.time_base
            assert duration > 2.0, (file, duration)
            if stream.type == "video":
                assert stream.codec_context.name == "vp8"
    assert '"status": "stopped"' in (directory / "recording.json").read_text()


async def test_recording_through_the_api_writes_playable_files(hub_server: RunningHub) -> None:
    center = HubClient(hub_server.ws, hub_server.token("rec", "C", "center", name="市中心"))
    station = HubClient(hub_server.ws, hub_server.token("rec", "S1", "station"))
    moderator = {"Authorization": f"Bearer {hub_server.token('rec', 'C', 'center')}"}
    try:
        await center.connect()
        await center.publish({"camera": NoisyVideo(), "microphone": AudioStreamTrack()})
        await station.connect()
        async with httpx.AsyncClient(base_url=hub_server.base) as http:
            denied = await http.post(
                "/api/rooms/rec/recording",
                headers={"Authorization": f"Bearer {hub_server.token('rec', 'S1', 'station')}"},
            )
            assert denied.status_code == 403
            started = await http.post("/api/rooms/rec/recording", headers=moderator)
            assert started.status_code == 201 and started.json()["recording"] is True
            again = await http.post("/api/rooms/rec/recording", headers=moderator)
            assert again.status_code == 409 and "already" in again.text
            event = await station.wait_for(lambda m: m["type"] == "media" and m["recording"])
            assert event["recording_started_at"] is not None
            recorder = hub_server.hub.rooms["rec"].media.recorder  # type: ignore[index]

            def recorded_seconds() -> str | None:
                # Video starts at the keyframe the hub asks for: slow on a busy machine.
                spans = [(t.end or 0) - (t.start or 0) for t in recorder.manifest.tracks if t.start]
                return None if len(spans) == 2 and min(spans) > 3 else f"tracks span {spans}"

            await wait_until(recorded_seconds, timeout=30, interval=0.5)
            stopped = await http.delete("/api/rooms/rec/recording", headers=moderator)
            assert stopped.status_code == 200 and stopped.json()["recording"] is False
        room = hub_server.hub.rooms["rec"]  # type: ignore[index]
        directory = room.media.last_recording
        assert directory is not None
        await asyncio.to_thread(check_recording, Path(directory))
    finally:
        await station.close()
        await center.close()


async def test_live_for_households_serves_hls_and_opens_whep(hub_server: RunningHub) -> None:
    async with lecturing(hub_server, "live") as moderator:
        async with httpx.AsyncClient(base_url=hub_server.base) as http:
            started = await http.post("/api/rooms/live/live", headers=moderator)
            assert started.status_code == 201, started.text
            assert started.json()["hls_url"] == "/live/live/index.m3u8"
            room = (await http.get("/api/rooms/live", headers=moderator)).json()
            assert room["public"] is True and room["media"]["live"] is True

            async def playable() -> str | None:
                response = await http.get("/live/live/index.m3u8")
                return None if response.status_code == 200 else f"HTTP {response.status_code}"

            await wait_until(playable, timeout=30, interval=0.5)
            playlist = await http.get("/live/live/index.m3u8")
            assert playlist.headers["content-type"].startswith("application/vnd.apple.mpegurl")
            assert "#EXT-X-PART:" in playlist.text
        # The real ffmpeg plays the household stream, decoded, for 2 s (as a subprocess
        # of this event loop, which also serves it).
        player = await asyncio.create_subprocess_exec(
            imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i",
            f"{hub_server.base}/live/live/index.m3u8", "-t", "2", "-f", "null", "-",
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, errors = await asyncio.wait_for(player.communicate(), 60)
        assert player.returncode == 0, errors
        # Live for households also opens WHEP without an account.
        pc, _, response = await whep_view(hub_server.base, "live", None)
        await pc.close()
        assert response.status_code == 201, response.text
        # VP8 from the lecturer: exactly one transcoder for the room.
        live = hub_server.hub.rooms["live"].media.live  # type: ignore[index]
        assert live is not None and live.transcoding and live.processes_started == 1
        async with httpx.AsyncClient(base_url=hub_server.base) as http:
            stopped = await http.delete("/api/rooms/live/live", headers=moderator)
            assert stopped.json()["live"] is False


async def play_sound(url: str, seconds: float, wav: Path) -> list[tuple[float, set[int]]]:
    """The real ffmpeg plays ``seconds`` of a live playlist into ``wav``: the tones of
    the lecturer (440 Hz) and the station (1 kHz) heard in each half second."""
    player = await asyncio.create_subprocess_exec(
        imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", url,
        "-t", str(seconds), "-vn", "-ac", "1", str(wav),
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, errors = await asyncio.wait_for(player.communicate(), 60)
    assert player.returncode == 0, errors
    return tones_over_time(wav, (440, 1000))


async def test_households_hear_every_voice_on_stage_live(
    hub_server: RunningHub, tmp_path: Path
) -> None:
    center = HubClient(hub_server.ws, hub_server.token("voices", "C", "center"))
    station = HubClient(hub_server.ws, hub_server.token("voices", "S1", "station"))
    moderator = {"Authorization": f"Bearer {hub_server.token('voices', 'C', 'center')}"}
    url = f"{hub_server.base}/live/voices/index.m3u8"
    try:
        await center.connect()
        # Plain pictures: cheap to encode, so the two publishers leave the hub the CPU.
        await center.publish({"camera": VideoStreamTrack(), "microphone": ToneTrack(440)})
        await station.connect()
        await station.publish({"camera": VideoStreamTrack(), "microphone": ToneTrack(1000)})

        async def stage(on: bool) -> None:
            sid = station.joined["participant"]["sid"]
            await center.send({"type": "moderate", "action": "stage", "participant": sid,
                               "on_stage": on})  # fmt: skip
            size = 2 if on else 1
            await center.wait_for(lambda m: m["type"] == "stage" and len(m["stage"]) == size)

        await stage(True)
        async with httpx.AsyncClient(base_url=hub_server.base) as http:
            assert (await http.post("/api/rooms/voices/live", headers=moderator)).status_code == 201

            async def playable() -> str | None:
                response = await http.get("/live/voices/index.m3u8")
                return None if response.status_code == 200 else f"HTTP {response.status_code}"

            await wait_until(playable, timeout=30, interval=0.5)
            both = await play_sound(url, 3, tmp_path / "both.wav")
            # Most windows: on a loaded machine a voice loses packets (UDP drops) now and then.
            assert len(both) >= 4 and 2 * sum(t == {440, 1000} for _, t in both) >= len(both), both
            await stage(False)
            # ffmpeg starts three segments behind the live edge: past the change.
            await asyncio.sleep(5)
            alone = await play_sound(url, 3, tmp_path / "alone.wav")
            assert len(alone) >= 4 and all(1000 not in t for _, t in alone), alone
            assert 2 * sum(t == {440} for _, t in alone) >= len(alone), alone
        live = hub_server.hub.rooms[RoomName("voices")].media.live
        assert live is not None and live.processes_started == 1  # one ffmpeg throughout
    finally:
        await station.close()
        await center.close()


async def test_the_library_item_hears_a_station_while_it_was_on_stage(
    hub_server: RunningHub,
) -> None:
    center = HubClient(hub_server.ws, hub_server.token("lib-voices", "C", "center"))
    station = HubClient(hub_server.ws, hub_server.token("lib-voices", "S1", "station"))
    moderator = {"Authorization": f"Bearer {hub_server.token('lib-voices', 'C', 'center')}"}
    sid = ""

    async def stage(on: bool) -> None:
        await center.send({"type": "moderate", "action": "stage", "participant": sid,
                           "on_stage": on})  # fmt: skip
        size = 2 if on else 1
        await center.wait_for(lambda m: m["type"] == "stage" and len(m["stage"]) == size)

    try:
        await center.connect()
        await center.publish({"camera": VideoStreamTrack(), "microphone": ToneTrack(440)})
        await station.connect()
        await station.publish({"camera": VideoStreamTrack(), "microphone": ToneTrack(1000)})
        sid = station.joined["participant"]["sid"]
        await stage(True)
        async with httpx.AsyncClient(base_url=hub_server.base) as http:
            url = "/api/rooms/lib-voices/recording"
            assert (await http.post(url, headers=moderator)).status_code == 201
            await asyncio.sleep(4)
            await stage(False)
            await asyncio.sleep(4)
            assert (await http.delete(url, headers=moderator)).status_code == 200
    finally:
        await station.close()
        await center.close()
    library = hub_server.hub.on_recorded.__self__  # type: ignore[union-attr]
    item_id = await library.latest_item("lib-voices")
    assert item_id is not None

    async def processed() -> str | None:
        job = await library.jobs.latest_for_item(item_id)
        return None if job.status == "done" else f"{job.status} {job.progress} {job.error}"

    await wait_until(processed, timeout=60, interval=0.5)
    heard = tones_over_time(library.library.item_dir(item_id) / "video.mp4", (440, 1000))
    # Sent back about 4 s in (the hub's stage change and the recording's start are a
    # message apart): both voices before, the lecturer's alone after.
    before = [tones for at, tones in heard if at < 3.0]
    after = [tones for at, tones in heard if at >= 5.0]
    assert len(before) >= 4 and 2 * before.count({440, 1000}) >= len(before), heard
    assert len(after) >= 4 and all(1000 not in tones for tones in after), heard
    assert 2 * after.count({440}) >= len(after), heard


async def test_a_stopped_recording_becomes_a_library_item(hub_server: RunningHub) -> None:
    async with lecturing(hub_server, "lib") as moderator:
        async with httpx.AsyncClient(base_url=hub_server.base) as http:
            assert (
                await http.post("/api/rooms/lib/recording", headers=moderator)
            ).status_code == 201
            await asyncio.sleep(4)
            assert (
                await http.delete("/api/rooms/lib/recording", headers=moderator)
            ).status_code == 200
        library = hub_server.hub.on_recorded.__self__  # type: ignore[union-attr]
        item_id = await library.latest_item("lib")
        assert item_id is not None
        item = await library.library.get(item_id)
        job = await library.jobs.latest_for_item(item.id)
        assert job is not None

        async def processed() -> str | None:
            current = await library.jobs.latest_for_item(item.id)
            return (
                None
                if current.status == "done"
                else f"{current.status} {current.progress} {current.error}"
            )

        await wait_until(processed, timeout=60, interval=0.5)
        ready = await library.library.get(item.id)
        assert ready.status == "ready" and ready.duration > 2
        folder = library.library.item_dir(item.id)
        assert (folder / "index.m3u8").exists() and (folder / "video.mp4").stat().st_size > 0


async def test_restream_pushes_the_stage_to_an_rtmp_receiver(
    hub_server: RunningHub, tmp_path: Path
) -> None:
    from tests.hubserver import free_port

    port = free_port()
    received = tmp_path / "received.flv"
    receiver = await asyncio.create_subprocess_exec(
        imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-listen", "1",
        "-i", f"rtmp://127.0.0.1:{port}/live/county", "-c", "copy", str(received),
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with lecturing(hub_server, "rs") as moderator:
            async with httpx.AsyncClient(base_url=hub_server.base) as http:
                bad = await http.post(
                    "/api/rooms/rs/restreams", json={"url": "http://x"}, headers=moderator
                )
                assert bad.status_code == 409 and "rtmp://" in bad.text
                started = await http.post(
                    "/api/rooms/rs/restreams",
                    json={"url": f"rtmp://127.0.0.1:{port}/live/county"},
                    headers=moderator,
                )
                assert started.status_code == 201, started.text
                target = started.json()["restreams"][0]["target_id"]

                async def live() -> str | None:
                    room = await http.get("/api/rooms/rs", headers=moderator)
                    status = room.json()["media"]["restreams"][0]
                    return None if status["state"] == "live" else str(status)

                await wait_until(live, timeout=30, interval=0.5)
                await asyncio.sleep(4)
                stopped = await http.delete(f"/api/rooms/rs/restreams/{target}", headers=moderator)
                assert stopped.status_code == 200
            await asyncio.wait_for(receiver.wait(), 15)
            await asyncio.to_thread(check_flv, received)
    finally:
        if receiver.returncode is None:
            receiver.kill()
            await receiver.wait()


STREAM_SECRETS = ("pa55word", "secret-key", "sig-9f3e")


async def test_a_stream_key_reaches_no_one_in_the_room_nor_outside(hub_server: RunningHub) -> None:
    """Moderators see each restream target with its secrets hidden; stations, viewers
    and anonymous callers hear nothing of restreams (nor of ffmpeg's errors)."""
    center = HubClient(hub_server.ws, hub_server.token("keys", "C", "center"))
    station = HubClient(hub_server.ws, hub_server.token("keys", "S1", "station"))
    viewer = HubClient(hub_server.ws, hub_server.token("keys", "V1", "viewer"))
    moderator = {"Authorization": f"Bearer {hub_server.token('keys', 'C', 'center')}"}
    port = free_port()
    url = f"rtmp://u:pa55word@127.0.0.1:{port}/live/secret-key?sig=sig-9f3e"
    shown = f"rtmp://u:***@127.0.0.1:{port}/live/***?sig=***"
    try:
        for client in (center, station, viewer):
            await client.connect()
        async with httpx.AsyncClient(base_url=hub_server.base) as http:
            started = await http.post(
                "/api/rooms/keys/restreams", json={"url": url}, headers=moderator
            )
            assert started.status_code == 201, started.text
            assert started.json()["restreams"][0]["url"] == shown
            heard = await center.wait_for(lambda m: m["type"] == "media" and m["restreams"])
            assert heard["restreams"][0]["url"] == shown
            for client in (station, viewer):
                media = await client.wait_for(lambda m: m["type"] == "media")
                assert "restreams" not in media and "errors" not in media, media
            full = (await http.get("/api/rooms/keys", headers=moderator)).json()
            anonymous = (await http.get("/api/rooms/keys")).json()
            as_station = await http.get(
                "/api/rooms/keys",
                headers={"Authorization": f"Bearer {hub_server.token('keys', 'S1', 'station')}"},
            )
        assert full["media"]["restreams"][0]["url"] == shown
        for said in (started.json(), full, anonymous, as_station.json(), *center.messages):
            assert not [s for s in STREAM_SECRETS if s in json.dumps(said)], said
        for client in (station, viewer):
            assert not [s for s in STREAM_SECRETS if s in json.dumps(client.messages)]
            assert not [m for m in client.messages if "restreams" in m]
    finally:
        for client in (viewer, station, center):
            await client.close()


def check_flv(path: Path) -> None:
    with av.open(str(path)) as container:
        kinds = {s.type: s.codec_context.name for s in container.streams}
        assert kinds.get("video") == "h264" and kinds.get("audio") == "aac", kinds
        video = container.streams.video[0]
        frames = sum(1 for _ in container.demux(video))
    assert frames > 60, frames  # over 2 s at 30 fps


async def test_household_viewers_are_counted_and_published(hub_server: RunningHub) -> None:
    pc = None
    async with lecturing(hub_server, "hh") as moderator:
        try:
            async with (
                hub_server.hub.bus.subscribe("viewers") as viewers,
                httpx.AsyncClient(base_url=hub_server.base) as http,
            ):
                assert (await http.post("/api/rooms/hh/live", headers=moderator)).status_code == 201
                pc, _, response = await whep_view(hub_server.base, "hh", None)  # one WHEP household
                assert response.status_code == 201
                # Connected, as a household's player is (one that never connects leaves).
                await pc.setRemoteDescription(RTCSessionDescription(response.text, "answer"))
                for player in ("phone-a-0001", "phone-b-0002"):  # two HLS players
                    await http.get("/live/hh/index.m3u8", params={"player": player})
                info = (await http.get("/api/rooms/hh", headers=moderator)).json()
                assert info["household_viewers"] == 3
                event = await asyncio.wait_for(anext(aiter(viewers)), 10)
                assert event["room"] == "hh" and event["households"] == 3
                metrics = (await http.get("/metrics", headers=hub_server.metrics_headers)).text
                assert 'practicehub_household_viewers{room="hh"} 3' in metrics
        finally:
            if pc is not None:
                await pc.close()


async def test_hls_players_are_counted_by_the_id_they_keep(tmp_path: Path) -> None:
    async with (
        running_hub(tmp_path, hls_players_per_address=3) as running,
        lecturing(running, "ids") as moderator,
        httpx.AsyncClient(base_url=running.base) as http,
    ):
        assert (await http.post("/api/rooms/ids/live", headers=moderator)).status_code == 201
        media = running.hub.rooms[RoomName("ids")].media

        async def play(player: str | None, agent: str = "phone", address: str = "") -> int:
            params = {"player": player} if player else {}
            headers = {"User-Agent": agent}
            if address:  # as from the reverse proxy
                headers["X-Forwarded-For"] = address
            response = await http.get("/live/ids/index.m3u8", params=params, headers=headers)
            return response.status_code

        for agent in ("a", "b", "c"):  # one player, whatever its user agent says
            await play("player-one-0001", agent)
        assert media.household_viewers() == 1
        for agent in ("a", "b", "c"):  # players without an id: one per address
            await play(None, agent)
        assert media.household_viewers() == 2
        for n in range(10):  # one address adds at most three
            await play(f"player-{n:08d}")
        assert media.household_viewers() == 3
        await play("player-one-0001", address="10.0.0.3")
        assert media.household_viewers() == 4
        # A malformed id is no id (never refused: a shared cache keys playlists
        # without it): this address's anonymous player, already counted.
        for bad in ("short", "x" * 65, "../../etc", "中文中文中文中文"):
            assert await play(bad) != 400
        assert media.household_viewers() == 4


@pytest.fixture(name="full_disk")
def full_disk_fixture(hub_server: RunningHub) -> Iterator[Path]:
    """The hub's recordings folder on a 400 KiB tmpfs."""
    with small_disk(hub_server.hub.settings.data_dir / "recordings") as folder:
        yield folder


async def test_a_full_disk_stops_the_recording_with_a_clear_error(
    hub_server: RunningHub, full_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with lecturing(hub_server, "full") as moderator:
        station = HubClient(hub_server.ws, hub_server.token("full", "S1", "station"))
        console = HubClient(hub_server.ws, hub_server.token("full", "C2", "center"))
        await station.connect()
        await console.connect()
        try:
            async with httpx.AsyncClient(base_url=hub_server.base) as http:
                started = await http.post("/api/rooms/full/recording", headers=moderator)
                assert started.status_code == 201
                event = await console.wait_for(
                    lambda m: m["type"] == "media" and "recording" in m["errors"], timeout=30
                )
                assert "space" in event["errors"]["recording"].lower()
                # Stations hear that the recording stopped, not ffmpeg's words.
                recording = await station.wait_for(lambda m: m["type"] == "media")
                assert recording["recording"] is True
                ended = await station.wait_for(
                    lambda m: m["type"] == "media" and not m["recording"],
                    start=station.messages.index(recording),
                    timeout=15,
                )
                assert "errors" not in ended

                async def stopped() -> str | None:
                    media = (await http.get("/api/rooms/full", headers=moderator)).json()["media"]
                    return None if not media["recording"] else f"still recording: {media}"

                await wait_until(stopped, timeout=15)
                media = (await http.get("/api/rooms/full", headers=moderator)).json()["media"]
                assert "space" in media["errors"]["recording"].lower()
            # The room goes on: the station still receives the lecture.
            camera = station.tracks_of("camera")[0]
            before = camera.track.readyState
            assert before == "live"
        finally:
            await console.close()
            await station.close()
    assert any("recording failed" in r.getMessage() for r in caplog.records)
    sizes = await asyncio.to_thread(media_file_sizes, full_disk)
    assert sizes and max(sizes) > 0  # what was written is kept


def media_file_sizes(folder: Path) -> list[int]:
    return [p.stat().st_size for p in folder.rglob("*") if p.suffix in (".mkv", ".webm")]
