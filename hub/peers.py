"""Peer connections as the hub uses them: made with explicit ICE servers, fed SDP
that has been checked first, and answering with the announced address first."""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Any

from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
)
from aiortc.rtcicetransport import RTCIceCandidate
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters
from aiortc.sdp import (
    H264Profile,
    SessionDescription,
    candidate_from_sdp,
    parse_h264_profile_level_id,
)
from av import Packet
from av.frame import Frame

from hub.aiortc_internals import (
    install_srtp_receiver,
    negotiated_codecs,
    negotiated_header_extensions,
    use_udp_mux,
)
from hub.forwarding import CodecInfo
from hub.udpmux import UdpMux

logger = logging.getLogger(__name__)

MAX_SDP_BYTES = 64 * 1024
CLOSE_TIMEOUT = 5.0
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
    """The first media codec the last negotiation settled on for ``transceiver``."""
    for codec in negotiated_codecs(transceiver):
        if codec.name.lower() != "rtx":
            return CodecInfo(
                name=codec.name,
                mime_type=codec.mimeType,
                clock_rate=codec.clockRate,
                parameters=dict(codec.parameters),
                channels=codec.channels,
            )
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
    return wanted


@dataclass(frozen=True)
class SendParameters:
    """What a negotiation settled for one sending transceiver."""

    payload_type: int
    rtx_payload_type: int | None
    abs_send_time_id: int | None


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
    return SendParameters(chosen.payloadType, rtx, abs_id)
