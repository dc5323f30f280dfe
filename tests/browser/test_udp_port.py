"""The console and a station in real Chromium, with all of the hub's media on one UDP
port (``HUB_UDP_PORT``)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import Browsers, HubProcess, poll
from tests.browser.rtc import Progress, sid_of
from tests.browser.test_e2e import open_console, open_station

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]

SELECTED_PORTS_JS = """
async () => {
  const c = window.practiceHub && window.practiceHub.client;
  const ports = [];
  for (const pc of [c && c.publisher, c && c.subscriber]) {
    if (!pc) continue;
    const mine = [];
    ports.push(mine);
    const report = await pc.getStats();
    for (const s of report.values()) {
      if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') {
        const remote = report.get(s.remoteCandidateId);
        if (remote) mine.push(remote.port);
      }
    }
  }
  return ports;
}
"""


def on_port(page: Any, port: int, connections: int) -> Any:
    def check() -> str | None:
        ports = page.evaluate(SELECTED_PORTS_JS)
        # Chromium may keep more than one succeeded, nominated pair per connection.
        if len(ports) == connections and all(mine and set(mine) == {port} for mine in ports):
            return None
        return f"selected pairs to ports {ports}"

    return check


def test_console_and_station_over_one_udp_port(shared_hub: HubProcess, browsers: Browsers) -> None:
    port = int(shared_hub.env["HUB_UDP_PORT"])
    room = "one-port"
    console = open_console(shared_hub, browsers, room)
    station = open_station(shared_hub, browsers, room, 1)
    poll(Progress(station, "video", sid_of(console), "camera", "framesDecoded"), timeout=25)
    poll(Progress(console, "video", sid_of(station), "camera", "framesDecoded"), timeout=25)
    # Each page publishes and subscribes: both its connections reach the hub on the port.
    poll(on_port(console, port, 2), timeout=10)
    poll(on_port(station, port, 2), timeout=10)
