"""The network lab itself: a station namespace reaches the hub's address only through
its link, which holds, loses and refuses packets and keeps to its rate; nothing
is left behind."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from tests.netlab import HUB_ADDRESS, Link, Netlab, netlab

PROBE = """
import json, socket, sys, time
host, tcp, udp = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection((host, tcp), timeout=10)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(0.6)
rtts = []
for _ in range(40):
    sent = time.monotonic()
    u.sendto(b"x" * 100, (host, udp))
    try:
        u.recv(2000)
        rtts.append(time.monotonic() - sent)
    except OSError:
        pass
start, got = time.monotonic(), 0
s.sendall(b"go")
while got < 150_000:
    chunk = s.recv(65536)
    if not chunk:
        break
    got += len(chunk)
print(json.dumps({"answered": len(rtts), "rtt": sorted(rtts)[len(rtts) // 2] if rtts else None,
                  "kbit": got * 8 / 1000 / (time.monotonic() - start)}))
"""


class Echo:
    """UDP echo and a TCP sender of 150 kB on the hub's address, in threads."""

    def __init__(self) -> None:
        self.tcp = socket.create_server((HUB_ADDRESS, 0))
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((HUB_ADDRESS, 0))
        threading.Thread(target=self._serve_tcp, daemon=True).start()
        threading.Thread(target=self._serve_udp, daemon=True).start()

    def _serve_tcp(self) -> None:
        while True:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            with conn:
                conn.recv(10)
                conn.sendall(bytes(150_000))

    def _serve_udp(self) -> None:
        while True:
            try:
                data, peer = self.udp.recvfrom(2000)
            except OSError:
                return
            self.udp.sendto(data, peer)

    def probe(self, lab: Netlab, link: Link) -> dict[str, float]:
        station = lab.station(link)
        ports = [str(self.tcp.getsockname()[1]), str(self.udp.getsockname()[1])]
        result = subprocess.run(
            station.run(sys.executable, "-c", PROBE, HUB_ADDRESS, *ports),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        probed: dict[str, float] = json.loads(result.stdout)
        return probed

    def close(self) -> None:
        self.tcp.close()
        self.udp.close()


@pytest.fixture
def lab() -> Iterator[tuple[Netlab, Echo]]:
    with netlab() as made:
        echo = Echo()
        try:
            yield made, echo
        finally:
            echo.close()
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert made.tag not in names and made.tag not in links  # nothing left behind


def test_an_unshaped_link_carries_everything(lab: tuple[Netlab, Echo]) -> None:
    probed = lab[1].probe(lab[0], Link())
    assert probed["answered"] == 40 and probed["rtt"] < 0.2


def test_a_shaped_link_keeps_its_rate_loss_and_round_trip(lab: tuple[Netlab, Echo]) -> None:
    probed = lab[1].probe(lab[0], Link(rate_kbit=700, loss=0.1, rtt_ms=300))
    # Loose bounds: the delay line is a process on a shared, loaded machine.
    assert 0.29 < probed["rtt"] < 0.6
    assert 20 <= probed["answered"] <= 39  # ~19 % of round trips lose a packet
    assert 100 < probed["kbit"] < 800


def test_a_link_without_udp_carries_tcp_only(lab: tuple[Netlab, Echo]) -> None:
    probed = lab[1].probe(lab[0], Link(block_udp=True))
    assert probed["answered"] == 0 and probed["kbit"] > 1000
