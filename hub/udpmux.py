"""One UDP port for every peer connection's media (``HUB_UDP_PORT``), as LiveKit's
``rtc.udp_port`` and mediasoup's WebRtcServer do: a county's firewall opens one port.

A :class:`UdpMux` owns one socket per host address, all on the same port. Each ICE
connection gathering on it gets an :class:`Endpoint` per socket, which stands where
aioice keeps a socket's transport. Incoming datagrams are told apart as RFC 7983
sorts them:

- a STUN request goes to the endpoint of the local ICE username fragment it names
  (``USERNAME`` is ``local:remote``);
- a STUN response goes to the endpoint whose request it answers (transaction id);
- anything else (DTLS, SRTP, SRTCP, indications) goes to the endpoint that learned
  the sender's address. An endpoint learns an address from an ICE check that
  authenticated (only the peer knows the password): an address that moves (NAT
  rebinding, a site reconnecting from the same address and port) follows the
  newest check. Datagrams from an address nobody learned are dropped.

An ICE restart renames an endpoint: its new ufrag maps to it, the old one to
nobody; the addresses it learned stay, so media goes on while the checks run again.
An endpoint that closes (its connection closed) forgets its ufrag, its addresses and
its transactions. Knows nothing of aioice: :mod:`hub.aiortc_internals` connects the two.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import string
from collections import deque
from typing import Any

logger = logging.getLogger(__name__)

SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
"""Asked for both buffers of the shared socket: every publisher's media arrives on it
and every copy leaves from it (the kernel caps it at ``net.core.rmem_max`` /
``wmem_max``; deploy/README.md says how to raise them)."""
UFRAG_LENGTH = 8
"""Local ICE username fragments the mux hands out: 62^8 values, so that the
fragments of a few hundred connections on one port never collide by chance (aioice's
4 characters would, about once in 200 hubs of 400 connections)."""
READ_BATCH = 256
"""Datagrams read at most per wake-up, so that one busy socket cannot hold the event
loop: at 200 viewers of a 1.5 Mbps lecture, about 0.1 s of a publisher's media."""
RECEIVE_BYTES = 2048
"""Larger than any datagram a peer sends (MTU 1,500); a longer one is cut and then
refused by SRTP or DTLS."""
MAX_TRANSACTIONS = 64
"""STUN requests of one endpoint awaiting an answer that are remembered: checks to
every candidate pair, consent checks. An older one's answer is dropped."""
_UFRAG_ALPHABET = string.ascii_letters + string.digits
_STUN_MAGIC = b"\x21\x12\xa4\x42"
_STUN_USERNAME = 0x0006


def stun_class(data: bytes) -> int | None:
    """The STUN class of a datagram (0 request, 1 indication, 2 success, 3 error),
    or None when it is not STUN (RFC 7983: first byte 0-3, the magic cookie)."""
    if len(data) < 20 or data[0] > 3 or data[4:8] != _STUN_MAGIC:
        return None
    return ((data[0] & 0x01) << 1) | ((data[1] & 0x10) >> 4)


def stun_local_ufrag(data: bytes) -> str | None:
    """The local part of a STUN request's USERNAME (``local:remote``), if any."""
    end = min(len(data), 20 + int.from_bytes(data[2:4], "big"))
    at = 20
    while at + 4 <= end:
        kind = int.from_bytes(data[at : at + 2], "big")
        size = int.from_bytes(data[at + 2 : at + 4], "big")
        if kind == _STUN_USERNAME:
            username = data[at + 4 : at + 4 + size]
            local, colon, _ = username.partition(b":")
            return local.decode("ascii", "replace") if colon else None
        at += 4 + (size + 3) // 4 * 4
    return None


class Endpoint(asyncio.DatagramTransport):
    """One ICE connection's share of one shared socket: the transport aioice sends
    through and closes, and where the mux delivers that connection's datagrams."""

    def __init__(
        self, mux_socket: _MuxSocket, ufrag: str, protocol: asyncio.DatagramProtocol
    ) -> None:
        super().__init__()
        self._socket = mux_socket
        self.ufrag = ufrag
        self.protocol = protocol
        self.addresses: set[tuple[str, int]] = set()
        self.transactions: deque[bytes] = deque()
        self.closed = False

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        data = bytes(data)
        if self.closed:
            return
        if stun_class(data) == 0:
            self._socket.expect_answer(self, data[8:20])
        self._socket.send(data, addr)

    def learn(self, addr: tuple[str, int]) -> None:
        """Datagrams from ``addr`` are this endpoint's from now on (called for an ICE
        check that authenticated)."""
        if not self.closed:
            self._socket.learn(self, (addr[0], addr[1]))

    def rename(self, ufrag: str) -> None:
        """STUN requests naming ``ufrag`` are this endpoint's from now on, and those
        naming its old one nobody's (an ICE restart's new local credentials)."""
        if not self.closed:
            self._socket.rename(self, ufrag)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return self._socket.sock
        if name == "sockname":
            return self._socket.sock.getsockname()
        return default

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        """Forget everything of this endpoint (idempotent); the protocol hears of it
        as from a socket that closed."""
        if self.closed:
            return
        self.closed = True
        self._socket.forget(self)
        asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)


class _MuxSocket:
    """One shared socket (one host address) and its routing tables.

    Read until empty on each wake-up: asyncio's datagram transport takes one datagram
    per turn of the event loop, which kept every publisher's media waiting behind the
    loop's other work once all of it arrived on one socket (seconds at 200 viewers).
    Sent without a buffer: a full socket buffer loses the datagram, as the network would.
    """

    def __init__(self, mux: UdpMux, sock: socket.socket) -> None:
        self._mux = mux
        self.sock = sock
        self.by_ufrag: dict[str, Endpoint] = {}
        self.by_address: dict[tuple[str, int], Endpoint] = {}
        self.by_transaction: dict[bytes, Endpoint] = {}
        asyncio.get_running_loop().add_reader(sock.fileno(), self._read)

    @property
    def host(self) -> str:
        host: str = self.sock.getsockname()[0]
        return host

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self.sock.sendto(data, addr)
        except OSError:
            pass  # a full buffer, an ICMP error of a peer gone: UDP loses, ICE notices

    def _read(self) -> None:
        for _ in range(READ_BATCH):
            try:
                data, addr = self.sock.recvfrom(RECEIVE_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an ICMP error queued on the socket: nothing to route
            self.datagram_received(data, addr)

    def attach(self, ufrag: str, protocol: asyncio.DatagramProtocol) -> Endpoint:
        endpoint = Endpoint(self, ufrag, protocol)
        self.by_ufrag[ufrag] = endpoint
        return endpoint

    def expect_answer(self, endpoint: Endpoint, transaction: bytes) -> None:
        if transaction in self.by_transaction:
            return  # a retransmission
        if len(endpoint.transactions) >= MAX_TRANSACTIONS:
            self.by_transaction.pop(endpoint.transactions.popleft(), None)
        endpoint.transactions.append(transaction)
        self.by_transaction[transaction] = endpoint

    def learn(self, endpoint: Endpoint, addr: tuple[str, int]) -> None:
        previous = self.by_address.get(addr)
        if previous is endpoint:
            return
        if previous is not None:
            previous.addresses.discard(addr)
        self.by_address[addr] = endpoint
        endpoint.addresses.add(addr)

    def rename(self, endpoint: Endpoint, ufrag: str) -> None:
        if self.by_ufrag.get(endpoint.ufrag) is endpoint:
            del self.by_ufrag[endpoint.ufrag]
        endpoint.ufrag = ufrag
        self.by_ufrag[ufrag] = endpoint

    def forget(self, endpoint: Endpoint) -> None:
        if self.by_ufrag.get(endpoint.ufrag) is endpoint:
            del self.by_ufrag[endpoint.ufrag]
        for addr in endpoint.addresses:
            if self.by_address.get(addr) is endpoint:
                del self.by_address[addr]
        endpoint.addresses.clear()
        for transaction in endpoint.transactions:
            if self.by_transaction.get(transaction) is endpoint:
                del self.by_transaction[transaction]
        endpoint.transactions.clear()

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        source = (addr[0], addr[1])  # an IPv6 four-tuple as a two-tuple
        kind = stun_class(data)
        endpoint: Endpoint | None
        if kind is None or kind == 1:
            endpoint = self.by_address.get(source)
        elif kind == 0:
            ufrag = stun_local_ufrag(data)
            endpoint = self.by_ufrag.get(ufrag) if ufrag is not None else None
        else:
            endpoint = self.by_transaction.get(data[8:20]) or self.by_address.get(source)
        if endpoint is None:
            self._mux.dropped += 1
            return
        endpoint.protocol.datagram_received(data, source)

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        for endpoint in list(self.by_ufrag.values()):
            endpoint.close()
        self.sock.close()


class UdpMux:
    """The hub's one UDP port: a socket per host address, the endpoints of every ICE
    connection gathered on it. Made by :meth:`open`, closed by :meth:`close`."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sockets: list[_MuxSocket] = []
        self.dropped = 0
        """Datagrams that matched no endpoint (strangers, a peer already gone)."""

    @classmethod
    def open(cls, addresses: list[str], port: int) -> UdpMux:
        """Bind ``port`` on each of ``addresses``; an address that cannot be bound is
        skipped (as aioice skips it), none at all is an error."""
        mux = cls(port)
        for address in addresses:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((address, port))
            except OSError as exc:
                sock.close()
                logger.warning("UDP port %d: cannot bind %s: %s", port, address, exc)
                continue
            sock.setblocking(False)
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
            mux.sockets.append(_MuxSocket(mux, sock))
        if not mux.sockets:
            raise OSError(f"UDP port {port}: no address could be bound of {addresses}")
        logger.info(
            "WebRTC media on UDP port %d of %s", port, ", ".join(s.host for s in mux.sockets)
        )
        return mux

    def new_ufrag(self) -> str:
        """A local ICE username fragment no live endpoint of this mux has."""
        while True:
            ufrag = "".join(secrets.choice(_UFRAG_ALPHABET) for _ in range(UFRAG_LENGTH))
            if not any(ufrag in s.by_ufrag for s in self.sockets):
                return ufrag

    @property
    def endpoints(self) -> int:
        """Live endpoints (one per ICE connection and host address)."""
        return sum(len(s.by_ufrag) for s in self.sockets)

    @property
    def addresses(self) -> int:
        """Remote addresses currently mapped to an endpoint."""
        return sum(len(s.by_address) for s in self.sockets)

    def close(self) -> None:
        """Close the port (idempotent): every endpoint still on it closes, as if its
        socket had."""
        sockets, self.sockets = self.sockets, []
        for mux_socket in sockets:
            mux_socket.close()
