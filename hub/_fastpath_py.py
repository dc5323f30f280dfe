"""The fan-out's per-copy work, and the unprotecting of what publishers send, in
Python: what ``hub/_fastpath.c`` does, for a machine that could not build it. Same
names, same behaviour (tests/test_fastpath.py runs both side by side); several times
slower per copy."""

from __future__ import annotations

import socket
import struct
from typing import Any

import cffi

BUFFER_SIZE = 1500
_HEADER = struct.Struct("!BBHII")
_EXTENSION_PROFILE = b"\xbe\xde\x00\x01"

_ffi = cffi.FFI()
_ffi.cdef("typedef int (*libsrtp_fn)(void *ctx, void *buffer, int *length);")


class _Libsrtp:
    """libsrtp's protect and unprotect functions, as :func:`configure` gave them."""

    protect_rtp: Any = None
    protect_rtcp: Any = None
    max_rtp = 0
    max_rtcp = 0
    unprotect_rtp: Any = None
    unprotect_rtcp: Any = None


def configure(
    protect_rtp: int,
    protect_rtcp: int,
    max_rtp: int,
    max_rtcp: int,
    unprotect_rtp: int,
    unprotect_rtcp: int,
) -> None:
    if not (protect_rtp and protect_rtcp and unprotect_rtp and unprotect_rtcp):
        raise ValueError("invalid libsrtp entry points or sizes")
    if not (12 < max_rtp <= BUFFER_SIZE and 8 < max_rtcp <= BUFFER_SIZE):
        raise ValueError("invalid libsrtp entry points or sizes")
    _Libsrtp.protect_rtp = _ffi.cast("libsrtp_fn", protect_rtp)
    _Libsrtp.protect_rtcp = _ffi.cast("libsrtp_fn", protect_rtcp)
    _Libsrtp.max_rtp = max_rtp
    _Libsrtp.max_rtcp = max_rtcp
    _Libsrtp.unprotect_rtp = _ffi.cast("libsrtp_fn", unprotect_rtp)
    _Libsrtp.unprotect_rtcp = _ffi.cast("libsrtp_fn", unprotect_rtcp)


class _Scratch:
    """One buffer for every libsrtp call: calls run one at a time on the event loop."""

    cdata: Any = _ffi.new("char[]", BUFFER_SIZE)
    view: Any = _ffi.buffer(cdata)
    length: Any = _ffi.new("int *")


def _through(fn: Any, ctx: Any, data: bytes) -> bytes | None:
    """``data`` (at most :data:`BUFFER_SIZE` bytes) through libsrtp's ``fn`` with
    ``ctx``: the result, or None when libsrtp refused it."""
    size = len(data)
    _Scratch.view[0:size] = data
    _Scratch.length[0] = size
    if fn(ctx, _Scratch.cdata, _Scratch.length):
        return None
    out: bytes = _Scratch.view[0 : _Scratch.length[0]]
    return out


def unprotect(ctx: int, data: bytes) -> bytes | None:
    """The plain RTP packet in ``data``, or None when libsrtp refuses it."""
    return _unprotect_with(_Libsrtp.unprotect_rtp, ctx, data)


def unprotect_rtcp(ctx: int, data: bytes) -> bytes | None:
    """The plain RTCP packet in ``data``, or None when libsrtp refuses it."""
    return _unprotect_with(_Libsrtp.unprotect_rtcp, ctx, data)


def _unprotect_with(fn: Any, ctx: int, data: bytes) -> bytes | None:
    if fn is None or not ctx:
        raise ValueError("no libsrtp context, or configure() not called")
    if len(data) > BUFFER_SIZE:
        return None
    return _through(fn, _ffi.cast("void *", ctx), data)


class SrtpSocket:
    """SRTP-protect and send to one address through one socket."""

    __slots__ = ("_addr", "_ctx", "_keep", "_sock")

    def __init__(self) -> None:
        self._ctx: Any = None
        self._keep: object = None
        self._sock: socket.socket | None = None
        self._addr: Any = None

    @property
    def open(self) -> bool:
        return self._ctx is not None

    def aim(self, ctx: int, keep: object, sock: socket.socket, host: str, port: int) -> None:
        if _Libsrtp.protect_rtp is None:
            raise RuntimeError("hub._fastpath.configure() was not called")
        if sock.fileno() < 0:
            raise ValueError("socket is closed")
        try:
            info = socket.getaddrinfo(
                host, port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST
            )
        except socket.gaierror as exc:
            raise ValueError(f"not a numeric address: {host} ({exc})") from exc
        self.close()
        self._addr = info[0][4]
        self._ctx = _ffi.cast("void *", ctx)
        self._keep = keep
        self._sock = sock

    def close(self) -> None:
        self._ctx = self._keep = self._sock = self._addr = None

    def seal(self, protect: Any, data: bytes) -> bytes | None:
        """Protected ``data``, or None when this socket is closed or libsrtp refused."""
        if self._ctx is None:
            return None
        return _through(protect, self._ctx, data)

    def transmit(self, data: bytes) -> None:
        assert self._sock is not None
        try:
            self._sock.sendto(data, socket.MSG_DONTWAIT, self._addr)
        except OSError:
            pass  # UDP: a full socket buffer or an ICMP error loses this packet

    def send(self, data: bytes) -> bool:
        return self._send(_Libsrtp.protect_rtp, _Libsrtp.max_rtp, data)

    def send_rtcp(self, data: bytes) -> bool:
        return self._send(_Libsrtp.protect_rtcp, _Libsrtp.max_rtcp, data)

    def _send(self, protect: Any, max_plain: int, data: bytes) -> bool:
        sealed = self.seal(protect, data) if len(data) <= max_plain else None
        if sealed is None:
            return False
        self.transmit(sealed)
        return True


class DownTrackCore:
    """A down track's sending state, and its bound subscription's rewriting."""

    __slots__ = (
        "_report",
        "abs_send_time_id",
        "bytes_sent",
        "first_seq",
        "last_timestamp",
        "next_seq",
        "packets_sent",
        "payload_type",
        "seq_offset",
        "srtp_socket",
        "ssrc",
        "started",
        "ts_offset",
        "video",
    )

    def __init__(self, video: bool, ssrc: int) -> None:
        if not 0 <= ssrc <= 0xFFFFFFFF:
            raise ValueError("ssrc must fit in 32 bits")
        self.srtp_socket: SrtpSocket | None = None
        self.ssrc = ssrc
        self.video = bool(video)
        self.payload_type = -1
        self.abs_send_time_id = 0
        # Start below 32768 so SRTP's rollover guess cannot go wrong early on.
        self.next_seq = ssrc & 0x7FFF
        self.last_timestamp = (ssrc * 2654435761) & 0xFFFFFFFF
        self.packets_sent = 0
        self.bytes_sent = 0
        self.started = False
        self.first_seq = 0
        self.seq_offset = 0
        self.ts_offset = 0
        self._report: tuple[int, int, int, int] | None = None

    @property
    def report(self) -> tuple[int, int, int, int] | None:
        return self._report

    @property
    def ready(self) -> bool:
        return self._target() is not None

    def _target(self) -> SrtpSocket | None:
        target = self.srtp_socket
        if self.payload_type < 0 or target is None or not target.open:
            return None
        return target

    def _seal(
        self,
        target: SrtpSocket,
        seq: int,
        timestamp: int,
        marker: int,
        payload: bytes,
        ntp: int,
        abs3: bytes,
    ) -> tuple[bytes, int] | None:
        ext = self.abs_send_time_id
        header = _HEADER.pack(
            0x90 if ext else 0x80,
            (0x80 if marker else 0) | (self.payload_type & 0x7F),
            seq,
            timestamp,
            self.ssrc,
        )
        if ext:
            header += _EXTENSION_PROFILE + bytes(((ext << 4) | 2,)) + abs3
        if len(header) + len(payload) > _Libsrtp.max_rtp:
            return None
        plain = header + payload
        sealed = target.seal(_Libsrtp.protect_rtp, plain)
        if sealed is None:
            return None
        self.packets_sent += 1
        self.bytes_sent += len(payload)
        if not self.packets_sent & 7:
            self._report = (timestamp, ntp, self.packets_sent, self.bytes_sent)
        return sealed, len(plain)

    def write(
        self, seq: int, timestamp: int, marker: int, payload: bytes, ntp: int, abs3: bytes
    ) -> int:
        _check_abs3(abs3)
        target = self._target()
        if target is None:
            return -1
        sealed = self._seal(target, seq, timestamp, marker, payload, ntp, abs3)
        if sealed is None:
            return -1
        target.transmit(sealed[0])
        return sealed[1]


def _check_abs3(abs3: bytes) -> None:
    if len(abs3) != 3:
        raise ValueError("abs3 must be 3 bytes")


def fanout(
    tracks: list[DownTrackCore],
    seq: int,
    timestamp: int,
    marker: int,
    payload: bytes,
    keyframe: bool,
    ntp: int,
    abs3: bytes,
) -> tuple[int, int, bool]:
    _check_abs3(abs3)
    sealed: list[tuple[SrtpSocket, bytes]] = []
    plain = 0
    wants_keyframe = False
    for down in tracks:
        target = down._target()
        if not down.started:
            if target is None:
                continue
            if down.video and not keyframe:
                wants_keyframe = True
                continue
            down.started = True
            down.first_seq = seq
            down.seq_offset = (down.next_seq - seq) & 0xFFFF
            # Continue the slot's clock a little after its last packet.
            gap = 3000 if down.video else 960
            down.ts_offset = (down.last_timestamp + gap - timestamp) & 0xFFFFFFFF
        elif (seq - down.first_seq) & 0x8000:
            continue  # older than where this subscription started
        out_seq = (seq + down.seq_offset) & 0xFFFF
        out_ts = (timestamp + down.ts_offset) & 0xFFFFFFFF
        if not (out_seq - down.next_seq) & 0x8000:
            down.next_seq = (out_seq + 1) & 0xFFFF
            down.last_timestamp = out_ts
        if target is None:
            continue
        result = down._seal(target, out_seq, out_ts, marker, payload, ntp, abs3)
        if result is not None:
            sealed.append((target, result[0]))
            plain += result[1]
    # Every copy sealed first, then the sends back to back: the kernel's path stays warm.
    for target, data in sealed:
        target.transmit(data)
    return len(sealed), plain, wants_keyframe
