"""``python -m bench.fanout``: what the hub costs to fan one lecture out to N sites.

A real hub in its own process; one publisher replaying a pre-encoded VP8 640x360
30 fps (~1.5 Mbps) + Opus clip as the center; N stations counting what they
receive without decoding, spread over worker processes; one station decoding the
video. Over a steady window it measures the hub's CPU per forwarded packet, the
lowest frame rate any station received, the delay the hub adds (against a direct
publisher → subscriber path measured at the same time) and the hub's memory per
subscriber. Then the baseline: aiortc's ``MediaRelay`` (decode once, encode per
subscriber) at a few subscribers, measured the same way. With ``--simulcast`` the
publisher sends its camera in three layers (rids l, m, h; the top one the same clip)
and each station receives the one the hub chooses. See bench/README.md.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import multiprocessing
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from array import array
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from bench import _workers
from bench._media import HEIGHT, WIDTH
from hub.aiortc_internals import PACING_FACTOR
from hub.ids import ParticipantIdentity, RoomName
from hub.tokens import Role, TokenSigner, grant_for_role

ROOT = Path(__file__).resolve().parent.parent
ROOM = "bench"
PER_WORKER = 10
"""Counting subscribers per worker process."""
PUBLISHER_ONLY_SECONDS = 5.0
"""How long the hub's CPU is measured with the publisher alone."""
_CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """The benchmark could not measure; the message says what went wrong."""


class _Deadline(BaseException):
    """The hard time limit fired (a BaseException so no handler swallows it)."""


# --- processes ----------------------------------------------------------------


class Child:
    """One worker process and its pipe; calls are answered one at a time."""

    def __init__(self, ctx: Any, role: str, name: str) -> None:
        self.name = name
        self.conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(
            target=_workers.child_main, args=(role, child_conn), name=name, daemon=True
        )
        self.process.start()
        child_conn.close()
        self._pending: str | None = None

    @property
    def pid(self) -> int:
        pid: int = self.process.pid
        return pid

    def send(self, method: str, *args: Any) -> None:
        self._pending = method
        self.conn.send((method, args))

    def result(self, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise BenchError(f"{self.name}: no answer to {self._pending} within {timeout:.0f} s")
        status, value = self.conn.recv()
        if status == "error":
            raise BenchError(f"{self.name}: {self._pending} failed:\n{value}")
        return value

    def call(self, method: str, *args: Any, timeout: float = 30) -> Any:
        self.send(method, *args)
        return self.result(timeout)

    def request_close(self) -> None:
        """Ask the child to close its connections and exit (after its current call)."""
        if self.process.is_alive() and not self.conn.closed:
            try:
                self.conn.send(("close", ()))
            except OSError:
                pass

    def end(self) -> None:
        """Make sure the child is gone."""
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(2)
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()


def stop_all(children: list[Child], grace: float = 3.0) -> None:
    """Ask every child to close at once, then end those still running after ``grace``."""
    for child in children:
        child.request_close()
    deadline = time.monotonic() + grace
    for child in children:
        child.process.join(max(0.0, deadline - time.monotonic()))
    for child in children:
        child.end()


def call_all(calls: list[tuple[Child, str, tuple[Any, ...]]], timeout: float = 30) -> list[Any]:
    """Send every call first, then collect: the children work in parallel."""
    for child, method, args in calls:
        child.send(method, *args)
    return [child.result(timeout) for child, _, _ in calls]


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def git_commit(checkout: Path) -> str | None:
    """The short commit id of ``checkout`` (a ``+`` when it has uncommitted changes)."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(checkout), *args], capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+" if dirty else "")


def create_admin(data_dir: Path, username: str, password: str) -> None:
    """A center administrator made as an installer makes one: ``practice-hub admin
    create`` (it creates the tables if needed; SQLite lets it write next to a running
    hub). Blocking."""
    argv = ["admin", "create", "--username", username, "--data-dir", str(data_dir)]
    subprocess.run(
        [sys.executable, "-m", "hub", *argv],
        env=os.environ | {"HUB_ADMIN_PASSWORD": password},
        check=True,
        capture_output=True,
        timeout=60,
    )


class HubProcess:
    """``python -m hub serve`` on ``host`` (127.0.0.1) with a fresh data directory,
    from this checkout or from ``source``, another one (to compare two commits' hubs
    under the same load). ``settings``: more ``HUB_*`` variables for it; ``profile``:
    run it under cProfile, which writes there when it stops."""

    def __init__(
        self,
        data_dir: Path,
        source: Path = ROOT,
        fastpath: str = "c",
        settings: dict[str, str] | None = None,
        profile: Path | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.port = free_port()
        self.secret = secrets.token_urlsafe(32)
        self.signer = TokenSigner(self.secret)
        self.base = f"http://{host}:{self.port}"
        self.ws = f"ws://{host}:{self.port}/ws"
        self.log_path = data_dir / "hub.log"
        self.profiled = profile is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
        env |= {"HUB_SECRET": self.secret, "HUB_ICE_GATHER_ADDRESSES": json.dumps([host])}
        env["HUB_FASTPATH"] = fastpath
        env |= settings or {}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    *(("-m", "cProfile", "-o", str(profile)) if profile else ()),
                    *("-m", "hub", "serve", "--host", host),
                    *("--port", str(self.port), "--data-dir", str(data_dir)),
                ],
                cwd=source,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: Ctrl-C is the orchestrator's to handle, and the
                # hub still dies with the orchestrator (PDEATHSIG).
                start_new_session=True,
                preexec_fn=_workers.die_with_parent,
            )

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"hub exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.base}/healthz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise BenchError(f"hub not healthy within {timeout:.0f} s:\n{self.log_tail()}")

    def token(self, identity: str, role: str) -> str:
        grant = grant_for_role(RoomName(ROOM), ParticipantIdentity(identity), Role(role), ttl=3600)
        return self.signer.issue(grant)

    def metrics(self, timeout: float = 5) -> str:
        with urllib.request.urlopen(f"{self.base}/metrics", timeout=timeout) as response:
            return response.read().decode()

    def fastpath(self) -> str:
        """Which fan-out the hub runs, by its /metrics: c, python (or unknown: a hub
        from before the gauge)."""
        found = re.search(r"^practicehub_native_fanout (\S+)$", self.metrics(), re.M)
        return "unknown" if found is None else "c" if float(found[1]) else "python"

    def counters(self, timeout: float = 5) -> dict[str, int]:
        """The forwarding counters of /metrics (``practicehub_<name>_total``)."""
        found = re.findall(r"^practicehub_(\w+)_total (\S+)$", self.metrics(timeout), re.M)
        if not found:
            raise BenchError("no practicehub_*_total counters in /metrics")
        return {name: int(float(value)) for name, value in found}

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            # uvicorn re-raises the signal it stopped on: SIGTERM would kill cProfile
            # before it writes, a KeyboardInterrupt lets it.
            self.process.send_signal(signal.SIGINT if self.profiled else signal.SIGTERM)
            try:
                # Stopping hundreds of connections, then writing a profile, takes a while.
                self.process.wait(60 if self.profiled else 5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for {pid}")


# --- measuring ----------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile; NaN when there is nothing to rank."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def delays_ms(
    sent: tuple[array[int], array[float]],
    arrivals: list[tuple[array[int], array[int], array[float]]],
) -> tuple[list[tuple[int, float]], int]:
    """(clip frame index, arrival minus that packet's own send) of each video packet,
    and how many arrivals had no send to match.

    Packets are matched by the CRC-32 of their payload. Should two sends share one
    (the audio repeats with the clip), an arrival belongs to the latest before it.
    """
    sends: dict[int, list[float]] = {}
    for crc, at in zip(*sent, strict=True):
        sends.setdefault(crc, []).append(at)
    delays: list[tuple[int, float]] = []
    unmatched = 0
    for frames, crcs, times in arrivals:
        for frame, crc, at in zip(frames, crcs, times, strict=True):
            candidates = sends.get(crc, [])
            i = bisect.bisect_right(candidates, at) - 1
            if i < 0:
                unmatched += 1
            else:
                delays.append((frame, (at - candidates[i]) * 1000))
    return delays, unmatched


def delay_figures(
    prefix: str, delays: list[tuple[int, float]], keyframes: set[int]
) -> dict[str, float]:
    """p50 and p99 over all packets, and p99 over packets of delta frames only:
    an unpaced keyframe reaches the hub as one burst of ~45 packets."""
    every = [d for _, d in delays]
    delta = [d for frame, d in delays if frame not in keyframes]
    return {
        f"{prefix}_p99_ms": round(percentile(every, 99), 2),
        f"{prefix}_p50_ms": round(percentile(every, 50), 2),
        f"{prefix}_p99_ms_delta_frames": round(percentile(delta, 99), 2),
    }


def rates(
    start: list[tuple[int, int, int]], end: list[tuple[int, int, int]], seconds: float
) -> tuple[list[float], int]:
    """Per counter frames per second over the window, and packets received in it."""
    fps = [(b[2] - a[2]) / seconds for a, b in zip(start, end, strict=True)]
    packets = sum((b[0] - a[0]) + (b[1] - a[1]) for a, b in zip(start, end, strict=True))
    return fps, packets


def udp_drops(pids: list[int]) -> int:
    """Datagrams the kernel dropped on these processes' UDP sockets (full receive
    buffers): tells a starved receiver from a hub that did not send."""
    inodes: set[str] = set()
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        for fd in fd_dir.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue  # closed meanwhile
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    drops = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[9] in inodes:
                    drops += int(fields[12])
    return drops


def wait_until(check: Callable[[], str | None], timeout: float, what: str) -> None:
    """Poll ``check()`` (returns why it is not done yet, or None) until done."""
    deadline = time.monotonic() + timeout
    reason = None
    while time.monotonic() < deadline:
        reason = check()
        if reason is None:
            return
        time.sleep(0.25)
    raise BenchError(f"{what} within {timeout:.0f} s: {reason}")


def no_frame_yet(counts: list[tuple[int, int, int]]) -> int:
    return sum(1 for c in counts if c[2] == 0)


class Bench:
    def __init__(
        self,
        subscribers: int,
        seconds: float,
        baseline: int,
        profile: Path | None,
        pacing_factor: float,
        load_nice: int,
        hub_source: Path = ROOT,
        hub_fastpath: str = "c",
        udp_port: str = "per-peer",
        simulcast: bool = False,
    ):
        self.n = subscribers
        self.seconds = seconds
        self.m = baseline
        self.profile = profile
        self.pacing_factor = pacing_factor
        self.load_nice = load_nice
        self.hub_source = hub_source
        self.hub_fastpath = hub_fastpath
        self.udp_port = udp_port
        self.simulcast = simulcast
        self.result: dict[str, Any] = {
            "subscribers": subscribers,
            "udp_port_mode": udp_port,
            "simulcast": simulcast,
        }
        self.keyframes: set[int] = set()

    def run(self, stack: ExitStack) -> dict[str, Any]:
        ctx = multiprocessing.get_context("spawn")
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-hub-")))
        self.result["loadavg_1m_at_start"] = os.getloadavg()[0]
        # Start everything at once: interpreter start-up and clip encoding overlap.
        shared = {"HUB_UDP_PORT": str(free_port(socket.SOCK_DGRAM))}
        hub = HubProcess(
            data_dir,
            self.hub_source,
            self.hub_fastpath,
            shared if self.udp_port == "shared" else None,
        )
        self.result["hub_commit"] = git_commit(self.hub_source)
        stack.callback(hub.stop)
        workers = [
            Child(ctx, "subscribers", f"subscribers-{i}")
            for i in range(math.ceil((self.n - 1) / PER_WORKER))
        ]
        # The probe: one counting subscriber plus the direct path, alone in a process
        # so that its arrival times are not queued behind other subscribers' packets.
        probe = Child(ctx, "subscribers", "probe")
        publisher = Child(ctx, "publisher", "publisher")
        decoder = Child(ctx, "decoder", "decoder")
        baseline = Child(ctx, "baseline", "baseline")
        # Stopped before the hub (callbacks run last in, first out).
        stack.callback(stop_all, [*workers, probe, publisher, decoder, baseline])
        keys, self.result["publisher_pacing_bps"] = publisher.call(
            "load", self.pacing_factor, self.simulcast, timeout=120
        )
        # A VP8 frame tag's lowest bit is 0 on a keyframe.
        self.keyframes = {index for key, index in keys.items() if not key[0] & 1}
        # Simulcast: the hub renumbers the VP8 picture ids, so packets are matched by
        # what follows the VP8 descriptor, on the direct path too.
        call_all([(w, "setup", (keys, self.simulcast)) for w in (*workers, probe)])
        hub.wait_healthy(30)
        self.result["hub_fastpath"] = hub.fastpath()
        self.measure_hub(hub, publisher, workers, probe, decoder)
        # The baseline gets the machine to itself: the hub's side stops first,
        # subscribers before the publisher (else the hub renegotiates them all).
        stop_all([decoder, *workers])
        probe.call("leave", "hub")
        probe.call("leave", "direct")
        publisher.call("unpublish")
        hub.stop()
        self.measure_baseline(publisher, probe, baseline)
        return self.result

    def measure_hub(
        self,
        hub: HubProcess,
        publisher: Child,
        workers: list[Child],
        probe: Child,
        decoder: Child,
    ) -> None:
        if self.simulcast:
            # Three layers in (l, m, h); each station receives one, the hub's choice.
            publisher.call("publish_simulcast", hub.ws, hub.token("center", "center"))
        else:
            publisher.call("publish", hub.ws, hub.token("center", "center"))
        # The floor: the same publisher and probe processes, no hub in between.
        (answer,) = probe.call("answer", "direct", [publisher.call("offer", "direct")])
        publisher.call("accept", "direct", answer)
        time.sleep(2)
        rss_publisher_only = rss_mb(hub.process.pid)
        # The fixed cost: the publisher's stream with nobody to forward it to.
        idle0, idle_at = cpu_seconds(hub.process.pid), time.monotonic()
        time.sleep(PUBLISHER_ONLY_SECONDS)
        idle_cpu = (cpu_seconds(hub.process.pid) - idle0) / (time.monotonic() - idle_at)

        tokens = [hub.token(f"S{i:03d}", "station") for i in range(1, self.n)]
        join_timeout = max(60, self.n * 1.5)
        call_all(
            [
                (w, "join", (hub.ws, tokens[i * PER_WORKER : (i + 1) * PER_WORKER]))
                for i, w in enumerate(workers)
            ]
            + [(decoder, "join", (hub.ws, hub.token("decoder", "station")))],
            timeout=join_timeout,
        )

        def started() -> str | None:
            snaps = call_all([(w, "snapshot", ()) for w in workers])
            missing = sum(no_frame_yet(snap["hub"]) for snap in snaps)
            if missing:
                return f"{missing} of {self.n - 1} counting subscribers have no frame yet"
            if decoder.call("status")["frames"] == 0:
                return "the decoding subscriber has no frame yet"
            return None

        wait_until(started, max(30, self.n * 0.6), "every subscriber's first keyframe")
        # The probe joins last: the hub serves it last of all, the worst place to be.
        probe.call("join", hub.ws, [hub.token("S000", "station")], timeout=join_timeout)

        def probe_started() -> str | None:
            snap = probe.call("snapshot")
            missing = no_frame_yet(snap["hub"]) + no_frame_yet(snap["direct"])
            return f"{missing} of the probe's 2 streams have no frame yet" if missing else None

        wait_until(probe_started, 30, "the probe's first keyframe")
        time.sleep(1)  # let the joins' renegotiations and PLIs settle

        # The stations stand in for remote sites: on this machine they must not take
        # the CPU from the hub and the probe when both want it.
        for w in (*workers, decoder):
            os.setpriority(os.PRIO_PROCESS, w.pid, self.load_nice)
        self.result["load_nice"] = self.load_nice
        generators = [w.pid for w in (*workers, probe, decoder, publisher)]
        receivers = [w.pid for w in (*workers, probe, decoder)]
        snapshots = [(w, "snapshot", ()) for w in workers] + [(probe, "snapshot", (True,))]
        cpu0, counters0 = cpu_seconds(hub.process.pid), hub.counters()
        hub_drops0, drops0 = udp_drops([hub.process.pid]), udp_drops(receivers)
        generators0 = sum(map(cpu_seconds, generators))
        workers0 = sum(cpu_seconds(w.pid) for w in workers)
        starts = call_all(snapshots)
        decoder0, decoder_packets0 = decoder.call("status"), decoder.call("packets_received")
        profiler = self.start_profiler(hub.process.pid)
        time.sleep(self.seconds)
        cpu1, counters1 = cpu_seconds(hub.process.pid), hub.counters()
        hub_drops1, drops1 = udp_drops([hub.process.pid]), udp_drops(receivers)
        generators1 = sum(map(cpu_seconds, generators))
        workers1 = sum(cpu_seconds(w.pid) for w in workers)
        snapshots[-1] = (probe, "snapshot", (False,))
        ends = call_all(snapshots)
        decoder1, decoder_packets1 = decoder.call("status"), decoder.call("packets_received")
        rss_loaded = rss_mb(hub.process.pid)
        if profiler is not None:
            self.finish_profiler(profiler)

        fps: list[float] = []
        video_pps: list[float] = []
        per_process: list[int] = []
        for start, end in zip(starts, ends, strict=True):
            stream_fps, packets = rates(start["hub"], end["hub"], end["at"] - start["at"])
            fps += stream_fps
            video_pps += [
                (b[0] - a[0]) / (end["at"] - start["at"])
                for a, b in zip(start["hub"], end["hub"], strict=True)
            ]
            per_process.append(packets)
        worker_packets = sum(per_process[:-1])  # the last one is the probe
        counted = sum(per_process) + decoder_packets1 - decoder_packets0
        probe_seconds = ends[-1]["at"] - starts[-1]["at"]
        direct_fps, _ = rates(starts[-1]["direct"], ends[-1]["direct"], probe_seconds)
        hub_delays, hub_unmatched = delays_ms(
            publisher.call("sent_log", "hub"), probe.call("arrivals", "hub")
        )
        direct_delays, direct_unmatched = delays_ms(
            publisher.call("sent_log", "direct"), probe.call("arrivals", "direct")
        )
        delta = {name: counters1[name] - counters0[name] for name in counters1}
        forwarded = delta["packets_forwarded"]
        sends = forwarded + delta["retransmissions"]
        decoded_seconds = decoder1["at"] - decoder0["at"]
        if [tuple(size) for size in decoder1["sizes"]] != [(WIDTH, HEIGHT)]:
            raise BenchError(f"the decoding subscriber got frames of {decoder1['sizes']}")
        hub_subscribers = self.n + 1  # the decoding station is the hub's subscriber too
        self.result |= {
            "us_per_packet": round((cpu1 - cpu0) / forwarded * 1e6, 2) if forwarded else None,
            # Retransmissions are sends too: starved subscribers NACK a lot.
            "us_per_send": round((cpu1 - cpu0) / (forwarded + delta["retransmissions"]) * 1e6, 2)
            if forwarded
            else None,
            "fps_min": round(min(fps), 2),
            **delay_figures("delay", hub_delays, self.keyframes),
            **delay_figures("direct_delay", direct_delays, self.keyframes),
            "rss_mb_per_subscriber": round((rss_loaded - rss_publisher_only) / hub_subscribers, 3),
            "window_s": round(probe_seconds, 2),
            "hub_cpu_percent": round((cpu1 - cpu0) / probe_seconds * 100, 1),
            "hub_cpu_percent_publisher_only": round(idle_cpu * 100, 1),
            # What each send costs beyond the publisher's fixed cost.
            "us_per_send_marginal": round(
                ((cpu1 - cpu0) - idle_cpu * probe_seconds) / sends * 1e6, 2
            )
            if sends
            else None,
            "packets_forwarded": forwarded,
            "packets_received_per_s": round(delta["packets_received"] / probe_seconds, 1),
            # Which layer the stations got: the top one is ~150 video packets a second.
            "video_packets_per_subscriber_s_median": round(percentile(video_pps, 50), 1),
            "packets_counted": counted,
            # Subscribers count retransmissions too. Above a few percent, fps_min
            # and the delays describe starved subscriber processes, not the hub.
            "subscriber_loss": round(1 - counted / sends, 3) if sends else None,
            "udp_drops_at_hub": hub_drops1 - hub_drops0,
            "udp_drops_at_subscribers": drops1 - drops0,
            "nacks_received": delta["nacks_received"],
            "retransmissions": delta["retransmissions"],
            "keyframe_requests": delta["keyframe_requests"],
            "load_generator_cpu_percent": round((generators1 - generators0) / probe_seconds * 100),
            # What one aiortc subscriber costs per packet it receives (workers only).
            "subscriber_us_per_packet": round((workers1 - workers0) / worker_packets * 1e6, 1)
            if worker_packets
            else None,
            "fps_median": round(percentile(fps, 50), 2),
            "direct_fps": round(direct_fps[0], 2),
            "delay_samples": len(hub_delays),
            "delay_unmatched": hub_unmatched + direct_unmatched,
            "decoded_fps": round((decoder1["frames"] - decoder0["frames"]) / decoded_seconds, 2),
            "decoded_sizes": decoder1["sizes"],
            "hub_rss_mb": round(rss_loaded, 1),
            "hub_rss_mb_publisher_only": round(rss_publisher_only, 1),
        }

    def measure_baseline(self, publisher: Child, receivers: Child, server: Child) -> None:
        answer = server.call("accept_publisher", publisher.call("offer", "baseline"))
        publisher.call("accept", "baseline", answer)
        offers = server.call("offers", self.m)
        server.call("accept", receivers.call("answer", "baseline", offers))

        def started() -> str | None:
            missing = no_frame_yet(receivers.call("snapshot")["baseline"])
            return f"{missing} of {self.m} have no frame yet" if missing else None

        wait_until(started, 30, "every baseline subscriber's first frame")
        time.sleep(2)  # aiortc's encoders ramp their bitrate up on REMB
        seconds = max(5.0, self.seconds / 2)
        pid = server.pid
        cpu0, sent0 = cpu_seconds(pid), server.call("packets_sent")
        start = receivers.call("snapshot")
        time.sleep(seconds)
        cpu1, sent1 = cpu_seconds(pid), server.call("packets_sent")
        end = receivers.call("snapshot")
        fps, received = rates(start["baseline"], end["baseline"], end["at"] - start["at"])
        sent = sent1 - sent0
        baseline_us = (cpu1 - cpu0) / sent * 1e6 if sent else math.nan
        us = self.result.get("us_per_packet")
        self.result |= {
            "baseline_subscribers": self.m,
            "baseline_us_per_packet": round(baseline_us, 2),
            "ratio_vs_baseline": round(baseline_us / us, 2) if us else None,
            "baseline_cpu_percent": round((cpu1 - cpu0) / seconds * 100, 1),
            "baseline_fps_min": round(min(fps), 2),
            "baseline_packets_sent": sent,
            "baseline_packets_per_subscriber_s": round(sent / seconds / self.m, 1),
            "baseline_packets_counted": received,
        }

    def start_profiler(self, pid: int) -> subprocess.Popen[bytes] | None:
        if self.profile is None:
            return None
        py_spy = Path(sys.executable).with_name("py-spy")
        return subprocess.Popen(
            [
                *(str(py_spy), "record", "--nonblocking", "--format", "raw", "-r", "200"),
                *("-d", str(int(self.seconds)), "-p", str(pid), "-o", str(self.profile)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def finish_profiler(self, profiler: subprocess.Popen[bytes]) -> None:
        try:
            profiler.wait(15)
        except subprocess.TimeoutExpired:
            profiler.kill()
            profiler.wait()


@contextmanager
def hard_timeout(seconds: float) -> Iterator[None]:
    def expire(signum: int, frame: FrameType | None) -> None:
        raise _Deadline(f"hard timeout of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(math.ceil(seconds))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def print_table(result: dict[str, Any]) -> None:
    rows = [
        ("counting subscribers (+ 1 decoding)", "subscribers", ""),
        ("hub CPU per forwarded packet", "us_per_packet", "µs"),
        ("hub CPU per send (retransmissions too)", "us_per_send", "µs"),
        ("hub CPU", "hub_cpu_percent", "% of a core"),
        ("simulcast (three layers in)", "simulcast", ""),
        ("packets the hub received per second", "packets_received_per_s", "/s"),
        ("packets forwarded by the hub", "packets_forwarded", ""),
        ("packets the subscribers counted", "packets_counted", ""),
        ("sent (incl. retransmissions), not counted", "subscriber_loss", ""),
        ("UDP drops at the hub / subscribers", "udp_drops_at_hub", ""),
        ("NACKs answered by the hub", "retransmissions", ""),
        ("lowest subscriber frame rate", "fps_min", "fps"),
        ("median subscriber frame rate", "fps_median", "fps"),
        ("delay through the hub p50 / p99", "delay_p50_ms", "ms"),
        ("delay direct, no hub, p50 / p99", "direct_delay_p50_ms", "ms"),
        ("delay p99, delta frames: hub / direct", "delay_p99_ms_delta_frames", "ms"),
        ("decoding subscriber", "decoded_fps", "fps"),
        ("hub memory per subscriber", "rss_mb_per_subscriber", "MB"),
        ("load generator CPU", "load_generator_cpu_percent", "% of a core"),
        ("baseline subscribers (MediaRelay)", "baseline_subscribers", ""),
        ("baseline CPU per sent packet", "baseline_us_per_packet", "µs"),
        ("baseline lowest frame rate", "baseline_fps_min", "fps"),
        ("baseline ÷ hub, per packet", "ratio_vs_baseline", "×"),
    ]
    pairs = {
        "udp_drops_at_hub": "udp_drops_at_subscribers",
        "delay_p50_ms": "delay_p99_ms",
        "direct_delay_p50_ms": "direct_delay_p99_ms",
        "delay_p99_ms_delta_frames": "direct_delay_p99_ms_delta_frames",
    }
    for label, key, unit in rows:
        value = str(result.get(key))
        if key in pairs:
            value += f" / {result.get(pairs[key])}"
        print(f"{label:38} {value:>16} {unit}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__)
    parser.add_argument("--subscribers", type=int, help="counting subscribers (default 50)")
    parser.add_argument("--seconds", type=float, help="measuring window (default 20)")
    parser.add_argument("--quick", action="store_true", help="20 subscribers, short windows")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--profile", type=Path, help="py-spy raw profile of the hub's window")
    parser.add_argument(
        "--pacing-factor",
        type=float,
        default=PACING_FACTOR,
        help="the publisher paces its video at this multiple of the clip's bitrate, as "
        f"browsers do (default {PACING_FACTOR}, libwebrtc's); 0 sends each frame at once",
    )
    parser.add_argument(
        "--load-nice",
        type=int,
        default=10,
        help="nice value of the counting and decoding stations, which stand in for "
        "remote sites (default 10; 0: same priority as the hub, probe and publisher)",
    )
    parser.add_argument(
        "--hub-source",
        type=Path,
        default=ROOT,
        help="run the hub from this checkout (e.g. a git worktree of an older commit); "
        "the load generator stays this checkout's",
    )
    parser.add_argument(
        "--hub-fastpath",
        choices=("c", "python"),
        default="c",
        help="the hub's fan-out: its C path (default, where it was built) or the "
        "Python twin (HUB_FASTPATH=python)",
    )
    parser.add_argument(
        "--udp-port",
        choices=("per-peer", "shared"),
        default="per-peer",
        help="the hub's WebRTC media on a UDP port per peer connection (default) or all "
        "on one (HUB_UDP_PORT)",
    )
    parser.add_argument(
        "--simulcast",
        action="store_true",
        help="the publisher sends its camera as three simulcast layers (rids l, m, h: "
        "320x180, 640x360 ~500 kbps, and the one-layer run's clip); each station "
        "receives the one the hub chooses",
    )
    args = parser.parse_args(argv)
    n = args.subscribers or (20 if args.quick else 50)
    seconds = args.seconds or (8.0 if args.quick else 20.0)
    if n < 1 or seconds < 1:
        parser.error("--subscribers and --seconds must be positive")
    if args.pacing_factor < 0:
        parser.error("--pacing-factor must not be negative")
    if not 0 <= args.load_nice <= 19:
        parser.error("--load-nice must be 0 to 19")
    if not (args.hub_source / "hub" / "__main__.py").is_file():
        parser.error(f"--hub-source {args.hub_source} has no hub/__main__.py")
    bench = Bench(
        n,
        seconds,
        3 if args.quick else 5,
        args.profile,
        args.pacing_factor,
        args.load_nice,
        args.hub_source.resolve(),
        args.hub_fastpath,
        args.udp_port,
        args.simulcast,
    )
    # Connecting, two windows and the baseline, with room to spare.
    limit = 85 if args.quick else 120 + 3 * seconds + 2 * n
    try:
        with hard_timeout(limit), ExitStack() as stack:
            result = bench.run(stack)
    except (BenchError, _Deadline) as exc:
        print(f"bench.fanout: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({**bench.result, "error": str(exc).splitlines()[0]}))
        sys.exit(1)
    except KeyboardInterrupt:
        print("bench.fanout: interrupted", file=sys.stderr)
        sys.exit(130)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print_table(result)


if __name__ == "__main__":
    main()
