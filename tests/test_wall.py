"""The center's wall with real aiortc peers: a console receives what its ``view``
shows, the stations send what someone receives (hub/policy.py decides)."""

from __future__ import annotations

from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from hub.client import HubClient, ReceivedTrack
from tests.helpers import wait_until
from tests.hubserver import RunningHub


async def flowing(track: ReceivedTrack, more: int = 20) -> None:
    """Wait until ``more`` packets more arrive on ``track``."""
    start = track.packets
    await wait_until(
        lambda: None if track.packets > start + more else f"{track.packets - start} packets"
    )


def last_quality(client: HubClient) -> dict[str, object]:
    quality = [m for m in client.messages if m["type"] == "quality"]
    return quality[-1] if quality else {"joined": client.joined["quality"]}


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
