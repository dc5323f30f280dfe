"""bench.fanout's simulcast publisher (``--simulcast``), with a real hub and real
aiortc over loopback: its offer, rewritten as a browser's, makes the hub read three
layers; the RTP it writes per layer arrives in each; a station receives the top
layer and decodes it at the lecturer's size."""

from __future__ import annotations

from bench._media import HEIGHT, WIDTH, payload_crc
from bench._workers import Publisher, simulcast_offer
from hub.client import HubClient
from hub.ids import ParticipantIdentity
from hub.peers import offered_layers
from hub.tokens import Source
from tests.helpers import first_track, wait_until
from tests.hubserver import RunningHub
from tests.test_forwarding_e2e import decode_frames

OFFER = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 97\r\na=mid:0\r\na=sendonly\r\n"
    "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=rtpmap:97 VP8/90000\r\n"
    "a=ssrc-group:FID 1 2\r\na=ssrc:1 cname:x\r\na=ssrc:2 cname:x\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=sendonly\r\n"
    "a=rtpmap:96 opus/48000/2\r\na=ssrc:3 cname:x\r\n"
)


def test_the_offer_reads_as_a_browsers_simulcast() -> None:
    munged = simulcast_offer(OFFER, ["l", "m", "h"])
    assert offered_layers(munged) == {"0": ("l", "m", "h")}
    video, audio = munged.split("\r\nm=")[1:]
    assert "a=ssrc" not in video and "a=ssrc:3 cname:x" in audio
    assert "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n" in video
    assert video.index("a=extmap:10") < video.index("a=rtpmap:97")
    assert video.endswith("a=rid:h send\r\na=simulcast:send l;m;h")


def test_a_packet_renumbered_by_the_hub_keeps_its_crc_past_the_descriptor() -> None:
    data = b"\x9d\x01\x2a frame bytes"
    sent = bytes([0x90, 0x80, 0x12]) + data  # X, I: a 7-bit picture id
    forwarded = bytes([0x90, 0x80, 0x80 | 0x45, 0x67]) + data  # renumbered, 15 bits
    assert payload_crc(sent, True) == payload_crc(forwarded, True)
    assert payload_crc(sent, False) != payload_crc(forwarded, False)
    continuation = bytes([0x80, 0xC0, 0x80, 0x01, 0x07]) + data  # I (15 bits) and L
    assert payload_crc(continuation, True) == payload_crc(sent, True)


async def test_the_bench_publisher_sends_three_layers_and_the_top_decodes(
    hub_server: RunningHub,
) -> None:
    publisher = Publisher()
    station = HubClient(hub_server.ws, hub_server.token("sim", "S1", "station"))
    try:
        await publisher.load(2.5, True)
        ssrcs = await publisher.publish_simulcast(
            hub_server.ws, hub_server.token("sim", "C", "center")
        )
        assert sorted(ssrcs) == ["h", "l", "m"] and len(set(ssrcs.values())) == 3
        room = hub_server.hub.rooms["sim"]  # type: ignore[index]
        center = room.by_identity(ParticipantIdentity("C"))
        assert center is not None
        camera = center.publication_by_source(Source.CAMERA)
        assert camera is not None
        layers = camera.up.layers

        def every_layer_received() -> str | None:
            got = {layer.rid: layer.packets_received for layer in layers}
            return None if len(got) == 3 and all(got.values()) else f"layers: {got}"

        await wait_until(every_layer_received, timeout=10)
        assert [layer.rid for layer in layers] == ["l", "m", "h"]
        assert [layer.media_ssrc for layer in layers] == [ssrcs[r] for r in ("l", "m", "h")]

        await station.connect()
        video = (await first_track(station, "camera")).track
        frames = await decode_frames(video, 30, timeout=15)
        assert {(f.width, f.height) for f in frames} == {(WIDTH, HEIGHT)}
        # the station receives the top layer: it sends no loss and no falling estimate
        assert layers[2].downs and not layers[0].downs and not layers[1].downs
    finally:
        await station.close()
        await publisher.close()
