"""The center's wall with real aiortc peers: a console receives what its ``view``
shows, the stations send what someone receives (hub/policy.py decides)."""

from __future__ import annotations

import asyncio

from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack
from av import VideoFrame

from hub.client import HubClient, ReceivedTrack
from hub.ids import RoomName
from hub.tokens import Source
from tests.helpers import wait_until
from tests.hubserver import RunningHub


async def flowing(track: ReceivedTrack, more: int = 20) -> None:
    """Wait until ``more`` packets more arrive on ``track``."""
    start = track.packets
    await wait_until(
        lambda: None if track.packets > start + more else f"{track.packets - start} packets"
    )


class SizedVideo(VideoStreamTrack):
    """Black frames of one size: which publication a subscriber decodes shows in it."""

    def __init__(self, width: int, height: int) -> None:
        super().__init__()
        self.size = (width, height)

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = VideoFrame(*self.size, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        frame.pts, frame.time_base = pts, time_base
        return frame


async def decodes(track: ReceivedTrack, width: int, timeout: float = 10.0) -> None:
    """Wait until ``track`` decodes a frame ``width`` pixels wide."""

    async def until() -> None:
        while (frame := await track.track.recv()).width != width:
            pass
        assert isinstance(frame, VideoFrame)

    await asyncio.wait_for(until(), timeout)


def offers(client: HubClient) -> int:
    return sum(1 for m in client.messages if m["type"] == "offer")


async def test_a_console_receives_the_tiles_it_shows_and_the_sites_it_hears(
    hub_server: RunningHub,
) -> None:
    token = hub_server.token
    center = HubClient(hub_server.ws, token("wall", "C", "center"), decode=False)
    s1 = HubClient(hub_server.ws, token("wall", "S1", "station"), decode=False)
    s2 = HubClient(hub_server.ws, token("wall", "S2", "station"), decode=False)
    try:
        await center.connect()
        for station in (s1, s2):
            await station.connect()
            await station.publish({"camera": VideoStreamTrack(), "microphone": AudioStreamTrack()})
        sid1, sid2 = (s.joined["participant"]["sid"] for s in (s1, s2))

        # No view yet: the first page (both sites) as video, no voice off stage; the
        # stations send thumbnails and no microphone.
        await wait_until(
            lambda: (
                None
                if {t.info.get("source") for t in center.received.values() if t.info} == {"camera"}
                and len(center.tracks_of("camera")) == 2
                else f"center has {[t.info for t in center.received.values()]}"
            )
        )
        for station in (s1, s2):
            await station.wait_for(
                lambda m: m == {"type": "quality", "level": "thumbnail", "microphone": "paused"}
            )

        # The console turns to a page of s2 and listens to s1.
        await center.send({"type": "view", "tiles": [sid2, "PA_gone"], "listen": [sid1]})
        await wait_until(
            lambda: (
                None
                if not center.tracks_of("camera", sid1)
                and center.tracks_of("camera", sid2)
                and center.tracks_of("microphone", sid1)
                and not center.tracks_of("microphone", sid2)
                else f"center has {[t.info for t in center.received.values()]}"
            )
        )
        await flowing(center.tracks_of("camera", sid2)[0])
        await flowing(center.tracks_of("microphone", sid1)[0])
        await s1.wait_for(lambda m: m == {"type": "quality", "level": "paused", "microphone": "on"})
        await s2.wait_for(
            lambda m: m == {"type": "quality", "level": "thumbnail", "microphone": "paused"}
        )
        # Stations never receive each other off stage, whatever the console shows.
        assert not s1.tracks_of("camera", sid2) and not s2.tracks_of("microphone", sid1)
    finally:
        for client in (s2, s1, center):
            await client.close()


async def test_view_is_for_moderators_and_bounded(hub_server: RunningHub) -> None:
    center = HubClient(hub_server.ws, hub_server.token("wall-refusals", "C", "center"))
    station = HubClient(hub_server.ws, hub_server.token("wall-refusals", "S1", "station"))
    try:
        await center.connect()
        await station.connect()
        await station.send({"type": "view", "tiles": []})
        error = await station.wait_for(lambda m: m["type"] == "error")
        assert (error["code"], error["ref"]) == ("forbidden", "view")
        limit = hub_server.hub.settings.view_max_tiles
        await center.send({"type": "view", "tiles": [f"PA_{i}" for i in range(limit + 1)]})
        error = await center.wait_for(lambda m: m["type"] == "error")
        assert (error["code"], error["ref"]) == ("bad_message", "view")
        mark = len(center.messages)
        await center.send({"type": "view", "tiles": "PA_x"})
        error = await center.wait_for(lambda m: m["type"] == "error", start=mark)
        assert error["code"] == "bad_message"
    finally:
        await station.close()
        await center.close()


async def test_turning_a_page_re_points_an_m_line_without_an_offer(hub_server: RunningHub) -> None:
    token = hub_server.token
    center = HubClient(hub_server.ws, token("pages", "C", "center"))
    s1 = HubClient(hub_server.ws, token("pages", "S1", "station"))
    s2 = HubClient(hub_server.ws, token("pages", "S2", "station"))
    try:
        await center.connect()
        await center.send({"type": "view", "tiles": []})
        await s1.connect()
        await s1.publish({"camera": SizedVideo(320, 180)})
        await s2.connect()
        await s2.publish({"camera": SizedVideo(160, 96)})
        sid1, sid2 = (s.joined["participant"]["sid"] for s in (s1, s2))

        await center.send({"type": "view", "tiles": [sid1]})
        await wait_until(lambda: None if center.tracks_of("camera", sid1) else "no s1 tile")
        tile = center.tracks_of("camera", sid1)[0]
        await decodes(tile, 320)
        offered = offers(center)

        # The next page: the same m-line now carries s2, told by a tracks message.
        mark = len(center.messages)
        await center.send({"type": "view", "tiles": [sid2]})
        moved = await center.wait_for(lambda m: m["type"] == "tracks", start=mark)
        room = hub_server.hub.rooms[RoomName("pages")]
        camera = room.participant(sid2).publication_by_source(Source.CAMERA)
        assert camera is not None
        assert moved["tracks"] == {
            tile.mid: {
                "publication": camera.id,
                "participant": sid2,
                "source": "camera",
            }
        }
        assert tile.info["participant"] == sid2
        await decodes(tile, 160)
        assert offers(center) == offered, "turning a page renegotiated"
        # s1 is on no page now: paused at its source.
        await s1.wait_for(lambda m: m["type"] == "quality" and m["level"] == "paused")
    finally:
        for client in (s2, s1, center):
            await client.close()


async def test_a_camera_nobody_watches_stops_at_its_source(hub_server: RunningHub) -> None:
    """The hub tells a site on no page to pause its camera (and a microphone nobody
    hears); the site's media stops reaching the hub, and comes back, starting at a
    keyframe, when a console turns to its page."""
    token = hub_server.token
    center = HubClient(hub_server.ws, token("paused", "C", "center"))
    s1 = HubClient(hub_server.ws, token("paused", "S1", "station"))
    s2 = HubClient(hub_server.ws, token("paused", "S2", "station"))
    try:
        await center.connect()
        await s1.connect()
        await s1.publish({"camera": SizedVideo(320, 180), "microphone": AudioStreamTrack()})
        sid1 = s1.joined["participant"]["sid"]
        site = hub_server.hub.rooms[RoomName("paused")].participant(sid1)

        def received(source: Source) -> int:
            publication = site.publication_by_source(source)
            assert publication is not None
            return publication.up.bytes_received

        # On the console's first page: its camera comes, its microphone is paused.
        await wait_until(lambda: None if received(Source.CAMERA) > 1000 else "no camera yet")
        assert received(Source.MICROPHONE) == 0

        await center.send({"type": "view", "tiles": []})
        await s1.wait_for(
            lambda m: m == {"type": "quality", "level": "paused", "microphone": "paused"}
        )
        # The console knows it is paused, not a weak link.
        await center.wait_for(
            lambda m: m["type"] == "stats" and m["participants"][sid1]["uplink"] == "paused"
        )
        await asyncio.sleep(0.5)  # what was in flight has arrived
        before = received(Source.CAMERA)
        # A site joining now, on no page, is paused before it sends anything.
        await s2.connect()
        await s2.publish({"camera": SizedVideo(320, 180), "microphone": AudioStreamTrack()})
        await asyncio.sleep(1.5)
        assert received(Source.CAMERA) == before, "a paused camera still sends"
        late = hub_server.hub.rooms[RoomName("paused")].participant(s2.joined["participant"]["sid"])
        assert [p.up.bytes_received for p in late.publications.values()] == [0, 0]

        await center.send({"type": "view", "tiles": [sid1], "listen": [sid1]})
        await s1.wait_for(
            lambda m: m == {"type": "quality", "level": "thumbnail", "microphone": "on"}
        )
        await wait_until(lambda: None if center.tracks_of("camera", sid1) else "no s1 tile")
        await decodes(center.tracks_of("camera", sid1)[0], 320)
        await wait_until(lambda: None if received(Source.MICROPHONE) > 0 else "no microphone")
        assert received(Source.CAMERA) > before
    finally:
        for client in (s2, s1, center):
            await client.close()
