"""RED (RFC 2198, ``audio/red``): redundant audio blocks in one RTP payload.

Chromium sends its Opus this way once the hub's answer lists RED first: each packet
carries the current Opus packet (the primary block, last) and copies of the ones
before (redundant blocks, each with its timestamp offset). Read here without
decoding; malformed payloads give None, never an exception.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

MIME_TYPE: Final = "audio/red"
NAME: Final = "red"


def fmtp(payload_type: int) -> str:
    """RED's format parameters for redundant copies of ``payload_type`` (RFC 2198
    section 5): what libwebrtc requires before it sends RED."""
    return f"{payload_type}/{payload_type}"


def redundant_payload_types(parameters: Mapping[str, object]) -> list[int] | None:
    """The payload types RED's format parameters name (aiortc parses ``111/111`` as
    a key without a value); None when they name none, or not as numbers."""
    for key, value in parameters.items():
        if value is None and "/" in key:
            names = key.split("/")
            if all(name.isdigit() and int(name) < 128 for name in names):
                return [int(name) for name in names]
            return None
    return None


@dataclass(frozen=True, slots=True)
class RedBlock:
    payload_type: int
    timestamp_offset: int
    """How far before the packet's timestamp this block's timestamp is (0: primary)."""
    data: bytes


def _headers(payload: bytes) -> tuple[list[tuple[int, int, int]], int] | None:
    """The block headers (payload type, timestamp offset, length; the primary's
    length -1) and where the blocks start; None when they do not fit."""
    headers: list[tuple[int, int, int]] = []
    at = 0
    size = len(payload)
    while at < size:
        first = payload[at]
        if not first & 0x80:  # F clear: the primary's one-byte header, the last
            headers.append((first & 0x7F, 0, -1))
            return headers, at + 1
        if at + 4 > size:
            return None
        offset = (payload[at + 1] << 6) | (payload[at + 2] >> 2)
        length = ((payload[at + 2] & 0x03) << 8) | payload[at + 3]
        headers.append((first & 0x7F, offset, length))
        at += 4
    return None


def red_blocks(payload: bytes) -> list[RedBlock] | None:
    """Every block of a RED payload, oldest first, the primary last; None when
    malformed (headers cut short, or blocks longer than the payload)."""
    parsed = _headers(payload)
    if parsed is None:
        return None
    headers, at = parsed
    blocks: list[RedBlock] = []
    for payload_type, offset, length in headers:
        end = len(payload) if length < 0 else at + length
        if end > len(payload):
            return None
        blocks.append(RedBlock(payload_type, offset, payload[at:end]))
        at = end
    return blocks


def red_primary(payload: bytes) -> bytes | None:
    """The primary block of a RED payload: the packet's own Opus packet, at the
    packet's timestamp. None when malformed or empty (nothing to play)."""
    parsed = _headers(payload)
    if parsed is None:
        return None
    headers, at = parsed
    at += sum(length for _, _, length in headers[:-1])
    if at >= len(payload):
        return None
    return payload[at:]


def red_retagged(payload: bytes, payload_type: int) -> bytes | None:
    """The RED payload with every block's payload type set to ``payload_type``: a
    receiver looks each block's codec up by its own numbering, which may differ from
    the publisher's. None when malformed."""
    blocks = red_blocks(payload)
    if blocks is None:
        return None
    if all(block.payload_type == payload_type for block in blocks):
        return payload
    out = bytearray(payload)
    at = 0
    while out[at] & 0x80:
        out[at] = 0x80 | payload_type
        at += 4
    out[at] = payload_type
    return bytes(out)


def red_single(data: bytes, payload_type: int) -> bytes:
    """A RED payload carrying ``data`` as its primary block only (what libwebrtc sends
    when it has no redundancy yet): for a RED receiver of a plain Opus packet."""
    return bytes((payload_type & 0x7F,)) + data
