"""Simulcast from the console, in real Chromium against the real hub: the console
sends its camera in three layers, the hub reads them by rid, and each subscriber
receives one of them as one continuous stream (decoded frame sizes by getStats)."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import pytest

from tests.browser.conftest import Browsers, HubProcess, poll
from tests.browser.rtc import Progress, counter, inbound, outbound, sid_of
from tests.browser.test_e2e import joined, open_console, open_station, open_viewer

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

LAYER_SIZES = {"l": (320, 180), "m": (640, 360), "h": (1280, 720)}


def layers_sent(page: Any) -> dict[str, tuple[int, int, int]]:
    """rid → (width, height, packets sent) of the console's camera."""
    return {
        str(r["rid"]): (r["frameWidth"], r["frameHeight"], r["packetsSent"])
        for r in outbound(page)
        if r["source"] == "camera" and r["rid"]
    }


def capped_and_full(hub: HubProcess, browsers: Browsers, room: str) -> tuple[Any, Any]:
    """Two stations in ``room``: the first capped to the lowest layer (流畅), the
    second as it comes (自动)."""
    capped = open_station(hub, browsers, room, 1)
    full = open_station(hub, browsers, room, 2)
    capped.select_option("#video-cap", "low")
    return capped, full


def all_layers(console: Any) -> Callable[[], str | None]:
    """A check: the console's camera flows in every layer, each at its size."""

    def check() -> str | None:
        sent = layers_sent(console)
        sizes = {rid: (w, h) for rid, (w, h, packets) in sent.items() if packets}
        return None if sizes == LAYER_SIZES else f"console camera layers: {sent}"

    return check


def received_size(page: Any, sender: str) -> tuple[int, int]:
    rows = [r for r in inbound(page) if r["participant"] == sender and r["source"] == "camera"]
    return (rows[0]["frameWidth"], rows[0]["frameHeight"]) if rows else (0, 0)


def test_the_console_sends_three_layers_and_a_station_decodes_the_top(
    hub: HubProcess, browsers: Browsers
) -> None:
    room = "simulcast-top"
    console = open_console(hub, browsers, room)
    center = sid_of(console)

    poll(all_layers(console), timeout=30)
    station = open_station(hub, browsers, room, 1)
    poll(Progress(station, "video", center, "camera", "framesDecoded"), timeout=25)

    def top() -> str | None:
        size = received_size(station, center)
        return None if size == LAYER_SIZES["h"] else f"station decodes {size}"

    poll(top, timeout=20)


def test_each_station_receives_the_layer_its_cap_allows_and_moves_without_a_freeze(
    hub: HubProcess, browsers: Browsers
) -> None:
    room = "simulcast-caps"
    console = open_console(hub, browsers, room)
    center = sid_of(console)
    capped, auto = capped_and_full(hub, browsers, room)
    for station in (capped, auto):
        poll(Progress(station, "video", center, "camera", "framesDecoded"), timeout=25)

    def sizes(low: tuple[int, int], full: tuple[int, int]) -> Callable[[], str | None]:
        def check() -> str | None:
            got = (received_size(capped, center), received_size(auto, center))
            return None if got == (low, full) else f"capped and auto stations decode {got}"

        return check

    poll(sizes(LAYER_SIZES["l"], LAYER_SIZES["h"]), timeout=20)
    watch = Stalls(capped, center)
    capped.select_option("#video-cap", "mid")  # 标清
    took = poll(watch.until(sizes(LAYER_SIZES["m"], LAYER_SIZES["h"])), timeout=10, interval=0.1)
    capped.select_option("#video-cap", "auto")
    took_up = poll(watch.until(sizes(LAYER_SIZES["h"], LAYER_SIZES["h"])), timeout=10, interval=0.1)
    poll(watch.until(lambda: None if watch.samples > 40 else "watching"), timeout=10, interval=0.1)
    print(
        f"layer moves took {took:.1f} s (l→m) and {took_up:.1f} s (m→h); longest time "
        f"without a new frame {watch.longest:.2f} s; freezes by getStats {watch.freezes()}"
    )
    assert watch.longest < 1.0, f"no new frame for {watch.longest:.2f} s across the moves"


class Stalls:
    """Samples a station's frames decoded from ``sender``: the longest time with no new
    frame (a stream stuck below 1 fps shows no freezes in getStats)."""

    def __init__(self, page: Any, sender: str) -> None:
        self.page = page
        self.sender = sender
        self.samples = 0
        self.longest = 0.0
        self._frames = -1
        self._since = time.monotonic()

    def sample(self) -> None:
        frames = counter(self.page, "video", self.sender, "camera", "framesDecoded") or 0
        now = time.monotonic()
        if frames != self._frames:
            self._frames, self._since = frames, now
        self.longest = max(self.longest, now - self._since)
        self.samples += 1

    def until(self, check: Callable[[], str | None]) -> Callable[[], str | None]:
        def sampled() -> str | None:
            self.sample()
            return check()

        return sampled

    def freezes(self) -> tuple[int, float]:
        rows = [r for r in inbound(self.page) if r["participant"] == self.sender]
        video = [r for r in rows if r["kind"] == "video"]
        return (video[0]["freezeCount"], video[0]["freezeSeconds"]) if video else (0, 0.0)


def media_request(hub: HubProcess, room: str, what: str, method: str) -> None:
    request = urllib.request.Request(
        f"{hub.base_url}/api/rooms/{room}/{what}",
        method=method,
        headers={"Authorization": f"Bearer {hub.token(room, 'CENTER-01', 'center')}"},
    )
    with urllib.request.urlopen(request, timeout=20) as response:
        assert response.status in (200, 201)


def record_camera(hub: HubProcess, room: str, *steps: float | Callable[[], object]) -> Path:
    """Records ``room`` through the HTTP API while ``steps`` run (seconds to wait, or
    something to do); the camera's recording."""
    media_request(hub, room, "recording", "POST")
    for step in steps:
        if callable(step):
            step()
        else:
            time.sleep(step)
    media_request(hub, room, "recording", "DELETE")
    files = [p for p in hub.data_dir.rglob("*-camera-*") if p.stat().st_size > 0]
    assert files, f"no camera recording under {hub.data_dir}"
    return files[0]


def test_the_recording_takes_the_top_layer_while_a_station_is_capped_low(
    hub: HubProcess, browsers: Browsers
) -> None:
    room = "simulcast-record"
    console = open_console(hub, browsers, room)
    center = sid_of(console)
    station = open_station(hub, browsers, room, 1)
    station.select_option("#video-cap", "low")

    def low() -> str | None:
        size = received_size(station, center)
        return None if size == LAYER_SIZES["l"] else f"station decodes {size}"

    poll(low, timeout=30)
    with av.open(str(record_camera(hub, room, 4))) as container:
        frame = next(container.decode(video=0))
        assert (frame.width, frame.height) == LAYER_SIZES["h"]


def test_a_household_viewer_caps_its_picture_to_the_low_layer(
    hub: HubProcess, browsers: Browsers
) -> None:
    room = "simulcast-watch"
    console = open_console(hub, browsers, room)
    viewer = open_viewer(hub, browsers, console, room)

    def decoded(size: tuple[int, int]) -> Callable[[], str | None]:
        def check() -> str | None:
            got = viewer.evaluate(
                """async () => {
                    const s = window.practiceHub.session;
                    if (!s || !s.pc) return null;
                    for (const r of (await s.pc.getStats()).values())
                        if (r.type === 'inbound-rtp' && r.kind === 'video')
                            return [r.frameWidth || 0, r.frameHeight || 0];
                    return null;
                }"""
            )
            return None if got == list(size) else f"viewer decodes {got}"

        return check

    poll(decoded(LAYER_SIZES["h"]), timeout=30)  # the stage's picture: the top layer
    viewer.select_option("#video-cap", "low")  # 流畅
    poll(decoded(LAYER_SIZES["l"]), timeout=10)
    viewer.select_option("#video-cap", "auto")
    poll(decoded(LAYER_SIZES["h"]), timeout=10)


INBOUND_CODECS_JS = """
async () => {
  const c = window.practiceHub && window.practiceHub.client;
  if (!c || !c.subscriber) return [];
  const report = await c.subscriber.getStats();
  const out = [];
  for (const r of report.values()) {
    if (r.type !== 'inbound-rtp' || r.kind !== 'video') continue;
    const codec = r.codecId ? report.get(r.codecId) : undefined;
    out.push(codec ? codec.mimeType : null);
  }
  return out;
}
"""


def test_a_console_that_sends_h264_sends_it_in_layers_too(
    hub: HubProcess, browsers: Browsers
) -> None:
    """The console's 视频编码 set to H.264 before going live: three H.264 layers, each
    station decodes the one its cap allows, and the recording takes the top one."""
    room = "simulcast-h264"
    token = hub.token(room, "CENTER-01", "center", name="市中心")
    console = browsers.open(f"{hub.base_url}/console#token={token}", "console")
    joined(console, "console")
    console.select_option("#codec-select", "H264")
    console.click("#golive")
    center = sid_of(console)

    poll(all_layers(console), timeout=30)
    assert console.is_disabled("#codec-select")  # the codec stays with the camera
    capped, full = capped_and_full(hub, browsers, room)

    def decoded() -> str | None:
        got = (received_size(capped, center), received_size(full, center))
        codecs = [capped.evaluate(INBOUND_CODECS_JS), full.evaluate(INBOUND_CODECS_JS)]
        if got == (LAYER_SIZES["l"], LAYER_SIZES["h"]) and codecs == [["video/H264"]] * 2:
            return None
        return f"capped and full stations decode {got} in {codecs}"

    poll(decoded, timeout=30)
    with av.open(str(record_camera(hub, room, 4))) as container:
        stream = container.streams.video[0]
        frame = next(container.decode(video=0))
        assert stream.codec_context.name == "h264", stream.codec_context.name
        assert (frame.width, frame.height) == LAYER_SIZES["h"]


def test_the_screen_share_goes_in_two_layers_a_capped_station_reads_the_small_one(
    hub: HubProcess, browsers: Browsers
) -> None:
    room = "simulcast-screen"
    console = open_console(hub, browsers, room)
    center = sid_of(console)
    capped, full = capped_and_full(hub, browsers, room)
    console.click("#share")

    def screen_layers() -> str | None:
        sent = {
            str(r["rid"]): (r["frameWidth"], r["packetsSent"])
            for r in outbound(console)
            if r["source"] == "screen" and r["rid"]
        }
        flowing = {rid for rid, (_, packets) in sent.items() if packets}
        return None if flowing == {"l", "h"} else f"console screen layers: {sent}"

    poll(screen_layers, timeout=30)

    def widths() -> str | None:
        got = []
        for page in (capped, full):
            rows = [r for r in inbound(page) if r["participant"] == center]
            got.append(next((r["frameWidth"] for r in rows if r["source"] == "screen"), 0))
        small, large = got
        # a third of the shared screen's width, and the whole of it
        return None if small and large and abs(small * 3 - large) <= 6 else f"widths {got}"

    poll(widths, timeout=30)


PAUSE_TOP_JS = """
async () => {
  const t = window.practiceHub.client.transceivers.get('camera');
  const p = t.sender.getParameters();
  p.encodings.find((e) => e.rid === 'h').active = false;
  await t.sender.setParameters(p);
}
"""


def test_the_recording_goes_on_from_a_lower_layer_while_the_top_one_is_paused(
    hub: HubProcess, browsers: Browsers
) -> None:
    """A console whose uplink cannot afford its top layer stops sending it (as
    libwebrtc does): the recording takes the middle layer from its next keyframe
    rather than nothing."""
    room = "simulcast-sink-falls-back"
    console = open_console(hub, browsers, room)

    poll(all_layers(console), timeout=30)
    recording = record_camera(hub, room, 3, lambda: console.evaluate(PAUSE_TOP_JS), 5)
    sizes: list[tuple[float, tuple[int, int]]] = []
    with av.open(str(recording)) as container:
        for frame in container.decode(video=0):
            sizes.append((float(frame.time or 0.0), (frame.width, frame.height)))
    first_mid = next((at for at, size in sizes if size == LAYER_SIZES["m"]), None)
    last_top = max((at for at, size in sizes if size == LAYER_SIZES["h"]), default=None)
    assert last_top is not None and first_mid is not None, sorted({s for _, s in sizes})
    assert first_mid > last_top  # the top, then the middle layer
    assert sizes[-1][0] - first_mid > 2.0, (first_mid, sizes[-1][0])  # and it went on
    assert first_mid - last_top < 2.5, (last_top, first_mid)  # a short gap at most


WHIP_SIMULCAST_JS = """
async ({room, token}) => {
  const stream = await navigator.mediaDevices.getUserMedia(
      {video: {width: 1280, height: 720, frameRate: 30}, audio: true});
  const pc = new RTCPeerConnection({iceServers: []});
  pc.addTransceiver(stream.getVideoTracks()[0], {direction: 'sendonly', sendEncodings: [
      {rid: 'l', scaleResolutionDownBy: 4, maxBitrate: 150000},
      {rid: 'm', scaleResolutionDownBy: 2, maxBitrate: 500000},
      {rid: 'h', maxBitrate: 1500000}]});
  pc.addTransceiver(stream.getAudioTracks()[0], {direction: 'sendonly'});
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    if (pc.iceGatheringState === 'complete') resolve();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && resolve();
    setTimeout(resolve, 2000);
  });
  const response = await fetch(`/whip/${room}`, {method: 'POST', body: pc.localDescription.sdp,
      headers: {'Content-Type': 'application/sdp', Authorization: `Bearer ${token}`}});
  const answer = await response.text();
  if (response.status === 201) await pc.setRemoteDescription({type: 'answer', sdp: answer});
  window.whip = pc;
  return {status: response.status, answer};
}
"""


def test_a_whip_encoder_that_sends_simulcast_is_read_by_layer_as_the_console_is(
    hub: HubProcess, browsers: Browsers
) -> None:
    """A WHIP ingest offering simulcast (Chromium's own RTCPeerConnection with three
    encodings, POSTed to /whip as any WHIP encoder does): the hub answers the layers,
    reads them by rid, and a station capped to 流畅 decodes the 320x180 layer while
    one as it comes decodes 1280x720, from the same encoder."""
    room = "simulcast-whip"
    encoder = browsers.open(f"{hub.base_url}/", "whip-encoder")
    sent = encoder.evaluate(
        WHIP_SIMULCAST_JS, {"room": room, "token": hub.token(room, "ENCODER-1", "ingest")}
    )
    assert sent["status"] == 201, sent["answer"]
    assert "a=simulcast:recv l;m;h" in sent["answer"], sent["answer"]
    capped, auto = capped_and_full(hub, browsers, room)

    def encoder_sid() -> str | None:
        sid: str | None = auto.evaluate(
            """() => { for (const p of window.practiceHub.client.participants.values())
                         if (p.identity === 'ENCODER-1') return p.sid;
                       return null; }"""
        )
        return sid

    poll(lambda: None if encoder_sid() else "the encoder is not in the room", timeout=20)
    sender = encoder_sid()
    assert sender is not None

    def sizes() -> str | None:
        got = (received_size(capped, sender), received_size(auto, sender))
        return None if got == (LAYER_SIZES["l"], LAYER_SIZES["h"]) else f"stations decode {got}"

    poll(sizes, timeout=40)
