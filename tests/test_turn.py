"""TURN: deploy/turnserver.conf, moved to 127.0.0.1, relays a WebRTC session.

Both peers use the relay-only policy, as a station behind a strict NAT would end
up doing: no host candidate is gathered, so every packet goes through coturn, and
all of it stays on 127.0.0.1 (coturn needs ``allow-loopback-peers`` for that).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
)

from tests.conftest import missing_service
from tests.hubserver import free_port

CONF = Path(__file__).resolve().parent.parent / "deploy" / "turnserver.conf"
HUB_ADDRESS = "10.0.0.5"
"""The placeholder for the hub's address in the deploy config."""
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Turn:
    port: int
    username: str
    password: str


def loopback_config(port: int, workdir: Path) -> tuple[str, str]:
    """The deploy config with the hub at 127.0.0.1, the test's port and files; and its
    ``user`` line (name:password)."""
    replaced = {"listening-port", "syslog"}
    lines = [
        line.replace(HUB_ADDRESS, LOOPBACK)
        for line in CONF.read_text().splitlines()
        if line.split("=", 1)[0].strip() not in replaced
    ]
    lines += [
        f"listening-port={port}",
        "allow-loopback-peers",
        f"log-file={workdir / 'turn.log'}",
        "simple-log",
        f"pidfile={workdir / 'turn.pid'}",
        f"userdb={workdir / 'turndb'}",
    ]
    (user,) = (line.split("=", 1)[1] for line in lines if line.startswith("user="))
    return "\n".join(lines) + "\n", user


def wait_listening(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"turnserver exited with {process.returncode}:\n{log.read_text()}")
        try:
            socket.create_connection((LOOPBACK, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"turnserver not listening on {port} after 10 s:\n{log.read_text()}")


@pytest.fixture
def turn(tmp_path: Path) -> Iterator[Turn]:
    binary = shutil.which("turnserver")
    if binary is None:
        missing_service("no turnserver (apt-get install -y coturn)")
    assert binary is not None  # missing_service() does not return
    port = free_port()
    config, user = loopback_config(port, tmp_path)
    (tmp_path / "turnserver.conf").write_text(config)
    username, password = user.split(":", 1)
    process = subprocess.Popen(
        [binary, "-c", str(tmp_path / "turnserver.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(process, port, tmp_path / "turn.log")
        yield Turn(port, username, password)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def test_two_relay_only_peers_exchange_data_through_coturn(turn: Turn) -> None:
    configuration = RTCConfiguration(
        iceServers=[
            RTCIceServer(
                urls=f"turn:{LOOPBACK}:{turn.port}",
                username=turn.username,
                credential=turn.password,
            )
        ],
        iceTransportPolicy=RTCIceTransportPolicy.RELAY,
    )
    station, hub = RTCPeerConnection(configuration), RTCPeerConnection(configuration)
    loop = asyncio.get_running_loop()
    opened: asyncio.Future[None] = loop.create_future()
    received: asyncio.Future[str] = loop.create_future()
    try:
        channel = station.createDataChannel("roll-call")
        channel.on("open", lambda: opened.set_result(None))

        @hub.on("datachannel")
        def on_datachannel(incoming: RTCDataChannel) -> None:
            incoming.on("message", received.set_result)

        await station.setLocalDescription(await station.createOffer())
        await hub.setRemoteDescription(station.localDescription)
        await hub.setLocalDescription(await hub.createAnswer())
        await station.setRemoteDescription(hub.localDescription)

        await asyncio.wait_for(opened, timeout=30)
        channel.send("station-042 present")
        assert await asyncio.wait_for(received, timeout=30) == "station-042 present"

        for peer in (station, hub):
            assert "typ relay" in peer.localDescription.sdp
            assert "typ host" not in peer.localDescription.sdp
            assert peer.sctp is not None
            ice = peer.sctp.transport.transport
            # aioice has no public accessor for the nominated pair.
            pair = ice._connection._nominated[1]
            assert (pair.local_candidate.type, pair.remote_candidate.type) == ("relay", "relay")
            assert pair.local_candidate.host == pair.remote_candidate.host == LOOPBACK
    finally:
        await station.close()
        await hub.close()
