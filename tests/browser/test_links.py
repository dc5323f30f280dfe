"""Stations on village links (tests/netlab.py): Chromium in a network namespace behind
a shaped link to the hub, the lecturer's console on the hub's side.

A station whose firewall lets no UDP out reaches the hub only through coturn, over
TCP or TLS, with the short-lived credentials the hub hands out, and decodes the
lecturer. Runs as root (CI does); skips elsewhere (fails under CI=true).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.links import chromium_args, station_figures
from tests.browser.conftest import Browsers, HubProcess, poll
from tests.browser.rtc import Progress, counter
from tests.browser.test_e2e import joined, open_console, open_station
from tests.browser.test_ice_restart import ice_of, restarted
from tests.hubserver import free_port
from tests.netlab import HUB_ADDRESS, Link, Netlab, Station, netlab
from tests.test_turn import SECRET, Turn, coturn

pytestmark = [pytest.mark.browser, pytest.mark.timeout(150)]

SELECTED_PAIR_JS = """
async () => {
  const c = window.practiceHub && window.practiceHub.client;
  if (!c || !c.subscriber) return null;
  const report = await c.subscriber.getStats();
  for (const s of report.values()) {
    if (s.type !== 'transport' || !s.selectedCandidatePairId) continue;
    const pair = report.get(s.selectedCandidatePairId);
    const local = pair && report.get(pair.localCandidateId);
    if (!local) return null;
    return {type: local.candidateType, relayProtocol: local.relayProtocol ?? null,
            url: local.url ?? null};
  }
  return null;
}
"""


@pytest.fixture
def lab() -> Iterator[Netlab]:
    with netlab() as made:
        yield made


@pytest.fixture
def turn(tmp_path: Path, lab: Netlab) -> Iterator[Turn]:
    workdir = tmp_path / "turn"
    workdir.mkdir()
    with coturn(workdir, address=HUB_ADDRESS) as server:
        yield server


def lab_hub(tmp_path: Path, request: pytest.FixtureRequest, env: dict[str, str]) -> HubProcess:
    hub = HubProcess(tmp_path / "hub-data", tmp_path / "hub.log", env=env, host=HUB_ADDRESS)
    hub.start()
    request.addfinalizer(hub.stop)
    return hub


def open_lab_station(
    hub: HubProcess,
    browsers: Browsers,
    station: Station,
    room: str,
    n: int,
    *extra: str,
) -> Any:
    token = hub.token(room, f"I01-S{n:03d}", "station", name=f"第{n}村站")
    page = browsers.open(
        f"{hub.base_url}/station#token={token}",
        f"station{n}",
        executable=station.chromium(browsers.tmp_path, browsers.chromium_path),
        args=chromium_args(hub.base_url, *extra),
    )
    joined(page, f"station{n}")
    return page


LOSS_TOLD_JS = """
async () => {
  const report = await window.practiceHub.client.publisher.getStats();
  for (const s of report.values())
    if (s.type === 'remote-inbound-rtp' && s.kind === 'audio') return s.fractionLost ?? 0;
  return 0;
}
"""


def test_a_station_on_a_lossy_long_link_keeps_decoding(
    tmp_path: Path, request: pytest.FixtureRequest, browsers: Browsers, lab: Netlab
) -> None:
    """10 % loss each way and 300 ms round trip, one layer. The lecturer is told of the
    station's loss (its Opus encoder adds in-band FEC in proportion), and resends
    within the budget keep the video decoding. The issue's goals (concealment under
    5 %, at most 5 freezes in 20 s) are not reached here: concealment stays near the
    link's loss, Chromium counts 25-36 freezes; README's link table has the figures."""
    hub = lab_hub(tmp_path, request, {})
    console = browsers.open(
        f"{hub.base_url}/console#token={hub.token('l', 'CENTER-01', 'center')}",
        "console",
        args=chromium_args(hub.base_url),
    )
    joined(console, "console")
    console.click("#golive")
    station = lab.station(Link(loss=0.10, rtt_ms=300))
    page = open_lab_station(hub, browsers, station, "l", 1)
    poll(Progress(page, "video", None, "camera", "framesDecoded"), timeout=40)

    def told() -> str | None:
        lost = console.evaluate(LOSS_TOLD_JS)
        return None if lost >= 0.05 else f"the lecturer is told of {lost:.0%} lost"

    poll(told, timeout=20)
    time.sleep(10)  # the encoder's loss estimate is smoothed over seconds
    figures = station_figures(page, 20)
    # Loose bounds: this 2-core machine is shared, and a loaded one decodes slower.
    assert figures.fps >= 2, figures
    assert figures.audio_concealed_pct < 30, figures  # sound goes on


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_a_station_without_udp_joins_through_turn(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    browsers: Browsers,
    lab: Netlab,
    turn: Turn,
    transport: str,
) -> None:
    hub = lab_hub(
        tmp_path,
        request,
        {"HUB_TURN_URLS": json.dumps(turn.urls(transport)), "HUB_TURN_SECRET": SECRET},
    )
    console = browsers.open(
        f"{hub.base_url}/console#token={hub.token('v', 'CENTER-01', 'center')}",
        "console",
        args=chromium_args(hub.base_url),
    )
    joined(console, "console")
    console.click("#golive")
    station = lab.station(Link(block_udp=True))
    # The TLS listener's certificate is the test's own, self-signed.
    extra = ("--ignore-certificate-errors",) if transport == "tls" else ()
    page = open_lab_station(hub, browsers, station, "v", 1, *extra)
    poll(Progress(page, "video", None, "camera", "framesDecoded"), timeout=40)
    pair = page.evaluate(SELECTED_PAIR_JS)
    assert pair is not None and pair["type"] == "relay", pair
    assert pair["relayProtocol"] == ("tls" if transport == "tls" else "tcp"), pair


def test_a_station_whose_path_breaks_restarts_ice_and_keeps_its_join(
    tmp_path: Path, request: pytest.FixtureRequest, browsers: Browsers, lab: Netlab
) -> None:
    """Every UDP packet between a station and the hub is lost for a while (a link that
    flaps) while its websocket lives, on the shared port: ICE goes "disconnected", the
    station restarts ICE (the hub's new offer comes over the websocket), and once the
    path is back it decodes the lecturer again on the same connections, not rejoined."""
    hub = lab_hub(tmp_path, request, {"HUB_UDP_PORT": str(free_port())})
    console = browsers.open(
        f"{hub.base_url}/console#token={hub.token('f', 'CENTER-01', 'center')}",
        "console",
        args=chromium_args(hub.base_url),
    )
    joined(console, "console")
    console.click("#golive")
    station = lab.station(Link())
    page = open_lab_station(hub, browsers, station, "f", 1)
    poll(Progress(page, "video", None, "camera", "framesDecoded"), timeout=40)
    before = ice_of(page, "subscriber")

    def new_offer() -> str | None:
        now = ice_of(page, "subscriber")
        return None if now["ufrag"] != before["ufrag"] else f"no new credentials yet: {now}"

    station.cut_udp(True)
    started = time.monotonic()
    try:
        poll(new_offer, timeout=20, interval=0.2)
    finally:
        station.cut_udp(False)
    print(f"ICE restarted {time.monotonic() - started:.1f}s after the path broke")
    poll(restarted(page, "subscriber", before["ufrag"]), timeout=10)
    poll(Progress(page, "video", None, "camera", "framesDecoded"), timeout=20)
    assert ice_of(page, "subscriber")["rejoins"] == 0


def opus_fmtp(page: Any, pc: str) -> str:
    """The Opus format parameters the hub wrote in its description for ``pc``."""
    fmtp: str = page.evaluate(
        """(pc) => {
          const sdp = window.practiceHub.client[pc].currentRemoteDescription.sdp;
          const pt = /a=rtpmap:(\\d+) opus\\/48000/i.exec(sdp)[1];
          return new RegExp(`a=fmtp:${pt} ([^\\r]*)`).exec(sdp)?.[1] ?? "";
        }""",
        pc,
    )
    return fmtp


def test_audio_only_means_no_video_crosses_the_link(hub: HubProcess, browsers: Browsers) -> None:
    console = open_console(hub, browsers, "ao")
    station = open_station(hub, browsers, "ao", 1)
    poll(Progress(station, "video", None, "camera", "framesDecoded"), timeout=30)
    # Opus in-band FEC, end to end: the hub's answer to the lecturer and its offer
    # to the station both ask for it.
    assert "useinbandfec=1" in opus_fmtp(console, "publisher")
    assert "useinbandfec=1" in opus_fmtp(station, "subscriber")
    station.click("#audio-only")
    time.sleep(2)  # the hub holds the video at once; what was in flight arrives
    held = counter(station, "video", None, "camera", "packetsReceived")
    time.sleep(3)
    assert counter(station, "video", None, "camera", "packetsReceived") == held
    poll(Progress(station, "audio", None, "microphone", "samples"), timeout=10)
    station.click("#audio-only")  # back: video again, from a keyframe
    poll(Progress(station, "video", None, "camera", "framesDecoded"), timeout=20)
