"""A hub killed (SIGKILL) in the middle of a recording leaves files that play."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import av
import httpx
import imageio_ffmpeg
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from hub.client import HubClient
from hub.ids import ParticipantIdentity, RoomName
from hub.tokens import Role, TokenSigner, grant_for_role
from tests.helpers import wait_until
from tests.hubserver import SECRET, free_port, hub_process


def recorded_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / "recordings").rglob("*") if p.suffix in (".mkv", ".webm"))


def playable_seconds(path: Path) -> float:
    """Decode with the real ffmpeg (must succeed), then measure with PyAV."""
    decoded = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "null", "-"],
        capture_output=True,
    )
    assert decoded.returncode == 0, decoded.stderr
    with av.open(str(path)) as container:
        stream = container.streams[0]
        times = [float(p.pts * p.time_base) for p in container.demux(stream) if p.pts is not None]
    return max(times) - min(times) if times else 0.0


async def test_recording_survives_a_killed_hub(tmp_path: Path) -> None:
    port = free_port()
    hub = await hub_process(tmp_path, port)
    base = f"http://127.0.0.1:{port}"
    grant = grant_for_role(RoomName("crash"), ParticipantIdentity("C"), Role.CENTER, ttl=600)
    token = TokenSigner(SECRET).issue(grant)
    center = HubClient(f"ws://127.0.0.1:{port}/ws", token)
    try:
        async with httpx.AsyncClient(base_url=base) as http:
            await center.connect()
            await center.publish({"camera": VideoStreamTrack(), "microphone": AudioStreamTrack()})
            started = await http.post(
                "/api/rooms/crash/recording", headers={"Authorization": f"Bearer {token}"}
            )
            assert started.status_code == 201

        async def written() -> str | None:
            files = await asyncio.to_thread(recorded_files, tmp_path)
            try:
                spans = [await asyncio.to_thread(playable_seconds, p) for p in files]
            except AssertionError as exc:  # a file with no complete cluster yet
                return f"not playable yet: {exc}"
            return None if len(spans) == 2 and min(spans) > 3 else f"seconds so far {spans}"

        # The recorder flushes as it goes: what it wrote plays before any crash.
        await wait_until(written, timeout=40, interval=1.0)
        hub.send_signal(signal.SIGKILL)  # no trailer, no manifest update: a crash
        await hub.wait()
    finally:
        if hub.returncode is None:
            hub.kill()
            await hub.wait()
        await center.close()
    files = await asyncio.to_thread(recorded_files, tmp_path)
    assert len(files) == 2
    for path in files:
        seconds = await asyncio.to_thread(playable_seconds, path)
        assert seconds > 1.5, (path.name, seconds)
