"""RED (``audio/red``, RFC 2198) end to end in real Chromium: the lecturer's browser
sends it once the hub's answer lists it first, and a station's browser, offered it
by the hub, receives it and plays the sound."""

from __future__ import annotations

import re
import time
import urllib.request
from typing import Any

import pytest

from tests.browser.conftest import Browsers, HubProcess, poll
from tests.browser.rtc import Progress
from tests.browser.test_e2e import open_console, open_station

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]

AUDIO_JS = """
async () => {
  const c = window.practiceHub && window.practiceHub.client;
  if (!c || !c.subscriber) return null;
  const report = await c.subscriber.getStats();
  for (const s of report.values()) {
    if (s.type === 'inbound-rtp' && s.kind === 'audio') {
      return {samples: s.totalSamplesReceived ?? 0, concealed: s.concealedSamples ?? 0};
    }
  }
  return null;
}
"""

FIRST_AUDIO_CODEC_JS = """
(description) => {
  const sdp = description.sdp;
  const formats = /m=audio \\S+ \\S+ (\\d+)/.exec(sdp);
  if (!formats) return null;
  return new RegExp(`a=rtpmap:${formats[1]} ([^\\r]*)`).exec(sdp)?.[1] ?? null;
}
"""


def first_audio_codec(page: Any, pc: str, which: str) -> str | None:
    """The first audio codec (rtpmap) of ``pc``'s current local or remote description:
    the one a browser sends."""
    codec: str | None = page.evaluate(
        f"() => ({FIRST_AUDIO_CODEC_JS})(window.practiceHub.client.{pc}.current{which}Description)"
    )
    return codec


def heard(page: Any) -> tuple[int, int]:
    """(samples received, samples concealed) of the station's audio so far."""
    figures: dict[str, int] | None = page.evaluate(AUDIO_JS)
    assert figures is not None, "no inbound audio"
    return figures["samples"], figures["concealed"]


def red_counters(hub: HubProcess) -> tuple[int, int]:
    """The hub's RED packets received from publishers and forwarded as RED."""
    with urllib.request.urlopen(f"{hub.base_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    values = dict(re.findall(r"^practicehub_(red_packets_\w+)_total (\d+)", text, re.M))
    return int(values["red_packets_received"]), int(values["red_packets_forwarded"])


def test_a_station_receives_red_from_the_lecturers_chromium(
    hub: HubProcess, browsers: Browsers
) -> None:
    console = open_console(hub, browsers, "red")
    station = open_station(hub, browsers, "red", 1)
    poll(Progress(station, "audio", None, "microphone", "samples"), timeout=20)
    # The hub's answer puts RED first (the lecturer's browser sends it), and the
    # station's own answer to the hub takes it. (getStats names Opus either way: the
    # codec its decoder runs, once RED's blocks are split.)
    assert first_audio_codec(console, "publisher", "Remote") == "red/48000/2"
    assert first_audio_codec(station, "subscriber", "Local") == "red/48000/2"
    received, forwarded = red_counters(hub)
    samples, concealed = heard(station)
    time.sleep(4)
    received_after, forwarded_after = red_counters(hub)
    samples_after, concealed_after = heard(station)
    # RED all along: ~50 packets a second in, as many out to the one station.
    assert received_after - received > 150
    assert forwarded_after - forwarded > 150
    new_samples = samples_after - samples
    new_concealed = concealed_after - concealed
    print(f"RED: {new_samples} samples heard in 4 s, {new_concealed} concealed")
    assert new_samples > 3 * 48000  # sound all along (48 kHz)
    assert new_concealed < 0.02 * new_samples
