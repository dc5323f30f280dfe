"""Signaling over /ws with real aiortc peers: grants, stage, moderation, lifecycle."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from hub.client import HubClient
from hub.errors import HubError
from hub.ids import ParticipantIdentity, RoomName
from hub.peers import make_peer_connection
from hub.tokens import Role, Source, grant_for_role
from tests.helpers import first_track, wait_until
from tests.hubserver import RunningHub, running_hub
from tests.test_forwarding_e2e import decode_frames


async def raw_exchange(url: str, *messages: object) -> list[dict[str, object]]:
    """Send raw messages, collect replies until the socket is quiet or closed."""
    replies: list[dict[str, object]] = []
    async with websockets.connect(url) as ws:
        for message in messages:
            await ws.send(message if isinstance(message, str) else json.dumps(message))
        try:
            while True:
                replies.append(json.loads(await asyncio.wait_for(ws.recv(), 1.0)))
        except (TimeoutError, websockets.ConnectionClosed):
            pass
    return replies


async def test_join_refusals(hub_server: RunningHub) -> None:
    expired = hub_server.token("r", "S1", "station", ttl=0.001)
    await asyncio.sleep(0.01)
    cases = [
        ({"type": "join", "token": expired}, "token_expired"),
        ({"type": "join", "token": "abc.def.ghi"}, "invalid_token"),
        (
            {"type": "join", "token": hub_server.token("a", "S1", "station"), "room": "b"},
            "wrong_room",
        ),
        ({"type": "hand", "raised": True}, "not_joined"),
    ]
    for message, code in cases:
        replies = await raw_exchange(hub_server.ws, message)
        assert replies and replies[0]["type"] == "error", replies
        assert replies[0]["code"] == code
    assert "b" not in hub_server.hub.rooms  # a refused join opens nothing


async def test_grants_are_enforced(hub_server: RunningHub) -> None:
    viewer = HubClient(hub_server.ws, hub_server.token("g", "V1", "viewer"))
    station = HubClient(hub_server.ws, hub_server.token("g", "S1", "station"))
    center = HubClient(hub_server.ws, hub_server.token("g", "C", "center"))
    limited = hub_server.signer.issue(
        grant_for_role(RoomName("g"), ParticipantIdentity("S2"), Role.STATION, ttl=60).__class__(
            **{
                **grant_for_role(
                    RoomName("g"), ParticipantIdentity("S2"), Role.STATION, ttl=60
                ).__dict__,
                "sources": frozenset({Source.CAMERA}),
            }
        )
    )
    camera_only = HubClient(hub_server.ws, limited)
    clients = [viewer, station, center, camera_only]
    try:
        for client in clients:
            await client.connect()
        # A viewer cannot publish.
        try:
            await viewer.publish({"camera": VideoStreamTrack()}, timeout=5)
            raise AssertionError("viewer published")
        except ConnectionError as exc:
            assert "may not publish" in str(exc)
        # A grant limited to the camera cannot share its screen.
        try:
            await camera_only.publish({"screen": VideoStreamTrack()}, timeout=5)
            raise AssertionError("screen published")
        except ConnectionError as exc:
            assert "screen" in str(exc)
        # A station cannot moderate.
        start = len(station.messages)
        center_sid = center.joined["participant"]["sid"]
        await station.send({"type": "moderate", "action": "remove", "participant": center_sid})
        error = await station.wait_for(lambda m: m["type"] == "error", start=start)
        assert error["code"] == "forbidden" and error["ref"] == "moderate"
        assert hub_server.hub.rooms[RoomName("g")].participants.get(center_sid) is not None
    finally:
        for client in clients:
            await client.close()


async def test_stage_hands_and_who_receives_what(hub_server: RunningHub) -> None:
    center = HubClient(hub_server.ws, hub_server.token("s", "C", "center"), decode=False)
    s1 = HubClient(hub_server.ws, hub_server.token("s", "S1", "station", name="东湖村"))
    s2 = HubClient(hub_server.ws, hub_server.token("s", "S2", "station"), decode=False)
    try:
        await center.connect()
        await center.publish({"camera": VideoStreamTrack(), "microphone": AudioStreamTrack()})
        for station in (s1, s2):
            await station.connect()
            await station.publish({"camera": VideoStreamTrack(), "microphone": AudioStreamTrack()})
        s1_sid = s1.joined["participant"]["sid"]
        c_sid = center.joined["participant"]["sid"]
        # Stations receive the stage (the center) only; the center, before it says what
        # it shows, the cameras of its first page (everyone here), and no voice off stage.
        await wait_until(
            lambda: None if len(center.received) == 2 else f"center has {len(center.received)}"
        )
        assert {t.info["source"] for t in center.received.values()} == {"camera"}
        await wait_until(lambda: None if len(s2.received) == 2 else f"s2 has {len(s2.received)}")
        assert {t.info["participant"] for t in s2.received.values()} == {c_sid}
        # Media flows on every one of the moderator's tracks, not only the first of a kind.
        await wait_until(
            lambda: (
                None
                if all(t.packets > 10 for t in center.received.values())
                else f"center packets: {[t.packets for t in center.received.values()]}"
            )
        )

        # A raised hand is heard at the console.
        await s1.send({"type": "hand", "raised": True})
        await wait_until(
            lambda: None if center.tracks_of("microphone", s1_sid) else "s1's hand not heard"
        )
        update = await center.wait_for(
            lambda m: (
                m["type"] == "participant_updated"
                and m["participant"]["sid"] == s1_sid
                and m["participant"]["hand_raised"]
            )
        )
        assert update["participant"]["name"] == "东湖村"

        mark = len(s1.messages)
        await center.send(
            {"type": "moderate", "action": "stage", "participant": s1_sid, "on_stage": True}
        )
        quality = await s1.wait_for(lambda m: m["type"] == "quality", start=mark)
        assert quality["level"] == "stage"
        stage = await s2.wait_for(lambda m: m["type"] == "stage" and s1_sid in m["stage"])
        assert set(stage["stage"]) == {c_sid, s1_sid}
        await wait_until(lambda: None if s2.tracks_of("camera", s1_sid) else "s2 lacks s1's camera")
        s1_camera = s2.tracks_of("camera", s1_sid)[0]
        before = s1_camera.packets
        await wait_until(lambda: None if s1_camera.packets > before + 30 else "no s1 video at s2")
        hand = next(
            p for p in hub_server.hub.rooms[RoomName("s")].participants.values() if p.sid == s1_sid
        )
        assert not hand.hand_raised  # called on stage lowers the hand

        mark = len(s1.messages)
        await center.send(
            {"type": "moderate", "action": "stage", "participant": s1_sid, "on_stage": False}
        )
        quality = await s1.wait_for(lambda m: m["type"] == "quality", start=mark)
        assert quality["level"] == "thumbnail"
        await wait_until(lambda: None if not s2.tracks_of("camera", s1_sid) else "s1 still offered")
        stalled = s1_camera.packets
        await asyncio.sleep(0.5)
        assert s1_camera.packets <= stalled + 2  # off stage: no more of s1's media
    finally:
        for client in (s2, s1, center):
            await client.close()


async def test_moderator_mute_stops_forwarding_and_locks_unmute(hub_server: RunningHub) -> None:
    center = HubClient(hub_server.ws, hub_server.token("m", "C", "center"), decode=False)
    station = HubClient(hub_server.ws, hub_server.token("m", "S1", "station"))
    try:
        await center.connect()
        await station.connect()
        await station.publish({"microphone": AudioStreamTrack()})
        sid = station.joined["participant"]["sid"]
        await center.send({"type": "view", "tiles": [sid], "listen": [sid]})
        await wait_until(
            lambda: None if center.tracks_of("microphone", sid) else "no mic at center"
        )
        mic = center.tracks_of("microphone", sid)[0]
        await wait_until(lambda: None if mic.packets > 20 else f"{mic.packets} audio packets")
        await center.send(
            {
                "type": "moderate",
                "action": "mute",
                "participant": sid,
                "source": "microphone",
                "muted": True,
            }
        )
        muted = await station.wait_for(lambda m: m["type"] == "muted")
        assert muted == {
            "type": "muted",
            "source": "microphone",
            "muted": True,
            "by_moderator": True,
        }
        await asyncio.sleep(0.2)
        frozen = mic.packets
        await asyncio.sleep(1.0)
        assert mic.packets == frozen  # 50 packets/s would have arrived
        mark = len(station.messages)
        await station.send({"type": "mute", "source": "microphone", "muted": False})
        error = await station.wait_for(lambda m: m["type"] == "error", start=mark)
        assert error["code"] == "muted_by_moderator"
        await center.send(
            {
                "type": "moderate",
                "action": "mute",
                "participant": sid,
                "source": "microphone",
                "muted": False,
            }
        )
        await wait_until(lambda: None if mic.packets > frozen + 20 else "audio did not resume")
    finally:
        await station.close()
        await center.close()


async def test_remove_chat_and_duplicate_identity(hub_server: RunningHub) -> None:
    center = HubClient(hub_server.ws, hub_server.token("c", "C", "center"))
    s1 = HubClient(hub_server.ws, hub_server.token("c", "S1", "station"))
    s2 = HubClient(hub_server.ws, hub_server.token("c", "S2", "station"))
    s2_again = HubClient(hub_server.ws, hub_server.token("c", "S2", "station"))
    try:
        for client in (center, s1, s2):
            await client.connect()
        await s1.send({"type": "chat", "text": "收到，东湖村已就位"})
        chat = await center.wait_for(lambda m: m["type"] == "chat")
        assert (
            chat["text"] == "收到，东湖村已就位" and chat["from"] == s1.joined["participant"]["sid"]
        )
        mark = len(s1.messages)
        await s1.send({"type": "chat", "text": "x" * 2001})
        assert (await s1.wait_for(lambda m: m["type"] == "error", start=mark))[
            "code"
        ] == "bad_message"

        await s2_again.connect()  # the same station reconnecting
        removed = await s2.wait_for(lambda m: m["type"] == "removed")
        assert removed["reason"] == "duplicate_identity"
        await s2.wait_for(lambda m: m["type"] == "closed")
        room = hub_server.hub.rooms[RoomName("c")]
        assert [p.identity for p in room.participants.values()].count("S2") == 1

        s1_sid = s1.joined["participant"]["sid"]
        await center.send({"type": "moderate", "action": "remove", "participant": s1_sid})
        removed = await s1.wait_for(lambda m: m["type"] == "removed")
        assert removed["reason"] == "removed_by_moderator"
        await s1.wait_for(lambda m: m["type"] == "closed")
        left = await center.wait_for(
            lambda m: m["type"] == "participant_left" and m["sid"] == s1_sid
        )
        assert left
    finally:
        for client in (s2_again, s2, s1, center):
            await client.close()


@pytest.mark.parametrize("name", ["..", "../escape", "a/b", "live\n"])
async def test_a_room_name_that_is_not_one_opens_no_room(hub_server: RunningHub, name: str) -> None:
    """Whatever hands the hub a name (a token, the schedule, an API), it becomes a
    directory only if it is a room name."""
    with pytest.raises(HubError) as refused:
        await hub_server.hub.room(RoomName(name))
    assert refused.value.code == "bad_message" and "room name" in refused.value.message
    assert RoomName(name) not in hub_server.hub.rooms
    assert await hub_server.hub.store.room_node(RoomName(name)) is None


async def test_room_lifecycle_and_cascading_close(tmp_path: Path) -> None:
    async with running_hub(tmp_path, room_empty_timeout=0.3) as hub:
        center = HubClient(hub.ws, hub.token("life", "C", "center"))
        station = HubClient(hub.ws, hub.token("life", "S1", "station"), decode=False)
        await center.connect()  # created on first join
        room = hub.hub.rooms[RoomName("life")]
        await center.publish({"camera": VideoStreamTrack()})
        await station.connect()
        await wait_until(lambda: None if station.received else "nothing received")
        publication = next(iter(next(iter(room.participants.values())).publications.values()))
        async with httpx.AsyncClient() as http:
            center_token = {"Authorization": f"Bearer {hub.token('life', 'C', 'center')}"}
            info = (await http.get(f"{hub.base}/api/rooms/life", headers=center_token)).json()
            assert info["participants"] == 2
            denied = await http.delete(
                f"{hub.base}/api/rooms/life",
                headers={"Authorization": f"Bearer {hub.token('life', 'S1', 'station')}"},
            )
            assert denied.status_code == 403
            closed = await http.delete(
                f"{hub.base}/api/rooms/life",
                headers={"Authorization": f"Bearer {hub.token('life', 'C', 'center')}"},
            )
            assert closed.status_code == 204
        removed = await station.wait_for(lambda m: m["type"] == "removed")
        assert removed["reason"] == "room_closed"
        assert room.closed and not room.participants
        assert publication.closed and publication.up.closed and not publication.up.subscriptions
        assert RoomName("life") not in hub.hub.rooms
        await center.close()
        await station.close()

        # Closed when empty after the grace period.
        again = HubClient(hub.ws, hub.token("idle", "C", "center"))
        await again.connect()
        assert RoomName("idle") in hub.hub.rooms
        await again.close()
        await wait_until(lambda: None if RoomName("idle") not in hub.hub.rooms else "still open")
        assert await hub.hub.store.room_node(RoomName("idle")) is None


async def test_lecture_frames_decode_after_late_join(hub_server: RunningHub) -> None:
    """A station joining late starts at a keyframe the hub asked for."""
    center = HubClient(hub_server.ws, hub_server.token("late", "C", "center"))
    try:
        await center.connect()
        await center.publish({"camera": VideoStreamTrack()})
        await asyncio.sleep(3)  # well past the publisher's first keyframe
        station = HubClient(hub_server.ws, hub_server.token("late", "S9", "station"))
        await station.connect()
        try:
            camera = await first_track(station, "camera")
            frames = await decode_frames(camera.track, 5, timeout=10)
            assert len(frames) == 5
        finally:
            await station.close()
    finally:
        await center.close()


async def test_screen_share_comes_by_an_offer_and_goes_by_tracks(hub_server: RunningHub) -> None:
    center = HubClient(hub_server.ws, hub_server.token("scr", "C", "center"))
    station = HubClient(hub_server.ws, hub_server.token("scr", "S1", "station"))
    try:
        await center.connect()
        await center.publish({"camera": VideoStreamTrack()})
        await station.connect()
        await first_track(station, "camera")
        await center.publish({"screen": VideoStreamTrack()})
        screen = await first_track(station, "screen")
        assert len(await decode_frames(screen.track, 5)) == 5
        mark = len(station.messages)
        await center.send({"type": "unpublish", "source": "screen"})
        # Its m-line goes idle, without renegotiating (the pool keeps it).
        tracks = await station.wait_for(lambda m: m["type"] == "tracks", start=mark)
        assert [t["source"] for t in tracks["tracks"].values()] == ["camera"]
        assert screen.info == {}
        assert not [m for m in station.messages[mark:] if m["type"] == "offer"]
        update = await station.wait_for(lambda m: m["type"] == "participant_updated", start=mark)
        assert [p["source"] for p in update["participant"]["publications"]] == ["camera"]
    finally:
        await station.close()
        await center.close()


async def test_a_reconnecting_station_keeps_stage_hand_and_moderator_mute(
    hub_server: RunningHub,
) -> None:
    center = HubClient(hub_server.ws, hub_server.token("re", "C", "center"))
    clients = [center]
    try:
        await center.connect()

        async def reconnect() -> HubClient:
            client = HubClient(hub_server.ws, hub_server.token("re", "S1", "station"))
            clients.append(client)
            await client.connect()
            return client

        first = await reconnect()
        await first.publish({"microphone": AudioStreamTrack()})
        await first.send({"type": "hand", "raised": True})
        await center.send(
            {"type": "moderate", "participant": first.joined["participant"]["sid"],
             "action": "mute", "source": "microphone", "muted": True}
        )  # fmt: skip
        await first.wait_for(lambda m: m["type"] == "muted")

        second = await reconnect()  # the same station, after a network drop
        me = second.joined["participant"]
        assert me["hand_raised"] and not me["on_stage"]
        await second.publish({"microphone": AudioStreamTrack()})
        muted = await second.wait_for(lambda m: m["type"] == "muted")
        assert muted["by_moderator"] and muted["muted"]
        update = await center.wait_for(
            lambda m: (
                m["type"] == "participant_updated"
                and m["participant"]["sid"] == me["sid"]
                and m["participant"]["publications"]
            )
        )
        publication = update["participant"]["publications"][0]
        assert publication["muted"] and publication["muted_by_moderator"]

        await center.send(
            {"type": "moderate", "participant": me["sid"], "action": "stage", "on_stage": True}
        )
        await second.wait_for(lambda m: m["type"] == "quality" and m["level"] == "stage")
        third = await reconnect()
        assert third.joined["participant"]["on_stage"] and third.joined["quality"] == "stage"
        assert third.joined["participant"]["sid"] in third.joined["stage"]
        room = hub_server.hub.rooms["re"]  # type: ignore[index]
        assert [p.identity for p in room.stage] == ["C", "S1"]
    finally:
        for client in reversed(clients):
            await client.close()


async def test_a_removed_identity_stays_out_until_let_back_in(hub_server: RunningHub) -> None:
    """ "Remove" keeps that identity out for the rest of the session: the same link, or
    any link of that identity, cannot rejoin (WHIP included) until a moderator lets
    it back in."""
    room = "removal"
    link = hub_server.token(room, "I01-S001", "station", name="东湖村站")
    center = HubClient(hub_server.ws, hub_server.token(room, "C", "center"))
    station = HubClient(hub_server.ws, link)
    again = HubClient(hub_server.ws, link)
    later = HubClient(hub_server.ws, link)
    try:
        await center.connect()
        await station.connect()
        sid = station.joined["participant"]["sid"]
        await center.send({"type": "moderate", "action": "remove", "participant": sid})
        await station.wait_for(lambda m: m["type"] == "removed")
        listed = await center.wait_for(
            lambda m: m["type"] == "removed_identities" and len(m["removed"]) == 1
        )
        assert listed["removed"] == [{"identity": "I01-S001", "name": "东湖村站"}]

        refused = await raw_exchange(hub_server.ws, {"type": "join", "token": link})
        assert refused[0]["type"] == "error" and refused[0]["code"] == "removed"
        fresh = hub_server.token(room, "I01-S001", "station")  # a new link of the same site
        refused = await raw_exchange(hub_server.ws, {"type": "join", "token": fresh})
        assert refused[0]["code"] == "removed"
        with_whip = await whip_post(hub_server, room, fresh)
        assert with_whip.status_code == 403 and "removed you" in with_whip.text

        mark = len(center.messages)
        await center.send({"type": "moderate", "action": "readmit", "identity": "I01-S001"})
        await center.wait_for(
            lambda m: m["type"] == "removed_identities" and m["removed"] == [], start=mark
        )
        await later.connect()  # the same link works again
        assert later.joined["participant"]["identity"] == "I01-S001"
        # only moderators readmit, and only who was removed
        await later.send({"type": "moderate", "action": "readmit", "identity": "I01-S001"})
        assert (await later.wait_for(lambda m: m["type"] == "error"))["code"] == "forbidden"
        mark = len(center.messages)
        await center.send({"type": "moderate", "action": "readmit", "identity": "nobody"})
        error = await center.wait_for(lambda m: m["type"] == "error", start=mark)
        assert error["code"] == "not_found"
    finally:
        for client in (later, again, station, center):
            await client.close()


async def whip_post(hub_server: RunningHub, room: str, token: str) -> httpx.Response:
    pc = make_peer_connection([])
    pc.addTransceiver("audio", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    try:
        async with httpx.AsyncClient(base_url=hub_server.base) as client:
            return await client.post(
                f"/whip/{room}",
                content=pc.localDescription.sdp,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"},
            )
    finally:
        await pc.close()


async def test_everyone_is_told_when_the_room_records_moderators_more(
    hub_server: RunningHub,
) -> None:
    room = "told"
    center = HubClient(hub_server.ws, hub_server.token(room, "C", "center"))
    station = HubClient(hub_server.ws, hub_server.token(room, "S1", "station"))
    try:
        await center.connect()
        hub_room = hub_server.hub.rooms[RoomName(room)]
        hub_room.media.start_recording()
        await station.connect()
        # on joining: recording and live for households, and nothing else for a site
        told = station.joined["media"]
        assert told["recording"] is True and told["recording_started_at"] > 0
        assert set(told) == {"recording", "recording_started_at", "live", "hls_url"}
        assert "restreams" in (await center.wait_for(lambda m: m["type"] == "media"))
        mark = len(station.messages)
        await hub_room.media.stop_recording()
        told = await station.wait_for(lambda m: m["type"] == "media", start=mark)
        assert told == {
            "type": "media",
            "recording": False,
            "recording_started_at": None,
            "live": False,
            "hls_url": None,
        }
    finally:
        for client in (station, center):
            await client.close()


async def test_a_full_room_refuses_a_join_yet_takes_back_a_returning_site(tmp_path: Path) -> None:
    async with running_hub(tmp_path, room_max_participants=2) as running:
        center = HubClient(running.ws, running.token("full", "C", "center"))
        s1 = HubClient(running.ws, running.token("full", "S1", "station"))
        s2 = HubClient(running.ws, running.token("full", "S2", "station"))
        s1_again = HubClient(running.ws, running.token("full", "S1", "station"))
        try:
            await center.connect()
            await s1.connect()
            try:
                await s2.connect()
                raise AssertionError("a third participant joined a room of two")
            except ConnectionError as exc:
                assert "room_full" in str(exc)
            await s2.wait_for(lambda m: m["type"] == "closed")
            await s1_again.connect()  # S1 reconnecting takes its own place
            removed = await s1.wait_for(lambda m: m["type"] == "removed")
            assert removed["reason"] == "duplicate_identity"
            room = running.hub.rooms[RoomName("full")]
            assert sorted(p.identity for p in room.participants.values()) == ["C", "S1"]
        finally:
            for client in (s1_again, s2, s1, center):
                await client.close()


async def test_a_publisher_offer_with_too_many_m_lines_is_refused(hub_server: RunningHub) -> None:
    station = HubClient(hub_server.ws, hub_server.token("wide", "S1", "station"))
    pc = make_peer_connection([])
    try:
        await station.connect()
        microphone = pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        for _ in range(23):  # idle m-lines need no source; the default takes 16 in all
            pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        sources = {microphone.mid: "microphone"}
        await station.send(
            {"type": "offer", "pc": "publisher", "sdp": pc.localDescription.sdp, "sources": sources}
        )
        reply = await station.wait_for(lambda m: m["type"] in ("answer", "error"))
        assert reply["type"] == "error", "an offer of 24 m-lines was answered"
        assert reply["code"] == "bad_sdp" and "m-lines" in reply["message"], reply
        room = hub_server.hub.rooms[RoomName("wide")]
        assert not any(p.publications for p in room.participants.values())
    finally:
        await pc.close()
        await station.close()


async def test_chat_is_a_grant_viewers_lack(hub_server: RunningHub) -> None:
    center = HubClient(hub_server.ws, hub_server.token("talk", "C", "center"))
    viewer = HubClient(hub_server.ws, hub_server.token("talk", "V1", "viewer"))
    station = HubClient(hub_server.ws, hub_server.token("talk", "S1", "station"))
    try:
        await center.connect()
        for client, may in ((viewer, False), (station, True)):
            joined = await client.connect()
            assert joined["participant"]["can_chat"] is may
        await viewer.send({"type": "chat", "text": "x" * 2000})
        refused = await viewer.wait_for(lambda m: m["type"] == "error")
        assert refused["code"] == "forbidden" and refused["ref"] == "chat"
        await station.send({"type": "chat", "text": "收到"})
        heard = await center.wait_for(lambda m: m["type"] == "chat")
        assert heard["text"] == "收到"  # the viewer's never came
        assert [m["from"] for m in center.messages if m["type"] == "chat"] == [
            station.joined["participant"]["sid"]
        ]
    finally:
        for client in (station, viewer, center):
            await client.close()


async def test_chat_is_limited_per_participant(tmp_path: Path) -> None:
    async with running_hub(tmp_path, chat_per_minute=3) as running:
        center = HubClient(running.ws, running.token("talk", "C", "center"))
        station = HubClient(running.ws, running.token("talk", "S1", "station"))
        try:
            await center.connect()
            await station.connect()
            for n in range(10):
                await station.send({"type": "chat", "text": f"{n} " + "x" * 1990})
            await station.send({"type": "ping", "id": "after"})
            await station.wait_for(lambda m: m["type"] == "pong")
            errors = [m for m in station.messages if m["type"] == "error"]
            assert len(errors) == 7 and {e["code"] for e in errors} == {"rate_limited"}
            await asyncio.sleep(0.5)
            assert len([m for m in center.messages if m["type"] == "chat"]) == 3
        finally:
            await station.close()
            await center.close()


async def receive_all(ws: websockets.ClientConnection) -> list[dict[str, object]]:
    """Every message until the hub closes the socket (or 5 s of quiet)."""
    received: list[dict[str, object]] = []
    try:
        while True:
            received.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
    except (TimeoutError, websockets.ConnectionClosed):
        pass
    return received


async def test_a_flooding_socket_is_told_then_closed(tmp_path: Path) -> None:
    async with running_hub(tmp_path, signaling_rate=5.0, signaling_burst=10) as running:
        token = running.token("flood", "S1", "station")
        async with websockets.connect(running.ws) as ws:
            await ws.send(json.dumps({"type": "join", "token": token}))
            assert json.loads(await ws.recv())["type"] == "joined"
            try:
                for n in range(300):
                    await ws.send(json.dumps({"type": "ping", "id": n}))
            except websockets.ConnectionClosed:
                pass
            received = await receive_all(ws)
            assert ws.close_code == 1008, (ws.close_code, ws.close_reason)
            assert "rate" in (ws.close_reason or "")
        pongs = [m for m in received if m["type"] == "pong"]
        limited = [m for m in received if m["type"] == "error"]
        assert 9 <= len(pongs) < 40, len(pongs)  # the join took a token of the burst
        assert limited and {m["code"] for m in limited} == {"rate_limited"}


async def test_a_burst_over_the_rate_is_refused_but_the_socket_stays(tmp_path: Path) -> None:
    async with running_hub(tmp_path, signaling_rate=5.0, signaling_burst=10) as running:
        station = HubClient(running.ws, running.token("burst", "S1", "station"))
        try:
            await station.connect()
            for n in range(15):
                await station.send({"type": "ping", "id": n})
            await station.wait_for(lambda m: m["type"] == "error")
            await asyncio.sleep(2.5)  # the bucket refills
            await station.send({"type": "ping", "id": "later"})
            await station.wait_for(lambda m: m["type"] == "pong" and m["id"] == "later")
            errors = [m for m in station.messages if m["type"] == "error"]
            assert errors and {e["code"] for e in errors} == {"rate_limited"}
            assert not any(m["type"] == "closed" for m in station.messages)
        finally:
            await station.close()


async def test_a_socket_that_never_joins_is_closed(tmp_path: Path) -> None:
    async with running_hub(tmp_path, join_timeout=1.0) as running:
        async with websockets.connect(running.ws) as ws:
            await ws.send("not json")  # answered, but not a join
            received = await receive_all(ws)
            assert ws.close_code == 1008, (ws.close_code, ws.close_reason)
            assert "join" in (ws.close_reason or "")
        assert [m["code"] for m in received] == ["bad_message", "join_timeout"]
        station = HubClient(running.ws, running.token("late", "S1", "station"))
        try:
            await station.connect()
            await asyncio.sleep(1.5)  # a joined socket has no such deadline
            await station.send({"type": "ping", "id": "still"})
            await station.wait_for(lambda m: m["type"] == "pong")
        finally:
            await station.close()


async def test_websockets_are_capped_per_address(tmp_path: Path) -> None:
    async with running_hub(tmp_path, websockets_per_address=2) as running:
        first = await websockets.connect(running.ws)
        second = await websockets.connect(running.ws)
        try:
            async with websockets.connect(running.ws) as third:
                received = await receive_all(third)
                assert third.close_code == 1013, (third.close_code, third.close_reason)
            assert [m["code"] for m in received] == ["too_many_connections"]
            elsewhere = {"X-Forwarded-For": "10.0.0.5"}  # as from the reverse proxy
            async with websockets.connect(running.ws, additional_headers=elsewhere) as other:
                token = running.token("cap", "S9", "station")
                await other.send(json.dumps({"type": "join", "token": token}))
                assert json.loads(await other.recv())["type"] == "joined"
            await first.close()

            async def admitted() -> str | None:
                async with websockets.connect(running.ws) as again:
                    await again.send(json.dumps({"type": "ping", "id": 1}))
                    reply = json.loads(await again.recv())
                return None if reply["code"] == "not_joined" else str(reply)

            await wait_until(admitted)  # the closed socket's place is free again
        finally:
            await first.close()
            await second.close()


async def test_a_station_is_told_of_the_stage_and_the_center_not_of_other_stations(
    hub_server: RunningHub,
) -> None:
    """Moderators hear of every participant; a station of itself, the moderators and
    whoever is on stage: a site called on stage appears to the others, and leaves
    them with one last update when sent back."""
    center = HubClient(hub_server.ws, hub_server.token("vis", "C", "center"))
    first = HubClient(hub_server.ws, hub_server.token("vis", "S1", "station"))
    second = HubClient(hub_server.ws, hub_server.token("vis", "S2", "station"))
    clients = [center, first, second]
    try:
        await center.connect()
        await first.connect()
        await second.connect()
        await second.publish({"microphone": AudioStreamTrack()})
        second_sid = second.joined["participant"]["sid"]
        center_sid = center.joined["participant"]["sid"]
        await center.wait_for(
            lambda m: m["type"] == "participant_updated" and m["participant"]["sid"] == second_sid
        )
        assert [p["sid"] for p in second.joined["participants"]] == [center_sid]
        third = HubClient(hub_server.ws, hub_server.token("vis", "S3", "station"))
        clients.append(third)
        await third.connect()
        assert [p["sid"] for p in third.joined["participants"]] == [center_sid]

        def is_about(message: dict[str, Any], sid: str) -> bool:
            return bool(message["type"].startswith("participant_")) and (
                message.get("sid") == sid or message.get("participant", {}).get("sid") == sid
            )

        def about(client: HubClient, sid: str, start: int = 0) -> list[dict[str, Any]]:
            return [m for m in client.messages[start:] if is_about(m, sid)]

        assert not about(first, second_sid)  # neither its join nor its publication
        assert about(center, second_sid)
        mark = len(first.messages)
        await center.send(
            {"type": "moderate", "participant": second_sid, "action": "stage", "on_stage": True}
        )
        update = await first.wait_for(lambda m: is_about(m, second_sid), start=mark)
        assert update["participant"]["on_stage"] and update["participant"]["publications"]
        mark = len(first.messages)
        await center.send(
            {"type": "moderate", "participant": second_sid, "action": "stage", "on_stage": False}
        )
        last = await first.wait_for(lambda m: is_about(m, second_sid), start=mark)
        assert last["type"] == "participant_updated" and not last["participant"]["on_stage"]
        mark = len(first.messages)
        await second.send({"type": "hand", "raised": True})
        await center.wait_for(
            lambda m: (
                m["type"] == "participant_updated"
                and m["participant"]["sid"] == second_sid
                and m["participant"]["hand_raised"]
            )
        )
        await second.close()
        await center.wait_for(lambda m: m["type"] == "participant_left" and m["sid"] == second_sid)
        await asyncio.sleep(0.2)
        assert not about(first, second_sid, mark)  # off stage again: nothing more
    finally:
        for client in reversed(clients):
            await client.close()
