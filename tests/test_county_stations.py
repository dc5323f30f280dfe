"""bench.county's cheap stations, with a real hub: RTP a station writes straight to
SRTP (``raw_sending``) is forwarded and decodes; a station counting datagrams by
their clear headers (``DatagramCounter``) sees every frame."""

from __future__ import annotations

import asyncio

from bench._media import THUMB_FPS, THUMB_HEIGHT, THUMB_WIDTH, load_thumbnail_clip
from bench._workers import Packetized, RawTrack
from hub.client import HubClient, ReceivedTrack
from hub.peers import ParkedTrack
from tests.helpers import first_track, wait_until
from tests.hubserver import RunningHub
from tests.test_forwarding_e2e import decode_frames


async def publish_raw(client: HubClient, source: str, kind: str) -> RawTrack:
    """Publish ``source`` as a bench station does: negotiated by aiortc, written raw."""
    parked = ParkedTrack(kind)
    await client.publish({source: parked})
    assert client.publisher is not None
    transceiver = next(t for t in client.publisher.getTransceivers() if t.sender.track is parked)
    return RawTrack(transceiver)


async def test_raw_rtp_is_forwarded_and_datagrams_are_counted(hub_server: RunningHub) -> None:
    clip = Packetized(await asyncio.to_thread(load_thumbnail_clip))
    frames_counted = 0

    def on_datagram(received: ReceivedTrack, data: bytes) -> None:
        nonlocal frames_counted
        if received.track.kind == "video" and data[1] & 0x80:  # marker: a frame's end
            frames_counted += 1

    station = HubClient(hub_server.ws, hub_server.token("raw", "S1", "station"), decode=False)
    viewer = HubClient(hub_server.ws, hub_server.token("raw", "C", "center"))
    counter = HubClient(
        hub_server.ws,
        hub_server.token("raw", "C2", "center"),
        decode=False,
        on_datagram=on_datagram,
    )
    sending: asyncio.Task[None] | None = None
    try:
        for client in (station, viewer, counter):
            await client.connect()
        track = await publish_raw(station, "camera", "video")

        async def send() -> None:
            for index in range(10 * THUMB_FPS):
                frame = clip.video[index % len(clip.video)]
                track.send(frame, index * 90000 // THUMB_FPS, True)
                await asyncio.sleep(1 / THUMB_FPS)

        sending = asyncio.create_task(send())
        video = (await first_track(viewer, "camera")).track
        frames = await decode_frames(video, 10, timeout=15)
        assert {(f.width, f.height) for f in frames} == {(THUMB_WIDTH, THUMB_HEIGHT)}
        await wait_until(lambda: None if frames_counted >= 10 else f"{frames_counted} counted")
    finally:
        if sending is not None:
            sending.cancel()
        for client in (counter, viewer, station):
            await client.close()


async def test_a_raw_silent_microphone_says_its_level_and_is_withheld(
    hub_server: RunningHub,
) -> None:
    """The stations' microphones label their silence (audio level 127) as a browser's
    do, so the hub withholds it from listeners as it would a browser's."""
    clip = Packetized(await asyncio.to_thread(load_thumbnail_clip))
    # a moderator's microphone: every station hears it, as one on stage
    station = HubClient(hub_server.ws, hub_server.token("hush", "S1", "center"), decode=False)
    listener = HubClient(hub_server.ws, hub_server.token("hush", "S2", "station"), decode=False)
    sending: asyncio.Task[None] | None = None
    try:
        for client in (station, listener):
            await client.connect()
        track = await publish_raw(station, "microphone", "audio")
        assert track.extension, "no audio level negotiated"

        async def send() -> None:
            for index in range(200):
                track.send([clip.audio[index % len(clip.audio)]], index * 960, False)
                await asyncio.sleep(0.02)

        sending = asyncio.create_task(send())
        await first_track(listener, "microphone")
        stats = hub_server.hub.stats
        await wait_until(
            lambda: None if stats.silence_withheld > 50 else f"{stats.silence_withheld} withheld"
        )
        participant = hub_server.hub.rooms["hush"].by_identity("S1")  # type: ignore[index,arg-type]
        assert participant is not None
        up = next(iter(participant.publications.values())).up
        assert up.audio_level == 127
    finally:
        if sending is not None:
            sending.cancel()
        for client in (listener, station):
            await client.close()
