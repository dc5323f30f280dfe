"""ICE restart from real Chromium (``HubClient.restartIce()`` in protocol.js, what it
does when its path breaks): new credentials on both connections, checked on the
selected pair, the same peer connections, and the lecturer's video still decoding;
on the shared UDP port (``HUB_UDP_PORT``) and on a port per connection."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import Browsers, HubProcess, poll
from tests.browser.rtc import Progress, sid_of
from tests.browser.test_e2e import open_console, open_station

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

ICE_JS = """
async (name) => {
  const c = window.practiceHub.client;
  const pc = c[name];
  const found = pc.remoteDescription && pc.remoteDescription.sdp.match(/a=ice-ufrag:(\\S+)/);
  let pairUfrag = null;
  const report = await pc.getStats();
  for (const s of report.values()) {
    if (s.type !== 'transport' || !s.selectedCandidatePairId) continue;
    const pair = report.get(s.selectedCandidatePairId);
    const remote = pair && report.get(pair.remoteCandidateId);
    pairUfrag = remote ? remote.usernameFragment ?? null : null;
  }
  window.__pcs = window.__pcs || {};
  window.__pcs[name] = window.__pcs[name] || pc;
  return {
    ufrag: found ? found[1] : null, pairUfrag, ice: pc.iceConnectionState,
    same: window.__pcs[name] === pc, rejoins: c.rejoins,
  };
}
"""


@pytest.fixture(params=["shared port", "port per connection"])
def any_hub(request: pytest.FixtureRequest) -> HubProcess:
    name = "shared_hub" if request.param == "shared port" else "hub"
    hub: HubProcess = request.getfixturevalue(name)
    return hub


def ice_of(page: Any, name: str) -> dict[str, Any]:
    state: dict[str, Any] = page.evaluate(ICE_JS, name)
    return state


def restarted(page: Any, name: str, before: str) -> Any:
    """A check: ``page``'s ``name`` connection has the hub's new ufrag (not ``before``)
    in its remote description and on its selected pair, on the same connection."""

    def check() -> str | None:
        now = ice_of(page, name)
        if not now["same"] or now["rejoins"]:
            return f"{name}: a new connection ({now})"
        if now["ufrag"] == before or now["pairUfrag"] != now["ufrag"]:
            return f"{name}: {now}, hub's ufrag before {before}"
        return None if now["ice"] in ("connected", "completed") else f"{name}: {now}"

    return check


def test_ice_restart_keeps_the_connections_and_the_media(
    any_hub: HubProcess, browsers: Browsers
) -> None:
    room = "ice-restart"
    console = open_console(any_hub, browsers, room)
    station = open_station(any_hub, browsers, room, 1)
    center = sid_of(console)
    poll(Progress(station, "video", center, "camera", "framesDecoded"), timeout=25)
    subscriber = ice_of(station, "subscriber")
    publisher = ice_of(console, "publisher")
    assert subscriber["pairUfrag"] == subscriber["ufrag"], subscriber
    assert publisher["pairUfrag"] == publisher["ufrag"], publisher

    # The station's subscriber connection asks the hub for a new offer; the console's
    # publisher offers new credentials and takes the hub's new ones from its answer.
    station.evaluate("() => window.practiceHub.client.restartIce()")
    console.evaluate("() => window.practiceHub.client.restartIce()")
    poll(restarted(station, "subscriber", subscriber["ufrag"]), timeout=15)
    poll(restarted(console, "publisher", publisher["ufrag"]), timeout=15)
    poll(Progress(station, "video", center, "camera", "framesDecoded"), timeout=15)
    poll(Progress(console, "video", sid_of(station), "camera", "framesDecoded"), timeout=15)
    assert ice_of(station, "subscriber")["rejoins"] == 0
