"""TURN: deploy/turnserver.conf, moved to the test's address, relays WebRTC over UDP,
TCP and TLS with the short-lived credentials the hub hands out (coturn's REST API
secret); an expired credential is refused.

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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
)
from pydantic import ValidationError

from bench.households import self_signed
from hub.client import HubClient
from hub.settings import Settings
from hub.turn import link_headers, turn_credentials, turn_ice_server
from tests.conftest import missing_service
from tests.hubserver import free_port, running_hub

CONF = Path(__file__).resolve().parent.parent / "deploy" / "turnserver.conf"
HUB_ADDRESS = "10.0.0.5"
"""The placeholder for the hub's address in the deploy config."""
LOOPBACK = "127.0.0.1"
SECRET = "turn-secret-for-the-tests-only"


@dataclass(frozen=True)
class Turn:
    address: str
    port: int
    tls_port: int
    secret: str
    cert: Path
    """The self-signed certificate of the TLS listener (its address as the name)."""

    def urls(self, transport: str) -> list[str]:
        if transport == "tls":
            return [f"turns:{self.address}:{self.tls_port}?transport=tcp"]
        return [f"turn:{self.address}:{self.port}?transport={transport}"]


def deploy_config(address: str, port: int, tls_port: int, workdir: Path) -> tuple[str, Path]:
    """The deploy config moved to ``address`` (the hub's and the relay's), the test's
    ports, secret and files; and the certificate it serves."""
    cert, key = self_signed(workdir, address, "turn")
    replaced = {
        "listening-port",
        "tls-listening-port",
        "syslog",
        "static-auth-secret",
        "cert",
        "pkey",
    }
    lines = [
        line.replace(HUB_ADDRESS, address)
        for line in CONF.read_text().splitlines()
        if line.split("=", 1)[0].strip() not in replaced
    ]
    lines += [
        f"listening-port={port}",
        f"tls-listening-port={tls_port}",
        f"static-auth-secret={SECRET}",
        f"cert={cert}",
        f"pkey={key}",
        f"log-file={workdir / 'turn.log'}",
        "simple-log",
        f"pidfile={workdir / 'turn.pid'}",
        f"userdb={workdir / 'turndb'}",
    ]
    if address.startswith("127."):
        lines.append("allow-loopback-peers")
    return "\n".join(lines) + "\n", cert


def wait_listening(process: subprocess.Popen[bytes], address: str, port: int, log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"turnserver exited with {process.returncode}:\n{log.read_text()}")
        try:
            socket.create_connection((address, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"turnserver not listening on {port} after 10 s:\n{log.read_text()}")


@contextmanager
def coturn(workdir: Path, address: str = LOOPBACK) -> Iterator[Turn]:
    """deploy/turnserver.conf running on ``address``, relaying only to ``address``
    (where the hub is)."""
    binary = shutil.which("turnserver")
    if binary is None:
        missing_service("no turnserver (apt-get install -y coturn)")
    assert binary is not None  # missing_service() does not return
    port, tls_port = free_port(), free_port()
    config, cert = deploy_config(address, port, tls_port, workdir)
    (workdir / "turnserver.conf").write_text(config)
    process = subprocess.Popen(
        [binary, "-c", str(workdir / "turnserver.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(process, address, port, workdir / "turn.log")
        wait_listening(process, address, tls_port, workdir / "turn.log")
        yield Turn(address, port, tls_port, SECRET, cert)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def turn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Turn]:
    with coturn(tmp_path) as server:
        # aioice checks a turns: server's certificate against the default trust store.
        monkeypatch.setenv("SSL_CERT_FILE", str(server.cert))
        yield server


def relay_only(urls: list[str], username: str, credential: str) -> RTCConfiguration:
    return RTCConfiguration(
        iceServers=[RTCIceServer(urls=urls, username=username, credential=credential)],
        iceTransportPolicy=RTCIceTransportPolicy.RELAY,
    )


async def exchange(station: RTCPeerConnection, hub: RTCPeerConnection) -> None:
    """Open a data channel from ``station`` to ``hub`` and pass one message."""
    loop = asyncio.get_running_loop()
    opened: asyncio.Future[None] = loop.create_future()
    received: asyncio.Future[str] = loop.create_future()
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


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
async def test_two_relay_only_peers_exchange_data_through_coturn(
    turn: Turn, transport: str
) -> None:
    now = time.time()
    peers = [
        RTCPeerConnection(
            relay_only(turn.urls(transport), *turn_credentials(SECRET, identity, 600, now))
        )
        for identity in ("S042", "hub")
    ]
    station, hub = peers
    try:
        await exchange(station, hub)
        for peer in peers:
            assert "typ relay" in peer.localDescription.sdp
            assert "typ host" not in peer.localDescription.sdp
            assert peer.sctp is not None
            ice = peer.sctp.transport.transport
            # aioice has no public accessor for the nominated pair.
            pair = ice._connection._nominated[1]
            assert (pair.local_candidate.type, pair.remote_candidate.type) == ("relay", "relay")
            assert pair.local_candidate.host == pair.remote_candidate.host == LOOPBACK
    finally:
        for peer in peers:
            await peer.close()


async def test_an_expired_or_forged_credential_gets_no_relay(turn: Turn) -> None:
    expired = turn_credentials(SECRET, "S042", 60, time.time() - 3600)
    forged = turn_credentials("not-the-secret-at-all", "S042", 600, time.time())
    for username, credential in (expired, forged):
        peer = RTCPeerConnection(relay_only(turn.urls("tcp"), username, credential))
        try:
            peer.createDataChannel("x")
            await peer.setLocalDescription(await peer.createOffer())
            assert "typ relay" not in peer.localDescription.sdp
        finally:
            await peer.close()


def test_credentials_follow_coturns_rest_scheme() -> None:
    # `echo -n 1700000600:S042 | openssl dgst -sha1 -hmac secret -binary | base64`
    assert turn_credentials("secret", "S042", 600, 1_700_000_000.7) == (
        "1700000600:S042",
        "59OK63IzYZtnUosAY2yuZvLE4hk=",
    )
    server = turn_ice_server(["turn:h:3478?transport=tcp", "turns:h:5349"], "s", "a:b", 60, 0)
    assert server["username"] == "60:a:b"
    assert link_headers([server]) == [
        f'<{url}>; rel="ice-server"; username="60:a:b"; credential="{server["credential"]}"'
        '; credential-type="password"'
        for url in server["urls"]
    ]


async def test_the_hub_hands_out_fresh_turn_credentials(tmp_path: Path, turn: Turn) -> None:
    urls = turn.urls("tcp") + turn.urls("tls")
    async with running_hub(
        tmp_path / "hub", turn_urls=urls, turn_secret=SECRET, turn_ttl=900
    ) as hub:
        station = HubClient(hub.ws, hub.token("t", "S042", "station"))
        try:
            joined = await station.connect()
            (server,) = joined["ice_servers"]
            assert server["urls"] == urls
            expiry, identity = server["username"].split(":", 1)
            assert identity == "S042" and 890 < int(expiry) - time.time() <= 900
            # What the hub handed out is what coturn accepts.
            peer = RTCPeerConnection(relay_only(urls[:1], server["username"], server["credential"]))
            try:
                peer.createDataChannel("x")
                await peer.setLocalDescription(await peer.createOffer())
                assert "typ relay" in peer.localDescription.sdp
            finally:
                await peer.close()
        finally:
            await station.close()
        async with httpx.AsyncClient(base_url=hub.base) as http:
            offer = await whep_offer()
            response = await http.post(
                "/whep/t",
                content=offer,
                headers={
                    "Content-Type": "application/sdp",
                    "Authorization": f"Bearer {hub.token('t', 'V1', 'viewer')}",
                },
            )
        assert response.status_code == 201, response.text
        links = response.headers.get_list("link")
        assert [link.split(">")[0][1:] for link in links] == urls
        assert all('credential-type="password"' in link for link in links)


async def whep_offer() -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


@pytest.mark.parametrize(
    "settings",
    [
        {"turn_urls": ["turn:10.0.0.5:3478"]},  # no secret
        {"turn_urls": ["turn:10.0.0.5:3478"], "turn_secret": "short"},
        {"turn_urls": ["stun:10.0.0.5:3478"], "turn_secret": SECRET},
        {"turn_secret": SECRET, "turn_ttl": 10},
    ],
)
def test_half_a_turn_configuration_is_refused_at_start(settings: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Settings(**settings)
