"""A household's Chromium watches an ffmpeg WHIP ingest over WHEP in each H.264 profile
an encoder sends (OBS's default is High): the hub answers the browser's offer with the
variant matching the publisher's profile and forwards the bitstream unchanged."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser.conftest import Browsers, HubProcess, poll
from tests.browser.rtc import Progress
from tests.test_whip import ffmpeg_whip

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

PROFILE_IDC_TAKING = {"baseline": {"42"}, "main": {"4d"}, "high": {"64", "f4"}}
"""The profile_idc a browser may receive each profile on: High itself where it offers
High, else High 4:4:4 Predictive (Chromium without hardware decoding), whose decoders
take High."""

WHEP_VIDEO_JS = """
async () => {
  const s = window.practiceHub && window.practiceHub.session;
  if (!s || !s.pc) return null;
  const report = await s.pc.getStats();
  for (const r of report.values()) {
    if (r.type !== 'inbound-rtp' || r.kind !== 'video') continue;
    const codec = r.codecId ? report.get(r.codecId) : undefined;
    return {
      framesDecoded: r.framesDecoded ?? 0,
      frameWidth: r.frameWidth ?? 0,
      mimeType: codec ? codec.mimeType : null,
      fmtp: codec ? codec.sdpFmtpLine ?? '' : '',
    };
  }
  return null;
}
"""


@pytest.fixture
def ingest(hub: HubProcess, request: pytest.FixtureRequest) -> Iterator[subprocess.Popen[bytes]]:
    room, profile = request.param
    token = hub.token(room, "encoder-1", "ingest", name="导播台")
    process = ffmpeg_whip(f"{hub.base_url}/whip/{room}", token, seconds=90, profile=profile)
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def room_of(hub: HubProcess, ingest: subprocess.Popen[bytes]) -> str:
    url = next(str(a) for a in ingest.args if str(a).startswith(hub.base_url))  # type: ignore[union-attr]
    return url.rsplit("/", 1)[1]


def open_to_households_once_live(hub: HubProcess, room: str, ingest: Any) -> None:
    """PATCH the room public once the ingest has made it (404 until then)."""

    def opened() -> str | None:
        if ingest.poll() is not None:
            raise AssertionError(f"ffmpeg ended: {ingest.stderr.read().decode()[-2000:]}")
        request = urllib.request.Request(
            f"{hub.base_url}/api/rooms/{room}",
            method="PATCH",
            data=json.dumps({"public": True}).encode(),
            headers={
                "Authorization": f"Bearer {hub.token(room, 'CENTER-01', 'center')}",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                info = json.load(response)
        except urllib.error.HTTPError as e:
            return f"PATCH /api/rooms/{room}: {e.code}"
        return None if info["stage"] else f"nobody on stage yet: {info}"

    poll(opened, timeout=30)


@pytest.mark.parametrize(
    ("ingest", "profile"),
    [
        (("baseline-room", "baseline"), "baseline"),
        (("main-room", "main"), "main"),
        (("high-room", "high"), "high"),
    ],
    ids=["baseline", "main", "high"],
    indirect=["ingest"],
)
def test_chromium_watches_an_ffmpeg_whip_ingest_over_whep(
    hub: HubProcess, browsers: Browsers, ingest: subprocess.Popen[bytes], profile: str
) -> None:
    room = room_of(hub, ingest)
    open_to_households_once_live(hub, room, ingest)
    viewer = browsers.open(f"{hub.base_url}/watch/{room}", "viewer", width=360, height=740)
    samples: list[dict[str, Any]] = []

    def decoding() -> str | None:
        got = viewer.evaluate(WHEP_VIDEO_JS)
        if got is None:
            return "no WHEP video yet"
        samples.append(got)
        frames = [s["framesDecoded"] for s in samples[-3:]]
        if len(frames) == 3 and 0 < frames[0] < frames[1] < frames[2]:
            return None
        return f"frames decoded: {frames}, codec {got['mimeType']} {got['fmtp']}"

    poll(decoding, timeout=30)
    last = samples[-1]
    assert last["mimeType"] == "video/H264"
    assert last["fmtp"].split("profile-level-id=")[1][:2] in PROFILE_IDC_TAKING[profile], last
    assert "packetization-mode=1" in last["fmtp"], last
    assert last["frameWidth"] == 640


@pytest.mark.parametrize("ingest", [("station-room", "high")], ids=["high"], indirect=True)
def test_a_station_in_chromium_watches_a_high_profile_ingest(
    hub: HubProcess, browsers: Browsers, ingest: subprocess.Popen[bytes]
) -> None:
    room = room_of(hub, ingest)
    open_to_households_once_live(hub, room, ingest)  # only to wait for the ingest
    token = hub.token(room, "I01-S001", "station", name="东湖村站")
    station = browsers.open(f"{hub.base_url}/station?token={token}", "station")
    poll(Progress(station, "video", None, "camera", "framesDecoded"), timeout=30)
