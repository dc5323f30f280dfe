"""Peer connections as the hub uses them: made with explicit ICE servers, fed SDP
that has been checked first, and answering with the announced address first."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
)
from aiortc.rtcicetransport import RTCIceCandidate, RTCIceParameters
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters
from aiortc.rtcsessiondescription import RTCSessionDescription
from aiortc.sdp import (
    H264Profile,
    SessionDescription,
    candidate_from_sdp,
    parse_h264_profile_level_id,
)
from av import Packet
from av.frame import Frame

from hub import policy, red
from hub.aiortc_internals import (
    SenderHook,
    install_flat_rate_counter,
    install_shared_certificate,
    install_srtp_receiver,
    negotiated_codecs,
    negotiated_header_extensions,
    remote_ice_changed,
    renew_local_ice,
    restart_ice_checks,
    use_udp_mux,
)
from hub.errors import HubError
from hub.forwarding import CodecInfo, DownTrack, ForwardingStats, Subscription
from hub.ids import PublicationID
from hub.messages import MAX_SDP_BYTES, Outgoing, SubscriberOffer, TrackRef, Tracks
from hub.tokens import Source
from hub.udpmux import UdpMux

if TYPE_CHECKING:
    from hub.room import Participant, Publication, Room

logger = logging.getLogger(__name__)

CLOSE_TIMEOUT = 5.0
SOURCE_KIND = {Source.CAMERA: "video", Source.SCREEN: "video", Source.MICROPHONE: "audio"}
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"


class SdpError(ValueError):
    """The SDP is not something the hub will apply; the message says why."""


@dataclass(frozen=True)
class OfferedMedia:
    """One m-line of a remote offer, as the hub needs it before applying the offer."""

    mid: str
    kind: str
    direction: str


def parse_sdp(sdp: str, max_media: int | None = None) -> list[OfferedMedia]:
    """Check an SDP before aiortc sees it; garbage becomes :class:`SdpError`, and so
    does an offer of more than ``max_media`` m-lines (each would cost a transceiver)."""
    if not isinstance(sdp, str) or not sdp.strip():
        raise SdpError("empty SDP")
    if len(sdp.encode("utf-8", "surrogatepass")) > MAX_SDP_BYTES:
        raise SdpError(f"SDP larger than {MAX_SDP_BYTES} bytes")
    if not sdp.startswith("v=0"):
        raise SdpError("SDP must start with v=0")
    try:
        description = SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser raises whatever the input provokes
        raise SdpError(f"unparsable SDP: {type(exc).__name__}: {exc}") from None
    if max_media is not None and len(description.media) > max_media:
        raise SdpError(f"{len(description.media)} m-lines; at most {max_media} are taken")
    media: list[OfferedMedia] = []
    for m in description.media:
        if m.kind not in ("audio", "video"):
            continue
        if not m.rtp.muxId:
            raise SdpError(f"{m.kind} m-line without a=mid")
        if not m.ice or not m.ice.usernameFragment or not m.dtls or not m.dtls.fingerprints:
            raise SdpError(f"m-line {m.rtp.muxId} lacks ICE credentials or a DTLS fingerprint")
        media.append(
            OfferedMedia(mid=m.rtp.muxId, kind=m.kind, direction=m.direction or "sendrecv")
        )
    if not media:
        raise SdpError("no audio or video m-line")
    mids = {m.mid for m in media}
    for group in description.group:
        # aiortc accepts a BUNDLE of m-lines that are not there, then fails to answer.
        missing = [
            str(mid) for mid in group.items if group.semantic == "BUNDLE" and mid not in mids
        ]
        if missing:
            raise SdpError(f"BUNDLE names m-lines that are not in the SDP: {' '.join(missing)}")
    return media


@dataclass(frozen=True)
class RemoteIce:
    """The ICE part of a remote description (one transport: max-bundle)."""

    parameters: RTCIceParameters
    candidates: list[RTCIceCandidate]
    complete: bool
    """No more candidates will come (``a=end-of-candidates``)."""


def remote_ice(sdp: str) -> RemoteIce:
    """The ICE credentials and candidates of an SDP :func:`parse_sdp` accepted; every
    m-line must carry the same credentials, as the one transport they share has."""
    media = [m for m in SessionDescription.parse(sdp).media if m.kind in ("audio", "video")]
    first = media[0].ice
    assert first is not None  # parse_sdp refuses an m-line without
    for m in media[1:]:
        ice = m.ice
        assert ice is not None
        if (ice.usernameFragment, ice.password) != (first.usernameFragment, first.password):
            raise SdpError(f"m-line {m.rtp.muxId} has other ICE credentials than the first")
    if not first.password:
        raise SdpError("no ICE password (a=ice-pwd)")
    return RemoteIce(
        parameters=first,
        candidates=[c for m in media for c in m.ice_candidates],
        complete=any(m.ice_candidates_complete for m in media),
    )


def _ice_restarts(pc: RTCPeerConnection, ice: RemoteIce) -> bool:
    try:
        return remote_ice_changed(pc, ice.parameters)
    except ValueError as exc:
        raise SdpError(str(exc)) from None


async def _restart_checks(pc: RTCPeerConnection, ice: RemoteIce) -> None:
    try:
        await restart_ice_checks(pc, ice.parameters, ice.candidates, ice.complete)
    except ValueError as exc:
        raise SdpError(str(exc)) from None


async def set_remote_offer(pc: RTCPeerConnection, sdp: str) -> None:
    """Apply an offer :func:`parse_sdp` accepted. One with new ICE credentials
    restarts ICE (RFC 8839 section 4.4.1.1.1): the answer made next carries new local
    ones, and the checks run again while DTLS, SRTP and media go on."""
    ice = remote_ice(sdp)
    restarts = _ice_restarts(pc, ice)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
    if restarts:
        try:
            renew_local_ice(pc)
        except ValueError as exc:
            raise SdpError(str(exc)) from None
        await _restart_checks(pc, ice)


async def set_remote_answer(pc: RTCPeerConnection, sdp: str, renewed: bool) -> None:
    """Apply an answer :func:`parse_sdp` accepted; ICE checks run again when it has
    new ICE credentials or the offer had (``renewed``: :func:`offer_ice_restart`)."""
    ice = remote_ice(sdp)
    restarts = _ice_restarts(pc, ice) or renewed
    await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
    if restarts:
        await _restart_checks(pc, ice)


def offer_ice_restart(pc: RTCPeerConnection) -> None:
    """The next offer of ``pc`` restarts ICE: it carries new local credentials."""
    try:
        renew_local_ice(pc)
    except ValueError as exc:
        raise SdpError(str(exc)) from None


_SIMULCAST_SEND = re.compile(r"^a=simulcast:send (\S+)$")


def offered_layers(sdp: str) -> dict[str, tuple[str, ...]]:
    """Each simulcast m-line's rids (``a=simulcast:send``), by mid, lowest first: the
    order of the sender's encodings, as the console lists them (and mediasoup's and
    LiveKit's clients do). A paused rid (``~``) is a layer still; of alternatives
    (``,``) the first is taken."""
    layers: dict[str, tuple[str, ...]] = {}
    for section in sdp.split("\r\nm=")[1:]:
        lines = section.split("\r\n")
        mid = next((line[6:] for line in lines if line.startswith("a=mid:")), None)
        for line in lines:
            match = _SIMULCAST_SEND.match(line)
            if mid is not None and match is not None:
                rids = tuple(s.split(",")[0].lstrip("~") for s in match.group(1).split(";"))
                if len(rids) > 1:
                    layers[mid] = rids
    return layers


def answer_layers(sdp: str, layers: dict[str, tuple[str, ...]]) -> str:
    """The answer that receives the offer's simulcast: ``a=rid:… recv`` and
    ``a=simulcast:recv`` in each such m-line (RFC 8853), which aiortc does not write;
    without them the sender sends one layer."""
    sections = sdp.split("\r\nm=")
    for i, section in enumerate(sections[1:], start=1):
        lines = section.split("\r\n")
        mid = next((line[6:] for line in lines if line.startswith("a=mid:")), None)
        rids = layers.get(mid) if mid is not None else None
        if not rids:
            continue
        at = next(j for j, line in enumerate(lines) if line.startswith("a=mid:")) + 1
        extra = [f"a=rid:{rid} recv" for rid in rids] + [f"a=simulcast:recv {';'.join(rids)}"]
        sections[i] = "\r\n".join(_start_bitrate(lines[:at] + extra + lines[at:]))
    return "\r\nm=".join(sections)


SIMULCAST_START_KBPS = 2200
"""What a simulcast sender starts at (``x-google-start-bitrate``, which libwebrtc reads
from the answer): its three layers' sum. From its default 300 kbps a sender ramps up
over seconds and sends its top layer last, and the recording and live HLS, which take
the top layer, waited that long after every (re)join of the lecturer."""


def _start_bitrate(lines: list[str]) -> list[str]:
    rtpmap = re.compile(r"^a=rtpmap:(\d+) (VP8|H264)/90000$", re.IGNORECASE)
    video = {m[1] for m in map(rtpmap.match, lines) if m}
    param = f"x-google-start-bitrate={SIMULCAST_START_KBPS}"
    with_fmtp = {line[7:].split(" ", 1)[0] for line in lines if line.startswith("a=fmtp:")}
    out: list[str] = []
    for line in lines:
        pt = line[7:].split(" ", 1)[0] if line.startswith("a=fmtp:") else None
        out.append(f"{line};{param}" if pt in video else line)
        found = rtpmap.match(line)
        if found and found[1] not in with_fmtp:
            out.append(f"a=fmtp:{found[1]} {param}")
    return out


async def close_peer(pc: RTCPeerConnection) -> None:
    """Close without trusting aiortc to: after some refused offers its ``close()``
    raises half-way and a second call would wait forever."""
    try:
        await asyncio.wait_for(pc.close(), CLOSE_TIMEOUT)
    except Exception:
        logger.warning("peer connection did not close cleanly", exc_info=True)


def make_peer_connection(
    ice_servers: list[RTCIceServer], udp_mux: UdpMux | None = None
) -> RTCPeerConnection:
    """A peer connection on ``udp_mux``'s shared port when given, else on sockets of
    its own."""
    install_srtp_receiver()
    install_flat_rate_counter()
    install_shared_certificate()
    # ICE servers always explicit: aiortc's default is a public STUN server the
    # intranet lacks. Max-bundle: with aiortc's default ("balanced") a second track
    # of one kind added before negotiation keeps a transport that bundling discards.
    pc = RTCPeerConnection(
        RTCConfiguration(iceServers=list(ice_servers), bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
    )
    if udp_mux is not None:
        use_udp_mux(pc, udp_mux)
    return pc


def parse_candidate(
    candidate: str, sdp_mid: str | None, sdp_mline_index: int | None
) -> RTCIceCandidate:
    text = candidate.removeprefix("candidate:")
    try:
        parsed = candidate_from_sdp(text)
    except Exception as exc:
        raise SdpError(f"bad ICE candidate: {exc}") from None
    parsed.sdpMid = sdp_mid
    parsed.sdpMLineIndex = sdp_mline_index
    return parsed


_CANDIDATE = re.compile(r"^a=candidate:(\S+) (\d+) (\S+) (\d+) (\S+) (\d+) typ (\S+)(.*)$")


def announce(sdp: str, address: str | None, gather_first: str | None = None) -> str:
    """Rewrite host candidates to the announced address and put that one first.

    A hub behind NAT announces the address sites reach (LiveKit's node IP); some
    WHIP clients (ffmpeg) only try the first candidate, so order matters.
    """
    lines = sdp.split("\r\n")
    out: list[str] = []
    block: list[str] = []

    def flush() -> None:
        def rank(line: str) -> int:
            match = _CANDIDATE.match(line)
            if match is None:
                return 2
            host = match.group(7) == "host"
            ip = match.group(5)
            preferred = (address and ip == address) or (gather_first and ip == gather_first)
            return 0 if host and preferred else 1 if host else 2

        out.extend(sorted(block, key=rank))
        block.clear()

    for line in lines:
        match = _CANDIDATE.match(line)
        if match is not None:
            if address and match.group(7) == "host" and ":" not in match.group(5):
                line = (
                    f"a=candidate:{match.group(1)} {match.group(2)} {match.group(3)} "
                    f"{match.group(4)} {address} {match.group(6)} typ host{match.group(8)}"
                )
            block.append(line)
            continue
        flush()
        out.append(line)
    flush()
    return "\r\n".join(out)


class ParkedTrack(MediaStreamTrack):
    """A track that never yields a frame: it gives a sender an SSRC and RTCP while
    the hub writes the RTP itself, so no encoder ever runs."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def recv(self) -> Frame | Packet[Any]:
        await self._never
        raise AssertionError("unreachable")


def codec_info(transceiver: RTCRtpTransceiver) -> CodecInfo | None:
    """The first media codec the last negotiation settled on for ``transceiver``
    (RED is a wrapping of it: noted, not the codec)."""
    codecs = negotiated_codecs(transceiver)
    for codec in codecs:
        if codec.name.lower() not in ("rtx", red.NAME):
            return CodecInfo(
                name=codec.name,
                mime_type=codec.mimeType,
                clock_rate=codec.clockRate,
                parameters=dict(codec.parameters),
                channels=codec.channels,
                red_payload_type=_red_payload_type(codecs, codec.payloadType),
            )
    return None


def _red_payload_type(codecs: list[RTCRtpCodecParameters], wrapped: int | None) -> int | None:
    """The negotiated RED whose blocks are the codec numbered ``wrapped``, if any."""
    for codec in codecs:
        if codec.name.lower() == red.NAME:
            names = red.redundant_payload_types(codec.parameters)
            if names and all(name == wrapped for name in names):
                return codec.payloadType
    return None


_CB = H264Profile.PROFILE_CONSTRAINED_BASELINE
_CH = H264Profile.PROFILE_CONSTRAINED_HIGH
_MAIN = H264Profile.PROFILE_MAIN
_HIGH = H264Profile.PROFILE_HIGH
H264_DECODES: dict[H264Profile, frozenset[H264Profile]] = {
    _CB: frozenset({_CB}),
    H264Profile.PROFILE_BASELINE: frozenset({H264Profile.PROFILE_BASELINE, _CB}),
    _MAIN: frozenset({_MAIN, _CB}),
    _CH: frozenset({_CH, _CB}),
    _HIGH: frozenset({_HIGH, _CH, _MAIN, _CB}),
    H264Profile.PROFILE_PREDICTIVE_HIGH_444: frozenset(
        {H264Profile.PROFILE_PREDICTIVE_HIGH_444, _HIGH, _CH, _MAIN, _CB}
    ),
}
"""The streams a decoder of each profile decodes (H.264 Annex A.2). Chromium without
hardware decoding offers to receive High 4:4:4 Predictive but not High: it takes a
High stream on that payload type, as its decoder must."""


def _h264_profile(parameters: dict[str, str | int | None]) -> H264Profile | None:
    # No profile-level-id means Constrained Baseline level 3.1 (RFC 6184, as aiortc reads it).
    try:
        return parse_h264_profile_level_id(str(parameters.get("profile-level-id", "42e01f")))[0]
    except ValueError:
        return None


def carry_rank(
    receiver: RTCRtpCodecCapability | RTCRtpCodecParameters, codec: CodecInfo
) -> tuple[int, int] | None:
    """How well a receiver's codec takes ``codec``'s stream forwarded unchanged, lower
    is better; None when it cannot. H.264: packetization mode 1 (the hub forwards
    FU-A and STAP-A) and a profile whose decoders decode the publisher's, the same
    profile first; the level may differ (level-asymmetry-allowed). Audio: the same
    codec. Other video: the same codec and parameters."""
    if receiver.mimeType.lower() != codec.mime_type.lower():
        return None
    if codec.name == "H264":
        if str(receiver.parameters.get("packetization-mode", "0")) != "1":
            return None
        sent, taken = _h264_profile(codec.parameters), _h264_profile(receiver.parameters)
        if sent is None or taken is None or sent not in H264_DECODES[taken]:
            return None
        return (int(taken is not sent), len(H264_DECODES[taken]))
    if codec.mime_type.lower().startswith("audio/") or receiver.parameters == codec.parameters:
        return (0, 0)
    return None


def preferences_for(kind: str, codec: CodecInfo) -> list[RTCRtpCodecCapability]:
    """Codec preferences that make an offer or answer carry ``codec`` (plus RTX): the
    capabilities that take it, best first (see :func:`carry_rank`)."""
    capabilities = RTCRtpSender.getCapabilities(kind).codecs
    ranked = [(rank, c) for c in capabilities if (rank := carry_rank(c, codec)) is not None]
    wanted = [c for _, c in sorted(ranked, key=lambda pair: pair[0])]
    if kind == "video":
        wanted += [c for c in capabilities if c.name.lower() == "rtx"]
    else:
        wanted = _red(capabilities) + wanted
    return wanted


def audio_preferences() -> list[RTCRtpCodecCapability]:
    """Every audio codec, RED first: what the hub negotiates where it does not yet
    know what will be carried (a publisher's microphone, a WHEP player's voices)."""
    capabilities = RTCRtpSender.getCapabilities("audio").codecs
    return _red(capabilities) + [c for c in capabilities if c.name.lower() != red.NAME]


def _red(capabilities: list[RTCRtpCodecCapability]) -> list[RTCRtpCodecCapability]:
    """RED, when installed (:func:`hub.aiortc_internals.install_red`): negotiated
    only where preferences name it."""
    return [c for c in capabilities if c.name.lower() == red.NAME]


@dataclass(frozen=True)
class SendParameters:
    """What a negotiation settled for one sending transceiver."""

    payload_type: int
    rtx_payload_type: int | None
    abs_send_time_id: int | None
    red_payload_type: int | None
    """RED wrapping ``payload_type``, when negotiated."""


def send_parameters(transceiver: RTCRtpTransceiver, codec: CodecInfo) -> SendParameters | None:
    """Payload types and extension ids to write for ``codec`` on ``transceiver``,
    or None when the subscriber cannot receive that codec."""
    codecs = negotiated_codecs(transceiver)
    ranked = [(rank, c) for c in codecs if (rank := carry_rank(c, codec)) is not None]
    chosen = min(ranked, key=lambda pair: pair[0])[1] if ranked else None
    if chosen is None or chosen.payloadType is None:
        return None
    rtx = next(
        (
            c.payloadType
            for c in codecs
            if c.name.lower() == "rtx" and c.parameters.get("apt") == chosen.payloadType
        ),
        None,
    )
    abs_id = next(
        (e.id for e in negotiated_header_extensions(transceiver) if e.uri == ABS_SEND_TIME_URI),
        None,
    )
    red_pt = _red_payload_type(codecs, chosen.payloadType)
    return SendParameters(chosen.payloadType, rtx, abs_id, red_pt)


UP_AFTER = 5.0
"""Seconds a simulcast subscription stays on a layer before its link is probed for the
layers above (LiveKit waits 5 s too)."""
BACK_OFF = 2.0
"""After a try up that failed (a probe's estimate fell, or the layer fell back within
:data:`STAYED_UP` of the move), the next waits this much longer, up to
:data:`MAX_UP_AFTER`."""
MAX_UP_AFTER = 60.0
"""A narrow link is probed this seldom at most: a probe's padding that overflows its
queue before the estimate falls costs it a burst of loss (1-3 freezes on 700 kbps)."""
RECOVER_UP_AFTER = 8.0
"""For :data:`RECOVERY` after the link fell short of a layer it had held (for
:data:`HELD`), tries up to it wait at most this: such a drop (the village's
download) passes, and the layer is back within this and a probe (the issue's 15 s),
as libwebrtc probes again after a large drop."""
RECOVERY = 60.0
HELD = 10.0
"""Seconds on a layer after which the link counts as having held it."""
STAYED_UP = 20.0
PROBE_AFTERMATH = 1.5
"""Seconds after a probe during which loss and a falling estimate are its own (the
queue it filled draining, the receiver's reports of it, the new layer's keyframe),
not the layer's."""
LOSS_WINDOW = 1.0
"""Seconds of a layer before its NACKs say how lossy the link is."""
LOSS_MIN_PACKETS = 30
REMB_FALL = 0.95
"""An estimate under this share of the one before has fallen: the link is congested
(libwebrtc's receiver cuts its estimate to 0.85 of what arrives on overuse)."""
PROBE_FALL = 0.995
"""An estimate under this share of the one before, while a probe pads, fails it: a
link it overfills may lower its estimate by 2 % only (when that was already under
what arrives) and hold it there until its queue overflows a second later; growing,
it rises 0.5 % a report."""
PROBE_SECONDS = 2.0
"""How long a link is padded up to a layer's rate (:data:`PROBE_RAMP` of it rising)
before that layer counts as carried: long enough for a receiver's delay-based
estimate to fall on a link that cannot carry it (it fell within 0.5 s on a 700 kbps
link padded to 1.5 Mbps at once)."""
PROBE_RAMP = 1.0
"""Seconds over which a step's padding rises to its full rate: a link that cannot
carry it queues it (and its estimate falls) before the queue overflows, as at once it
overflowed first, a burst of loss (1-3 freezes on 700 kbps)."""
PROBE_WARMUP = 1.0
"""Seconds between a first RTX packet and a probe on a stream that had none."""
PROBE_LOSS_MIN = 3
"""NACKs in a step before its loss can fail it."""
PROBE_TICK = 0.02
"""Seconds between bursts of padding: paced, as a sender paces media."""


class Slot:
    """One sending transceiver of a subscriber connection and what it carries."""

    def __init__(
        self, transceiver: RTCRtpTransceiver, hook: SenderHook, down: DownTrack, peer: SendingPeer
    ) -> None:
        self.transceiver = transceiver
        self.hook = hook
        self.down = down
        self.peer = peer
        self.publication: Publication | None = None
        self.subscription: Subscription | None = None
        self._steady_since = time.monotonic()
        """Since when its layer has stayed (a layer up is tried after ``_up_after``)."""
        self._loss_from = (self._steady_since, 0, 0)
        """(when, packets sent, sequence numbers NACKed) as the last window began."""
        self._nacked_share: float | None = None
        """The share of its packets the subscriber NACKed over the last window."""
        self._up_after = UP_AFTER
        self._up_at = 0.0
        self._moved_at = self._steady_since
        """When its layer last changed."""
        self._dropped: tuple[int, float] | None = None
        """(layer, when) the link last fell short of a layer it had held."""
        self._quiet_until = 0.0
        """Until when loss and falls are a probe's aftermath."""
        self._remb_seen: tuple[int, tuple[int, ...]] | None = None
        """The last estimate looked at, with the streams it named."""
        self._fell = False
        """The last estimate fell from the one before."""
        self._probe: _Probe | None = None

    def bind(self, publication: Publication) -> None:
        self.unbind()
        self.publication = publication
        # What it shows and its cap choose; the link corrects that once it speaks.
        top = len(publication.up.layers) - 1
        self.subscription = Subscription(
            publication.up, self.down, self._layer(publication, top, None)
        )
        self._moved_at = time.monotonic()
        self._settle(self._moved_at)

    def _layer(
        self,
        publication: Publication,
        current: int,
        estimate: float | None,
        try_up: bool = False,
    ) -> int:
        rates = [layer.bitrate_bps for layer in publication.up.layers]
        shows = self.peer.shows.get(publication.id, "stage")
        return policy.layer_for(
            rates, current, shows, self.peer.cap, estimate, try_up, self._loss()
        )

    def _loss(self) -> float | None:
        """The share of this video its link lost lately, on this layer: the
        subscriber's receiver reports say it after repairs (libwebrtc counts a packet
        resent in time as received, so a link losing 10 % reports 1-3 %), its NACKs
        before them (over the last window of at least :data:`LOSS_WINDOW`): the higher
        of the two."""
        down = self.down
        now = time.monotonic()
        at, sent, nacked = self._loss_from
        sent_since = down.packets_sent - sent
        if now < self._quiet_until:
            self._loss_from = (now, down.packets_sent, down.nacked)
            self._nacked_share = None
            return None
        if now - at >= LOSS_WINDOW and sent_since >= LOSS_MIN_PACKETS:
            self._nacked_share = (down.nacked - nacked) / sent_since
            self._loss_from = (now, down.packets_sent, down.nacked)
        since = max(self._steady_since, self._quiet_until)
        reported = down.lost if down.lost_at > since else None
        if reported is None and self._nacked_share is None:
            return None
        return max(reported or 0.0, self._nacked_share or 0.0)

    def _settle(self, now: float, after_probe: bool = False) -> None:
        """The layer changed (or the slot took a publication, or a probe ended):
        measure afresh, past a probe's aftermath."""
        self._steady_since = now
        if after_probe:
            self._quiet_until = now + PROBE_AFTERMATH
        self._loss_from = (now, self.down.packets_sent, self.down.nacked)
        self._nacked_share = None

    def _estimate(self, current_bps: float | None) -> float | None:
        """What the subscriber's estimate (REMB) leaves for this video: the whole less
        what its other slots send. A receiver's estimate lags what arrives while it
        grows (a few percent a second, libwebrtc's): only when it falls (the link
        congested) does it say the current layer does not fit."""
        total = self.hook.remb_bps
        if total is None:
            return None
        named = self.hook.remb_ssrcs
        seen, self._remb_seen = self._remb_seen, (total, named)
        now = time.monotonic()
        others = 0.0
        for slot in self.peer.slots:
            if slot is not self:
                slot.down.budget.note_media(slot.down.bytes_sent, now)
                others += slot.down.budget.media_bps
        estimate = max(0.0, total - others)
        # Over other streams (RTX joining, a slot added) it is another measure.
        # While a probe pads, what arrives only grows: an estimate that gives up even
        # a little has seen the queue grow (libwebrtc's AIMD decreases only then).
        fall = PROBE_FALL if self._probe is not None else REMB_FALL
        falling = self._fell = seen is not None and named == seen[1] and total < seen[0] * fall
        if (falling and now >= self._quiet_until) or current_bps is None:
            return estimate
        return max(estimate, current_bps)

    def follow_layer(self, fresh: bool = False) -> None:
        """Move to the layer the policy now chooses (a simulcast publication only).
        ``fresh``: the subscriber's cap or view changed, and what its link showed
        under the old one says nothing of the new (it grows only with what arrives):
        they choose, as at the start, and the link corrects that if it falls short."""
        subscription = self.subscription
        publication = self.publication
        if subscription is None or publication is None or not subscription.up.simulcast:
            return
        layers = subscription.up.layers
        current = subscription.target.index
        estimate = None if fresh else self._estimate(layers[current].bitrate_bps)
        now = time.monotonic()
        probe = self._probe
        if probe is not None and (
            fresh
            or self._fell
            or self._probe_lossy(probe)
            or (self._loss() or 0.0) > policy.LOSS_DOWN
        ):
            self._end_probe()
            if not fresh:
                # The link could not carry the layer probed for: the highest it did
                # carry, if any, and the next try waits longer.
                self.down.stats.probes_failed += 1
                logger.debug(
                    "%s: probe for layer %s failed (estimate fell: %s), carried %s",
                    publication.id,
                    layers[probe.target].rid,
                    self._fell,
                    probe.carried,
                )
                self._back_off(probe.target, now)
                if probe.carried is not None:
                    self._move(probe.carried, now, estimate, after_probe=True)
                else:
                    self._settle(now, after_probe=True)
                return
        elif probe is not None:
            if now < probe.until:
                return
            # Carried at its rate: the link holds that layer; on to the next one's
            # rate, as libwebrtc's probes grow (one probe, 180p to 720p).
            carried_bps = max(estimate or 0.0, layers[probe.target].bitrate_bps or 0.0)
            above = self._layer(publication, probe.target, carried_bps, try_up=True)
            if above > probe.target:
                self._raise_probe(probe, above, now)
                return
            self._end_probe()
            self._up_after = UP_AFTER
            self._move(probe.target, now, estimate, after_probe=True)
            return
        try_up = now - self._steady_since >= self._up_after
        index = self._layer(publication, current, estimate, try_up)
        if index > current and estimate is not None:
            if not try_up:
                index = current  # the estimate shows room, the wait is not over
            elif self._layer(publication, current, estimate) < index:
                # Only a try would go up (the estimate shows no room): pad up to that
                # layer's rate first, and go only if the estimate holds meanwhile.
                self._start_probe(index, now)
                return
        if index == current:
            if subscription.target is not subscription.layer:
                subscription.target.request_keyframe()  # still waiting: ask again
            return
        if index < current and self._layer(publication, current, None) > index:
            # The link fell short: a layer just moved up to waits longer to be tried
            # again; one it had held is tried again soon (see RECOVER_UP_AFTER).
            if now - self._up_at < STAYED_UP:
                self._back_off(current, now)
            else:
                self._up_after = UP_AFTER
            if now - self._moved_at >= HELD:
                self._dropped = (current, now)
        self._move(index, now, estimate)

    def _move(
        self, index: int, now: float, estimate: float | None, after_probe: bool = False
    ) -> None:
        subscription, publication = self.subscription, self.publication
        assert subscription is not None and publication is not None
        layers = subscription.up.layers
        if index > subscription.target.index:
            self._up_at = now
        self._moved_at = now
        self._settle(now, after_probe)
        logger.debug(
            "%s: layer %s → %s (estimate %s, layers %s)",
            publication.id,
            subscription.target.rid,
            layers[index].rid,
            estimate,
            [layer.bitrate_bps for layer in layers],
        )
        subscription.move(index)

    def _back_off(self, target: int, now: float) -> None:
        """A try up to ``target`` failed: wait longer before the next."""
        limit = MAX_UP_AFTER
        dropped = self._dropped
        if dropped is not None and target <= dropped[0] and now - dropped[1] < RECOVERY:
            limit = RECOVER_UP_AFTER
        self._up_after = min(limit, self._up_after * BACK_OFF)

    def configure(self, publication: Publication) -> bool:
        """Set the payload types for ``publication``'s codec; False if not negotiated."""
        params = send_parameters(self.transceiver, publication.up.codec)
        if params is None:
            return False
        # RED only from a publisher that sends it: a copy of nothing adds nothing.
        sends_red = publication.up.codec.red_payload_type is not None
        self.down.configure(
            self.hook.writer().srtp_socket,
            params.payload_type,
            params.rtx_payload_type,
            params.abs_send_time_id,
            params.red_payload_type if sends_red else None,
        )
        return True

    def _start_probe(self, target: int, now: float) -> None:
        subscription = self.subscription
        assert subscription is not None
        self.down.stats.probes += 1
        # A first RTX stream at the probe's full rate made Chromium's estimate fall
        # at once on a 3 Mbps link carrying 0.5 (four runs in four); one packet of
        # it a second ahead, then the full rate, did not.
        warm = self.hook.rtx_ssrc in self.hook.remb_ssrcs
        begins = now if warm else now + PROBE_WARMUP
        baseline = self._nacked_share or 0.0
        self._probe = probe = _Probe(target, begins + PROBE_SECONDS, begins, baseline)
        self._raise_probe(probe, target, begins)
        if not warm:
            subscription.pad(1)
        probe.timer = asyncio.get_running_loop().call_later(begins - now, self._pad)

    def _raise_probe(self, probe: _Probe, target: int, now: float) -> None:
        """Pad up to ``target``'s rate from ``now`` (any layer probed before, carried)."""
        subscription = self.subscription
        assert subscription is not None
        if target != probe.target:
            probe.carried, probe.target = probe.target, target
            probe.until = now + PROBE_SECONDS
        probe.sent_from, probe.nacked_from = self.down.packets_sent, self.down.nacked
        probe.step_from = now
        # With the headroom the estimate must show for a move up (LiveKit probes
        # at 120 % of its goal).
        target_bps = (subscription.up.layers[target].bitrate_bps or 0.0) * policy.UP_MARGIN
        probe.bytes_per_second = max(0.0, target_bps - (subscription.target.bitrate_bps or 0.0)) / 8

    def _pad(self) -> None:
        """Send the padding owed since the last burst; at the probe's end, decide."""
        probe = self._probe
        if probe is None:
            return
        subscription = self.subscription
        now = time.monotonic()
        if subscription is None or now >= probe.until or self._probe_lossy(probe):
            self.follow_layer()
            if self._probe is not probe:
                return
            if subscription is None or now >= probe.until:  # undecided: not the link's
                self._end_probe()
                return
        ramp = min(1.0, (now - probe.step_from) / PROBE_RAMP)
        owed = probe.owed + ramp * probe.bytes_per_second * (now - probe.at)
        sent = subscription.pad(int(owed))
        probe.owed = owed - sent if sent else 0.0
        probe.at = now
        probe.timer = asyncio.get_running_loop().call_later(PROBE_TICK, self._pad)

    def _probe_lossy(self, probe: _Probe) -> bool:
        """The subscriber NACKs more of this step's media than before the probe, by
        :data:`hub.policy.LOSS_DOWN`: the padding overflows its link's queue. Looked at every
        tick, not only with the next report, since each moment of it costs media."""
        down = self.down
        nacked = down.nacked - probe.nacked_from
        sent = down.packets_sent - probe.sent_from
        return nacked >= PROBE_LOSS_MIN and nacked > (probe.baseline + policy.LOSS_DOWN) * sent

    def _end_probe(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None and probe.timer is not None:
            probe.timer.cancel()

    def unbind(self) -> None:
        self._end_probe()
        if self.subscription is not None:
            self.subscription.close()
        self.subscription = None
        self.publication = None


@dataclass(slots=True)
class _Probe:
    """A probe of a subscriber's link: padding up to a layer's rate until a moment."""

    target: int
    """The layer whose rate it pads up to."""
    until: float
    at: float
    """When padding was last sent (or owed from)."""
    baseline: float
    """The share of its media the subscriber NACKed before the probe."""
    bytes_per_second: float = 0.0
    """Padding's full rate in this step."""
    step_from: float = 0.0
    sent_from: int = 0
    nacked_from: int = 0
    """When this step began, and its media packets sent and NACKed by then."""
    carried: int | None = None
    """The highest layer the link carried at its rate in this probe (before target)."""
    owed: float = 0.0
    timer: asyncio.TimerHandle | None = None


class SendingPeer:
    """A peer connection the hub sends media on, slot by slot."""

    def __init__(self, pc: RTCPeerConnection, stats: ForwardingStats) -> None:
        self.pc = pc
        self.stats = stats
        self.slots: list[Slot] = []
        self.video_held = False
        """Audio-only mode: no video is sent on this connection."""
        self.cap: policy.LayerCap = "auto"
        """The subscriber's own cap on simulcast layers (``video_cap``)."""
        self.shows: dict[PublicationID, policy.Shows] = {}
        """How it shows each publication's video, as the room last said (else: stage)."""

    def add_slot(self, kind: str) -> Slot:
        transceiver = self.pc.addTransceiver(ParkedTrack(kind), direction="sendonly")
        down: DownTrack
        hook = SenderHook(
            transceiver.sender,
            retransmit=lambda seq: down.on_nack(seq),
            keyframe=lambda: down.on_pli(),
            report=lambda: down.report,
            feedback=lambda rtt, estimate, lost: down.on_feedback(rtt, estimate, lost),
        )
        down = DownTrack(kind, hook.ssrc, hook.rtx_ssrc, self.stats)
        down.hold(kind == "video" and self.video_held)
        slot = Slot(transceiver, hook, down, self)
        down.on_estimate = slot.follow_layer
        self.slots.append(slot)
        return slot

    def follow_layers(self, fresh: bool = False) -> None:
        """Every slot to the layer the policy chooses now (the layers' rates or the
        subscriber's estimate changed; ``fresh``: its cap or view, see
        :meth:`Slot.follow_layer`)."""
        for slot in self.slots:
            slot.follow_layer(fresh)

    def set_cap(self, cap: policy.LayerCap) -> None:
        self.cap = cap
        self.follow_layers(fresh=True)

    def set_shows(self, shows: dict[PublicationID, policy.Shows]) -> None:
        """How the room now says each video is shown (the stage changed, or a view)."""
        fresh = shows != self.shows
        self.shows = shows
        self.follow_layers(fresh)

    def hold_video(self, held: bool) -> None:
        """Audio-only mode on (``held``) or off: every video slot, and any added later."""
        self.video_held = held
        for slot in self.slots:
            if slot.down.kind == "video":
                slot.down.hold(held)

    def configure_slots(self) -> None:
        """After a negotiation: write with the payload types the subscriber accepted."""
        for slot in self.slots:
            if slot.publication is not None and not slot.configure(slot.publication):
                logger.info("subscriber cannot receive %s", slot.publication.up.codec)
                slot.unbind()

    def bound(self) -> dict[PublicationID, Slot]:
        return {s.publication.id: s for s in self.slots if s.publication is not None}

    async def close(self) -> None:
        for slot in self.slots:
            slot.unbind()
        await close_peer(self.pc)


class SubscriberPeer(SendingPeer):
    """The connection a participant receives on; the hub offers, the client answers.

    Never two offers in flight: changes while one waits are folded into the next.
    """

    def __init__(
        self,
        pc: RTCPeerConnection,
        stats: ForwardingStats,
        send: Callable[[Outgoing], None],
        announce_address: str | None,
    ) -> None:
        super().__init__(pc, stats)
        self._send = send
        self._announce = announce_address
        self._desired: list[Publication] = []
        self.negotiating = False
        self._dirty = False
        self._restart_ice = False
        """The next offer restarts ICE (new local credentials)."""
        self._ice_renewed = False
        """The offer waiting for its answer carries new local ICE credentials."""
        self._lock = asyncio.Lock()

    async def restart_ice(self) -> None:
        """Offer new ICE credentials (the client asked: its path changed); the answer's
        new ones start the checks again. Folded into the next offer if one is waiting."""
        async with self._lock:
            if self.pc.localDescription is None:
                raise HubError("bad_message", "nothing to restart: no offer was made yet")
            self._restart_ice = True
            if self.negotiating:
                self._dirty = True
                return
            await self._negotiate()

    async def update(self, desired: list[Publication]) -> None:
        self._desired = desired
        async with self._lock:
            if self.negotiating:
                self._dirty = True
                return
            await self._negotiate()

    async def _negotiate(self) -> None:
        """Re-point idle m-lines to what is wanted and say so (``tracks``); offer only
        when the pool is short of an m-line for some publication."""
        wanted = {p.id: p for p in self._desired if not p.closed}
        moved = False
        for slot in self.slots:
            if slot.publication is not None and slot.publication.id not in wanted:
                slot.unbind()
                moved = True
        bound = self.bound()
        short = False
        for publication in wanted.values():
            if publication.id in bound:
                continue
            if self._repoint(publication):
                moved = True
                continue
            slot = self.add_slot(publication.kind)
            slot.transceiver.setCodecPreferences(
                preferences_for(publication.kind, publication.up.codec)
            )
            slot.bind(publication)
            short = True
        if short or self._restart_ice:
            if self._restart_ice:
                self._restart_ice = False
                offer_ice_restart(self.pc)
                self._ice_renewed = True
            self.negotiating = True
            offer = await self.pc.createOffer()
            await self.pc.setLocalDescription(offer)
            sdp = announce(self.pc.localDescription.sdp, self._announce)
            self._send(SubscriberOffer(sdp=sdp, tracks=self.tracks()))
        elif moved:
            self._send(Tracks(tracks=self.tracks()))

    def _repoint(self, publication: Publication) -> bool:
        """Bind an idle, negotiated m-line that can carry ``publication`` to it (binding
        asks its publisher for a keyframe); False when there is none."""
        for slot in self.slots:
            if (
                slot.publication is None
                and slot.transceiver.mid is not None
                and slot.down.kind == publication.kind
                and slot.configure(publication)
            ):
                slot.bind(publication)
                return True
        return False

    def tracks(self) -> dict[str, TrackRef]:
        """What each m-line carries now (the ``tracks`` of PROTOCOL.md)."""
        return {
            str(slot.transceiver.mid): TrackRef(
                publication=slot.publication.id,
                participant=slot.publication.participant.sid,
                source=slot.publication.source.value,
            )
            for slot in self.slots
            if slot.publication is not None
        }

    async def on_answer(self, sdp: str) -> None:
        async with self._lock:
            if not self.negotiating:
                raise HubError("bad_message", "no offer is waiting for an answer")
            parse_sdp(sdp)
            renewed, self._ice_renewed = self._ice_renewed, False
            try:
                await set_remote_answer(self.pc, sdp, renewed)
            except Exception as exc:
                raise HubError("bad_sdp", f"answer refused: {exc}") from None
            self.negotiating = False
            self.configure_slots()
            if self._dirty:
                self._dirty = False
                await self._negotiate()


class WhepPeer(SendingPeer):
    """A WHEP viewer: it offers receive-only m-lines once, and the hub keeps them
    fed with the room's program (see :meth:`Room.program`) without renegotiating."""

    async def on_offer(self, sdp: str, room: Room) -> str:
        media = parse_sdp(sdp, room.limits.max_media)
        if any(m.direction not in ("recvonly", "inactive") for m in media):
            raise HubError("bad_sdp", "a WHEP offer receives only (a=recvonly)")
        video, _ = room.program()
        for m in media:
            slot = self.add_slot(m.kind)
            # Only possible before setRemoteDescription (aiortc).
            if m.kind == "video" and video is not None:
                slot.transceiver.setCodecPreferences(preferences_for("video", video.up.codec))
            elif m.kind == "audio":
                slot.transceiver.setCodecPreferences(audio_preferences())
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except Exception as exc:
            raise HubError("bad_sdp", f"offer refused: {exc}") from None
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        self.follow(room.program(), room.floor.holder)
        return announce(self.pc.localDescription.sdp, room.announce_address, room.gather_first)

    def follow(
        self, program: tuple[Publication | None, list[Publication]], floor: PublicationID | None
    ) -> None:
        """Point each slot at the program: the picture, then the voices in order; with
        fewer audio slots than voices, the one holding the ``floor`` (the current
        speaker) first."""
        video, microphones = program
        by_id = {voice.id: voice for voice in microphones}
        tracks = sum(1 for slot in self.slots if slot.down.kind == "audio")
        heard = policy.voices_heard(list(by_id), tracks, floor)
        voices = iter(by_id[voice] for voice in heard)
        for slot in self.slots:
            target = video if slot.down.kind == "video" else next(voices, None)
            if slot.publication is target:
                continue
            slot.unbind()
            if target is None:
                continue
            if slot.configure(target):
                slot.bind(target)
            # else: negotiated for another codec; a new WHEP session is needed


class PublisherPeer:
    """The connection a participant sends on; the client offers, the hub answers."""

    def __init__(self, participant: Participant, pc: RTCPeerConnection) -> None:
        self.participant = participant
        self.pc = pc
        self.by_mid: dict[str, Publication] = {}
        self._lock = asyncio.Lock()

    async def on_offer(self, sdp: str, sources: dict[str, Source]) -> str:
        async with self._lock:
            media = parse_sdp(sdp, self.participant.room.limits.max_media)
            sending = [m for m in media if m.direction in ("sendonly", "sendrecv")]
            self._check_sources(sending, sources)
            self._prefer_red(media)
            try:
                await set_remote_offer(self.pc, sdp)
                answer = await self.pc.createAnswer()
                await self.pc.setLocalDescription(answer)
            except Exception as exc:
                await self._recover()
                raise HubError("bad_sdp", f"offer refused: {type(exc).__name__}: {exc}") from None
            layers = {
                mid: rids
                for mid, rids in offered_layers(sdp).items()
                if any(m.mid == mid and m.kind == "video" for m in sending)
            }
            self._apply(sending, sources, layers)
            room = self.participant.room
            answered = answer_layers(self.pc.localDescription.sdp, layers)
            return announce(answered, room.announce_address, room.gather_first)

    def _prefer_red(self, media: list[OfferedMedia]) -> None:
        """A transceiver for each new m-line, made before the offer applies, as aiortc
        would have made it (in m-line order: the first owns the bundle's transport),
        audio with RED in its codec preferences: the answer lists RED first, and a
        browser sends it."""
        transceivers = self.pc.getTransceivers()
        known = {t.mid for t in transceivers}
        # Some may be left from an offer refused before it took them.
        spare = [t.kind for t in transceivers if t.mid is None]
        for m in media:
            if m.mid in known:
                continue
            if m.kind in spare:
                spare.remove(m.kind)
                continue
            transceiver = self.pc.addTransceiver(m.kind, direction="recvonly")
            if m.kind == "audio":
                transceiver.setCodecPreferences(audio_preferences())

    async def _recover(self) -> None:
        """aiortc may keep half of a refused offer; start afresh while that is cheap."""
        if not self.by_mid:
            room = self.participant.room
            broken, self.pc = self.pc, make_peer_connection(room.ice_servers, room.udp_mux)
            await close_peer(broken)

    def _check_sources(self, sending: list[OfferedMedia], sources: dict[str, Source]) -> None:
        grant = self.participant.grant
        seen: set[Source] = set()
        for m in sending:
            source = sources.get(m.mid)
            if source is None:
                raise HubError("bad_message", f"m-line {m.mid} sends but has no source")
            if not grant.may_publish(source):
                raise HubError("forbidden", f"{grant.role.value} may not publish {source.value}")
            if SOURCE_KIND[source] != m.kind:
                raise HubError("bad_message", f"{source.value} cannot be {m.kind}")
            if source in seen:
                raise HubError("bad_message", f"two m-lines publish {source.value}")
            seen.add(source)

    def _apply(
        self,
        sending: list[OfferedMedia],
        sources: dict[str, Source],
        layers: dict[str, tuple[str, ...]],
    ) -> None:
        participant = self.participant
        sending_mids = {m.mid for m in sending}
        for gone in [mid for mid in self.by_mid if mid not in sending_mids]:
            participant.unpublish(self.by_mid.pop(gone))
        for transceiver in self.pc.getTransceivers():
            mid = transceiver.mid
            if mid is None or mid not in sending_mids or mid in self.by_mid:
                continue
            codec = codec_info(transceiver)
            if codec is None:
                continue
            self.by_mid[mid] = participant.publish(
                sources[mid], transceiver, codec, layers.get(mid, ())
            )

    def forget(self, publication: Publication) -> None:
        for mid, known in list(self.by_mid.items()):
            if known is publication:
                del self.by_mid[mid]

    async def add_candidate(
        self, candidate: str | None, mid: str | None, index: int | None
    ) -> None:
        if not candidate:
            return
        await self.pc.addIceCandidate(parse_candidate(candidate, mid, index))

    async def close(self) -> None:
        await close_peer(self.pc)
