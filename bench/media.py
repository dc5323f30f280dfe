"""``python -m bench.media``: what recording, library processing and live HLS cost.

Three measurements, everything on 127.0.0.1, each hub in its own process:

1. **Recording CPU.** K rooms, one aiortc publisher each (the pre-encoded VP8 640x360
   ~1.5 Mbps + Opus clip of ``bench._media``, replayed without encoding). The hub's
   CPU (utime + stime from ``/proc``, all threads, so the recorder's worker threads
   too) over a window with recording off, then on in every room; the difference ÷ K.
2. **Library processing speed.** A 10-minute recording directory in the recorder's
   format (H.264 in Matroska + Opus in WebM + ``recording.json``), made quickly with
   ffmpeg (not timed), then ``media.processing.Processor.process`` on it, timed; and
   again without the microphone track, which tells the audio encode's share.
3. **Live glass-to-glass latency.** A publisher draws its wall clock (32 bits of
   milliseconds, as 8x4 black/white blocks) into each frame before aiortc encodes it
   (VP8); the hub transcodes to H.264 and packages LL-HLS; a player decodes and reads
   the blocks back. Latency = wall clock when a frame is decoded − its stamp. Players:
   a minimal LL-HLS client (blocking playlist reloads, every part fetched as soon as it
   is listed, fed to an ffmpeg decoder: no buffering at all), and ffmpeg's own HLS
   demuxer as a stock player (whole segments, starts 3 segments behind the live edge).

See bench/README.md for what the figures mean and what was measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack
from av import VideoFrame

from bench._media import clip_tracks, load_clip
from bench.fanout import HubProcess, cpu_seconds
from hub.aiortc_internals import restrict_host_addresses
from hub.client import HubClient
from hub.ids import ParticipantIdentity, RoomName
from hub.tokens import Role, grant_for_role
from media.library import new_id
from media.processing import MANIFEST, Processor, ffmpeg_exe

STAMP_COLUMNS, STAMP_ROWS = 8, 4
"""32 blocks, one bit each: big enough to survive VP8, a transcode and any scaling."""
STAMP_SIZE = (640, 360)
BLACK, WHITE = 16, 235


class BenchError(RuntimeError):
    """The benchmark could not measure; the message says what went wrong."""


# --- the hub and its publishers --------------------------------------------------------


def token(hub: HubProcess, room: str, identity: str = "CENTER") -> str:
    grant = grant_for_role(RoomName(room), ParticipantIdentity(identity), Role.CENTER, ttl=3600)
    return hub.signer.issue(grant)


def start_hub(data_dir: Path) -> HubProcess:
    """Blocking: call it in a thread."""
    data_dir.mkdir(parents=True, exist_ok=True)
    hub = HubProcess(data_dir)
    hub.wait_healthy(30)
    return hub


async def room_action(http: httpx.AsyncClient, hub: HubProcess, room: str, action: str) -> None:
    """POST /api/rooms/{room}/{action} (recording, live) as the room's moderator."""
    answer = await http.post(
        f"{hub.base}/api/rooms/{room}/{action}",
        headers={"Authorization": f"Bearer {token(hub, room)}"},
    )
    if answer.status_code != 201:
        raise BenchError(f"{action} in {room}: HTTP {answer.status_code} {answer.text}")


async def cpu_percent(pid: int, seconds: float) -> float:
    """The process's CPU over the next ``seconds``, in % of one core."""
    start_cpu, start = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    return 100 * (cpu_seconds(pid) - start_cpu) / (time.monotonic() - start)


# --- 1. recording ----------------------------------------------------------------------


async def measure_recording(work: Path, streams: int, window: float) -> dict[str, Any]:
    hub = await asyncio.to_thread(start_hub, work / "hub-recording")
    clients: list[HubClient] = []
    try:
        clip = await asyncio.to_thread(load_clip)
        rooms = [f"rec{n}" for n in range(streams)]
        for room in rooms:
            client = HubClient(hub.ws, token(hub, room))
            clients.append(client)
            await client.connect()
            video, audio = clip_tracks(clip)
            await client.publish({"camera": video, "microphone": audio})
        await asyncio.sleep(3)  # connections settle, streams flow
        off = await cpu_percent(hub.process.pid, window)
        async with httpx.AsyncClient(timeout=10) as http:
            for room in rooms:
                await room_action(http, hub, room, "recording")
        await asyncio.sleep(2)  # every recorder got its keyframe and opened its files
        on = await cpu_percent(hub.process.pid, window)
        recordings = list((work / "hub-recording" / "recordings").iterdir())
        written = sum(f.stat().st_size for d in recordings for f in d.iterdir())
        if len(recordings) != streams or written == 0:
            raise BenchError(f"expected {streams} recordings with media, found {recordings}")
        return {
            "recording_cpu_percent_per_stream": round((on - off) / streams, 2),
            "recording_streams": streams,
            "recording_hub_cpu_percent_off": round(off, 1),
            "recording_hub_cpu_percent_on": round(on, 1),
            "recording_window_s": window,
            "recording_mb_written": round(written / 1e6, 1),
        }
    finally:
        for client in clients:
            await client.close()
        # Stopped without ending the recordings through the API: the library jobs
        # that would follow are not what this measures.
        await asyncio.to_thread(hub.stop)


# --- 2. library processing -------------------------------------------------------------


async def run_ffmpeg(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        ffmpeg_exe(), "-v", "error", "-y", *args, stderr=asyncio.subprocess.PIPE
    )
    try:
        _, errors = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise BenchError(f"ffmpeg failed: {errors.decode(errors='replace')[-500:]}")


async def make_recording(directory: Path, seconds: float) -> None:
    """A recording as the recorder leaves it: a lecturer's camera (H.264, no B-frames,
    as WebRTC sends it, 640x360 30 fps ~1.5 Mbps) and microphone (Opus), one file
    each, and the manifest. Encoded at ``ultrafast``: making it is not measured."""
    await asyncio.to_thread(directory.mkdir, parents=True)
    video, audio = "00-camera-center.mkv", "01-microphone-center.webm"
    await asyncio.gather(
        run_ffmpeg(
            "-f", "lavfi", "-i", f"testsrc2=size=640x360:rate=30:duration={seconds}",
            "-c:v", "libx264", "-preset", "ultrafast", "-bf", "0", "-g", "60",
            "-b:v", "1500k", "-pix_fmt", "yuv420p", str(directory / video),
        ),
        run_ffmpeg(
            "-f", "lavfi", "-i", f"sine=frequency=330:sample_rate=48000:duration={seconds}",
            "-c:a", "libopus", "-b:a", "32k", "-ac", "2", str(directory / audio),
        ),
    )  # fmt: skip
    start = time.time() - seconds
    track = {"participant": "center", "label": "center", "start": start, "end": start + seconds}
    manifest = {
        "started_at": start,
        "ended_at": start + seconds,
        "status": "stopped",
        "error": None,
        "tracks": [
            {
                **track,
                "track_id": "cam",
                "kind": "video",
                "codec": "H264",
                "source": "camera",
                "file": video,
            },
            {
                **track,
                "track_id": "mic",
                "kind": "audio",
                "codec": "opus",
                "source": "microphone",
                "file": audio,
            },
        ],
        "stage": [{"at": start, "stage": ["center"]}],
    }
    await asyncio.to_thread((directory / MANIFEST).write_text, json.dumps(manifest))


def without_microphone(directory: Path, into: Path) -> None:
    """The same recording with its microphone left out (the video file hard-linked)."""
    into.mkdir()
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["tracks"] = [t for t in manifest["tracks"] if t["kind"] == "video"]
    for t in manifest["tracks"]:
        os.link(directory / t["file"], into / t["file"])
    (into / MANIFEST).write_text(json.dumps(manifest))


async def time_processing(library_dir: Path, recording: Path) -> tuple[float, float]:
    """(seconds the processing took, the item's duration)."""

    async def ignore(percent: float) -> None:
        pass

    start = time.monotonic()
    duration = await Processor(library_dir).process(
        new_id(), "recording", [recording], "lecturer", ignore
    )
    return time.monotonic() - start, duration


async def measure_processing(work: Path, minutes: float) -> dict[str, Any]:
    seconds = minutes * 60
    full, video_only = work / "recording", work / "recording-video-only"
    made = time.monotonic()
    await make_recording(full, seconds)
    made = time.monotonic() - made
    await asyncio.to_thread(without_microphone, full, video_only)
    library = work / "library"
    took, duration = await time_processing(library, full)
    took_video, _ = await time_processing(library, video_only)
    if abs(duration - seconds) > 2:
        raise BenchError(f"processed {duration:.1f} s of a {seconds:.0f} s recording")
    return {
        "processing_speed_x_realtime": round(seconds / took, 1),
        "processing_recording_s": seconds,
        "processing_s": round(took, 2),
        "processing_video_only_s": round(took_video, 2),
        "processing_video_only_speed_x_realtime": round(seconds / took_video, 1),
        "processing_audio_s": round(took - took_video, 2),
        "processing_input_mb": round(sum(f.stat().st_size for f in full.iterdir()) / 1e6, 1),
        "processing_making_the_recording_s": round(made, 1),
    }


# --- 3. live latency -------------------------------------------------------------------


def stamp_planes(value: int) -> tuple[bytes, bytes]:
    """Luma with ``value``'s 32 bits as blocks (most significant first, row by row),
    and a neutral chroma plane."""
    width, height = STAMP_SIZE
    block_w, block_h = width // STAMP_COLUMNS, height // STAMP_ROWS
    rows = []
    for row in range(STAMP_ROWS):
        bits = [(value >> (31 - row * STAMP_COLUMNS - col)) & 1 for col in range(STAMP_COLUMNS)]
        line = b"".join(bytes([WHITE if bit else BLACK]) * block_w for bit in bits)
        rows.append(line * block_h)
    return b"".join(rows), bytes([128]) * (width // 2 * height // 2)


def read_stamp(blocks: bytes) -> int:
    """The value of 32 gray levels, one per block (a frame scaled down to 8x4)."""
    value = 0
    for level in blocks:
        value = value << 1 | (level >= 128)
    return value


def now_ms() -> int:
    return int(time.time() * 1000) & 0xFFFFFFFF


def age_s(stamp: int, at_ms: int) -> float:
    """Seconds from ``stamp`` to ``at_ms`` on the 32-bit millisecond clock."""
    return ((at_ms - stamp) & 0xFFFFFFFF) / 1000


class StampedVideo(VideoStreamTrack):
    """Each frame shows the wall clock at the moment it is made (the "glass")."""

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = VideoFrame(STAMP_SIZE[0], STAMP_SIZE[1], "yuv420p")
        luma, chroma = stamp_planes(now_ms())
        if frame.planes[0].line_size != STAMP_SIZE[0]:
            raise BenchError("unexpected padding in the video frame")
        frame.planes[0].update(luma)
        frame.planes[1].update(chroma)
        frame.planes[2].update(chroma)
        frame.pts, frame.time_base = pts, time_base
        return frame


def decoder_args(source: list[str]) -> list[str]:
    """ffmpeg decoding ``source`` to 8x4 gray pixels per frame on stdout: one level per
    stamp block (an area average). One decoder thread: frame threads would add frames
    of delay."""
    return [
        ffmpeg_exe(), "-v", "fatal", "-threads", "1", "-flags", "low_delay",
        "-fflags", "nobuffer", "-probesize", "32", "-analyzeduration", "0",
        *source,
        # passthrough: one output per decoded frame, never a duplicate (which would
        # carry an old stamp into a later time).
        "-map", "0:v:0", "-fps_mode", "passthrough",
        "-vf", f"scale={STAMP_COLUMNS}:{STAMP_ROWS}:flags=area",
        "-pix_fmt", "gray", "-f", "rawvideo", "-flush_packets", "1", "pipe:1",
    ]  # fmt: skip


@dataclass
class Samples:
    latencies: list[float] = field(default_factory=list)
    """Per decoded frame: decode wall clock − stamp, seconds."""
    server: list[float] = field(default_factory=list)
    """Per LL-HLS part: when the client had it − the stamp of its newest frame."""
    rejected: int = 0
    """Frames whose stamp did not read as a plausible time (should be 0)."""


async def read_frames(
    stdout: asyncio.StreamReader,
    samples: Samples,
    skip_until: float,
    part_of: Callable[[], tuple[int, float]] | None = None,
) -> None:
    """Read stamps until the stream ends. ``part_of`` gives (index, fetched-at ms) of
    the newest part fed to the decoder: frames decoded after it came from it."""
    newest: dict[int, tuple[float, int]] = {}
    frame_bytes = STAMP_COLUMNS * STAMP_ROWS
    while True:
        try:
            blocks = await stdout.readexactly(frame_bytes)
        except asyncio.IncompleteReadError:
            break
        at = now_ms()
        stamp = read_stamp(blocks)
        latency = age_s(stamp, at)
        if latency > 60:
            samples.rejected += 1
            continue
        if time.monotonic() < skip_until:
            continue  # start-up: the player catching up is not the steady latency
        samples.latencies.append(latency)
        if part_of is not None:
            part, fetched = part_of()
            newest[part] = (fetched, max(stamp, newest.get(part, (0.0, 0))[1]))
    samples.server += [age_s(stamp, int(fetched)) for fetched, stamp in newest.values()]


PART = re.compile(r'#EXT-X-PART:.*URI="part(\d+)\.(\d+)\.m4s"(.*)')
MAP = re.compile(r'#EXT-X-MAP:URI="([^"]+)"')


async def ll_hls_client(
    http: httpx.AsyncClient, playlist: str, write: Callable[[bytes], Awaitable[None]]
) -> None:
    """A low-latency HLS client without a buffer: from the newest independent part
    on, every part is fetched as soon as a blocking playlist reload lists it."""
    text = (await http.get(playlist)).text
    maps = MAP.findall(text)
    parts = [(int(m), int(p), "INDEPENDENT=YES" in rest) for m, p, rest in PART.findall(text)]
    independent = [i for i, part in enumerate(parts) if part[2]]
    if not maps or not independent:
        raise BenchError(f"no init or independent part in the live playlist:\n{text}")
    base = playlist.rsplit("/", 1)[0]
    await write((await http.get(f"{base}/{maps[-1]}")).content)
    last = (-1, -1)
    wanted = parts[independent[-1]][:2]
    while True:
        for msn, part, _ in parts:
            if (msn, part) > last and (msn, part) >= wanted:
                body = await http.get(f"{base}/part{msn}.{part}.m4s")
                if body.status_code != 200:
                    raise BenchError(f"part{msn}.{part}.m4s: HTTP {body.status_code}")
                await write(body.content)
                last = (msn, part)
        answer = await http.get(playlist, params={"_HLS_msn": last[0], "_HLS_part": last[1] + 1})
        parts = [(int(m), int(p), False) for m, p, _ in PART.findall(answer.text)]


async def play_ll_hls(playlist: str, seconds: float, warmup: float) -> Samples:
    samples = Samples()
    decoder = await asyncio.create_subprocess_exec(
        *decoder_args(["-f", "mp4", "-i", "pipe:0"]),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert decoder.stdin is not None and decoder.stdout is not None
    stdin = decoder.stdin
    fed = {"parts": 0, "at": 0.0}

    async def write(data: bytes) -> None:
        stdin.write(data)
        await stdin.drain()
        fed["parts"] += 1
        fed["at"] = float(now_ms())

    reader = asyncio.create_task(
        read_frames(
            decoder.stdout,
            samples,
            time.monotonic() + warmup,
            lambda: (int(fed["parts"]), fed["at"]),
        )
    )
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            with_timeout = asyncio.wait_for(ll_hls_client(http, playlist, write), warmup + seconds)
            try:
                await with_timeout
            except TimeoutError:
                pass  # the client plays until stopped
        stdin.close()
        await asyncio.wait_for(reader, 10)
    finally:
        reader.cancel()
        if decoder.returncode is None:
            decoder.kill()
        await decoder.wait()
    return samples


async def play_ffmpeg_hls(playlist: str, seconds: float, warmup: float) -> Samples:
    """ffmpeg's HLS demuxer as the player (a stock client: segments, no parts)."""
    samples = Samples()
    decoder = await asyncio.create_subprocess_exec(
        *decoder_args(["-i", playlist]),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
    )
    assert decoder.stdout is not None
    reader = asyncio.create_task(read_frames(decoder.stdout, samples, time.monotonic() + warmup))
    try:
        await asyncio.wait({reader}, timeout=warmup + seconds)
    finally:
        if decoder.returncode is None:
            decoder.kill()
        await decoder.wait()
        await asyncio.wait_for(reader, 10)
    return samples


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]  # fmt: skip
STAMP_READER = """
playlist => {
    // The household page's own player when there is one, else a plain <video>.
    const own = document.getElementById("player");
    const video = own || document.createElement("video");
    video.muted = true;
    video.autoplay = true;
    if (!own) document.body.append(video);
    // Drawn at 8x4, each canvas pixel samples the middle of one stamp block.
    const canvas = document.createElement("canvas");
    canvas.width = 8;
    canvas.height = 4;
    const g = canvas.getContext("2d", { willReadFrequently: true });
    window.stamps = [];
    const onFrame = () => {
        g.drawImage(video, 0, 0, 8, 4);
        const pixels = g.getImageData(0, 0, 8, 4).data;
        let stamp = 0;
        for (let i = 0; i < 32; i++) stamp = stamp * 2 + (pixels[i * 4] >= 128 ? 1 : 0);
        window.stamps.push([stamp, Date.now()]);
        video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
    if (own) return;
    // Chromium gives up on a live playlist that is still short: load it again.
    video.addEventListener("error", () => setTimeout(() => { video.src = playlist; }, 1000));
    video.src = playlist;
}
"""


async def play_chromium(
    hub: HubProcess, playlist: str, seconds: float, warmup: float, page_path: str | None = None
) -> Samples:
    """Debian's Chromium, headless: the household page ``page_path`` (its own
    player), or else the playlist in a plain ``<video>`` (the browser's native HLS);
    each presented frame's stamp is read from a canvas (``requestVideoFrameCallback``),
    its time is ``Date.now()`` then."""
    from playwright.async_api import async_playwright

    samples = Samples()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page()
            await page.goto(f"{hub.base}{page_path or '/healthz'}")  # the hub's origin
            await page.evaluate(STAMP_READER, playlist)
            await asyncio.sleep(warmup + seconds)
            stamps: list[list[int]] = await page.evaluate("window.stamps")
        finally:
            await browser.close()
    if not stamps:
        return samples
    start = stamps[0][1] + warmup * 1000
    for stamp, at in stamps:
        latency = age_s(stamp, at & 0xFFFFFFFF)
        if latency > 60:
            samples.rejected += 1
        elif at >= start:
            samples.latencies.append(latency)
    return samples


def summary(prefix: str, values: list[float]) -> dict[str, float]:
    if not values:
        return {f"{prefix}_samples": 0}
    ordered = sorted(values)
    p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
    return {
        f"{prefix}_p50_s": round(statistics.median(ordered), 3),
        f"{prefix}_p95_s": round(p95, 3),
        f"{prefix}_min_s": round(ordered[0], 3),
        f"{prefix}_max_s": round(ordered[-1], 3),
        f"{prefix}_samples": len(ordered),
    }


async def measure_live(work: Path, seconds: float) -> dict[str, Any]:
    hub = await asyncio.to_thread(start_hub, work / "hub-live")
    room = "live"
    client = HubClient(hub.ws, token(hub, room))
    try:
        await client.connect()
        await client.publish({"camera": StampedVideo(), "microphone": AudioStreamTrack()})
        playlist = f"{hub.base}/live/{room}/index.m3u8"
        async with httpx.AsyncClient(timeout=10) as http:
            await room_action(http, hub, room, "live")
            deadline = time.monotonic() + 40
            while (await http.get(playlist)).status_code != 200:  # 503 while starting
                if time.monotonic() > deadline:
                    raise BenchError(f"live playlist not playable in 40 s:\n{hub.log_tail()}")
                await asyncio.sleep(0.5)
        # One player at a time: each measures alone against the same live stream.
        households = await play_chromium(hub, playlist, seconds, 8, f"/watch/{room}")
        browser = await play_chromium(hub, playlist, seconds, warmup=8)
        ll = await play_ll_hls(playlist, seconds, warmup=3)
        stock = await play_ffmpeg_hls(playlist, seconds, warmup=8)
        if not households.latencies or not browser.latencies:
            raise BenchError("Chromium presented no stamped frame")
        page = summary("watch_page", households.latencies)
        return {
            "live_latency_s": page["watch_page_p50_s"],
            "live_player": "the household page /watch in Chromium (its LL-HLS player)",
            **{f"live_{k}": v for k, v in page.items()},
            **{f"live_{k}": v for k, v in summary("chromium_native", browser.latencies).items()},
            **{f"live_{k}": v for k, v in summary("ll_client", ll.latencies).items()},
            **{f"live_part_{k}": v for k, v in summary("ready", ll.server).items()},
            **{f"live_{k}": v for k, v in summary("ffmpeg_hls", stock.latencies).items()},
            "live_unreadable_stamps": households.rejected
            + browser.rejected
            + ll.rejected
            + stock.rejected,
        }
    finally:
        await client.close()
        await asyncio.to_thread(hub.stop)


# --- running -----------------------------------------------------------------------------


async def run(args: argparse.Namespace, result: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-media-") as tmp:
        work = Path(tmp)
        if "recording" in args.only:
            result |= await measure_recording(work, args.streams, args.window)
        if "processing" in args.only:
            result |= await measure_processing(work, args.minutes)
        if "live" in args.only:
            result |= await measure_live(work, args.window)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.media", description=__doc__)
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--streams", type=int, default=4, help="recorded rooms (default 4)")
    parser.add_argument("--window", type=float, default=20.0, help="measuring window, s")
    parser.add_argument("--minutes", type=float, default=10.0, help="recording to process")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=("recording", "processing", "live"),
        default=("recording", "processing", "live"),
    )
    args = parser.parse_args(argv)
    if args.streams < 1 or args.window < 1 or args.minutes <= 0:
        parser.error("--streams, --window and --minutes must be positive")
    restrict_host_addresses(["127.0.0.1"])  # the publishers' ICE stays on loopback too
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    # Hubs starting, two recording windows, making and processing the recording twice,
    # two players: with room to spare, and every process stopped when it fires.
    limit = 240 + 4 * args.window + 30 * args.minutes
    try:
        asyncio.run(asyncio.wait_for(run(args, result), limit))
    except (BenchError, TimeoutError) as exc:
        message = str(exc) or f"hard time limit of {limit:.0f} s"
        print(f"bench.media: {message}", file=sys.stderr)
        if args.json:
            print(json.dumps({**result, "error": message.splitlines()[0]}))
        sys.exit(1)
    except KeyboardInterrupt:
        print("bench.media: interrupted", file=sys.stderr)
        sys.exit(130)
    for key, value in result.items():
        if not args.json:
            print(f"{key:48} {value}")
    if args.json:
        print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
