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
from aiortc.rtcrtpparameters import RTCRtpCodecCapability
from aiortc.sdp import SessionDescription, candidate_from_sdp
from av import Packet
from av.frame import Frame

from hub.aiortc_internals import (
    install_srtp_receiver,
    negotiated_codecs,
    negotiated_header_extensions,
)
from hub.forwarding import CodecInfo

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


def parse_sdp(sdp: str) -> list[OfferedMedia]:
    """Check an SDP before aiortc sees it; garbage becomes :class:`SdpError`."""
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


def make_peer_connection(ice_servers: list[RTCIceServer]) -> RTCPeerConnection:
    install_srtp_receiver()
    # ICE servers always explicit: aiortc's default is a public STUN server the
    # intranet lacks. Max-bundle: with aiortc's default ("balanced") a second track
    # of one kind added before negotiation keeps a transport that bundling discards.
    return RTCPeerConnection(
        RTCConfiguration(iceServers=list(ice_servers), bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
    )


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


def preferences_for(kind: str, codec: CodecInfo) -> list[RTCRtpCodecCapability]:
    """Codec preferences that make an offer carry exactly ``codec`` (plus RTX)."""
    wanted: list[RTCRtpCodecCapability] = []
    for capability in RTCRtpSender.getCapabilities(kind).codecs:
        if capability.mimeType.lower() == codec.mime_type.lower() and (
            capability.parameters == codec.parameters or kind == "audio"
        ):
            wanted.append(capability)
            break
    if kind == "video":
        wanted += [c for c in RTCRtpSender.getCapabilities(kind).codecs if c.name.lower() == "rtx"]
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
    chosen = None
    for c in codecs:
        if c.mimeType.lower() == codec.mime_type.lower() and (
            codec.name != "H264"
            or str(c.parameters.get("profile-level-id", ""))[:4].lower()
            == str(codec.parameters.get("profile-level-id", ""))[:4].lower()
        ):
            chosen = c
            break
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
