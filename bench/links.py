"""``python -m bench.links --json``: what a Chromium station gets from the hub over
village links (issue 15), profile by profile.

A real hub (``python -m hub serve``) on the lab's address (tests/netlab.py), coturn
on the same address (deploy/turnserver.conf), the lecturer's console in Chromium on
the hub's side, unshaped. For each profile a Chromium station joins from its own
network namespace behind that link, is given ``--warmup`` seconds, then is measured
for ``--seconds``: the layer it decodes (the console sends its camera in three
layers, simulcast: ``rid`` l, m or h when the frame size decoded is that layer's,
as sent and as meant; the frame size itself), the frames per second the console
encoded in that layer, the station's frames per second, ``freezeCount``, seconds in
which no new frame was decoded, the share of audio samples concealed, what the hub
resent, declined to resend, was asked to resend, asked of the lecturer as keyframes,
probed (and how often the probe failed, with how many bytes of padding) and forwarded
meanwhile (``/metrics``), and the hub process's CPU.
``--source DIR`` runs the hub of another checkout (to set two commits side by side:
the bench itself, the lab and the browsers stay this checkout's). Needs root
(network namespaces); prints one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.fanout import ROOM, HubProcess, cpu_seconds
from hub.turn import turn_ice_server
from tests.browser.conftest import CHROMIUM_ARGS
from tests.browser.rtc import inbound, outbound
from tests.browser.test_simulcast import LAYER_SIZES, layers_sent
from tests.netlab import HUB_ADDRESS, Link, Netlab, Station, available, netlab
from tests.test_turn import SECRET, coturn

ROOT = Path(__file__).resolve().parent.parent
PROFILES: dict[str, Link] = {
    "unshaped": Link(),
    "2 Mbps": Link(rate_kbit=2000),
    "700 kbps": Link(rate_kbit=700),
    "5 % loss": Link(loss=0.05),
    "10 % loss + 300 ms": Link(loss=0.10, rtt_ms=300),
    "UDP blocked, TURN/TCP": Link(block_udp=True),
}

STATION_JS = """
async () => {
  const c = window.practiceHub && window.practiceHub.client;
  if (!c || !c.subscriber) return null;
  const report = await c.subscriber.getStats();
  const out = {frames: 0, freezes: 0, width: 0, height: 0, samples: 0, concealed: 0,
               relay: null, hold: c.playoutDelay ? c.playoutDelay.targetMs : null};
  for (const s of report.values()) {
    if (s.type === 'transport' && s.selectedCandidatePairId) {
      const pair = report.get(s.selectedCandidatePairId);
      const local = pair && report.get(pair.localCandidateId);
      if (local) out.relay = local.candidateType === 'relay' ? local.relayProtocol : null;
    }
    if (s.type !== 'inbound-rtp') continue;
    const remote = s.mid !== undefined ? c.remoteTracks.get(s.mid) : undefined;
    const source = remote ? remote.info.source : null;
    if (s.kind === 'video' && source === 'camera') {
      out.frames += s.framesDecoded ?? 0;
      out.freezes += s.freezeCount ?? 0;
      out.width = s.frameWidth ?? out.width;
      out.height = s.frameHeight ?? out.height;
    } else if (s.kind === 'audio' && source === 'microphone') {
      out.samples += s.totalSamplesReceived ?? 0;
      out.concealed += s.concealedSamples ?? 0;
    }
  }
  return out;
}
"""


@dataclass
class Figures:
    """What one station got over ``seconds``."""

    layer: str
    """The frame size it decoded last (``WxH``)."""
    fps: float
    freezes: int
    """``freezeCount`` (Chromium's own count of long gaps between frames)."""
    stalled_seconds: int
    """Seconds with no new frame decoded (a stream below 1 fps shows no freezes)."""
    audio_concealed_pct: float
    relay: str | None
    """The TURN transport its connection went through, or None when direct."""
    playout_hold_ms: int | None
    """The hold its page gave received media for resends at the end (protocol.js
    ``PlayoutDelay``), or None: the browser's own."""


def station_figures(page: Any, seconds: int) -> Figures:
    """Read the station's subscriber statistics once a second for ``seconds``."""
    first = last = page.evaluate(STATION_JS)
    stalled = 0
    start = time.monotonic()
    for second in range(1, seconds + 1):
        time.sleep(max(0.0, start + second - time.monotonic()))
        now = page.evaluate(STATION_JS)
        if now["frames"] <= last["frames"]:
            stalled += 1
        last = now
    samples = last["samples"] - first["samples"]
    concealed = last["concealed"] - first["concealed"]
    return Figures(
        layer=f"{last['width']}x{last['height']}",
        fps=round((last["frames"] - first["frames"]) / (time.monotonic() - start), 1),
        freezes=last["freezes"] - first["freezes"],
        stalled_seconds=stalled,
        audio_concealed_pct=round(100 * concealed / samples, 2) if samples else 100.0,
        relay=last["relay"],
        playout_hold_ms=last["hold"],
    )


def three_layers(console: Any) -> str | None:
    """None once the console sends its camera in its three layers, at full size."""
    sent = layers_sent(console)
    sizes = {rid: (w, h) for rid, (w, h, packets) in sent.items() if packets}
    return None if sizes == LAYER_SIZES else f"console camera layers: {sent}"


def layer_of(page: Any, console: Any) -> str:
    """Which of the lecturer's layers the station decodes: the rid whose frame size,
    as the console sends it now and as it is meant to be, is the one decoded, else
    the size itself (a loaded encoder scales layers down, and a scaled layer could
    pass for a lower one)."""
    rows = [r for r in inbound(page) if r["kind"] == "video" and r["source"] == "camera"]
    size = (rows[0]["frameWidth"], rows[0]["frameHeight"]) if rows else (0, 0)
    sent = layers_sent(console)
    return next(
        (
            rid
            for rid, nominal in LAYER_SIZES.items()
            if size == nominal and rid in sent and sent[rid][:2] == size
        ),
        f"{size[0]}x{size[1]}",
    )


def frames_encoded(console: Any) -> dict[str, int]:
    """rid → frames the console has encoded in that layer."""
    return {
        str(r["rid"]): r["framesEncoded"]
        for r in outbound(console)
        if r["source"] == "camera" and r["rid"]
    }


def measure(page: Any, console: Any, seconds: int) -> tuple[Figures, str, float]:
    """The station's figures over ``seconds``, the layer it decoded at the end, and
    the frames per second the console encoded in that layer meanwhile (on a loaded
    machine, fewer than the camera's 30: the most a station can decode)."""
    before, start = frames_encoded(console), time.monotonic()
    figures = station_figures(page, seconds)
    after, took = frames_encoded(console), time.monotonic() - start
    layer = layer_of(page, console)
    sent = (after.get(layer, 0) - before.get(layer, 0)) / took
    return figures, layer, round(sent, 1)


LECTURER_CAMERA = "--use-fake-device-for-media-stream=fps=30"
"""The lecturer's fake camera at 30 frames/s, as the issue's lecturer (Chromium's
fake camera gives 20 unless told)."""


def chromium_args(base_url: str, *extra: str, lecturer: bool = False) -> list[str]:
    """The tests' Chromium flags for pages that reach the hub on the lab's address:
    every other name resolves to nothing, and the hub's plain-HTTP origin counts as
    secure (the camera is given only to secure origins). The ``lecturer``'s camera
    runs at 30 frames/s."""
    kept = [arg for arg in CHROMIUM_ARGS if not arg.startswith("--host-resolver-rules")]
    if lecturer:
        kept = [
            LECTURER_CAMERA if arg == "--use-fake-device-for-media-stream" else arg for arg in kept
        ]
    return [
        *kept,
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1"
        f" , EXCLUDE {HUB_ADDRESS}",
        f"--unsafely-treat-insecure-origin-as-secure={base_url}",
        *extra,
    ]


def _counter(metrics: str, name: str) -> float:
    match = re.search(rf"^practicehub_{name}_total (\S+)$", metrics, re.MULTILINE)
    return float(match[1]) if match else 0.0


class Bench:
    """The hub, coturn and the lecturer, shared by every profile."""

    def __init__(self, workdir: Path, lab: Netlab, playwright: Any, source: Path) -> None:
        self.workdir = workdir
        self.lab = lab
        self.playwright = playwright
        self.chromium = "/usr/bin/chromium"
        (workdir / "turn").mkdir()
        (workdir / "hub").mkdir()
        self.turn = coturn(workdir / "turn", address=HUB_ADDRESS)
        turn = self.turn.__enter__()
        # A hub without HUB_TURN_* (an older checkout) takes the same server as a
        # fixed ICE server with one credential made here.
        server = turn_ice_server(turn.urls("tcp"), SECRET, "bench", 3600, time.time())
        self.hub = HubProcess(
            workdir / "hub",
            source=source,
            settings={"HUB_ICE_SERVERS": json.dumps([server])},
            host=HUB_ADDRESS,
        )
        self.hub.wait_healthy(30)
        self.contexts: list[Any] = []
        console = self.open(f"{self.hub.base}/console#token={self.hub.token('C', 'center')}")
        console.wait_for_function("() => window.practiceHub?.client?.state === 'joined'")
        console.click("#golive")
        self.console = console
        self.simulcast = self._three_layers(30)

    def _three_layers(self, timeout: float) -> bool:
        """Whether the console sends three layers within ``timeout`` (an older
        checkout's console sends one)."""
        deadline = time.monotonic() + timeout
        while three_layers(self.console) is not None:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)
        return True

    def open(self, url: str, station: Station | None = None) -> Any:
        label = station.netns if station else "console"
        context = self.playwright.chromium.launch_persistent_context(
            str(self.workdir / f"profile-{label}"),
            executable_path=station.chromium(self.workdir, self.chromium)
            if station
            else self.chromium,
            headless=True,
            args=chromium_args(self.hub.base, lecturer=station is None),
        )
        self.contexts.append(context)
        page = context.pages[0] if context.pages else context.new_page()
        page.set_default_timeout(30000)
        page.goto(url)
        return page

    def profile(self, name: str, link: Link, warmup: int, seconds: int) -> dict[str, Any]:
        station = self.lab.station(link)
        n = len(self.lab.stations)
        token = self.hub.token(f"I01-S{n:03d}", "station")
        page = self.open(f"{self.hub.base}/station#token={token}", station)
        try:
            page.wait_for_function(
                "() => window.practiceHub?.client?.state === 'joined'", timeout=30000
            )
            time.sleep(warmup)
            before = self.hub.metrics()
            cpu = cpu_seconds(self.hub.process.pid)
            start = time.monotonic()
            figures, layer, sent_fps = measure(page, self.console, seconds)
            hub_cpu = (cpu_seconds(self.hub.process.pid) - cpu) / (time.monotonic() - start)
            after = self.hub.metrics()
            return {
                "profile": name,
                "link": asdict(link),
                **asdict(figures),
                "rid": layer,
                "rid_sent_fps": sent_fps,
                **{
                    name: int(_counter(after, name) - _counter(before, name))
                    for name in (
                        "retransmissions",
                        "retransmissions_declined",
                        "nacks_received",
                        "keyframe_requests",
                        "probes",
                        "probes_failed",
                        "padding_bytes",
                        "packets_forwarded",
                    )
                },
                "hub_cpu_pct": round(100 * hub_cpu, 1),
            }
        finally:
            page.context.close()
            self.contexts.remove(page.context)

    def close(self) -> None:
        for context in self.contexts:
            context.close()
        self.hub.stop()
        self.turn.__exit__(None, None, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print only the JSON")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--source", type=Path, default=ROOT, help="the hub's checkout")
    parser.add_argument("--profile", action="append", choices=list(PROFILES), default=None)
    args = parser.parse_args()
    reason = available()
    if reason is not None:
        sys.exit(reason)
    from playwright.sync_api import sync_playwright

    source = args.source.resolve()
    commit = subprocess.run(
        ["git", "-C", str(source), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    results = []
    with tempfile.TemporaryDirectory() as tmp, netlab() as lab, sync_playwright() as pw:
        bench = Bench(Path(tmp), lab, pw, source)
        simulcast = bench.simulcast
        try:
            for name in args.profile or list(PROFILES):
                result = bench.profile(name, PROFILES[name], args.warmup, args.seconds)
                results.append(result)
                if not args.json:
                    print(json.dumps(result), flush=True)
        finally:
            bench.close()
    print(
        json.dumps(
            {
                "room": ROOM,
                "source": str(source),
                "commit": commit,
                "seconds": args.seconds,
                "simulcast": simulcast,
                "profiles": results,
            }
        )
    )


if __name__ == "__main__":
    main()
