"""SDP checks and the announced address."""

from __future__ import annotations

import pytest

from hub.peers import SdpError, announce, parse_sdp

ANSWER = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n"
    "a=candidate:1 1 UDP 2130706431 192.0.2.2 50000 typ host\r\n"
    "a=candidate:2 1 UDP 2130706431 127.0.0.1 50001 typ host\r\n"
    "a=candidate:3 1 UDP 1694498815 203.0.113.9 50002 typ srflx raddr 192.0.2.2 rport 50000\r\n"
    "a=end-of-candidates\r\n"
)


def test_announced_address_replaces_host_candidates_and_comes_first() -> None:
    out = announce(ANSWER, "10.1.2.3")
    candidates = [line for line in out.split("\r\n") if line.startswith("a=candidate")]
    assert candidates[0] == "a=candidate:1 1 UDP 2130706431 10.1.2.3 50000 typ host"
    assert "10.1.2.3 50001 typ host" in candidates[1]
    assert "typ srflx" in candidates[2]  # relayed/reflexive ones untouched, after hosts
    assert out.split("\r\n")[-2] == "a=end-of-candidates"


def test_first_gather_address_leads_without_an_announced_one() -> None:
    out = announce(ANSWER, None, gather_first="127.0.0.1")
    candidates = [line for line in out.split("\r\n") if line.startswith("a=candidate")]
    assert " 127.0.0.1 50001 " in candidates[0]


@pytest.mark.parametrize(
    ("sdp", "reason"),
    [
        ("", "empty"),
        ("hello", "v=0"),
        ("v=0\r\n" + "a=x\r\n" * 20000, "larger"),
        ("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n", "mid"),
        ("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n", "ICE"),
        ("v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n", "no audio"),
    ],
)
def test_bad_sdp_is_refused_with_a_reason(sdp: str, reason: str) -> None:
    with pytest.raises(SdpError, match=reason):
        parse_sdp(sdp)


OFFER_HEAD = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
M_LINE = (
    "m={kind} 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:{mid}\r\na=sendonly\r\n"
    "a=rtpmap:96 VP8/90000\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\n"
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\na=setup:actpass\r\n"
)


@pytest.mark.parametrize(
    ("group", "mids"),
    [("a=group:BUNDLE 0 1\r\n", ["1"]), ("a=group:BUNDLE 0 7\r\n", ["0"])],
)
def test_a_bundle_naming_an_m_line_that_is_not_there_is_refused(
    group: str, mids: list[str]
) -> None:
    """aiortc accepted such an offer and then failed to answer it (its connect task and
    createAnswer raised AttributeError): an m-line deleted from a valid offer did it."""
    sdp = OFFER_HEAD + group + "".join(M_LINE.format(kind="video", mid=mid) for mid in mids)
    with pytest.raises(SdpError, match="BUNDLE"):
        parse_sdp(sdp)


def test_a_bundle_of_every_m_line_passes() -> None:
    lines = "".join(M_LINE.format(kind=k, mid=m) for k, m in (("video", "0"), ("audio", "1")))
    assert [m.mid for m in parse_sdp(OFFER_HEAD + "a=group:BUNDLE 0 1\r\n" + lines)] == ["0", "1"]
