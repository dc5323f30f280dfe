"""A network lab for link tests: stations in network namespaces behind a shaped link.

The hub stays in the test's namespace on :data:`HUB_ADDRESS` (a TUN device the lab
makes). Each station gets its own namespace whose only way out, its default route,
is a TUN device; a delay line process (``python -m tests.netlab``) carries every
packet between it and a second TUN device on the hub's side, losing, holding or
refusing packets as the station's :class:`Link` says. The rate is the kernel's
``tc`` (htb) on both TUN devices (this kernel has no ``netem``: loss and delay are
the delay line's). Everything the lab makes is removed when it closes, failure or
not: the TUN devices go with the delay line, the namespaces and the hub's device
are deleted.

Needs root, ``ip``, ``tc`` and ``/dev/net/tun``; without them :func:`netlab`
skips (fails under ``CI=true``, see :func:`tests.conftest.missing_service`).
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import heapq
import os
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HUB_ADDRESS = "10.77.0.1"
"""Where the hub listens and gathers, seen from every station."""
_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_CLONE_NEWNET = 0x40000000
_UDP = 17


@dataclass(frozen=True)
class Link:
    """One station's link to the hub; the same both ways."""

    rate_kbit: int | None = None
    """Rate, each way; None: as fast as the delay line goes."""
    loss: float = 0.0
    """Share of packets lost, each way, at random."""
    rtt_ms: float = 0.0
    """Round trip the delay line adds (half each way)."""
    block_udp: bool = False
    """Every UDP packet is lost: only TCP gets through (to a TURN server)."""


@dataclass
class Station:
    """One station's namespace and its address in it."""

    netns: str
    address: str
    link: Link
    line: subprocess.Popen[bytes]
    station_tun: str
    hub_tun: str

    def run(self, *command: str) -> list[str]:
        """``command`` prefixed to run in this station's namespace."""
        return ["ip", "netns", "exec", self.netns, *command]

    def cut_udp(self, cut: bool) -> None:
        """Lose every UDP packet from now on (a path that breaks while TCP, the
        signaling, lives), or stop doing so (back to :attr:`link`)."""
        self.line.send_signal(signal.SIGUSR1 if cut else signal.SIGUSR2)

    def shape(self, rate_kbit: int) -> None:
        """Change the link's rate, both ways, while it carries media (a village link
        whose share drops as neighbours start watching)."""
        for command in _shaping_commands(self, rate_kbit, change=True):
            _ip(command)

    def chromium(self, workdir: Path, chromium: str) -> str:
        """A Chromium executable (a wrapper script) that runs in this namespace."""
        path = workdir / f"chromium-{self.netns}"
        path.write_text(f'#!/bin/sh\nexec ip netns exec {self.netns} {chromium} "$@"\n')
        path.chmod(0o755)
        return str(path)


def available() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "the network lab needs root (network namespaces, TUN devices)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"the network lab needs `{tool}` (iproute2)"
    if not os.path.exists("/dev/net/tun"):
        return "the network lab needs /dev/net/tun"
    return None


class Netlab:
    """The hub's address and the stations made so far; see :func:`netlab`."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.hub_device = f"{tag}h"
        self.stations: list[Station] = []

    def station(self, link: Link) -> Station:
        """A new station namespace behind ``link``."""
        n = len(self.stations) + 1
        netns = f"{self.tag}s{n}"
        address = f"10.77.{n}.2"
        station_tun, hub_tun = f"{self.tag}t{n}", f"{self.tag}u{n}"
        _ip(["ip", "netns", "add", netns])
        line = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.netlab",
                "--netns",
                netns,
                "--station-tun",
                station_tun,
                "--hub-tun",
                hub_tun,
                "--loss",
                str(link.loss),
                "--delay",
                str(link.rtt_ms / 2000),
                *(["--block-udp"] if link.block_udp else []),
            ],
            cwd=Path(__file__).resolve().parent.parent,
            stdout=subprocess.PIPE,
        )
        station = Station(netns, address, link, line, station_tun, hub_tun)
        self.stations.append(station)
        assert line.stdout is not None
        if line.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"delay line for {netns} did not start")
        inside = ["ip", "netns", "exec", netns]
        for command in (
            [*inside, "ip", "link", "set", "lo", "up"],
            [*inside, "ip", "addr", "add", f"{address}/24", "dev", station_tun],
            [*inside, "ip", "link", "set", station_tun, "up"],
            # The default route: Chromium gathers candidates on its interface only.
            [*inside, "ip", "route", "add", "default", "dev", station_tun],
            ["ip", "link", "set", hub_tun, "up"],
            ["ip", "route", "add", f"10.77.{n}.0/24", "dev", hub_tun],
            *_shaping_commands(station, link.rate_kbit),
        ):
            _ip(command)
        return station

    def close(self) -> None:
        for station in self.stations:
            station.line.terminate()
            try:
                station.line.wait(timeout=5)
            except subprocess.TimeoutExpired:
                station.line.kill()
                station.line.wait()
            subprocess.run(["ip", "netns", "del", station.netns], check=False)
        subprocess.run(
            ["ip", "link", "del", self.hub_device], check=False, stderr=subprocess.DEVNULL
        )


@contextmanager
def netlab(tag: str | None = None) -> Iterator[Netlab]:
    """The lab, with :data:`HUB_ADDRESS` up in this namespace; removed on exit."""
    from tests.conftest import missing_service

    reason = available()
    if reason is not None:
        missing_service(reason)
    lab = Netlab(tag or f"ph{os.getpid() % 100000}")
    lab.close()  # what a killed run of this same process id left behind
    try:
        _ip(["ip", "tuntap", "add", "dev", lab.hub_device, "mode", "tun"])
        _ip(["ip", "addr", "add", f"{HUB_ADDRESS}/32", "dev", lab.hub_device])
        _ip(["ip", "link", "set", lab.hub_device, "up"])
        yield lab
    finally:
        lab.close()


def _shaping_commands(
    station: Station, rate_kbit: int | None, change: bool = False
) -> list[list[str]]:
    """An htb class at the rate, its queue a bfifo of ~300 ms (a village link's: a
    burst waits, a flood is lost), on both devices; with ``change``, the rate and
    queue of those made before, whose packets stay queued (tbf, changed, drops them)."""
    if rate_kbit is None:
        return []
    verb = "change" if change else "add"
    rate = f"{rate_kbit}kbit"
    limit = str(max(16000, rate_kbit * 1000 * 3 // 80))  # bytes in 300 ms
    commands = []
    for device, prefix in (
        (station.station_tun, station.run()),
        (station.hub_tun, []),
    ):
        tc = [*prefix, "tc"]
        if not change:
            commands.append(
                [*tc, "qdisc", "add", "dev", device, "root", "handle", "1:", "htb", "default", "1"]
            )
        commands += [
            [
                *tc,
                "class",
                verb,
                "dev",
                device,
                "parent",
                "1:",
                "classid",
                "1:1",
                "htb",
                "rate",
                rate,
                "ceil",
                rate,
                "burst",
                "16kb",
            ],
            [
                *tc,
                "qdisc",
                verb,
                "dev",
                device,
                "parent",
                "1:1",
                "handle",
                "10:",
                "bfifo",
                "limit",
                limit,
            ],
        ]
    return commands


def _ip(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {result.stderr.strip()}")


# --- the delay line (its own process: its timing must not wait on the test) ----


def _open_tun(name: str) -> int:
    """A new TUN device ``name`` in this thread's namespace; it goes when its fd closes."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
    return fd


def _enter(fd: int) -> None:
    """Move this thread to the network namespace ``fd`` names."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


def delay_line(
    netns: str, station_tun: str, hub_tun: str, loss: float, delay: float, block_udp: bool
) -> None:
    """Carry packets between the station's TUN device (in ``netns``) and the hub's
    (here), losing ``loss`` of them, holding each ``delay`` seconds, and losing every
    UDP packet when ``block_udp`` or after SIGUSR1 until SIGUSR2. Runs until SIGTERM."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    away = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    _enter(away)
    station = _open_tun(station_tun)
    _enter(home)
    hub = _open_tun(hub_tun)
    os.close(home)
    os.close(away)
    other = {station: hub, hub: station}
    chance = random.Random(0x1AB)
    held: list[tuple[float, int, int, bytes]] = []
    order = 0
    running = True

    cut = False

    def stop(*_: object) -> None:
        nonlocal running
        running = False

    def cut_udp(signum: int, _: object) -> None:
        nonlocal cut
        cut = signum == signal.SIGUSR1

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGUSR1, cut_udp)
    signal.signal(signal.SIGUSR2, cut_udp)
    print("ready", flush=True)
    while running:
        now = time.monotonic()
        while held and held[0][0] <= now:
            _, _, out, packet = heapq.heappop(held)
            try:
                os.write(out, packet)
            except OSError:
                pass  # the device's queue is full: lost, as on a wire
        timeout = max(0.0, held[0][0] - now) if held else 0.5
        try:
            readable, _, _ = select.select([station, hub], [], [], timeout)
        except InterruptedError:
            continue
        for fd in readable:
            while True:
                try:
                    packet = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if (
                    (block_udp or cut)
                    and len(packet) > 9
                    and packet[0] >> 4 == 4
                    and packet[9] == _UDP
                ):
                    continue
                if loss and chance.random() < loss:
                    continue
                order += 1
                heapq.heappush(held, (time.monotonic() + delay, order, other[fd], packet))


def main() -> None:
    parser = argparse.ArgumentParser(description=delay_line.__doc__)
    parser.add_argument("--netns", required=True)
    parser.add_argument("--station-tun", required=True)
    parser.add_argument("--hub-tun", required=True)
    parser.add_argument("--loss", type=float, default=0.0)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--block-udp", action="store_true")
    args = parser.parse_args()
    delay_line(args.netns, args.station_tun, args.hub_tun, args.loss, args.delay, args.block_udp)


if __name__ == "__main__":
    main()
