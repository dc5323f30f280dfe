"""/healthz, /metrics, and the command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from hub.client import HubClient
from hub.tokens import Role, TokenSigner
from tests.helpers import wait_until
from tests.hubserver import RunningHub, free_port


async def test_metrics_count_rooms_forwarding_and_links(hub_server: RunningHub) -> None:
    center = HubClient(hub_server.ws, hub_server.token("met", "C", "center"))
    station = HubClient(hub_server.ws, hub_server.token("met", "S1", "station"), decode=False)
    try:
        await center.connect()
        await center.publish({"camera": VideoStreamTrack(), "microphone": AudioStreamTrack()})
        await station.connect()
        await wait_until(lambda: None if len(station.received) == 2 else "not subscribed")
        await wait_until(
            lambda: (
                None
                if hub_server.hub.rooms["met"].by_identity("S1").link.rtt_ms is not None  # type: ignore[index,arg-type,union-attr]
                else "no RTT yet"
            ),
            timeout=15,
        )
        async with httpx.AsyncClient() as http:
            health = await http.get(f"{hub_server.base}/healthz")
            assert health.status_code == 200 and health.json()["status"] == "ok"
            text = (
                await http.get(f"{hub_server.base}/metrics", headers=hub_server.metrics_headers)
            ).text
        samples = {
            line.split(" ")[0]: float(line.split(" ")[1])
            for line in text.splitlines()
            if line and not line.startswith("#")
        }
        assert samples["practicehub_rooms"] == 1
        assert samples["practicehub_participants"] == 2
        assert samples["practicehub_publications"] == 2
        assert samples["practicehub_subscriptions"] == 2
        assert samples["practicehub_packets_forwarded_total"] > 0
        assert samples["practicehub_bytes_forwarded_total"] > 0
        assert samples["practicehub_keyframe_requests_total"] >= 1
        assert "practicehub_nacks_received_total" in samples
        rtt = samples['practicehub_participant_rtt_seconds{room="met",identity="S1"}']
        assert 0 <= rtt < 1
        assert 'practicehub_participant_loss_ratio{room="met",identity="S1"}' in samples
        assert (
            samples['practicehub_participant_inbound_bits_per_second{room="met",identity="C"}'] > 0
        )
    finally:
        await station.close()
        await center.close()


def test_token_command_prints_a_verifiable_token(tmp_path: Path) -> None:
    env = {**os.environ, "HUB_SECRET": "cli-secret-0123456789abcdef"}
    out = subprocess.run(
        [sys.executable, "-m", "hub", "token", "--room", "r1", "--identity", "I01-S001",
         "--role", "station", "--ttl", "60", "--name", "东湖村"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    grant = TokenSigner("cli-secret-0123456789abcdef").verify(out.stdout.strip())
    assert (grant.room, grant.identity, grant.role, grant.name) == (
        "r1",
        "I01-S001",
        Role.STATION,
        "东湖村",
    )
    assert 50 < grant.expires_at - time.time() <= 60
    bad = subprocess.run(
        [sys.executable, "-m", "hub", "token", "--room", "r", "--identity", "x", "--role", "king"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_token_command_refuses_a_room_name_that_is_not_one(tmp_path: Path) -> None:
    env = {**os.environ, "HUB_SECRET": "cli-secret-0123456789abcdef"}
    bad = subprocess.run(
        [sys.executable, "-m", "hub", "token", "--room", "../../etc", "--identity", "x",
         "--role", "viewer"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2 and "room name" in bad.stderr, bad.stderr
    assert bad.stdout == ""


def test_token_secret_is_generated_once_into_the_data_dir(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HUB_SECRET"}
    args = [sys.executable, "-m", "hub", "token", "--room", "r", "--identity", "x",
            "--role", "viewer", "--data-dir", str(tmp_path)]  # fmt: skip
    first = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    secret = (tmp_path / "secret").read_text().strip()
    assert len(secret) >= 32 and (tmp_path / "secret").stat().st_mode & 0o077 == 0
    subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    assert (tmp_path / "secret").read_text().strip() == secret
    TokenSigner(secret).verify(first.stdout.strip())


def test_serve_command_runs_the_hub(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "HUB_ICE_GATHER_ADDRESSES": '["127.0.0.1"]'}
    process = subprocess.Popen(
        [sys.executable, "-m", "hub", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(tmp_path)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stderr.read().decode()  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "hub did not start"
                time.sleep(0.2)
        assert response.json()["status"] == "ok"
        assert (tmp_path / "secret").exists() and (tmp_path / "hub.sqlite3").exists()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
        log = process.stderr.read().decode()  # type: ignore[union-attr]
        # uvicorn shuts down gracefully, then re-raises the signal as its exit status.
        assert "Application shutdown complete" in log, log
