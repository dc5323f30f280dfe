"""Codec facts the forwarding path needs, read from RTP payloads without decoding."""

from __future__ import annotations

from typing import Final

VP8: Final = "VP8"
H264: Final = "H264"
OPUS: Final = "opus"

_H264_IDR: Final = 5
_H264_SPS: Final = 7
_H264_STAP_A: Final = 24
_H264_FU_A: Final = 28


def vp8_keyframe_start(payload: bytes) -> bool:
    """True for the first packet of a VP8 key frame (RFC 7741 payload descriptor)."""
    if len(payload) < 1:
        return False
    first = payload[0]
    if not first & 0x10 or first & 0x07:  # S bit clear, or not partition 0
        return False
    offset = 1
    if first & 0x80:  # X: extension byte follows
        if len(payload) < 2:
            return False
        ext = payload[1]
        offset = 2
        if ext & 0x80:  # I: picture id, 7 or 15 bits
            if len(payload) <= offset:
                return False
            offset += 2 if payload[offset] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            offset += 1
        if ext & 0x30:  # T or K: TID/KEYIDX byte
            offset += 1
    # VP8 payload header: the P bit (bit 0) is 0 for a key frame.
    return len(payload) > offset and not payload[offset] & 0x01


def vp8_picture_ids(payload: bytes) -> tuple[int, int, int]:
    """Where a VP8 payload descriptor (RFC 7741) keeps its 15-bit PictureID and its
    TL0PICIDX: (offset of the PictureID, or -1 if it has none of 15 bits; its value;
    offset of the TL0PICIDX, or -1)."""
    if len(payload) < 2 or not payload[0] & 0x80:
        return -1, 0, -1
    ext = payload[1]
    offset = 2
    picture = -1
    value = 0
    if ext & 0x80:  # I
        if len(payload) < offset + 1:
            return -1, 0, -1
        if payload[offset] & 0x80:  # M: 15 bits
            if len(payload) < offset + 2:
                return -1, 0, -1
            picture = offset
            value = ((payload[offset] & 0x7F) << 8) | payload[offset + 1]
            offset += 2
        else:
            offset += 1
    tl0 = offset if ext & 0x40 and len(payload) > offset else -1  # L
    return picture, value, tl0


def h264_keyframe_start(payload: bytes) -> bool:
    """True for a packet that starts a decodable point: an SPS, or the start of an IDR."""
    if len(payload) < 1:
        return False
    nal_type = payload[0] & 0x1F
    if nal_type in (_H264_SPS, _H264_IDR):
        return True
    if nal_type == _H264_STAP_A:
        offset = 1
        while offset + 2 < len(payload):
            size = int.from_bytes(payload[offset : offset + 2], "big")
            inner = payload[offset + 2] & 0x1F
            if inner in (_H264_SPS, _H264_IDR):
                return True
            offset += 2 + size
        return False
    if nal_type == _H264_FU_A and len(payload) >= 2:
        header = payload[1]
        return bool(header & 0x80) and (header & 0x1F) == _H264_IDR
    return False


def keyframe_start(codec: str, payload: bytes) -> bool:
    if codec == VP8:
        return vp8_keyframe_start(payload)
    if codec == H264:
        return h264_keyframe_start(payload)
    return True  # audio: every packet is a starting point


def frame_is_keyframe(codec: str, data: bytes) -> bool:
    """For a depayloaded frame: a VP8 frame, or an H.264 Annex-B access unit."""
    if codec == VP8:
        return len(data) > 0 and not data[0] & 0x01
    if codec == H264:
        start = data.find(b"\x00\x00\x01")
        while start != -1 and start + 3 < len(data):
            if data[start + 3] & 0x1F in (_H264_IDR, _H264_SPS):
                return True
            start = data.find(b"\x00\x00\x01", start + 3)
        return False
    return True
