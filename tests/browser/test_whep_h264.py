"""Chromium watches an ffmpeg WHIP ingest in each H.264 profile an encoder sends (OBS's
default is High), as a household over WHEP and as a station: the hub forwards the
bitstream unchanged on the variant of the browser's offer whose decoders take it."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.browser.conftest import Browsers, HubProcess, poll
from tests.browser.rtc import Progress
from tests.browser.test_e2e import open_to_households
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


@dataclass
class Ingest:
    room: str
    process: subprocess.Popen[bytes]


@pytest.fixture
def ingest(hub: HubProcess, request: pytest.FixtureRequest) -> Iterator[Ingest]:
    """ffmpeg publishing in the profile given as the parameter, once it is on stage."""
    profile: str = request.param
    room = f"{profile}-room"
    token = hub.token(room, "encoder-1", "ingest", name="导播台")
    process = ffmpeg_whip(f"{hub.base_url}/whip/{room}", token, seconds=90, profile=profile)

    def on_stage() -> str | None:
        if process.poll() is not None:
            raise AssertionError(f"ffmpeg ended: {process.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            # the whole room is for its moderators
            moderator = {"Authorization": f"Bearer {hub.token(room, 'C', 'center')}"}
            asked = urllib.request.Request(f"{hub.base_url}/api/rooms/{room}", headers=moderator)
            with urllib.request.urlopen(asked, timeout=10) as r:
                info = json.load(r)
        except urllib.error.HTTPError as e:
            return f"GET /api/rooms/{room}: {e.code}"
        return None if info["stage"] else f"nobody on stage yet: {info}"

    try:
        poll(on_stage, timeout=30)
        yield Ingest(room, process)
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize("ingest", ["baseline", "main", "high"], indirect=True)
def test_chromium_watches_an_ffmpeg_whip_ingest_over_whep(
    hub: HubProcess, browsers: Browsers, ingest: Ingest
) -> None:
    open_to_households(hub, ingest.room)
    viewer = browsers.open(f"{hub.base_url}/watch/{ingest.room}", "viewer", width=360, height=740)
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
    profile = ingest.room.removesuffix("-room")
    assert last["mimeType"] == "video/H264"
    assert last["fmtp"].split("profile-level-id=")[1][:2] in PROFILE_IDC_TAKING[profile], last
    assert "packetization-mode=1" in last["fmtp"], last
    assert last["frameWidth"] == 640


@pytest.mark.parametrize("ingest", ["high"], indirect=True)
def test_a_station_in_chromium_watches_a_high_profile_ingest(
    hub: HubProcess, browsers: Browsers, ingest: Ingest
) -> None:
    token = hub.token(ingest.room, "I01-S001", "station", name="东湖村站")
    station = browsers.open(f"{hub.base_url}/station?token={token}", "station")
    poll(Progress(station, "video", None, "camera", "framesDecoded"), timeout=30)
