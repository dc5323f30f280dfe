"""Every access to aiortc's, aioice's and pylibsrtp's private internals, and nothing else.

aiortc has no public tap for encoded media, decodes everything it receives, has no
fast send path, accepts only two H.264 profiles and renumbers payload types offered
below 96, and aioice drops a peer that answers no consent checks (ffmpeg); a
forwarding hub needs all of that changed. Each reach into a private attribute is
here, for the pinned versions below; :func:`check_internals` fails loudly when an
upgrade moves any of them, and a test runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import importlib.metadata
import inspect
import logging
import os
import queue
import random
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import aioice.candidate
import aioice.ice
import aioice.stun
import aioice.utils
import aiortc.rate
import aiortc.rtcpeerconnection
import aiortc.rtcrtpreceiver
import aiortc.rtp
import pylibsrtp
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver, clock
from aiortc.codecs import CODECS, HEADER_EXTENSIONS, depayload, is_rtx
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcconfiguration import RTCConfiguration
from aiortc.rtcdtlstransport import RTCCertificate, RTCDtlsTransport, SRTPProtectionProfile, State
from aiortc.rtcicetransport import (
    RTCIceCandidate,
    RTCIceParameters,
    RTCIceTransport,
    candidate_to_aioice,
)
from aiortc.rtcrtpparameters import (
    RTCRtcpFeedback,
    RTCRtpCodecCapability,
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
)
from aiortc.rtcrtpreceiver import NackGenerator, StreamStatistics
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RtcpByePacket,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
    RtpPacket,
    is_rtcp,
    pack_remb_fci,
    unpack_remb_fci,
    unwrap_rtx,
)
from OpenSSL import SSL
from pylibsrtp import SRTP_MAX_SRTCP_TRAILER_LEN, SRTP_MAX_TRAILER_LEN, Session
from pylibsrtp._binding import ffi as _srtp_ffi
from pylibsrtp._binding import lib as _srtp_lib

from hub import fastpath, red
from hub.codecs import keyframe_start
from hub.fastpath import BUFFER_SIZE, SrtpSocket
from hub.forwarding import SinkSwitch
from hub.udpmux import Endpoint, UdpMux

logger = logging.getLogger(__name__)

PINNED = {"aiortc": "1.16.0", "aioice": "0.13.0", "pylibsrtp": "1.0.0"}

# Profiles a forwarding hub must accept and pass through unchanged: Main and High
# are what OBS and `ffmpeg -profile:v high` offer; aiortc ships only 42001f/42e01f.
# High 4:4:4 Predictive is the only profile above Main that Chromium without
# hardware decoding offers to receive: its viewers take High streams on it.
EXTRA_H264_PROFILES = ("4d001f", "64001f", "640c1f", "f4001f")

DYNAMIC_PAYLOAD_TYPES = (*range(35, 64), *range(96, 128))
"""Payload types an answer keeps as the offer numbered them (aiortc: 96-127 only)."""

_LIBSRTP_SIGNATURE = "srtp_err_status_t(*)(struct srtp_ctx_t_ *, void *, int *)"
"""libsrtp 2's protect and unprotect: (context, buffer, in/out length)."""

_RECEIVER_ATTRS = (
    "_RTCRtpReceiver__nack_generator",
    "_RTCRtpReceiver__decoder_queue",
    "_send_rtcp_pli",
    "_RTCRtpReceiver__remote_bitrate_estimator",
    "_RTCRtpReceiver__rtcp_ssrc",
    "_send_rtcp",
    "_RTCRtpReceiver__jitter_buffer",
    "_enabled",
    "_RTCRtpReceiver__codecs",
    "_RTCRtpReceiver__remote_streams",
    "_RTCRtpReceiver__active_ssrc",
    "_send_rtcp_nack",
)
_DTLS_ATTRS = (
    "_tx_srtp",
    "_rx_srtp",
    "_state",
    "_send_rtp",
    "_setup_srtp",
    "_handle_rtp_data",
    "_rtp_router",
    "_rtp_header_extensions_map",
    "_RTCDtlsTransport__rx_bytes",
    "_RTCDtlsTransport__rx_packets",
)
_SENDER_ATTRS = (
    "_ssrc",
    "_rtx_ssrc",
    "_retransmit",
    "_send_keyframe",
    "_run_rtcp",
    "_handle_rtcp_packet",
    "_RTCRtpSender__rtt",
    "_RTCRtpSender__cname",
    "_RTCRtpSender__lsr",
    "_RTCRtpSender__lsr_time",
    "_RTCRtpSender__rtcp_started",
    "_RTCRtpSender__rtcp_exited",
    "_RTCRtpSender__stats",
)
_TRANSCEIVER_ATTRS = ("_codecs", "_headerExtensions")


class InternalsChanged(RuntimeError):
    """The installed aiortc/aioice no longer has what this module relies on."""


def _require(obj: object, names: tuple[str, ...]) -> None:
    missing = [name for name in names if not hasattr(obj, name)]
    if missing:
        raise InternalsChanged(
            f"{type(obj).__name__} lacks {missing}: aiortc internals changed "
            f"(pinned {PINNED}); update hub/aiortc_internals.py"
        )


async def check_internals() -> None:
    """Verify the pinned versions and every private attribute this module touches."""
    for package, version in PINNED.items():
        installed = importlib.metadata.version(package)
        if installed != version:
            raise InternalsChanged(f"{package} {installed} installed, {version} pinned")
    if not callable(getattr(aioice.ice, "get_host_addresses", None)):
        raise InternalsChanged("aioice.ice.get_host_addresses is gone")
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        for kind in ("audio", "video"):
            transceiver = pc.addTransceiver(kind, direction="sendrecv")
            _require(transceiver, _TRANSCEIVER_ATTRS)
            _require(transceiver.receiver, _RECEIVER_ATTRS)
            _require(aiortc.rtcrtpreceiver.RemoteStreamTrack(kind), ("_queue",))
            _require(transceiver.sender, _SENDER_ATTRS)
            dtls = transceiver.sender.transport
            _require(dtls, _DTLS_ATTRS)
            _require(dtls._rtp_router, ("ssrc_table", "payload_type_table"))
            _require(dtls.transport, ("_connection",))
            _require(
                dtls.transport._connection,
                ("_nominated", "_queue", "_query_consent_task", "remote_password"),
            )
        # The receiver starts its decoder thread through the module's ``threading``,
        # with the decoder queue as the worker's second argument (_ReceiverThreading).
        words = inspect.getsource(aiortc.rtcrtpreceiver.RTCRtpReceiver.receive).split()
        target = "target=decoder_worker,"
        if (
            not hasattr(aiortc.rtcrtpreceiver, "threading")
            or target not in words
            or words[words.index(target) + 6] != "self.__decoder_queue,"
        ):
            raise InternalsChanged("aiortc's receiver starts its decoder thread differently")
        if not callable(getattr(aioice.ice.StunProtocol, "datagram_received", None)):
            raise InternalsChanged("aioice.ice.StunProtocol.datagram_received is gone")
        for method in ("query_consent", "check_incoming", "build_request", "close"):
            if not callable(getattr(aioice.ice.Connection, method, None)):
                raise InternalsChanged(f"aioice.ice.Connection.{method} is gone")
        if not isinstance(getattr(aioice.ice, "CONSENT_INTERVAL", None), int | float):
            raise InternalsChanged("aioice.ice.CONSENT_INTERVAL is gone")
        _check_udp_mux_internals(pc)
        _check_ice_restart_internals(pc)
        libsrtp_context_address(Session(policy=None))
        for function in (
            "srtp_protect",
            "srtp_protect_rtcp",
            "srtp_unprotect",
            "srtp_unprotect_rtcp",
        ):
            if not callable(getattr(_srtp_lib, function, None)):
                raise InternalsChanged(f"pylibsrtp no longer exposes libsrtp's {function}")
            # hub/_fastpath.c calls these functions through this very signature.
            signature = _srtp_ffi.getctype(_srtp_ffi.typeof(getattr(_srtp_lib, function)))
            if signature != _LIBSRTP_SIGNATURE:
                raise InternalsChanged(f"libsrtp's {function} is now {signature}")
        if not isinstance(CODECS.get("video"), list):
            raise InternalsChanged("aiortc.codecs.CODECS changed shape")
        if not any(c.mimeType.lower() == "audio/opus" for c in CODECS.get("audio", [])):
            raise InternalsChanged("aiortc.codecs.CODECS has no Opus to set FEC on")
        _require(JitterBuffer(16, 4, False), ("_capacity", "_prefetch", "_is_video"))
        _require(RTCCertificate, ("_create_ssl_context", "generateCertificate", "expires"))
        counter = aiortc.rate.RateCounter(10)
        for name in ("_window_size", "_origin_index", "_origin_ms", "_scale", "_total"):
            if not hasattr(counter, name):
                raise InternalsChanged(f"aiortc's RateCounter has no {name}")
        if 96 not in getattr(aiortc.rtp, "DYNAMIC_PAYLOAD_TYPES", ()):
            raise InternalsChanged("aiortc.rtp.DYNAMIC_PAYLOAD_TYPES is gone")
        _check_red_internals()
        _check_simulcast_internals(pc)
    finally:
        await pc.close()


# --- codecs -------------------------------------------------------------------


def install_h264_profiles() -> None:
    """Let aiortc negotiate H.264 Main, High and High 4:4:4 Predictive (idempotent).

    aiortc matches H.264 by profile only, so ``64001f`` also accepts an offer of
    ``640028``; the hub forwards the publisher's bitstream unchanged.
    """
    video = CODECS["video"]
    present = {str(c.parameters.get("profile-level-id", "")).lower() for c in video}
    used = {c.payloadType for kind in CODECS.values() for c in kind}
    for profile in EXTRA_H264_PROFILES:
        if profile in present:
            continue
        pt = next(p for p in range(96, 128) if p not in used and p + 1 not in used)
        used |= {pt, pt + 1}
        video += [
            RTCRtpCodecParameters(
                mimeType="video/H264",
                clockRate=90000,
                payloadType=pt,
                rtcpFeedback=[
                    RTCRtcpFeedback(type="nack"),
                    RTCRtcpFeedback(type="nack", parameter="pli"),
                    RTCRtcpFeedback(type="goog-remb"),
                ],
                parameters={
                    "level-asymmetry-allowed": "1",
                    "packetization-mode": "1",
                    "profile-level-id": profile,
                },
            ),
            RTCRtpCodecParameters(
                mimeType="video/rtx", clockRate=90000, payloadType=pt + 1, parameters={"apt": pt}
            ),
        ]


OPUS_PARAMETERS = {"minptime": 10, "useinbandfec": 1}
"""What the hub's offers and answers say of Opus (aiortc says nothing): in-band FEC,
so a publishing browser puts a copy of each packet's sound, coarser, in the next, and
a station that lost one plays the copy instead of concealing a gap."""


def install_opus_fec() -> None:
    """Negotiate Opus in-band FEC both ways: with publishers and with subscribers
    (idempotent)."""
    for codec in CODECS["audio"]:
        if codec.mimeType.lower() == "audio/opus":
            codec.parameters.update(OPUS_PARAMETERS)


def install_red() -> None:
    """Register ``red/48000/2`` (RFC 2198), its fmtp naming aiortc's Opus (idempotent).

    aiortc can neither send nor decode RED, so it is negotiated only on transceivers
    whose codec preferences name it (the hub's: :func:`hub.peers.audio_preferences`),
    never on aiortc's defaults (the Python client, load generators in this process).
    Where negotiated it comes first (a browser sends the first codec of an answer,
    RED then wrapping the Opus its fmtp names), and an answer's RED takes the fmtp
    of the offer's, if that names an Opus the answer accepts."""
    audio = CODECS["audio"]
    if not any(_is_red(c) for c in audio):
        opus = next(c for c in audio if c.mimeType.lower() == "audio/opus")
        if opus.payloadType is None:
            raise InternalsChanged("aiortc's Opus has no payload type")
        used = {c.payloadType for kind in CODECS.values() for c in kind}
        audio.append(
            RTCRtpCodecParameters(
                mimeType=red.MIME_TYPE,
                clockRate=opus.clockRate,
                channels=opus.channels,
                payloadType=next(p for p in range(96, 128) if p not in used),
                parameters={red.fmtp(opus.payloadType): None},
            )
        )
    aiortc.rtcpeerconnection.find_common_codecs = _find_common_codecs
    aiortc.rtcpeerconnection.filter_preferred_codecs = _filter_preferred_codecs


def _is_red(codec: RTCRtpCodecParameters | RTCRtpCodecCapability) -> bool:
    return codec.mimeType.lower() == red.MIME_TYPE


_original_find_common_codecs = aiortc.rtcpeerconnection.find_common_codecs
_original_filter_preferred_codecs = aiortc.rtcpeerconnection.filter_preferred_codecs


def _find_common_codecs(
    local_codecs: list[RTCRtpCodecParameters], remote_codecs: list[RTCRtpCodecParameters]
) -> list[RTCRtpCodecParameters]:
    """aiortc's, but an answer's RED takes the number and fmtp of the offer's, and
    only if that names an Opus the answer takes, of as many channels."""
    common = _original_find_common_codecs(local_codecs, remote_codecs)
    opus = {c.payloadType: c.channels for c in common if c.mimeType.lower() == "audio/opus"}
    kept: list[RTCRtpCodecParameters] = []
    for codec in common:
        if _is_red(codec):
            # aiortc would answer with its own fmtp, naming its own Opus number.
            offered = next((c for c in remote_codecs if _is_red(c)), None)
            names = red.redundant_payload_types(offered.parameters) if offered else None
            if (
                offered is None
                or not names
                or any(opus.get(pt, -1) != offered.channels for pt in names)
            ):
                continue
            codec.payloadType = offered.payloadType
            codec.parameters = dict(offered.parameters)
        kept.append(codec)
    return kept


def _filter_preferred_codecs(
    codecs: list[RTCRtpCodecParameters], preferred: list[RTCRtpCodecCapability]
) -> list[RTCRtpCodecParameters]:
    """aiortc's, but RED only where ``preferred`` names it, then first; matched by
    name alone (its fmtp names whichever Opus number the negotiation settled on)."""
    plain = _original_filter_preferred_codecs([c for c in codecs if not _is_red(c)], preferred)
    if not any(_is_red(p) for p in preferred):
        return plain
    return [c for c in codecs if _is_red(c)] + plain


def _check_red_internals() -> None:
    """What :func:`install_red` relies on: the two functions it wraps, called by
    ``setRemoteDescription`` and ``createOffer`` through the module's globals."""
    for name in ("find_common_codecs", "filter_preferred_codecs"):
        if not callable(getattr(aiortc.rtcpeerconnection, name, None)):
            raise InternalsChanged(f"aiortc.rtcpeerconnection.{name} is gone")
    words = inspect.getsource(aiortc.rtcpeerconnection.RTCPeerConnection).split()
    source = " ".join(words).replace("( ", "(").replace(" )", ")")
    for call in (
        "filter_preferred_codecs(CODECS[transceiver.kind][:], transceiver._preferred_codecs)",
        "find_common_codecs(CODECS[media.kind], media.rtp.codecs)",
    ):
        if call not in source:
            raise InternalsChanged(f"aiortc no longer negotiates codecs through {call}")


def accept_offered_payload_types() -> None:
    """Answer with the payload type the offer gave, 35-63 included (idempotent).

    aiortc keeps an offered number only within 96-127 and otherwise answers with its
    own, which the offerer reads as another codec. Chromium numbers its newer codecs
    (H.264 High 4:4:4 Predictive, AV1) from 35 to 63, which RFC 3551 leaves unassigned,
    once 96-127 are used up."""
    aiortc.rtp.DYNAMIC_PAYLOAD_TYPES = DYNAMIC_PAYLOAD_TYPES  # type: ignore[assignment]


# --- simulcast: negotiated in the SDP, routed by rid --------------------------

RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
REPAIRED_RID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
_SIMULCAST_EXTENSIONS = ((10, RID_URI), (11, REPAIRED_RID_URI))
"""Ids for the hub's own offers; an answer takes the offer's (aiortc: 1 mid, 3
abs-send-time)."""


def install_simulcast_extensions() -> None:
    """Negotiate the rid header extensions for video (idempotent): a simulcast sender
    names each layer's packets by them (its SSRCs are not in the SDP), and without
    them Chromium sends one layer. aiortc's parser reads them once negotiated."""
    video = HEADER_EXTENSIONS["video"]
    present = {e.uri for e in video}
    for ext_id, uri in _SIMULCAST_EXTENSIONS:
        if uri not in present:
            video.append(RTCRtpHeaderExtensionParameters(id=ext_id, uri=uri))


def _check_simulcast_internals(pc: RTCPeerConnection) -> None:
    """What :class:`ReceiverTap` with layers relies on."""
    if not isinstance(HEADER_EXTENSIONS.get("video"), list):
        raise InternalsChanged("aiortc.codecs.HEADER_EXTENSIONS changed shape")
    for name in ("rtp_stream_id", "repaired_rtp_stream_id", "mid"):
        if not hasattr(aiortc.rtp.HeaderExtensions(), name):
            raise InternalsChanged(f"aiortc's RTP parser no longer reads {name}")
    for transceiver in pc.getTransceivers():
        _require(transceiver.receiver, ("_handle_rtp_packet",))
        _require(transceiver.receiver.transport._rtp_router, ("mid_table", "route_rtp"))
    _require(NackGenerator(), ("add", "missing"))


def negotiated_codecs(transceiver: RTCRtpTransceiver) -> list[RTCRtpCodecParameters]:
    """The codecs the last negotiation settled on, in order (RTX included)."""
    return list(transceiver._codecs)


def negotiated_header_extensions(
    transceiver: RTCRtpTransceiver,
) -> list[RTCRtpHeaderExtensionParameters]:
    return list(transceiver._headerExtensions)


# --- ICE ----------------------------------------------------------------------

_original_host_addresses = aioice.ice.get_host_addresses


def restrict_host_addresses(addresses: list[str]) -> None:
    """Gather host candidates only on ``addresses`` (every interface when empty).

    aioice gathers on every interface except 127.0.0.1 and has no option for it; a
    hub on an intranet, and every test, must choose.
    """
    if not addresses:
        aioice.ice.get_host_addresses = _original_host_addresses
        return
    chosen = list(addresses)

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = host_addresses


class _Heard:
    """What an ICE connection has heard from its peer that only the peer could send:
    SRTP and SRTCP that authenticate, ICE checks that do, answers to the hub's own
    consent checks. A count, not a time: one increment per packet is the cheapest mark
    the receive path can leave."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    @classmethod
    def of(cls, connection: aioice.ice.Connection) -> _Heard:
        heard: _Heard | None = getattr(connection, "_hub_heard", None)
        if heard is None:
            heard = cls()
            setattr(connection, "_hub_heard", heard)  # noqa: B010
        return heard


_original_check_incoming = aioice.ice.Connection.check_incoming


def _check_incoming(
    self: aioice.ice.Connection,
    message: aioice.stun.Message,
    addr: tuple[str, int],
    protocol: aioice.ice.StunProtocol,
) -> None:
    # aioice calls this only for a check that authenticated (USERNAME, MESSAGE-INTEGRITY).
    _Heard.of(self).count += 1
    transport = getattr(protocol, "transport", None)
    if isinstance(transport, Endpoint):
        transport.learn(addr)  # the shared port's datagrams from addr are this peer's
    _original_check_incoming(self, message, addr, protocol)


def keep_consent_while_heard(silence_timeout: float) -> None:
    """Consent to send lasts while the peer is heard; the connection closes (its peer
    connection fails) after ``silence_timeout`` seconds of hearing nothing.

    aioice's consent freshness (RFC 7675) closes a connection whose peer leaves six
    consent checks in a row unanswered, ~30 s. ffmpeg's WHIP muxer answers none, so
    every ffmpeg ingest ended after half a minute. ICE-lite servers (mediasoup, Janus
    in ice-lite mode) rely on what the peer sends instead; so does the hub now: media and RTCP that
    authenticate (:class:`_Unprotector`), the peer's own ICE checks, and answers to
    the checks the hub still sends each interval, as before. A peer that went away
    sends none of them. The hub asks only a peer it has not heard since its last
    look. Installed for every connection made from now on."""
    interval = min(float(aioice.ice.CONSENT_INTERVAL), silence_timeout / 3)

    async def query_consent(self: aioice.ice.Connection) -> None:
        heard = _Heard.of(self)
        last_count, last_heard = heard.count, time.monotonic()
        while True:
            await asyncio.sleep(interval * (0.8 + 0.4 * random.random()))
            if heard.count != last_count:
                # Heard since the last look: no need to ask. Of ~380 connections at a
                # county lecture nearly all send media or RTCP; a check each is
                # ~76 STUN transactions a second for nothing.
                last_count, last_heard = heard.count, time.monotonic()
                continue
            # Read each time: an ICE restart changes the password.
            assert self.remote_password is not None  # connect() had it before starting this
            key = self.remote_password.encode("utf8")
            for pair in list(self._nominated.values()):
                check = self.build_request(pair, nominate=False)
                with contextlib.suppress(aioice.stun.TransactionError):
                    await pair.protocol.request(
                        check, pair.remote_addr, integrity_key=key, retransmissions=0
                    )
                    heard.count += 1
            now = time.monotonic()
            if heard.count != last_count:
                last_count, last_heard = heard.count, now
            elif now - last_heard >= silence_timeout:
                logger.info(
                    "ICE %s: nothing from the peer for %.0f s, closing",
                    self.local_username,
                    now - last_heard,
                )
                self._query_consent_task = None  # close() must not cancel this very task
                await self.close()
                return

    aioice.ice.Connection.query_consent = query_consent  # type: ignore[method-assign]
    aioice.ice.Connection.check_incoming = _check_incoming  # type: ignore[method-assign]


# --- ICE: one UDP port (HUB_UDP_PORT) ----------------------------------------

_UDP_MUX_CONNECTION_ATTRS = ("_local_username", "_local_candidates_start", "_protocols")


def _check_udp_mux_internals(pc: RTCPeerConnection) -> None:
    """What :func:`install_udp_mux` and :func:`use_udp_mux` rely on (``pc`` has
    transceivers)."""
    for connection in _ice_connections(pc):
        _require(connection, _UDP_MUX_CONNECTION_ATTRS)
    if not callable(getattr(aioice.ice.Connection, "get_component_candidates", None)):
        raise InternalsChanged("aioice.ice.Connection.get_component_candidates is gone")
    for function in ("candidate_foundation", "candidate_priority"):
        if not callable(getattr(aioice.candidate, function, None)):
            raise InternalsChanged(f"aioice.candidate.{function} is gone")
    if not callable(getattr(aioice.ice.StunProtocol, "connection_made", None)):
        raise InternalsChanged("aioice.ice.StunProtocol.connection_made is gone")


def host_addresses() -> list[str]:
    """The addresses host candidates are gathered on (see :func:`restrict_host_addresses`)."""
    addresses: list[str] = aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True)
    return addresses


def _ice_transports(pc: RTCPeerConnection) -> list[RTCIceTransport]:
    """``pc``'s ICE transports (one under max-bundle)."""
    transports = [t.receiver.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        transports.append(pc.sctp.transport)
    return list({id(dtls.transport): dtls.transport for dtls in transports}.values())


def _ice_connections(pc: RTCPeerConnection) -> list[aioice.ice.Connection]:
    """The aioice connections of ``pc``'s ICE transports."""
    return [transport._connection for transport in _ice_transports(pc)]


def use_udp_mux(pc: RTCPeerConnection, mux: UdpMux) -> None:
    """``pc`` gathers its host candidates on the mux's shared port, with a username
    fragment the mux makes unique among its connections, instead of on sockets of
    its own. Marked at its first ``setLocalDescription``, when its ICE transports
    exist and have not gathered: aiortc writes the local description's ICE
    parameters and candidates after gathering, so the new fragment is what the peer
    reads."""
    install_udp_mux()
    set_local = pc.setLocalDescription

    async def set_local_description(description: Any = None) -> None:
        for connection in _ice_connections(pc):
            if not connection._local_candidates_start and not hasattr(connection, "_hub_mux"):
                connection._local_username = mux.new_ufrag()
                setattr(connection, "_hub_mux", mux)  # noqa: B010
        await set_local(description)

    setattr(pc, "setLocalDescription", set_local_description)  # noqa: B010


_original_component_candidates = aioice.ice.Connection.get_component_candidates


async def _component_candidates(
    self: aioice.ice.Connection, component: int, addresses: list[str], timeout: int = 5
) -> list[aioice.candidate.Candidate]:
    mux: UdpMux | None = getattr(self, "_hub_mux", None)
    if mux is None:
        return await _original_component_candidates(self, component, addresses, timeout)
    candidates = []
    for mux_socket in mux.sockets:
        protocol = aioice.ice.StunProtocol(self)
        protocol.connection_made(mux_socket.attach(self.local_username, protocol))
        protocol.local_candidate = aioice.candidate.Candidate(
            foundation=aioice.candidate.candidate_foundation("host", "udp", mux_socket.host),
            component=component,
            transport="udp",
            priority=aioice.candidate.candidate_priority(component, "host"),
            host=mux_socket.host,
            port=mux.port,
            type="host",
        )
        self._protocols.append(protocol)
        candidates.append(protocol.local_candidate)
    # Relayed candidates as aioice gathers them (a socket of their own towards the
    # TURN server); no server-reflexive one: the hub announces its address.
    candidates += await _original_component_candidates(self, component, [], timeout)
    return candidates


def install_udp_mux() -> None:
    """Connections marked by :func:`use_udp_mux` gather on the shared port, and every
    ICE check that authenticates teaches its endpoint the sender's address (idempotent;
    other connections gather as before)."""
    aioice.ice.Connection.get_component_candidates = _component_candidates  # type: ignore[method-assign]
    aioice.ice.Connection.check_incoming = _check_incoming  # type: ignore[method-assign]


# --- ICE restart (RFC 8445 section 9) ----------------------------------------
#
# aiortc starts an ICE transport once and ignores new credentials in a later
# description. A restart here keeps the connection's sockets (or its endpoints on
# the shared port), its DTLS transport and SRTP sessions: only the credentials, the
# remote candidates and the check list are new, and media keeps using the pair
# nominated before until a new one is nominated.

_ICE_RESTART_CONNECTION_ATTRS = (
    "_local_username",
    "_local_password",
    "_protocols",
    "_check_list",
    "_check_list_done",
    "_check_list_state",
    "_nominated",
    "_nominating",
    "_remote_candidates",
    "_remote_candidates_end",
    "_closing",
)
_ICE_RESTART_CONNECTION_METHODS = (
    "_check_list_maybe_complete",
    "_check_periodic",
    "_unfreeze_initial",
    "sort_check_list",
    "add_remote_candidate",
)


def _check_ice_restart_internals(pc: RTCPeerConnection) -> None:
    """What :func:`renew_local_ice` and :func:`restart_ice_checks` rely on (``pc``
    has transceivers)."""
    for transport in _ice_transports(pc):
        _require(transport._connection, _ICE_RESTART_CONNECTION_ATTRS)
        _require(transport.iceGatherer, ("_remote_candidates_end",))
    for method in _ICE_RESTART_CONNECTION_METHODS:
        if not callable(getattr(aioice.ice.Connection, method, None)):
            raise InternalsChanged(f"aioice.ice.Connection.{method} is gone")
    if not callable(getattr(aioice.utils, "random_string", None)):
        raise InternalsChanged("aioice.utils.random_string is gone")
    if not isinstance(getattr(aioice.ice, "ICE_COMPLETED", None), int):
        raise InternalsChanged("aioice.ice.ICE_COMPLETED is gone")
    if not callable(getattr(aiortc.rtcicetransport, "candidate_to_aioice", None)):
        raise InternalsChanged("aiortc.rtcicetransport.candidate_to_aioice is gone")


def _restartable(connection: aioice.ice.Connection) -> None:
    if connection._closing or not connection._nominated:
        raise ValueError("ICE restart of a connection that is not connected")


def remote_ice_changed(pc: RTCPeerConnection, parameters: RTCIceParameters) -> bool:
    """Whether a remote description with these ICE parameters restarts ICE (RFC 8839
    section 4.4.1.1.1: new credentials); ValueError when ``pc`` cannot restart (it has
    not connected, or has closed)."""
    changed = False
    for connection in _ice_connections(pc):
        if connection.remote_username not in (None, parameters.usernameFragment):
            _restartable(connection)
            changed = True
    return changed


def renew_local_ice(pc: RTCPeerConnection) -> None:
    """New local ICE credentials for ``pc``, which its next local description carries.
    On the shared port the new username fragment maps to the connection's endpoints
    and the old one to nobody: requests naming it are dropped from now on."""
    for connection in _ice_connections(pc):
        _restartable(connection)
        mux: UdpMux | None = getattr(connection, "_hub_mux", None)
        ufrag = mux.new_ufrag() if mux is not None else aioice.utils.random_string(4)
        connection._local_username = ufrag
        connection._local_password = aioice.utils.random_string(22)
        for protocol in connection._protocols:
            transport = getattr(protocol, "transport", None)
            if isinstance(transport, Endpoint):
                transport.rename(ufrag)


async def restart_ice_checks(
    pc: RTCPeerConnection,
    parameters: RTCIceParameters,
    candidates: list[RTCIceCandidate],
    complete: bool,
) -> None:
    """Check again against the peer's new credentials and ``candidates`` (``complete``:
    there are no more), after :func:`renew_local_ice`. Returns once checks have
    started; a new pair is nominated in the background, and media moves to it then."""
    install_ice_restart()
    for transport in _ice_transports(pc):
        connection = transport._connection
        _restartable(connection)
        running: asyncio.Task[None] | None = getattr(connection, "_hub_recheck", None)
        if running is not None:
            running.cancel()
        for pair in connection._check_list:
            if pair.task is not None:
                pair.task.cancel()
        setattr(connection, "_hub_previous", dict(connection._nominated))  # noqa: B010
        connection._check_list = []
        connection._check_list_done = False
        connection._check_list_state = asyncio.Queue()
        connection._nominating = set()
        connection._remote_candidates = []
        connection._remote_candidates_end = False
        transport.iceGatherer._remote_candidates_end = complete
        connection.remote_username = parameters.usernameFragment
        connection.remote_password = parameters.password
        connection.remote_is_lite = parameters.iceLite
        for candidate in candidates:
            await connection.add_remote_candidate(candidate_to_aioice(candidate))
        if complete:
            await connection.add_remote_candidate(None)
        task = asyncio.create_task(_recheck(connection), name="ice-restart")
        setattr(connection, "_hub_recheck", task)  # noqa: B010


async def _recheck(connection: aioice.ice.Connection) -> None:
    """What ``Connection.connect`` does after gathering, on a connection already
    connected: check, nominate, wait for the outcome. Ends when the connection closes."""
    connection.sort_check_list()
    connection._unfreeze_initial()
    while True:  # paced as aioice paces its checks (RFC 8445's Ta, 20 ms)
        if not connection._check_periodic():
            break
        await asyncio.sleep(0.02)
    completed = await connection._check_list_state.get() == aioice.ice.ICE_COMPLETED
    for pair in connection._check_list:
        if pair.task is not None:
            pair.task.cancel()
    setattr(connection, "_hub_previous", None)  # noqa: B010
    if completed:
        logger.info("ICE %s: restarted", connection.local_username)
    else:
        # The pair nominated before carries on while it can; consent ends it if not.
        logger.info("ICE %s: restart failed", connection.local_username)


def ice_usernames(pc: RTCPeerConnection) -> list[tuple[str, str | None]]:
    """The local and remote ICE username fragments each ICE connection of ``pc``
    checks with now."""
    return [(c.local_username, c.remote_username) for c in _ice_connections(pc)]


def ice_restarting(pc: RTCPeerConnection) -> bool:
    """Whether an ICE restart of ``pc`` has yet to nominate a pair (media goes on on
    the pair nominated before)."""
    return any(getattr(c, "_hub_previous", None) for c in _ice_connections(pc))


_original_check_list_maybe_complete = aioice.ice.Connection._check_list_maybe_complete


def _check_list_maybe_complete(self: aioice.ice.Connection) -> bool:
    # While a restart runs, a pair nominated before it does not complete the new
    # check list: only a pair of the new checks does.
    previous: dict[int, Any] | None = getattr(self, "_hub_previous", None)
    if previous and any(self._nominated.get(c) is p for c, p in previous.items()):
        return False
    return _original_check_list_maybe_complete(self)


def install_ice_restart() -> None:
    """Connections tell a restart's check list from the one before (idempotent)."""
    aioice.ice.Connection._check_list_maybe_complete = _check_list_maybe_complete  # type: ignore[method-assign]


# --- SRTP ---------------------------------------------------------------------


class _Unprotector:
    """Stands where a DTLS transport keeps its receiving SRTP session: pylibsrtp's
    ``unprotect`` allocates and checks on every call, and raises ``ValueError`` for a
    datagram over 1,500 bytes, which ends the transport's receive loop: one
    oversized datagram from anywhere would cut a publisher off. Here libsrtp is
    called through the fast path, and every refusal is the ``pylibsrtp.Error``
    aiortc catches and drops."""

    __slots__ = ("_ctx", "_heard", "_session")

    def __init__(self, session: Session, heard: _Heard) -> None:
        self._session = session  # owns the libsrtp context
        self._ctx = libsrtp_context_address(session)
        self._heard = heard

    def unprotect(self, data: bytes) -> bytes:
        return self._plain(data, fastpath.unprotect(self._ctx, data))

    def unprotect_rtcp(self, data: bytes) -> bytes:
        return self._plain(data, fastpath.unprotect_rtcp(self._ctx, data))

    def _plain(self, data: bytes, plain: bytes | None) -> bytes:
        if plain is None:
            raise pylibsrtp.Error(f"SRTP packet of {len(data)} bytes refused")
        self._heard.count += 1  # it authenticated: only the peer could have sent it
        return plain


_original_setup_srtp = RTCDtlsTransport._setup_srtp


def _setup_srtp(self: RTCDtlsTransport) -> None:
    _original_setup_srtp(self)
    heard = _Heard.of(self.transport._connection)
    self._rx_srtp = _Unprotector(self._rx_srtp, heard)  # type: ignore[assignment]


def install_srtp_receiver() -> None:
    """Every DTLS transport made from now on unprotects through :class:`_Unprotector`
    (idempotent; the hub and its clients install it with their first connection)."""
    RTCDtlsTransport._setup_srtp = _setup_srtp  # type: ignore[method-assign]


# --- DTLS: one certificate for the process ---------------------------------------

_CERTIFICATE_MARGIN = datetime.timedelta(days=1)
"""A certificate this close to its end (aiortc makes them for 30 days) is replaced."""
_original_generate_certificate = RTCCertificate.generateCertificate.__func__  # type: ignore[attr-defined]
_original_create_ssl_context = RTCCertificate._create_ssl_context
_shared: list[RTCCertificate] = []
_contexts: dict[tuple[int, tuple[bytes, ...]], SSL.Context] = {}


def _shared_certificate(cls: type[RTCCertificate]) -> RTCCertificate:
    now = datetime.datetime.now(datetime.UTC)
    if not _shared or _shared[0].expires - now < _CERTIFICATE_MARGIN:
        _shared[:] = [_original_generate_certificate(cls)]
        _contexts.clear()
    return _shared[0]


def _shared_ssl_context(
    self: RTCCertificate, srtp_profiles: list[SRTPProtectionProfile]
) -> SSL.Context:
    key = (id(self), tuple(p.openssl_profile for p in srtp_profiles))
    context = _contexts.get(key) if self in _shared else None
    if context is None:
        context = _original_create_ssl_context(self, srtp_profiles)
        if self in _shared:
            _contexts[key] = context
    return context


def install_shared_certificate() -> None:
    """Every connection of this process presents one DTLS certificate, set up once
    (idempotent), as Janus and mediasoup do: aiortc made an EC key pair and a
    certificate per connection and an SSL context per handshake, a few percent of
    the hub in a join storm. The fingerprint in each SDP still authenticates it."""
    RTCCertificate.generateCertificate = classmethod(_shared_certificate)  # type: ignore[assignment]
    RTCCertificate._create_ssl_context = _shared_ssl_context  # type: ignore[method-assign]


# --- receiving: a cheaper receive-side rate counter -----------------------------


def _rate_counter_reset(self: aiortc.rate.RateCounter) -> None:
    # Two flat lists instead of a thousand bucket objects: aiortc builds one per
    # video receiver, the hub's send-only slots included, ~1.5 ms each on this
    # machine: a tenth of the hub during a county's join storm.
    self._counts = [0] * self._window_size  # type: ignore[attr-defined]
    self._values = [0] * self._window_size  # type: ignore[attr-defined]
    self._origin_index = 0
    self._origin_ms = None
    self._total = aiortc.rate.RateBucket()


def _rate_counter_add(self: aiortc.rate.RateCounter, value: int, now_ms: int) -> None:
    if self._origin_ms is None:
        self._origin_ms = now_ms
    else:
        self._erase_old(now_ms)
    index = (self._origin_index + now_ms - self._origin_ms) % self._window_size
    self._counts[index] += 1  # type: ignore[attr-defined]
    self._values[index] += value  # type: ignore[attr-defined]
    self._total.count += 1
    self._total.value += value


def _rate_counter_erase_old(self: aiortc.rate.RateCounter, now_ms: int) -> None:
    assert self._origin_ms is not None
    counts: list[int] = self._counts  # type: ignore[attr-defined]
    values: list[int] = self._values  # type: ignore[attr-defined]
    new_origin_ms = now_ms - self._window_size + 1
    while self._origin_ms < new_origin_ms:
        index = self._origin_index
        self._total.count -= counts[index]
        self._total.value -= values[index]
        counts[index] = values[index] = 0
        self._origin_index = (index + 1) % self._window_size
        self._origin_ms += 1


def install_flat_rate_counter() -> None:
    """aiortc's ``RateCounter`` (receive-side bandwidth estimate), same figures, in
    two flat lists (idempotent)."""
    counter = aiortc.rate.RateCounter
    counter.reset = _rate_counter_reset  # type: ignore[method-assign]
    counter.add = _rate_counter_add  # type: ignore[method-assign]
    counter._erase_old = _rate_counter_erase_old  # type: ignore[method-assign]


# --- receiving: taps that keep frames away from the decoder ---------------------


class _PacketTap:
    """Stands where the receiver keeps its NACK generator: sees each media packet
    after RTX unwrapping, forwards it, then lets the real generator (video) work."""

    __slots__ = ("_nack", "missing", "on_rtp")

    def __init__(self, nack: Any, on_rtp: Callable[[RtpPacket], None]) -> None:
        self._nack = nack
        self.on_rtp = on_rtp
        self.missing: set[int] = nack.missing if nack is not None else set()

    def add(self, packet: RtpPacket) -> bool:
        self.on_rtp(packet)
        if self._nack is None:
            return False
        lost: bool = self._nack.add(packet)
        self.missing = self._nack.missing
        return lost


FrameCallback = Callable[[str, bytes, int], None]
"""Called with (codec name, depayloaded frame, unwrapped RTP timestamp)."""


class _FrameTap:
    """Stands where the receiver keeps its decoder queue: complete encoded frames
    go to ``on_frame`` (or nowhere). No decoder thread serves it
    (:class:`_ReceiverThreading`): the stop sentinel ends the track as that thread
    would have."""

    __slots__ = ("_decoder_queue", "_track_queue", "on_frame")

    def __init__(
        self,
        decoder_queue: queue.Queue[Any],
        track_queue: asyncio.Queue[Any],
        on_frame: FrameCallback | None,
    ) -> None:
        self._decoder_queue = decoder_queue
        self._track_queue = track_queue
        self.on_frame = on_frame

    def put(self, item: Any) -> None:
        if item is None:
            # The receiver stops (on the event loop): its track ends. A decoder thread
            # started before the tap (none here, but aiortc joins it) ends as well.
            self._decoder_queue.put(None)
            self._track_queue.put_nowait(None)
            return
        if self.on_frame is not None:
            codec, frame = item
            self.on_frame(codec.name, frame.data, frame.timestamp)


class _NoThread:
    """The decoder thread a tapped receiver does not get."""

    def start(self) -> None:
        pass

    def join(self, timeout: float | None = None) -> None:
        pass


class _ReceiverThreading:
    """What ``aiortc.rtcrtpreceiver`` sees as its ``threading`` module. aiortc starts a
    decoder thread for every receiver, which waits forever when the hub never decodes:
    two idle threads per station (388 at 190 stations), each with its stack. A
    receiver whose decoder queue is a :class:`_FrameTap` gets none."""

    def __getattr__(self, name: str) -> Any:
        return getattr(threading, name)

    @staticmethod
    def Thread(*args: Any, **kwargs: Any) -> threading.Thread | _NoThread:
        target_args = kwargs.get("args", ())
        if len(target_args) > 1 and isinstance(target_args[1], _FrameTap):
            return _NoThread()
        return threading.Thread(*args, **kwargs)


def _install_receiver_threading() -> None:
    """Idempotent: tapped receivers start no decoder thread from now on."""
    aiortc.rtcrtpreceiver.threading = _ReceiverThreading()  # type: ignore[assignment,attr-defined]


class _JitterTap:
    """Stands where the receiver keeps its jitter buffer: frames are assembled only
    while someone wants them (a recorder, live HLS). Forwarding needs packets only;
    frames assembled for nobody are work thrown away (a few percent of receiving).

    An Opus packet is a whole frame: audio skips aiortc's buffer, which holds 16
    packets, waits on a lost one until it overflows and then drops all it holds (on
    a loaded hub, live HLS lost seconds of each voice that way). A packet older than
    the last one passed is dropped: the receiver would take it for a timestamp wrap."""

    __slots__ = ("_audio", "_buffer", "_last", "wanted")

    def __init__(self, buffer: JitterBuffer, wanted: bool, *, audio: bool) -> None:
        self._buffer = buffer
        self._audio = audio
        self._last: int | None = None
        """The sequence number of the last audio packet passed."""
        self.wanted = wanted

    def add(self, packet: RtpPacket) -> tuple[bool, Any]:
        if not self.wanted:
            return False, None
        if self._audio:
            seq = packet.sequence_number
            if self._last is not None and not 0 < (seq - self._last) & 0xFFFF < 0x8000:
                return False, None
            self._last = seq
            return False, JitterFrame(packet._data, packet.timestamp)  # type: ignore[attr-defined]
        return self._buffer.add(packet)

    def want(self, wanted: bool) -> None:
        if wanted and not self.wanted:
            # What was buffered before the gap can never complete a frame.
            self.restart()
        self.wanted = wanted

    def restart(self) -> None:
        """An empty buffer (the packets to come are of another stream), not a copy
        kept of the first: copying 512 slots for every receiver was 4 % of the hub in
        a join storm."""
        old = self._buffer
        self._buffer = JitterBuffer(old._capacity, old._prefetch, old._is_video)


def drop_received(pc: RTCPeerConnection, lost: Callable[[bytes], bool]) -> None:
    """Make a client's link lossy, for tests of weak links: each RTP packet ``pc``
    receives for which ``lost(packet)`` is true (given the plain packet) is dropped
    as if the network had lost it; its receiver sees the gap and NACKs it."""
    _drop([t.receiver.transport for t in pc.getTransceivers()], "_handle_rtp_data", lost)


def drop_sent(pc: RTCPeerConnection, lost: Callable[[bytes], bool]) -> None:
    """Make a client's uplink lossy, for tests of weak links: each RTP or RTCP packet
    ``pc`` sends for which ``lost(packet)`` is true (given the plain packet) is not
    sent, as if the network had lost it."""
    _drop([t.sender.transport for t in pc.getTransceivers()], "_send_rtp", lost)


def _drop(transports: list[RTCDtlsTransport], method: str, lost: Callable[[bytes], bool]) -> None:
    """Wrap a packet method (plain packet first) of each transport, once each."""
    for dtls in {id(t): t for t in transports}.values():
        original: Callable[..., Awaitable[None]] = getattr(dtls, method)

        async def lossy(
            data: bytes,
            *args: Any,
            original: Callable[..., Awaitable[None]] = original,
            **kwargs: Any,
        ) -> None:
            if not lost(data):
                await original(data, *args, **kwargs)

        setattr(dtls, method, lossy)


def report_downstream_loss(receiver: RTCRtpReceiver, loss: Callable[[], float]) -> None:
    """The receiver reports the hub sends the publisher tell the worst of its own loss
    and ``loss()`` (its subscribers', 0-1). A publishing browser's Opus encoder puts
    in-band FEC in its packets in proportion to the loss it is told of: told only of
    its own clean uplink, it would send none for stations on lossy links."""
    _require(receiver, ("_send_rtcp",))
    send = receiver._send_rtcp

    async def send_rtcp(packet: Any) -> None:
        if isinstance(packet, RtcpRrPacket):
            worst = min(255, int(loss() * 256))
            for report in packet.reports:
                report.fraction_lost = max(report.fraction_lost, worst)
        await send(packet)

    setattr(receiver, "_send_rtcp", send_rtcp)  # noqa: B010


class ReceiverTap:
    """Installed on one RTCRtpReceiver before it starts receiving."""

    def __init__(
        self,
        receiver: RTCRtpReceiver,
        on_rtp: Callable[[RtpPacket], None],
        on_frame: FrameCallback | None = None,
        *,
        bypass: bool = False,
        spawn: Callable[[Coroutine[Any, Any, None]], object] | None = None,
        layers: Sequence[tuple[str, Callable[[RtpPacket], None]]] = (),
        sink: SinkSwitch | None = None,
    ) -> None:
        """With ``bypass`` every packet goes straight to ``on_rtp`` and nothing else:
        no statistics, no RTCP reports, no NACKs, no RTX unwrapping, no frames. For
        load generators, whose own losses must not turn into retransmissions.

        With ``spawn`` (which runs a coroutine as a task someone owns) the receiver's
        media takes the direct path (:class:`_DirectReceive`), and its NACKs are sent
        through ``spawn``.

        With ``layers`` (simulcast: each rid and what takes its packets, lowest first;
        needs ``spawn``) the receiver's packets, on either path, go to the layer their
        rid names (:meth:`_on_layer_packet`), not to ``on_rtp``; frames are those of
        the layer ``sink`` chooses (the top while it flows)."""
        _require(receiver, _RECEIVER_ATTRS)
        if bypass:

            async def handle(packet: RtpPacket, arrival_time_ms: int) -> None:
                on_rtp(packet)

            setattr(receiver, "_handle_rtp_packet", handle)  # noqa: B010
        self._receiver = receiver
        nack, decoder_queue = _RECEIVER_ATTRS[0], _RECEIVER_ATTRS[1]
        jitter = _RECEIVER_ATTRS[6]
        self._packets = _PacketTap(getattr(receiver, nack), on_rtp)
        _install_receiver_threading()
        self._frames = _FrameTap(
            getattr(receiver, decoder_queue),
            receiver.track._queue,  # type: ignore[attr-defined]
            on_frame,
        )
        self._jitter = _JitterTap(
            getattr(receiver, jitter), on_frame is not None, audio=receiver.track.kind == "audio"
        )
        setattr(receiver, nack, self._packets)
        setattr(receiver, decoder_queue, self._frames)
        setattr(receiver, jitter, self._jitter)
        self.packets_direct = 0
        """Packets that took the direct path (the rest took aiortc's)."""
        if spawn is not None:
            self._spawn = spawn
            self._codecs: dict[int, RTCRtpCodecParameters] = getattr(receiver, _RECEIVER_ATTRS[8])
            self._streams: dict[int, StreamStatistics] = getattr(receiver, _RECEIVER_ATTRS[9])
            self._active: dict[int, Any] = getattr(receiver, _RECEIVER_ATTRS[10])
            direct = _DirectReceive.of(receiver.transport)
            direct.taps[receiver] = self
            if layers:
                assert sink is not None, "layers need a sink switch"
                self._sink = sink
                self._init_layers(layers)
                direct.spawn = spawn
        self.layered = bool(layers)

    def _init_layers(self, layers: Sequence[tuple[str, Callable[[RtpPacket], None]]]) -> None:
        """aiortc's receiver keeps one stream's state (NACKs, RTX, frames), which
        layers would mix: each layer gets its own here, and the receiver's packet
        handler is replaced so that aiortc's path also ends in :meth:`_on_layer_packet`."""
        self._rids = {rid: index for index, (rid, _) in enumerate(layers)}
        self._layer_rtp = [on_rtp for _, on_rtp in layers]
        self._layer_nacks = [NackGenerator() for _ in layers]
        self._layer_ssrcs: list[int | None] = [None] * len(layers)
        """Each layer's media SSRC, once its first packet named it."""
        self._layer_of: dict[int, int] = {}
        """SSRC (media or RTX) → layer: Chromium names them only in the first packets."""

        async def handle(packet: RtpPacket, arrival_time_ms: int) -> None:
            self._on_layer_packet(packet)

        setattr(self._receiver, "_handle_rtp_packet", handle)  # noqa: B010

    def _on_layer_packet(self, packet: RtpPacket) -> None:
        """A simulcast packet, plain: to its layer, RTX unwrapped (RFC 4588, the
        layer named by repaired-rtp-stream-id), with its layer's NACKs, and the
        receiver's statistics (one receiver report per SSRC)."""
        receiver = self._receiver
        codec = self._codecs.get(packet.payload_type)
        if codec is None or not receiver._enabled:
            return
        ssrc = packet.ssrc
        index = self._layer_of.get(ssrc)
        if index is None:
            extensions = packet.extensions
            rid = extensions.rtp_stream_id or extensions.repaired_rtp_stream_id
            index = self._rids.get(rid) if rid is not None else None
            if index is None:
                return  # a stream not (yet) named: nothing to put it in
            self._layer_of[ssrc] = index
        self._active[ssrc] = clock.current_datetime()
        stream = self._streams.get(ssrc)
        if stream is None:
            stream = self._streams[ssrc] = StreamStatistics(codec.clockRate)
        stream.add(packet)
        repair = is_rtx(codec)
        if repair:
            media_ssrc = self._layer_ssrcs[index]
            apt = codec.parameters.get("apt")
            if media_ssrc is None or len(packet.payload) < 2 or not isinstance(apt, int):
                return  # padding (bandwidth probes), or a repair of nothing seen
            codec = self._codecs.get(apt, codec)
            packet = unwrap_rtx(packet, payload_type=apt, ssrc=media_ssrc)
        else:
            self._layer_ssrcs[index] = ssrc
        self._layer_rtp[index](packet)
        nack = self._layer_nacks[index]
        if nack.add(packet):
            self._spawn(receiver._send_rtcp_nack(packet.ssrc, sorted(nack.missing)))
        if self._jitter.wanted:
            sink = self._sink
            starts = not repair and keyframe_start(codec.name, packet.payload)
            if not repair and sink.note(index, starts, time.monotonic()):
                self._jitter.restart()  # the sinks move to this layer, from this keyframe
            if index == sink.index:
                self._assemble(codec, packet)

    def _assemble(self, codec: RTCRtpCodecParameters, packet: RtpPacket) -> None:
        """Frames of the sinks' layer, as aiortc's path makes them."""
        on_frame = self._frames.on_frame
        if on_frame is None:
            return
        try:
            packet._data = depayload(codec, packet.payload) if packet.payload else b""  # type: ignore[attr-defined]
        except ValueError:
            return
        _, frame = self._jitter.add(packet)
        if frame is not None:
            on_frame(codec.name, frame.data, self._sink.clock(frame.timestamp, time.monotonic()))

    def receive(self, data: bytes, dtls: RTCDtlsTransport) -> bool:
        """One SRTP datagram routed to this receiver, still encrypted. Does what
        aiortc's receive path would, short of depayloading and assembling frames, and
        returns True; or returns False, having done nothing, when aiortc must."""
        receiver = self._receiver
        if self.layered:
            packet = self._open(data, dtls)
            if packet is not None:
                self._on_layer_packet(packet)
            return True
        payload_type = data[1] & 0x7F
        codec = self._codecs.get(payload_type)
        if (
            codec is None
            or is_rtx(codec)  # aiortc unwraps retransmissions
            or self._jitter.wanted  # frames for a recorder or live HLS
            or not receiver._enabled
            or getattr(receiver, _RECEIVER_ATTRS[3]) is not None  # its own REMB estimate
            or receiver not in dtls._rtp_router.payload_type_table.get(payload_type, ())
        ):
            return False
        packet = self._open(data, dtls)
        if packet is None:
            return True  # refused or malformed: aiortc drops it too
        ssrc = packet.ssrc
        self._active[ssrc] = clock.current_datetime()
        stream = self._streams.get(ssrc)
        if stream is None:
            stream = self._streams[ssrc] = StreamStatistics(codec.clockRate)
        stream.add(packet)  # what the receiver reports are made of
        if self._packets.add(packet):
            self._spawn(receiver._send_rtcp_nack(ssrc, sorted(self._packets.missing)))
        return True

    def _open(self, data: bytes, dtls: RTCDtlsTransport) -> RtpPacket | None:
        """Unprotect and parse one SRTP datagram, counted as aiortc would; None when
        refused or malformed."""
        packet = _open_rtp(data, dtls)
        if packet is not None:
            self.packets_direct += 1
        return packet

    def announce_bandwidth(self) -> None:
        """Stop aiortc's own receive-side estimate: it ramps a browser up over tens of
        seconds. The hub announces a fixed ceiling instead (:meth:`send_remb`), as
        Janus does; the browser's loss-based control still backs off on loss."""
        setattr(self._receiver, _RECEIVER_ATTRS[3], None)

    async def send_remb(self, bitrate: int, media_ssrcs: list[int]) -> None:
        """Send a REMB announcing ``bitrate`` bits/s for ``media_ssrcs`` together
        (a simulcast sender shares it among its layers)."""
        rtcp_ssrc = getattr(self._receiver, _RECEIVER_ATTRS[4])
        if rtcp_ssrc is None:
            return
        packet = RtcpPsfbPacket(
            fmt=RTCP_PSFB_APP,
            ssrc=rtcp_ssrc,
            media_ssrc=0,
            fci=pack_remb_fci(bitrate, media_ssrcs),
        )
        await self._receiver._send_rtcp(packet)

    def set_frame_callback(self, on_frame: FrameCallback | None) -> None:
        self._frames.on_frame = on_frame
        self._jitter.want(on_frame is not None)

    async def request_keyframe(self, media_ssrc: int) -> None:
        """Send a PLI to the publisher for ``media_ssrc``."""
        await self._receiver._send_rtcp_pli(media_ssrc)


def _open_rtp(data: bytes, dtls: RTCDtlsTransport) -> RtpPacket | None:
    try:
        plain = dtls._rx_srtp.unprotect(data)
        packet = RtpPacket.parse(plain, dtls._rtp_header_extensions_map)
    except (pylibsrtp.Error, ValueError):
        return None
    dtls._RTCDtlsTransport__rx_bytes += len(data)  # type: ignore[attr-defined]
    dtls._RTCDtlsTransport__rx_packets += 1  # type: ignore[attr-defined]
    return packet


class DatagramCounter:
    """For load generators only: a receiver's media datagrams go to ``on_datagram``
    still encrypted, and nowhere else. SRTP leaves the RTP header in the clear
    (sequence, timestamp, marker, SSRC), which is all a counting station needs; not
    decrypting, parsing or queueing each packet keeps hundreds of stations on one
    machine. Nothing is reported back (no RTCP receiver reports, no NACKs)."""

    __slots__ = ("on_datagram",)

    def __init__(self, receiver: RTCRtpReceiver, on_datagram: Callable[[bytes], None]) -> None:
        self.on_datagram = on_datagram
        _DirectReceive.of(receiver.transport).taps[receiver] = self

    def receive(self, data: bytes, dtls: RTCDtlsTransport) -> bool:
        self.on_datagram(data)
        return True


class _DirectReceive:
    """The hub's receive path for one DTLS transport's media: each SRTP datagram goes
    from aioice's datagram callback through its receiver's tap to the fan-out in one
    call. aiortc's own path queues it, wakes a task, runs a chain of coroutines and
    depayloads every packet: a fifth of a publisher-only hub's CPU (bench/README.md).
    Whatever a tap declines (RTX, frames wanted, unknown SSRC) takes aiortc's path,
    still encrypted, as do DTLS, STUN and RTCP."""

    __slots__ = ("_dtls", "_queue", "spawn", "taps")

    def __init__(self, dtls: RTCDtlsTransport) -> None:
        self._dtls = dtls
        connection = dtls.transport._connection
        self._queue: asyncio.Queue[Any] = connection._queue
        self.taps: dict[object, ReceiverTap | DatagramCounter] = {}
        self.spawn: Callable[[Coroutine[Any, Any, None]], object] | None = None
        """Set once some tap takes layers: SSRCs the SDP did not name are then routed
        by mid here, and a packet for a receiver without layers goes on to aiortc's
        handler as a task of this owner."""

    @classmethod
    def of(cls, dtls: RTCDtlsTransport) -> _DirectReceive:
        """The transport's direct path, made on first use."""
        connection = dtls.transport._connection
        direct: _DirectReceive | None = getattr(connection, "_hub_direct", None)
        if direct is None:
            install_datagram_path()
            direct = cls(dtls)
            setattr(connection, "_hub_direct", direct)  # noqa: B010
        return direct

    def __call__(self, data: bytes) -> bool:
        if (
            len(data) < 12
            or not 127 < data[0] < 192  # RTP version 2: not STUN, not DTLS
            or is_rtcp(data)
            or self._queue.qsize()  # earlier datagrams first
            or self._dtls._state is not State.CONNECTED
        ):
            return False
        receiver = self._dtls._rtp_router.ssrc_table.get(int.from_bytes(data[8:12], "big"))
        if receiver is None and self.spawn is not None:
            self._route_new_ssrc(data, self.spawn)
            return True
        tap = self.taps.get(receiver) if receiver is not None else None
        return tap is not None and tap.receive(data, self._dtls)

    def _route_new_ssrc(
        self, data: bytes, spawn: Callable[[Coroutine[Any, Any, None]], object]
    ) -> None:
        """A stream the SDP did not name: aiortc would route it by payload type alone,
        which fails once two m-lines share one (camera and screen share). Its mid
        header extension names the receiver; the SSRC is learnt for the next packets."""
        dtls = self._dtls
        packet = _open_rtp(data, dtls)
        if packet is None:
            return
        router = dtls._rtp_router
        mid = packet.extensions.mid
        receiver = router.mid_table.get(mid) if mid is not None else None
        if receiver is None:
            receiver = router.route_rtp(packet)
        if receiver is None:
            return
        router.ssrc_table[packet.ssrc] = receiver
        tap = self.taps.get(receiver)
        if isinstance(tap, ReceiverTap) and tap.layered:
            tap.packets_direct += 1
            tap._on_layer_packet(packet)
        else:
            spawn(receiver._handle_rtp_packet(packet, arrival_time_ms=clock.current_ms()))


_original_datagram_received = aioice.ice.StunProtocol.datagram_received


def _datagram_received(
    self: aioice.ice.StunProtocol, data: bytes | str, addr: tuple[Any, ...]
) -> None:
    direct: _DirectReceive | None = getattr(self.receiver, "_hub_direct", None)
    if direct is None or not isinstance(data, bytes) or not direct(data):
        try:
            _original_datagram_received(self, data, addr)
        except struct.error:
            # aioice 0.13 drops a STUN message it cannot parse (ValueError), except one
            # whose attribute is too short for its type: struct.error, which reached the
            # event loop's exception handler. Anyone can send one: drop it the same way.
            pass


def install_datagram_path() -> None:
    """Every ICE socket's datagrams go through :func:`_datagram_received` (idempotent):
    the direct receive path of publishers' media, and malformed STUN dropped."""
    aioice.ice.StunProtocol.datagram_received = _datagram_received  # type: ignore[method-assign]


# --- publishing: pace a sender's packets ---------------------------------------

PACING_FACTOR = 2.5
"""libwebrtc paces at this multiple of the encoder's target bitrate."""


class RtpPacer:
    """Spreads the RTP packets of the ``paced`` senders over time, at ``rate_bps``.

    aiortc sends a frame's packets back to back, so a keyframe (tens of kilobytes)
    leaves as one burst, which a weak link's router queue drops; browsers pace them
    (libwebrtc's pacer). The pacer stands in the DTLS transport's ``_send_rtp``, which
    every sender of a bundle awaits once per packet, so a paced sender waits its turn.
    Other senders (audio), retransmissions and RTCP pass straight through, and every
    RTP packet is shown to ``on_send`` (serialized, before SRTP) as it leaves.
    """

    def __init__(
        self,
        dtls: RTCDtlsTransport,
        paced: list[RTCRtpSender],
        rate_bps: float | None,
        on_send: Callable[[bytes], None] | None = None,
    ) -> None:
        for sender in paced:
            _require(sender, ("_ssrc",))
        self._send: Callable[[bytes], Awaitable[None]] = dtls._send_rtp
        self._paced = {int(sender._ssrc) for sender in paced} if rate_bps else set()
        self._seconds_per_byte = 8 / rate_bps if rate_bps else 0.0
        self._next = 0.0
        self._on_send = on_send
        setattr(dtls, "_send_rtp", self._send_rtp)  # noqa: B010

    async def _send_rtp(self, data: bytes) -> None:
        rtp = len(data) >= 12 and not 192 <= data[1] <= 223
        if rtp and int.from_bytes(data[8:12], "big") in self._paced:
            loop = asyncio.get_running_loop()
            now = loop.time()
            start = max(now, self._next)
            self._next = start + len(data) * self._seconds_per_byte
            if start > now:
                await asyncio.sleep(start - now)
        if rtp and self._on_send is not None:
            self._on_send(data)
        await self._send(data)


# --- sending: bypass the encoder, answer NACK and PLI from the hub --------------


VIDEO_REPORT_INTERVAL = 1.0
AUDIO_REPORT_INTERVAL = 5.0
"""Mean seconds between Sender Reports, libwebrtc's (aiortc sends one a second for
every sender, audio too, each a chain of coroutines and allocations)."""


def hear_keyframe_requests(sender: RTCRtpSender, heard: Callable[[], None]) -> None:
    """Call ``heard`` whenever the remote side asks ``sender`` for a keyframe (PLI),
    besides what aiortc does: a track that replays encoded frames, which aiortc
    cannot make a keyframe of, picks one itself."""
    _require(sender, _SENDER_ATTRS)
    send_keyframe = sender._send_keyframe

    def keyframe() -> None:
        heard()
        send_keyframe()

    setattr(sender, "_send_keyframe", keyframe)  # noqa: B010


class SenderHook:
    """Takes over an RTCRtpSender whose track never yields: the hub writes RTP
    itself and the Sender Reports (:meth:`_run_rtcp`); the sender still handles the
    subscriber's RTCP (receiver reports, NACK, PLI), and its handler is wrapped so
    the hub hears the round trip and REMB its retransmission budget follows."""

    def __init__(
        self,
        sender: RTCRtpSender,
        retransmit: Callable[[int], Awaitable[None]],
        keyframe: Callable[[], None],
        report: Callable[[], tuple[int, int, int, int] | None],
        feedback: Callable[[float | None, int | None, float | None], None] | None = None,
    ) -> None:
        """``report`` gives what the hub has sent, for the Sender Reports: (RTP
        timestamp, NTP timestamp, packets, octets) of one packet, a consistent
        snapshot; None before the first. ``feedback`` hears the subscriber's link:
        (round trip, None, fraction lost 0-1) after each receiver report, (None,
        bits/s, None) for each REMB naming this sender (its part of it: the REMB's
        bitrate over the streams it names)."""
        _require(sender, _SENDER_ATTRS)
        self._sender = sender
        self._report = report
        self._writer: RtpWriter | None = None
        self.remb_bps: int | None = None
        """The whole of the last REMB naming this sender: the subscriber's estimate
        of its link, for every stream it receives."""
        self.remb_ssrcs: tuple[int, ...] = ()
        """The streams that REMB names. Chromium's figure halved when a second one
        (the first RTX packets) joined it: estimates over different sets are not
        comparable."""
        # Instance attributes shadow the methods aiortc calls on NACK and PLI, and
        # the RTCP loop that ``sender.send()`` starts.
        setattr(sender, "_retransmit", retransmit)  # noqa: B010
        setattr(sender, "_send_keyframe", keyframe)  # noqa: B010
        setattr(sender, "_run_rtcp", self._run_rtcp)  # noqa: B010
        if feedback is not None:
            self._hear_feedback(feedback)

    def _hear_feedback(
        self, feedback: Callable[[float | None, int | None, float | None], None]
    ) -> None:
        sender: Any = self._sender
        handle = sender._handle_rtcp_packet

        async def handle_rtcp(packet: Any) -> None:
            await handle(packet)
            if isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
                for report in packet.reports:
                    if report.ssrc == self.ssrc:
                        feedback(sender._RTCRtpSender__rtt, None, report.fraction_lost / 256)
            elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
                try:
                    bitrate, ssrcs = unpack_remb_fci(packet.fci)
                except ValueError:
                    return
                if self.ssrc in ssrcs:
                    self.remb_bps, self.remb_ssrcs = bitrate, tuple(sorted(ssrcs))
                    feedback(None, bitrate // len(ssrcs), None)

        setattr(sender, "_handle_rtcp_packet", handle_rtcp)  # noqa: B010

    @property
    def ssrc(self) -> int:
        ssrc: int = self._sender._ssrc
        return ssrc

    @property
    def rtx_ssrc(self) -> int:
        ssrc: int = self._sender._rtx_ssrc
        return ssrc

    def receiver_report(self) -> tuple[float | None, float | None]:
        """(round-trip seconds, fraction lost 0–1) from the subscriber's last receiver
        report, as ``getStats()`` gives them, without building the transport's
        statistics each time."""
        sender: Any = self._sender
        for stat in sender._RTCRtpSender__stats.values():
            if stat.type == "remote-inbound-rtp":
                lost = None if stat.fractionLost is None else stat.fractionLost / 256
                return stat.roundTripTime, lost
        return None, None

    async def _run_rtcp(self) -> None:
        """aiortc's RTCP loop, keeping its contract (the started and exited events,
        the last SR's time for the round-trip estimate, a BYE at the end), but a
        Sender Report only once the hub has sent on this slot, at libwebrtc's
        intervals, through the writer's direct libsrtp path."""
        sender: Any = self._sender
        sender._RTCRtpSender__rtcp_started.set()
        interval = AUDIO_REPORT_INTERVAL if sender.kind == "audio" else VIDEO_REPORT_INTERVAL
        try:
            while True:
                await asyncio.sleep(interval * (0.5 + random.random()))
                self._send_report()
        except asyncio.CancelledError:
            pass
        finally:
            try:
                self._send_rtcp(bytes(RtcpByePacket(sources=[self.ssrc])))
            finally:
                # ``sender.stop()`` waits for this, whatever happened above.
                sender._RTCRtpSender__rtcp_exited.set()

    def _send_report(self) -> None:
        report = self._report()
        if report is None:
            return  # nothing sent on this slot yet
        rtp_timestamp, ntp, packets, octets = report
        sender: Any = self._sender
        info = RtcpSenderInfo(
            ntp_timestamp=ntp,
            rtp_timestamp=rtp_timestamp,
            packet_count=packets & 0xFFFFFFFF,
            octet_count=octets & 0xFFFFFFFF,
        )
        compound = bytes(RtcpSrPacket(ssrc=self.ssrc, sender_info=info))
        cname = sender._RTCRtpSender__cname
        if cname is not None:
            chunk = RtcpSourceInfo(ssrc=self.ssrc, items=[(1, cname.encode("utf8"))])
            compound += bytes(RtcpSdesPacket(chunks=[chunk]))
        if self._send_rtcp(compound):
            # What aiortc's receiver-report handling turns into a round-trip time.
            sender._RTCRtpSender__lsr = (ntp >> 16) & 0xFFFFFFFF
            sender._RTCRtpSender__lsr_time = time.time()

    def writer(self) -> RtpWriter:
        """The slot's one writer: media and Sender Reports share its send target."""
        transport = self._sender.transport
        if self._writer is None or self._writer.dtls is not transport:
            if self._writer is not None:
                self._writer.close()  # bundling replaced the transport
            self._writer = RtpWriter(transport)
        return self._writer

    def _send_rtcp(self, compound: bytes) -> bool:
        return self.writer().send_rtcp(compound)


class RtpWriter:
    """Keeps an :class:`~hub.fastpath.SrtpSocket` aimed at one DTLS transport's
    selected ICE pair: its socket, the remote address, its sending libsrtp context.

    aiortc's own send path is three nested coroutines per packet, and pylibsrtp's
    ``protect`` allocates and checks on every call; on the forwarding path that cost
    is paid once per packet per subscriber. The SrtpSocket sends through its own
    duplicate of the ICE socket's descriptor, so a socket aioice closes first is
    never a number reused by another. It is aimed when DTLS connects (aioice
    nominates one pair per connection; aiortc has no ICE restart) and closed when
    DTLS leaves that state.
    """

    __slots__ = ("_sock", "dtls", "srtp_socket")

    def __init__(self, dtls: RTCDtlsTransport) -> None:
        self.dtls = dtls
        self.srtp_socket = SrtpSocket()
        self._sock: socket.socket | None = None
        dtls.on("statechange", self._follow)
        self._follow()

    def _follow(self) -> None:
        if self.dtls._state is _CONNECTED:
            self._aim()
        else:
            self.close()

    def _aim(self) -> None:
        pair = self.dtls.transport._connection._nominated.get(1)
        if pair is None or pair.protocol.transport is None:
            return
        self.close()
        fd = pair.protocol.transport.get_extra_info("socket").fileno()
        self._sock = socket.socket(fileno=os.dup(fd))
        host, port = pair.remote_addr[:2]
        aim_srtp_socket(self.srtp_socket, self.dtls._tx_srtp, self._sock, host, port)

    def close(self) -> None:
        self.srtp_socket.close()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def send_rtcp(self, compound: bytes) -> bool:
        """Protect (SRTCP) and send one compound RTCP packet; False when it cannot."""
        return self.srtp_socket.send_rtcp(compound)


def raw_sending(transceiver: RTCRtpTransceiver) -> tuple[int, int, RtpWriter]:
    """For load generators: what writing a negotiated sending transceiver's RTP
    without aiortc takes: its SSRC, its payload type, and a writer aimed at its
    transport (``writer.srtp_socket.send(rtp)`` protects and sends in one call).
    Hundreds of stations replaying a clip then cost a few µs a packet, not aiortc's
    chain of coroutines."""
    codec = next(c for c in transceiver._codecs if not is_rtx(c))
    assert codec.payloadType is not None
    return int(transceiver.sender._ssrc), codec.payloadType, RtpWriter(transceiver.sender.transport)


def aim_srtp_socket(
    srtp_socket: SrtpSocket, session: Session, sock: socket.socket, host: str, port: int
) -> None:
    """Send through ``srtp_socket`` with ``session``'s libsrtp context, from ``sock``
    to ``(host, port)``."""
    srtp_socket.aim(libsrtp_context_address(session), session, sock, host, port)


def libsrtp_context_address(session: Session) -> int:
    """The address of the libsrtp context a pylibsrtp session wraps, as the fast path
    takes it (valid while ``session`` lives)."""
    _require(session, ("_srtp",))
    return int(_srtp_ffi.cast("uintptr_t", session._srtp[0]))


_CONNECTED = State.CONNECTED
_SRTP_MAX_PLAIN = BUFFER_SIZE - SRTP_MAX_TRAILER_LEN
_SRTCP_MAX_PLAIN = BUFFER_SIZE - SRTP_MAX_SRTCP_TRAILER_LEN


def libsrtp_entry_points() -> dict[str, int]:
    """What :func:`hub.fastpath.configure` takes: libsrtp's protect and unprotect
    functions (their addresses in pylibsrtp's build) and the largest plain packets
    protect can take."""
    return {
        "protect_rtp": _address_of("srtp_protect"),
        "protect_rtcp": _address_of("srtp_protect_rtcp"),
        "max_rtp": _SRTP_MAX_PLAIN,
        "max_rtcp": _SRTCP_MAX_PLAIN,
        "unprotect_rtp": _address_of("srtp_unprotect"),
        "unprotect_rtcp": _address_of("srtp_unprotect_rtcp"),
    }


def _address_of(function: str) -> int:
    return int(_srtp_ffi.cast("uintptr_t", _srtp_ffi.addressof(_srtp_lib, function)))


# The fast path protects and unprotects through libsrtp from the first packet on.
fastpath.configure(**libsrtp_entry_points())
