"""ICE restart (RFC 8445 section 9) between real aiortc peers and a real hub, on the
shared UDP port (``HUB_UDP_PORT``) and on a port per connection: new credentials on
both sides, checks again, the same peer connections and media going on."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiortc import RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from hub.aiortc_internals import ice_restarting, ice_usernames
from hub.client import HubClient
from hub.ids import ParticipantIdentity, RoomName
from hub.room import Participant
from tests.helpers import first_track, wait_until
from tests.hubserver import RunningHub, free_port, running_hub
from tests.test_forwarding_e2e import decode_frames


@pytest.fixture(params=["shared port", "port per connection"])
async def any_hub(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[RunningHub]:
    overrides = {"udp_port": free_port()} if request.param == "shared port" else {}
    async with running_hub(tmp_path, **overrides) as running:
        yield running


def ufrag_of(sdp: str) -> str:
    found = set(re.findall(r"a=ice-ufrag:(\S+)", sdp))
    assert len(found) == 1, found
    return found.pop()


def participant(hub_server: RunningHub, room: str, identity: str) -> Participant:
    found = hub_server.hub.rooms[RoomName(room)].by_identity(ParticipantIdentity(identity))
    assert found is not None
    return found


def restarted(pc: RTCPeerConnection, usernames: list[tuple[str, str | None]]) -> Any:
    """A check: ``pc`` checks with other usernames than ``usernames`` and its restart
    has nominated a pair."""

    def check() -> str | None:
        now = ice_usernames(pc)
        if now == usernames:
            return f"still {now}"
        return "restart has not nominated yet" if ice_restarting(pc) else None

    return check


def ufrags_on_port(hub_server: RunningHub) -> set[str]:
    mux = hub_server.hub.udp_mux
    return {u for s in mux.sockets for u in s.by_ufrag} if mux is not None else set()


async def test_both_connections_restart_ice_and_media_goes_on(any_hub: RunningHub) -> None:
    room = "restart"
    center = HubClient(any_hub.ws, any_hub.token(room, "C", "center"))
    station = HubClient(any_hub.ws, any_hub.token(room, "S1", "station"))
    try:
        await center.connect()
        await center.publish({"camera": VideoStreamTrack()})
        await station.connect()
        video = (await first_track(station, "camera")).track
        await decode_frames(video, 5)
        assert center.publisher is not None and station.subscriber is not None
        publisher, subscriber = center.publisher, station.subscriber
        hub_publisher = participant(any_hub, room, "C").publisher
        hub_subscriber = participant(any_hub, room, "S1").subscriber
        assert hub_publisher is not None and hub_subscriber is not None
        before = {
            "publisher": ice_usernames(hub_publisher.pc),
            "subscriber": ice_usernames(hub_subscriber.pc),
        }
        hub_ufrags = {before["publisher"][0][0], before["subscriber"][0][0]}
        offers = len([m for m in station.messages if m["type"] == "offer"])

        # The lecturer's publisher offers new credentials, the station asks the hub for
        # new ones on its subscriber connection.
        answer_ufrag = ufrag_of(publisher.remoteDescription.sdp)
        await center.restart_ice()
        assert ufrag_of(publisher.remoteDescription.sdp) != answer_ufrag
        await station.restart_ice()
        await wait_until(
            lambda: (
                None
                if len([m for m in station.messages if m["type"] == "offer"]) > offers
                else "no new offer"
            )
        )
        await wait_until(restarted(hub_publisher.pc, before["publisher"]))
        await wait_until(restarted(hub_subscriber.pc, before["subscriber"]))
        # Each side checks with what the other announced.
        for client_pc, hub_pc in ((publisher, hub_publisher.pc), (subscriber, hub_subscriber.pc)):
            [(local, remote)] = ice_usernames(client_pc)
            assert ice_usernames(hub_pc) == [(remote, local)]
            assert remote not in hub_ufrags
        if any_hub.hub.udp_mux is not None:
            # The new fragments map to the same connections; the old ones to nobody.
            on_port = ufrags_on_port(any_hub)
            assert not hub_ufrags & on_port
            assert {
                ice_usernames(hub_publisher.pc)[0][0],
                ice_usernames(hub_subscriber.pc)[0][0],
            } <= on_port

        # The same peer connections, and the lecturer's video keeps coming.
        assert center.publisher is publisher and station.subscriber is subscriber
        assert participant(any_hub, room, "S1").subscriber is hub_subscriber
        assert len(await decode_frames(video, 30)) == 30
    finally:
        await station.close()
        await center.close()


async def test_odd_restarts_are_refused_and_the_hub_goes_on(any_hub: RunningHub) -> None:
    room = "odd-restart"
    center = HubClient(any_hub.ws, any_hub.token(room, "C", "center"))
    early = HubClient(any_hub.ws, any_hub.token(room, "S0", "station"))
    station = HubClient(any_hub.ws, any_hub.token(room, "S1", "station"))
    try:
        # Nothing offered to it yet: nothing to restart.
        await early.connect()
        await early.send({"type": "restart_ice"})
        refused = await early.wait_for(lambda m: m["type"] == "error")
        assert (refused["code"], refused["ref"]) == ("bad_message", "restart_ice")

        await center.connect()
        await center.publish({"camera": VideoStreamTrack(), "microphone": AudioStreamTrack()})
        await station.connect()
        video = (await first_track(station, "camera")).track
        await decode_frames(video, 3)
        assert center.publisher is not None
        sdp = center.publisher.localDescription.sdp
        ufrag = ufrag_of(sdp)
        odd = {
            "new ufrag, no password": re.sub(
                r"a=ice-pwd:\S+\r\n", "", sdp.replace(ufrag, "Zz9Zz9Zz")
            ),
            "a new ufrag on one m-line only": sdp.replace(
                f"a=ice-ufrag:{ufrag}", "a=ice-ufrag:Zz9Zz9Zz", 1
            ),
            "garbage": "v=0\r\n" + "a=ice-ufrag:\x00\x01" * 50,
        }
        for what, body in odd.items():
            start = len(center.messages)
            await center.send(
                {"type": "offer", "pc": "publisher", "sdp": body, "sources": center._sources}
            )
            error = await center.wait_for(lambda m: m["type"] == "error", start=start)
            assert (error["code"], error["ref"]) == ("bad_sdp", "offer"), (what, error)

        # The hub and the lecture go on, on the connections ICE was running on.
        assert len(await decode_frames(video, 10)) == 10
        assert not ice_restarting(participant(any_hub, room, "C").publisher.pc)
    finally:
        await station.close()
        await early.close()
        await center.close()
