"""A Python client of the hub's signaling protocol (PROTOCOL.md), built on aiortc.

Used by the tests, the benchmarks, and any bot that joins a room from a script.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import Callable
from typing import Any

import websockets
from aiortc import (
    MediaStreamTrack,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
)
from aiortc.rtcrtpparameters import RTCRtpCodecCapability
from aiortc.rtp import RtpPacket

from hub.aiortc_internals import DatagramCounter, ReceiverTap, RtpPacer
from hub.peers import make_peer_connection, offer_ice_restart, set_remote_answer, set_remote_offer
from hub.tasks import TaskOwner
from hub.udpmux import UdpMux

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 3


class ReceivedTrack:
    """A track the client receives, and what it is (from the offer's ``tracks`` map)."""

    def __init__(self, mid: str, track: MediaStreamTrack, info: dict[str, str]) -> None:
        self.mid = mid
        self.track = track
        self.info = info
        self.packets = 0
        self.bytes = 0

    def count(self, packet: RtpPacket) -> None:
        self.packets += 1
        self.bytes += len(packet.payload)


class HubClient:
    """One participant: a websocket, a publisher and a subscriber connection.

    With ``decode=False`` received media is counted and dropped before any decoder,
    as a benchmark's many subscribers need.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        decode: bool = True,
        lightweight: bool = False,
        ice_servers: list[RTCIceServer] | None = None,
        udp_mux: UdpMux | None = None,
        on_rtp: Callable[[ReceivedTrack, RtpPacket], None] | None = None,
        on_datagram: Callable[[ReceivedTrack, bytes], None] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.url = url
        self.token = token
        self.tls = tls
        """For ``wss://`` with a certificate the system does not trust (a test's own)."""
        self.decode = decode
        self.lightweight = lightweight
        """With ``decode=False``: count packets with nothing of aiortc's receive path
        (no RTCP reports, no NACKs), as a load generator's many subscribers need."""
        self.ice_servers = ice_servers or []
        self.udp_mux = udp_mux
        """Where its connections send from: a port of the caller's choosing (a test
        standing in for a site's NAT mapping), or a port each when None. The hub tells
        its connections apart by that address: one connection per such port."""
        self.on_rtp = on_rtp
        self.on_datagram = on_datagram
        """With ``decode=False``: instead of ``on_rtp``, each received media datagram
        still encrypted (its RTP header is in the clear), for the cheapest counting."""
        self.messages: list[dict[str, Any]] = []
        self.joined: dict[str, Any] = {}
        self.publisher: RTCPeerConnection | None = None
        self.subscriber: RTCPeerConnection | None = None
        self.received: dict[str, ReceivedTrack] = {}
        self._offer_tracks: dict[str, dict[str, str]] = {}
        self._sources: dict[str, str] = {}
        """Every sending m-line's source: each offer carries the whole map."""
        self._sending: dict[str, tuple[RTCRtpSender, MediaStreamTrack]] = {}
        """Each published source's sender and track (a paused one sends no track)."""
        self._offer_filter: Callable[[str], str] = str
        self.publisher_answer = ""
        """The hub's last answer on the publisher connection, as sent (aiortc's
        ``remoteDescription`` drops what it does not read, such as simulcast)."""
        self.quality: dict[str, str] = {"level": "thumbnail", "microphone": "on"}
        """How the hub last said to send (``joined``, ``quality``)."""
        self._ws: Any = None
        self._changed = asyncio.Event()
        self._answer: asyncio.Future[str] | None = None
        self._tasks = TaskOwner("client")

    async def connect(self, timeout: float = 10.0) -> dict[str, Any]:
        """Join; a ``redirect`` (the room is held by another node of a cluster, and
        the URL named it: ``/ws?room=R``) is followed, a few times at most."""
        for _ in range(MAX_REDIRECTS + 1):
            secure = self.tls if self.url.startswith("wss:") else None
            self._ws = await websockets.connect(self.url, max_size=2**22, ssl=secure)
            reader = self._tasks.spawn(self._read(), name="read")
            with contextlib.suppress(websockets.ConnectionClosedOK):  # redirected at once
                await self.send({"type": "join", "token": self.token})
            message = await self.wait_for(
                lambda m: m["type"] in ("joined", "error", "redirect"), timeout
            )
            if message["type"] != "redirect":
                break
            logger.info("room held by node %s: going to %s", message["node"], message["url"])
            self.messages.remove(message)
            self.url = str(message["url"])
            await self._ws.close()
            await asyncio.wait([reader])
        else:
            raise ConnectionError(f"more than {MAX_REDIRECTS} redirects")
        if message["type"] == "error":
            raise ConnectionError(f"join refused: {message['code']}: {message['message']}")
        self.joined = message
        self.quality = {"level": message["quality"], "microphone": message["microphone"]}
        return message

    async def send(self, message: dict[str, Any]) -> None:
        await self._ws.send(json.dumps(message))

    async def publish(
        self,
        tracks: dict[str, MediaStreamTrack],
        timeout: float = 10.0,
        preferences: dict[str, list[RTCRtpCodecCapability]] | None = None,
        pacing_bps: float | None = None,
        on_send: Callable[[bytes], None] | None = None,
        offer_filter: Callable[[str], str] | None = None,
    ) -> None:
        """Send ``tracks`` (source → track) on the publisher connection, offering the
        codecs in ``preferences`` (source → capabilities) where given.

        With ``pacing_bps`` the video packets leave at that rate, as a browser's do
        (:data:`~hub.aiortc_internals.PACING_FACTOR` × its target bitrate), not a
        frame at a time; ``on_send`` sees every RTP packet as it leaves (before SRTP).
        ``offer_filter`` rewrites each offer the hub is sent from now on (a load
        generator's offer made to look like a browser's, e.g. simulcast)."""
        if offer_filter is not None:
            self._offer_filter = offer_filter
        if self.publisher is None:
            self.publisher = make_peer_connection(self.ice_servers, self.udp_mux)
        pending = []
        for source, track in tracks.items():
            transceiver = self.publisher.addTransceiver(track, direction="sendonly")
            if preferences and source in preferences:
                transceiver.setCodecPreferences(preferences[source])
            pending.append((transceiver, source))
            self._sending[source] = (transceiver.sender, track)
        await self.publisher.setLocalDescription(await self.publisher.createOffer())
        for transceiver, source in pending:
            self._sources[str(transceiver.mid)] = source
        await self._offer(timeout, restart_ice=False)
        self._apply_quality()
        if pacing_bps is not None or on_send is not None:
            video = [t.sender for t, _ in pending if t.kind == "video"]
            RtpPacer(pending[0][0].sender.transport, video, pacing_bps, on_send)

    async def _offer(self, timeout: float, restart_ice: bool) -> None:
        """Send the publisher connection's local offer and apply the hub's answer."""
        assert self.publisher is not None
        self._answer = asyncio.get_running_loop().create_future()
        await self.send(
            {
                "type": "offer",
                "pc": "publisher",
                "sdp": self._offer_filter(self.publisher.localDescription.sdp),
                "sources": self._sources,
            }
        )
        answer = self.publisher_answer = await asyncio.wait_for(self._answer, timeout)
        await set_remote_answer(self.publisher, answer, restart_ice)

    async def restart_ice(self, timeout: float = 10.0) -> None:
        """Restart ICE on both connections, as a browser does when its network
        changes: the publisher offers new credentials, the hub is asked to offer new
        ones on the subscriber connection (its answer is made as any other)."""
        if self.publisher is not None:
            offer_ice_restart(self.publisher)
            await self.publisher.setLocalDescription(await self.publisher.createOffer())
            await self._offer(timeout, restart_ice=True)
        if self.subscriber is not None:
            await self.send({"type": "restart_ice"})

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0, start: int = 0
    ) -> dict[str, Any]:
        """The first message from index ``start`` on that satisfies ``predicate``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        index = start
        while True:
            while index < len(self.messages):
                message = self.messages[index]
                index += 1
                if predicate(message):
                    return message
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no matching message; last: {self.messages[-3:]}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    def tracks_of(self, source: str, participant: str | None = None) -> list[ReceivedTrack]:
        return [
            t
            for t in self.received.values()
            if t.info.get("source") == source
            and (participant is None or t.info.get("participant") == participant)
        ]

    async def _read(self) -> None:
        try:
            async for raw in self._ws:
                message = json.loads(raw)
                if message.get("type") == "offer" and message.get("pc") == "subscriber":
                    await self._on_offer(message)
                elif message.get("type") == "tracks":
                    self._on_tracks(message["tracks"])
                elif message.get("type") == "quality":
                    self.quality = {"level": message["level"], "microphone": message["microphone"]}
                    self._apply_quality()
                elif message.get("type") == "answer" and self._answer and not self._answer.done():
                    self._answer.set_result(message["sdp"])
                elif (
                    message.get("type") == "error"
                    and message.get("ref") == "offer"
                    and self._answer is not None
                    and not self._answer.done()
                ):
                    self._answer.set_exception(ConnectionError(message["message"]))
                self.messages.append(message)
                self._changed.set()
        except websockets.ConnectionClosed:
            pass
        finally:
            self.messages.append({"type": "closed"})
            self._changed.set()

    async def _on_offer(self, message: dict[str, Any]) -> None:
        if self.subscriber is None:
            self.subscriber = make_peer_connection(self.ice_servers, self.udp_mux)
            self.subscriber.on("track", self._on_track)
        self._on_tracks(message.get("tracks", {}))
        await set_remote_offer(self.subscriber, message["sdp"])
        answer = await self.subscriber.createAnswer()
        await self.subscriber.setLocalDescription(answer)
        await self.send(
            {"type": "answer", "pc": "subscriber", "sdp": self.subscriber.localDescription.sdp}
        )

    def _apply_quality(self) -> None:
        """A paused camera or microphone sends nothing (the browser's inactive
        encoding): its sender is left without a track until the hub resumes it."""
        paused = {
            "camera": self.quality["level"] == "paused",
            "microphone": self.quality["microphone"] == "paused",
        }
        for source, (sender, track) in self._sending.items():
            sender.replaceTrack(None if paused.get(source) else track)

    def _on_tracks(self, tracks: dict[str, dict[str, str]]) -> None:
        """What each subscriber m-line carries now (an offer's or a ``tracks`` map)."""
        self._offer_tracks = tracks
        for mid, received in self.received.items():
            received.info = tracks.get(mid, {})

    def _on_track(self, track: MediaStreamTrack) -> None:
        assert self.subscriber is not None
        transceiver = next(
            t for t in self.subscriber.getTransceivers() if t.receiver.track is track
        )
        mid = str(transceiver.mid)
        received = ReceivedTrack(mid, track, self._offer_tracks.get(mid, {}))
        self.received[mid] = received
        if not self.decode and self.on_datagram is not None:
            on_datagram = self.on_datagram
            DatagramCounter(transceiver.receiver, lambda data: on_datagram(received, data))
        elif not self.decode:
            callback = self.on_rtp

            def count(packet: RtpPacket) -> None:
                received.count(packet)
                if callback is not None:
                    callback(received, packet)

            ReceiverTap(transceiver.receiver, count, bypass=self.lightweight)

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        await self._tasks.close()
        for pc in (self.publisher, self.subscriber):
            if pc is not None:
                await pc.close()
