"""Publisher stall detection: the rule as a table, then with real aiortc peers."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiortc import MediaStreamTrack

from hub.aiortc_internals import drop_sent
from hub.client import HubClient
from hub.ids import ParticipantIdentity, RoomName
from hub.stall import FlowWatch
from tests.helpers import NoisyVideo, first_track, wait_until
from tests.hubserver import RunningHub

# Samples in order: (packet count, now, watched, what ``stalled`` is after it).
CASES = {
    "flowing is never stalled": [(10, 1, True, False), (20, 3, True, False), (30, 5, True, False)],
    "stopped past the timeout": [(10, 1, True, False), (10, 2.9, True, False), (10, 3, True, True)],
    "flows again: cleared": [(10, 1, True, False), (10, 4, True, True), (11, 4.5, True, False)],
    "never flowed: not stalled": [(0, 1, True, False), (0, 10, True, False)],
    "not watched: not judged": [(10, 1, False, False), (10, 10, False, False)],
    "watching starts the clock": [
        (10, 1, False, False),
        (10, 9, True, False),
        (10, 10, True, False),
        (10, 11, True, True),
    ],
    "unwatched while stalled: cleared": [
        (10, 1, True, False),
        (10, 4, True, True),
        (10, 5, False, False),
    ],
}


@pytest.mark.parametrize("samples", CASES.values(), ids=CASES.keys())
def test_flow_watch(samples: list[tuple[int, float, bool, bool]]) -> None:
    watch = FlowWatch()
    for count, now, watched, stalled in samples:
        before = watch.stalled
        changed = watch.sample(count, now, 2.0, watched)
        assert (watch.stalled, changed) == (stalled, before != stalled), (count, now, watched)


def _camera_stalled(client: HubClient, identity: str) -> bool | None:
    """What the latest word ``client`` got of ``identity`` says of its camera."""
    told = [p for p in client.joined["participants"] if p["identity"] == identity]
    for message in client.messages:
        if message["type"] in ("participant_joined", "participant_updated"):
            if message["participant"]["identity"] == identity:
                told.append(message["participant"])
    if not told:
        return None
    camera = [p for p in told[-1]["publications"] if p["source"] == "camera"]
    return bool(camera[0]["stalled"]) if camera else None


async def test_a_lecturer_whose_media_stops_is_flagged_and_comes_back(
    hub_server: RunningHub,
) -> None:
    center = HubClient(hub_server.ws, hub_server.token("stall", "C", "center"))
    station = HubClient(hub_server.ws, hub_server.token("stall", "S1", "station"))
    frames = 0

    async def count_frames(track: MediaStreamTrack) -> None:
        nonlocal frames
        while True:
            await track.recv()
            frames += 1

    reader: asyncio.Task[None] | None = None
    try:
        await center.connect()
        await center.publish({"camera": NoisyVideo()})
        await station.connect()
        reader = asyncio.create_task(count_frames((await first_track(station, "camera")).track))
        await wait_until(lambda: None if frames >= 3 else f"{frames} frames decoded")
        assert _camera_stalled(station, "C") is False

        # The lecturer's uplink goes dark: nothing it sends reaches the hub.
        dark = True
        assert center.publisher is not None
        drop_sent(center.publisher, lambda packet: dark)
        started = time.monotonic()
        await wait_until(
            lambda: None if _camera_stalled(station, "C") else "no stalled flag yet", timeout=5
        )
        assert time.monotonic() - started < 5
        room = hub_server.hub.rooms[RoomName("stall")]
        lecturer = room.by_identity(ParticipantIdentity("C"))
        assert lecturer is not None and lecturer.on_stage
        before = frames

        # Media flows again: the flag clears, the lecturer is still on stage, and the
        # station decodes new frames (the hub asked for a keyframe).
        dark = False
        await wait_until(
            lambda: None if _camera_stalled(station, "C") is False else "still stalled",
            timeout=5,
        )
        assert lecturer.on_stage
        await wait_until(
            lambda: None if frames >= before + 10 else f"{frames - before} new frames", timeout=10
        )
    finally:
        if reader is not None:
            reader.cancel()
        await station.close()
        await center.close()
