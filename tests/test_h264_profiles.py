"""H.264 Constrained Baseline, Main and High offers are accepted and forwarded
unchanged to subscribers (aiortc alone refuses anything but 42001f/42e01f)."""

from __future__ import annotations

import pytest
from aiortc import RTCRtpSender
from aiortc.mediastreams import VideoStreamTrack

from hub.client import HubClient
from tests.helpers import first_track
from tests.hubserver import RunningHub
from tests.test_forwarding_e2e import decode_frames


@pytest.mark.parametrize("profile", ["42e01f", "4d001f", "64001f"])
async def test_h264_profile_is_accepted_and_forwarded_unchanged(
    hub_server: RunningHub, profile: str
) -> None:
    capability = next(
        c
        for c in RTCRtpSender.getCapabilities("video").codecs
        if c.parameters.get("profile-level-id") == profile
    )
    center = HubClient(hub_server.ws, hub_server.token("h", "C", "center"))
    station = HubClient(hub_server.ws, hub_server.token("h", "S1", "station"))
    try:
        await center.connect()
        await center.publish({"camera": VideoStreamTrack()}, preferences={"camera": [capability]})
        answer = center.publisher.remoteDescription.sdp  # type: ignore[union-attr]
        assert f"profile-level-id={profile}" in answer
        await station.connect()
        await first_track(station, "camera")
        offered = station.subscriber.remoteDescription.sdp  # type: ignore[union-attr]
        assert f"profile-level-id={profile}" in offered
        assert "VP8" not in offered
        frames = await decode_frames(station.tracks_of("camera")[0].track, 10)
        assert frames[-1].width == 640
    finally:
        await station.close()
        await center.close()
