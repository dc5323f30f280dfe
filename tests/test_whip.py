"""WHIP ingest from the real ffmpeg (H.264 High profile + Opus) and WHEP playback."""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import imageio_ffmpeg
import pytest
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from hub.client import HubClient
from hub.ids import RoomName
from hub.peers import make_peer_connection
from tests.helpers import HeardSound, ToneTrack, first_track, wait_until
from tests.hubserver import RunningHub, running_hub
from tests.test_forwarding_e2e import decode_frames


def ffmpeg_whip(
    url: str, token: str, seconds: int = 40, profile: str = "high", log: Path | None = None
) -> subprocess.Popen[bytes]:
    """ffmpeg publishing a test picture and tone over WHIP, as OBS does: libx264 in
    ``profile`` (OBS's default is High), no B-frames, Opus. Its errors go to ``log``
    when given (a pipe nobody reads could fill up and stall it), else to a pipe."""
    errors = log.open("wb") if log is not None else None
    try:
        return subprocess.Popen(
            [
                imageio_ffmpeg.get_ffmpeg_exe(),
                "-hide_banner", "-loglevel", "warning", "-re",
                "-f", "lavfi", "-i", f"testsrc2=size=640x360:rate=30:duration={seconds}",
                "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
                "-c:v", "libx264", "-profile:v", profile, "-bf", "0", "-g", "30",
                "-tune", "zerolatency", "-pix_fmt", "yuv420p", "-b:v", "1M",
                "-c:a", "libopus", "-ar", "48000", "-ac", "2",
                "-f", "whip", "-authorization", token, "-whip_flags", "dtls_active", url,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors or subprocess.PIPE,
        )  # fmt: skip
    finally:
        if errors is not None:
            errors.close()  # ffmpeg has its own copy


@pytest.fixture
async def ffmpeg_ingest(hub_server: RunningHub) -> AsyncIterator[subprocess.Popen[bytes]]:
    token = hub_server.token("obs", "encoder-1", "ingest", name="导播台")
    process = ffmpeg_whip(f"{hub_server.base}/whip/obs", token)
    try:
        yield process
    finally:
        process.kill()
        process.wait()


async def whep_view(  # type: ignore[no-untyped-def]
    base: str, room: str, token: str | None, address: str | None = None
):
    """A WHEP offer (the answer is not applied); ``address`` poses as another client
    address (the hub trusts X-Forwarded-For from 127.0.0.1, as from its reverse proxy)."""
    pc = make_peer_connection([])
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    tracks: dict[str, object] = {}
    pc.on("track", lambda track: tracks.__setitem__(track.kind, track))
    await pc.setLocalDescription(await pc.createOffer())
    headers = {"Content-Type": "application/sdp"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if address:
        headers["X-Forwarded-For"] = address
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{base}/whep/{room}", content=pc.localDescription.sdp, headers=headers
        )
    return pc, tracks, response


async def test_ffmpeg_whip_high_profile_reaches_ws_and_whep(
    hub_server: RunningHub, ffmpeg_ingest: subprocess.Popen[bytes]
) -> None:
    def ingest_published() -> str | None:
        room = hub_server.hub.rooms.get("obs")  # type: ignore[call-overload]
        if ffmpeg_ingest.poll() is not None:
            raise AssertionError(ffmpeg_ingest.stderr.read().decode())  # type: ignore[union-attr]
        if room is None:
            return "no room yet"
        pubs = [p for part in room.participants.values() for p in part.publications.values()]
        return None if len(pubs) == 2 else f"publications: {pubs}"

    await wait_until(ingest_published, timeout=20)
    room = hub_server.hub.rooms["obs"]  # type: ignore[index]
    ingest = next(iter(room.participants.values()))
    camera = next(p for p in ingest.publications.values() if p.kind == "video")
    assert camera.up.codec.name == "H264"
    assert str(camera.up.codec.parameters["profile-level-id"]).startswith("6400")

    station = HubClient(hub_server.ws, hub_server.token("obs", "S1", "station"))
    await station.connect()
    try:
        camera = await first_track(station, "camera")
        frames = await decode_frames(camera.track, 15, timeout=20)
        assert (frames[-1].width, frames[-1].height) == (640, 360)
        sdp = station.subscriber.remoteDescription.sdp  # type: ignore[union-attr]
        assert "profile-level-id=6400" in sdp  # forwarded as High profile, unchanged

        viewer = hub_server.token("obs", "viewer-1", "viewer")
        pc, tracks, response = await whep_view(hub_server.base, "obs", viewer)
        try:
            assert response.status_code == 201, response.text
            assert response.headers["content-type"].startswith("application/sdp")
            location = response.headers["location"]
            assert location.startswith("/whep/obs/")
            await pc.setRemoteDescription(RTCSessionDescription(response.text, "answer"))
            await wait_until(lambda: None if "video" in tracks else "no WHEP video track")
            frames = await decode_frames(tracks["video"], 15, timeout=20)
            assert (frames[-1].width, frames[-1].height) == (640, 360)
            async with httpx.AsyncClient() as http:
                gone = await http.delete(f"{hub_server.base}{location}", headers=bearer(viewer))
            assert gone.status_code == 204
            assert all(p.kind != "whep" for p in room.participants.values())
        finally:
            await pc.close()
    finally:
        await station.close()


LONG_INGEST_SECONDS = 180
WINDOW_SECONDS = 10


@pytest.mark.timeout(LONG_INGEST_SECONDS + 120)
async def test_long_three_minute_ffmpeg_whip_ingest_is_watched_throughout(
    hub_server: RunningHub, tmp_path: Path
) -> None:
    """ffmpeg's WHIP muxer answers no ICE consent checks: the hub must keep a publisher
    whose media keeps coming (it cut them off after about 30 s), and ffmpeg's DELETE at
    the end must still end the ingest."""
    log = tmp_path / "ffmpeg.log"
    token = hub_server.token("long", "encoder-1", "ingest", name="导播台")
    ingest = ffmpeg_whip(
        f"{hub_server.base}/whip/long", token, seconds=LONG_INGEST_SECONDS + 10, log=log
    )
    station = HubClient(hub_server.ws, hub_server.token("long", "S1", "station"))
    try:
        await station.connect()
        camera = (await first_track(station, "camera")).track
        loop = asyncio.get_running_loop()
        start = loop.time()
        windows: Counter[int] = Counter()
        while (elapsed := loop.time() - start) < LONG_INGEST_SECONDS:
            try:
                await asyncio.wait_for(camera.recv(), WINDOW_SECONDS)
            except (TimeoutError, MediaStreamError):
                raise AssertionError(
                    f"no frame after {elapsed:.0f} s; frames per {WINDOW_SECONDS} s: "
                    f"{sorted(windows.items())}; ffmpeg: {log.read_text()[-1500:]}"
                ) from None
            windows[int((loop.time() - start) // WINDOW_SECONDS)] += 1
        empty = [w for w in range(LONG_INGEST_SECONDS // WINDOW_SECONDS) if windows[w] == 0]
        assert not empty, sorted(windows.items())

        def ingest_gone() -> str | None:
            room = hub_server.hub.rooms.get(RoomName("long"))
            kinds = [p.kind for p in room.participants.values()] if room else []
            return None if "whip" not in kinds else f"participants: {kinds}"

        # ffmpeg's input ends 10 s later; it sends DELETE (and logs an error whatever
        # the answer). The ingest leaves then, well before the hub's own silence deadline.
        await asyncio.wait_for(asyncio.to_thread(ingest.wait), 30)
        await wait_until(ingest_gone, timeout=10)
    finally:
        await station.close()
        ingest.kill()
        ingest.wait()


async def test_a_whip_publisher_that_vanishes_without_delete_is_cut_off(tmp_path: Path) -> None:
    """With the silence deadline at 3 s: media keeps the ingest connected for 10 s,
    then ffmpeg dies without DELETE and its connection ends soon after."""
    async with running_hub(tmp_path, peer_silence_timeout=3.0) as hub:
        token = hub.token("gone", "encoder-1", "ingest")
        ingest = ffmpeg_whip(f"{hub.base}/whip/gone", token, log=tmp_path / "ffmpeg.log")
        try:

            def publisher_pc() -> RTCPeerConnection | None:
                room = hub.hub.rooms.get(RoomName("gone"))
                participants = list(room.participants.values()) if room else []
                publisher = participants[0].publisher if participants else None
                return publisher.pc if publisher and publisher.by_mid else None

            def connected() -> str | None:
                pc = publisher_pc()
                return None if pc and pc.connectionState == "connected" else f"pc: {pc}"

            await wait_until(connected, timeout=20)
            pc = publisher_pc()
            assert pc is not None
            await asyncio.sleep(10)
            assert pc.connectionState == "connected"
        finally:
            ingest.kill()
            ingest.wait()
        # aiortc reports the ICE failure ("failed"), then closes the whole connection.
        ended = ("failed", "closed")
        await wait_until(
            lambda: None if pc.connectionState in ended else pc.connectionState, timeout=15
        )


async def test_whip_answer_lists_reachable_host_candidate_first(hub_server: RunningHub) -> None:
    pc = make_peer_connection([])
    from aiortc.mediastreams import VideoStreamTrack

    pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    token = hub_server.token("w", "enc", "ingest")
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{hub_server.base}/whip/w",
            content=pc.localDescription.sdp,
            headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 201, response.text
        candidates = [c for c in response.text.split("\r\n") if c.startswith("a=candidate:")]
        assert candidates and " 127.0.0.1 " in candidates[0] and " typ host" in candidates[0]
        await pc.setRemoteDescription(RTCSessionDescription(response.text, "answer"))
        location = f"{hub_server.base}{response.headers['location']}"
        gone = await http.delete(location, headers=bearer(token))
        assert gone.status_code == 204
        again = await http.delete(location, headers=bearer(token))
        assert again.status_code == 404
    await pc.close()


@pytest.mark.parametrize(
    ("headers", "body", "status", "reason"),
    [
        ({"Content-Type": "application/sdp"}, "v=0\r\n", 400, "SDP"),
        (
            {"Content-Type": "text/plain", "Authorization": "Bearer x"},
            "v=0",
            415,
            "application/sdp",
        ),
        ({"Content-Type": "application/sdp", "Authorization": "Basic abc"}, None, 401, "Bearer"),
        ({"Content-Type": "application/sdp", "Authorization": "Bearer nope"}, None, 401, "token"),
        ({"Content-Type": "application/sdp"}, "v=0\r\n" + "a=x\r\n" * 20000, 413, "larger"),
    ],
)
async def test_whip_refusals_say_why(
    hub_server: RunningHub, headers: dict[str, str], body: str | None, status: int, reason: str
) -> None:
    if body is None:
        pc = make_peer_connection([])
        pc.addTransceiver("audio", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        body = pc.localDescription.sdp
        await pc.close()
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{hub_server.base}/whip/r", content=body, headers=headers)
    assert response.status_code == status
    assert reason.lower() in response.text.lower()


async def test_whip_grants_are_enforced(hub_server: RunningHub) -> None:
    pc = make_peer_connection([])
    pc.addTransceiver("audio", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    cases = [
        (hub_server.token("a", "v", "viewer"), "/whip/a", 403),  # a viewer cannot publish
        (hub_server.token("a", "e", "ingest"), "/whip/b", 403),  # token for room a, not b
        (hub_server.token("a", "e", "ingest", ttl=0.001), "/whip/a", 401),  # expired
        (hub_server.token("a", "e", "ingest"), "/whep/a", 403),  # an ingest cannot watch
        (None, "/whep/a", 401),  # not a public room: anonymous viewers refused
    ]
    await asyncio.sleep(0.01)
    async with httpx.AsyncClient() as http:
        for token, path, status in cases:
            headers = {"Content-Type": "application/sdp"}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            response = await http.post(f"{hub_server.base}{path}", content=sdp, headers=headers)
            assert response.status_code == status, (path, response.text)


async def lecturer_and_station_on_stage(
    center: HubClient,
    center_voice: MediaStreamTrack,
    station: HubClient,
    station_voice: MediaStreamTrack,
) -> None:
    """The center and a station join, each with a camera and the given voice, and the
    center calls the station on stage."""
    from aiortc.mediastreams import VideoStreamTrack

    await center.connect()
    await center.publish({"camera": VideoStreamTrack(), "microphone": center_voice})
    await station.connect()
    await station.publish({"camera": VideoStreamTrack(), "microphone": station_voice})
    await center.send(
        {
            "type": "moderate",
            "action": "stage",
            "participant": station.joined["participant"]["sid"],
            "on_stage": True,
        }
    )
    await center.wait_for(lambda m: m["type"] == "stage" and len(m["stage"]) == 2)


async def test_whep_hears_every_microphone_on_stage(hub_server: RunningHub) -> None:
    from aiortc.mediastreams import AudioStreamTrack

    center = HubClient(hub_server.ws, hub_server.token("voices", "C", "center"))
    station = HubClient(hub_server.ws, hub_server.token("voices", "S1", "station"))
    pc = make_peer_connection([])
    try:
        await lecturer_and_station_on_stage(center, AudioStreamTrack(), station, AudioStreamTrack())
        pc.addTransceiver("video", direction="recvonly")
        for _ in range(3):
            pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        async with httpx.AsyncClient() as http:
            response = await http.post(
                f"{hub_server.base}/whep/voices",
                content=pc.localDescription.sdp,
                headers={
                    "Content-Type": "application/sdp",
                    "Authorization": f"Bearer {hub_server.token('voices', 'V', 'viewer')}",
                },
            )
        assert response.status_code == 201, response.text
        await pc.setRemoteDescription(RTCSessionDescription(response.text, "answer"))
        receivers = [t.receiver for t in pc.getTransceivers() if t.kind == "audio"]

        async def voices() -> str | None:
            counts = []
            for receiver in receivers:
                stats = await receiver.getStats()
                counts.append(
                    sum(s.packetsReceived for s in stats.values() if s.type == "inbound-rtp")
                )
            heard = [c for c in counts if c > 20]
            return None if len(heard) == 2 else f"audio packets per m-line: {counts}"

        await wait_until(voices, timeout=15)
    finally:
        await pc.close()
        await station.close()
        await center.close()


async def test_a_one_track_whep_viewer_hears_the_current_speaker(hub_server: RunningHub) -> None:

    center = HubClient(hub_server.ws, hub_server.token("speaker", "C", "center"))
    station = HubClient(hub_server.ws, hub_server.token("speaker", "S1", "station"))
    lecturer_voice, station_voice = ToneTrack(440), ToneTrack(1000)
    station_voice.speaking = False
    pc = make_peer_connection([])
    heard: list[HeardSound] = []
    pc.on("track", lambda track: heard.append(HeardSound(track)) if track.kind == "audio" else None)
    try:
        await lecturer_and_station_on_stage(center, lecturer_voice, station, station_voice)
        # One video and one audio m-line, as most WHEP players offer.
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        async with httpx.AsyncClient() as http:
            response = await http.post(
                f"{hub_server.base}/whep/speaker",
                content=pc.localDescription.sdp,
                headers={
                    "Content-Type": "application/sdp",
                    **bearer(hub_server.token("speaker", "V", "viewer")),
                },
            )
        assert response.status_code == 201, response.text
        await pc.setRemoteDescription(RTCSessionDescription(response.text, "answer"))
        await wait_until(lambda: None if heard else "no audio track", timeout=10)
        sound = heard[0]

        def hears(tones: set[int]) -> Callable[[], str | None]:
            def check() -> str | None:
                now = sound.tones((440, 1000))
                return None if now == tones else f"hears {now or 'nothing'}, not {tones}"

            return check

        await wait_until(hears({440}), timeout=15)
        # The lecturer falls silent and the station speaks: it takes the one track.
        lecturer_voice.speaking, station_voice.speaking = False, True
        await wait_until(hears({1000}), timeout=10)
        # And back, once the lecturer speaks again and the station is quiet.
        lecturer_voice.speaking, station_voice.speaking = True, False
        await wait_until(hears({440}), timeout=10)
    finally:
        for each in heard:
            await each.close()
        await pc.close()
        await station.close()
        await center.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def whip_publish(base: str, room: str, token: str):  # type: ignore[no-untyped-def]
    """An aiortc ingest: POST a sendonly offer, apply the answer."""
    from aiortc.mediastreams import VideoStreamTrack

    pc = make_peer_connection([])
    pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{base}/whip/{room}",
            content=pc.localDescription.sdp,
            headers={"Content-Type": "application/sdp", **bearer(token)},
        )
    if response.status_code == 201:
        await pc.setRemoteDescription(RTCSessionDescription(response.text, "answer"))
    return pc, response


async def test_a_whip_session_is_ended_only_with_its_own_identity(hub_server: RunningHub) -> None:
    token = hub_server.token("secure", "enc-1", "ingest")
    pc, response = await whip_publish(hub_server.base, "secure", token)
    try:
        assert response.status_code == 201, response.text
        location = response.headers["location"]
        room = hub_server.hub.rooms["secure"]  # type: ignore[index]
        (ingest,) = room.participants.values()
        # The sid is public (participant_joined, the room's stage): it names no resource.
        assert ingest.sid not in location
        other = hub_server.token("secure", "enc-2", "ingest")
        async with httpx.AsyncClient(base_url=hub_server.base) as http:
            by_sid = await http.delete(f"/whip/secure/{ingest.sid}")
            assert by_sid.status_code == 404, by_sid.text
            anonymous = await http.delete(location)
            assert anonymous.status_code == 401 and "Bearer" in anonymous.text
            stranger = await http.delete(location, headers=bearer(other))
            assert stranger.status_code == 403 and "enc-1" in stranger.text
            trickle = await http.patch(location, headers=bearer(other))
            assert trickle.status_code == 403
            as_whep = await http.delete(location.replace("/whip/", "/whep/"), headers=bearer(token))
            assert as_whep.status_code == 404
            assert list(room.participants.values()) == [ingest]  # nothing ended it
            own = await http.delete(location, headers=bearer(token))
            assert own.status_code == 204, own.text
            assert not room.participants
    finally:
        await pc.close()


async def test_an_anonymous_whep_session_is_ended_by_its_secret_url(hub_server: RunningHub) -> None:
    center = HubClient(hub_server.ws, hub_server.token("open", "C", "center"))
    await center.connect()
    hub_server.hub.rooms["open"].public = True  # type: ignore[index]
    pc, _, response = await whep_view(hub_server.base, "open", None)
    try:
        assert response.status_code == 201, response.text
        location = response.headers["location"]
        room = hub_server.hub.rooms["open"]  # type: ignore[index]
        (household,) = [p for p in room.participants.values() if p.kind == "whep"]
        assert household.sid not in location
        async with httpx.AsyncClient(base_url=hub_server.base) as http:
            assert (await http.delete(f"/whep/open/{household.sid}")).status_code == 404
            assert household.sid in room.participants
            gone = await http.delete(location)
            assert gone.status_code == 204, gone.text
            assert household.sid not in room.participants
    finally:
        await pc.close()
        await center.close()


def whep_participants(running: RunningHub, room: str) -> list[str]:
    found = running.hub.rooms.get(room)  # type: ignore[call-overload]
    return [p.identity for p in found.participants.values() if p.kind == "whep"] if found else []


async def public_room(running: RunningHub, room: str) -> HubClient:
    center = HubClient(running.ws, running.token(room, "C", "center"))
    await center.connect()
    running.hub.rooms[room].public = True  # type: ignore[index]
    return center


async def test_whep_peers_that_never_connect_or_go_away_leave_the_room(tmp_path: Path) -> None:
    # A deadline long enough that the fourth offer connects before the first three
    # expire, on a loaded machine too.
    async with running_hub(tmp_path, peer_connect_timeout=5.0) as running:
        center = await public_room(running, "gone")
        pcs = []
        try:
            for _ in range(3):  # offers that never do ICE: the answer is never applied
                pc, _, response = await whep_view(running.base, "gone", None)
                pcs.append(pc)
                assert response.status_code == 201, response.text
            pc, _, response = await whep_view(running.base, "gone", None)
            pcs.append(pc)
            await pc.setRemoteDescription(RTCSessionDescription(response.text, "answer"))
            await wait_until(lambda: None if pc.connectionState == "connected" else "connecting")
            assert len(whep_participants(running, "gone")) == 4

            def only_connected() -> str | None:
                left = whep_participants(running, "gone")
                return None if len(left) == 1 else f"WHEP participants: {left}"

            await wait_until(only_connected, timeout=10)
            await asyncio.sleep(5.0)  # past the deadline: the connected one stays
            assert len(whep_participants(running, "gone")) == 1
            await pc.close()  # without a DELETE

            def none_left() -> str | None:
                left = whep_participants(running, "gone")
                return None if not left else f"WHEP participants: {left}"

            await wait_until(none_left, timeout=10)
        finally:
            for pc in pcs:
                await pc.close()
            await center.close()


async def test_whep_sessions_are_capped_per_room_and_per_address(tmp_path: Path) -> None:
    async with running_hub(tmp_path, room_max_viewers=3, whep_per_address=2) as running:
        center = await public_room(running, "cap")
        pcs = []

        async def view(address: str | None) -> httpx.Response:
            pc, _, response = await whep_view(running.base, "cap", None, address)
            pcs.append(pc)
            return response

        try:
            assert (await view(None)).status_code == 201
            assert (await view(None)).status_code == 201
            third = await view(None)  # a third from 127.0.0.1
            assert third.status_code == 429, third.text
            assert "address" in third.text and int(third.headers["retry-after"]) > 0
            assert (await view("10.0.0.7")).status_code == 201  # another address
            full = await view("10.0.0.8")
            assert full.status_code == 503, full.text
            assert "full" in full.text and int(full.headers["retry-after"]) > 0
            assert len(whep_participants(running, "cap")) == 3
        finally:
            for pc in pcs:
                await pc.close()
            await center.close()


async def test_a_second_whep_with_one_identity_replaces_the_first(hub_server: RunningHub) -> None:
    center = await public_room(hub_server, "twice")
    token = hub_server.token("twice", "V1", "viewer")
    first, _, one = await whep_view(hub_server.base, "twice", token)
    second, _, two = await whep_view(hub_server.base, "twice", token)
    try:
        assert one.status_code == 201 and two.status_code == 201
        assert whep_participants(hub_server, "twice") == ["V1"]
        async with httpx.AsyncClient(base_url=hub_server.base) as http:
            ended = await http.delete(one.headers["location"], headers=bearer(token))
            assert ended.status_code == 404  # already replaced
            assert whep_participants(hub_server, "twice") == ["V1"]
    finally:
        await first.close()
        await second.close()
        await center.close()


async def test_anonymous_whep_is_rate_limited_per_address(tmp_path: Path) -> None:
    async with running_hub(tmp_path, anonymous_whep_per_minute=2) as running:
        center = await public_room(running, "rate")
        pcs = []
        try:
            for _ in range(2):
                pc, _, response = await whep_view(running.base, "rate", None)
                pcs.append(pc)
                assert response.status_code == 201, response.text
            pc, _, response = await whep_view(running.base, "rate", None)
            pcs.append(pc)
            assert response.status_code == 429, response.text
            assert int(response.headers["retry-after"]) >= 1
            token = running.token("rate", "V1", "viewer")  # a viewer with a token is known
            pc, _, response = await whep_view(running.base, "rate", token)
            pcs.append(pc)
            assert response.status_code == 201, response.text
            pc, _, response = await whep_view(running.base, "rate", None, "10.0.0.9")
            pcs.append(pc)
            assert response.status_code == 201, response.text  # another address
        finally:
            for pc in pcs:
                await pc.close()
            await center.close()


async def test_an_offer_with_too_many_m_lines_is_refused(hub_server: RunningHub) -> None:
    center = await public_room(hub_server, "wide")
    pc = make_peer_connection([])
    try:
        for _ in range(24):  # the default takes 16
            pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        async with httpx.AsyncClient(base_url=hub_server.base) as http:
            response = await http.post(
                "/whep/wide",
                content=pc.localDescription.sdp,
                headers={"Content-Type": "application/sdp"},
            )
        assert response.status_code == 400 and "m-lines" in response.text, response.text
        assert whep_participants(hub_server, "wide") == []
    finally:
        await pc.close()
        await center.close()
