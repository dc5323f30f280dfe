"""``python -m bench.county``: the whole county in one lecture, on this one machine.

A real hub in its own process; one lecturer replaying the pre-encoded VP8 640x360
30 fps (~1.5 Mbps) + Opus clip; N stations (190 by default) joining as a storm
within 10 s, each publishing a 320x180 15 fps thumbnail (~150 kbps) and a silent
Opus microphone and receiving the stage, counting the lecturer's frames without
decoding; 3 of them are probes that decode everything they receive; the center's
console calls 3 stations on stage and shows one page of 25. Prints one JSON object
last. See bench/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import os
import random
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.fanout import (
    ROOM,
    ROOT,
    BenchError,
    Child,
    HubProcess,
    _Deadline,
    call_all,
    cpu_seconds,
    git_commit,
    hard_timeout,
    percentile,
    rss_mb,
    stop_all,
    udp_drops,
)
from hub.ids import ParticipantIdentity, RoomName
from hub.tokens import Role, grant_for_role

PER_WORKER = 20
"""Stations per worker process."""
PROBES = 3
ON_STAGE = 3
PAGE = 25
"""Tiles on the console's page."""
STORM_SECONDS = 10.0
STATION_NICE = 10
LECTURER = "center"
CONSOLE = "console"


_T0 = time.monotonic()


def progress(what: str) -> None:
    print(f"bench.county: {time.monotonic() - _T0:5.1f} s {what}", file=sys.stderr, flush=True)


def station_identity(i: int) -> str:
    return f"I{i % 14 + 1:02d}-S{i:03d}"


class HealthWatch:
    """Polls the hub's ``/healthz`` from a thread: the longest answer is how long its
    event loop stalled."""

    def __init__(self, base: str) -> None:
        self._url = f"{base}/healthz"
        self.longest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                with urllib.request.urlopen(self._url, timeout=30) as response:
                    response.read()
            except OSError:
                pass
            self.longest = max(self.longest, time.monotonic() - start)
            self._stop.wait(0.2)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(31)
        return self.longest


class County:
    def __init__(
        self,
        stations: int,
        seconds: float,
        hub_source: Path,
        udp_port: int | None,
        console: bool = True,
        profile: Path | None = None,
    ) -> None:
        self.n = stations
        self.console = console
        self.profile = profile
        self.seconds = seconds
        self.hub_source = hub_source
        self.udp_port = udp_port
        self.first_frame_wait = 20.0 if stations <= 60 else 60.0
        """Seconds after the storm every station has to get a first lecturer frame."""
        self.result: dict[str, Any] = {"stations": stations, "console_receives": console}

    def token(self, hub: HubProcess, identity: str, role: Role, subscribe: bool = True) -> str:
        grant = grant_for_role(RoomName(ROOM), ParticipantIdentity(identity), role, ttl=3600)
        return hub.signer.issue(dataclasses.replace(grant, can_subscribe=subscribe))

    def run(self, stack: ExitStack) -> dict[str, Any]:
        ctx = multiprocessing.get_context("spawn")
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-county-")))
        self.result["loadavg_1m_at_start"] = os.getloadavg()[0]
        settings = {} if self.udp_port is None else {"HUB_UDP_PORT": str(self.udp_port)}
        hub = HubProcess(data_dir, self.hub_source, settings=settings, profile=self.profile)
        self.result["hub_commit"] = git_commit(self.hub_source)
        stack.callback(hub.stop)
        regular = self.n - PROBES
        workers = [
            Child(ctx, "stations", f"stations-{i}") for i in range(math.ceil(regular / PER_WORKER))
        ]
        probes = Child(ctx, "stations", "probes")
        lecturer = Child(ctx, "publisher", "lecturer")
        console = Child(ctx, "console", "console")
        everyone = [*workers, probes, lecturer, console]
        stack.callback(stop_all, everyone)
        call_all(
            [(lecturer, "load", (2.5,))] + [(w, "setup", ()) for w in (*workers, probes)],
            timeout=120,
        )
        progress("clips loaded")
        hub.wait_healthy(30)
        # The lecturer answers keyframe requests, as the console's browser does.
        lecturer.call(
            "publish", hub.ws, self.token(hub, LECTURER, Role.CENTER, subscribe=False), True
        )
        console.call("join", hub.ws, self.token(hub, CONSOLE, Role.CENTER, self.console))
        progress("lecturer and console in")
        time.sleep(2)
        rss_before = rss_mb(hub.process.pid)
        threads_before = _threads(hub.process.pid)

        # The storm: every station's join message at its own moment within 10 s, in
        # random order over the worker processes.
        start = time.monotonic() + 1.0
        moments = [start + STORM_SECONDS * k / self.n for k in range(self.n)]
        random.Random(14).shuffle(moments)
        identities = [station_identity(i) for i in range(1, self.n + 1)]
        tokens = [self.token(hub, identity, Role.STATION) for identity in identities]
        joins = list(zip(tokens, moments, strict=True))
        # Every station's first lecturer frame, or as many as come within this; a
        # join refused or timed out is tried again meanwhile, as protocol.js does.
        deadline = start + STORM_SECONDS + self.first_frame_wait
        watch = HealthWatch(hub.base)
        cpu_storm0 = cpu_seconds(hub.process.pid)
        call_all(
            [
                (
                    w,
                    "storm",
                    (
                        hub.ws,
                        LECTURER,
                        joins[i * PER_WORKER : min(regular, (i + 1) * PER_WORKER)],
                        False,
                        deadline,
                    ),
                )
                for i, w in enumerate(workers)
            ]
            + [(probes, "storm", (hub.ws, LECTURER, joins[regular:], True, deadline))]
        )
        station_workers = [*workers, probes]
        # The stations stand in for remote sites: on this machine they must not take
        # the CPU from the hub and the lecturer when both want it (as bench.fanout).
        # The probes are the measuring instrument (3 decoders, ~20 % of a core): at
        # nice 10 on a full machine they fell behind, their kernel buffers overflowed,
        # and their decode errors measured the machine, not what the hub sent.
        for w in (*workers, console):
            os.setpriority(os.PRIO_PROCESS, w.pid, STATION_NICE)

        def statuses() -> list[dict[str, Any]]:
            return call_all([(w, "status", ()) for w in station_workers], timeout=90)

        def waiting() -> list[str]:
            stations = [s for status in statuses() for s in status["stations"]]
            return [s[6] for s in stations if s[2] is None]

        while (missing := waiting()) and time.monotonic() < deadline:
            time.sleep(0.5)
        if missing:
            progress(f"{len(missing)} with no lecturer frame ({missing[:3]}); measuring the others")
        progress("storm over")
        storm_seconds = time.monotonic() - start
        self.result["storm_hub_cpu_percent"] = round(
            (cpu_seconds(hub.process.pid) - cpu_storm0) / storm_seconds * 100, 1
        )
        self.result["healthz_max_s_during_storm"] = round(watch.stop(), 2)

        staged = console.call("stage", identities[:ON_STAGE])
        console.call("view", identities[:PAGE])
        time.sleep(3)  # renegotiations, pauses and keyframes settle

        progress("measuring")
        generators = [w.pid for w in everyone]
        cpu0, counters0 = cpu_seconds(hub.process.pid), _counters(hub)
        generators0 = sum(map(cpu_seconds, generators))
        probes0 = cpu_seconds(probes.pid)
        drops0 = [udp_drops([pid]) for pid in (hub.process.pid, probes.pid)]
        station_drops0 = udp_drops([w.pid for w in workers])
        console0, stations0 = console.call("status"), statuses()
        time.sleep(self.seconds)
        cpu1, counters1 = cpu_seconds(hub.process.pid), _counters(hub)
        generators1 = sum(map(cpu_seconds, generators))
        probes1 = cpu_seconds(probes.pid)
        drops1 = [udp_drops([pid]) for pid in (hub.process.pid, probes.pid)]
        station_drops1 = udp_drops([w.pid for w in workers])
        console1, stations1 = console.call("status"), statuses()
        window = stations1[0]["at"] - stations0[0]["at"]
        fps_by_worker = [
            [
                (b[3] - a[3]) / (end["at"] - begin["at"])
                for a, b in zip(begin["stations"], end["stations"], strict=True)
            ]
            for begin, end in zip(stations0, stations1, strict=True)
        ]
        fps = [f for worker in fps_by_worker for f in worker]
        everyone_end = [s for status in stations1 for s in status["stations"]]
        joined = [s for s in everyone_end if s[0]]
        join_times = [s[2] - s[1] for s in everyone_end if s[2] is not None]

        def phase(at: int) -> float | None:
            times = [s[at] - s[1] for s in everyone_end if s[at] is not None]
            return round(percentile(times, 95), 2) if times else None

        errors = sorted({s[5] for s in everyone_end if s[5]})
        console_seconds = console1["at"] - console0["at"]
        self.result |= {
            "joined": len(joined),
            "join_p95_s": round(percentile(join_times, 95), 2)
            if len(join_times) == self.n
            else None,
            "join_p50_s": round(percentile(join_times, 50), 2),
            # Where a join's time goes: to the hub's ``joined``, to the first media
            # datagram (the subscriber's DTLS done), to the first lecturer frame.
            "join_joined_p95_s": phase(8),
            "join_first_media_p95_s": phase(9),
            "hub_cpu_percent": round((cpu1 - cpu0) / window * 100, 1),
            "hub_rss_mb": round(rss_mb(hub.process.pid), 1),
            "lecturer_fps_min": round(min(fps), 2),
            # Errors before the window belong to the joins (a frame before a keyframe).
            "probe_decode_errors": stations1[-1]["decode_errors"] - stations0[-1]["decode_errors"],
            "probe_decode_errors_by_codec": {
                codec: count - stations0[-1]["decode_errors_by_codec"].get(codec, 0)
                for codec, count in stations1[-1]["decode_errors_by_codec"].items()
            },
            "console_downlink_kbps": round(
                (console1["bytes"] - console0["bytes"]) * 8 / 1000 / console_seconds
            ),
            "uplinks_paused": sum(1 for s in everyone_end if s[4]),
            "microphones_paused": sum(1 for s in everyone_end if s[10]),
            "udp_port_mode": "per-peer" if self.udp_port is None else "shared",
            "window_s": round(window, 1),
            "load_generator_cpu_percent": round((generators1 - generators0) / window * 100),
            "probes_cpu_percent": round((probes1 - probes0) / window * 100),
            # Datagrams the kernel dropped at full receive buffers in the window: a
            # starved process, not the hub's sending.
            "udp_drops_at_hub": drops1[0] - drops0[0],
            "udp_drops_at_probes": drops1[1] - drops0[1],
            "udp_drops_at_stations": station_drops1 - station_drops0,
            "lecturer_fps_median": round(percentile(fps, 50), 2),
            # Which starved, if any: the counting stations, or the decoding probes.
            "lecturer_fps_min_counting": round(min(f for w in fps_by_worker[:-1] for f in w), 2),
            "lecturer_fps_min_probes": round(min(fps_by_worker[-1]), 2),
            "lecturer_fps_probes": [round(f, 2) for f in fps_by_worker[-1]],
            **{
                f"hub_{name}_per_s": round(
                    (counters1.get(name, 0) - counters0.get(name, 0)) / window
                )
                for name in (
                    "packets_received",
                    "packets_forwarded",
                    "retransmissions",
                    "nacks_received",
                    "keyframe_requests",
                    "silence_withheld",
                    "video_yields",
                )
            },
            "stations_with_first_frame": len(join_times),
            "on_stage": staged,
            "console_tracks": console1["tracks"],
            "hub_rss_mb_before_storm": round(rss_before, 1),
            "hub_threads": _threads(hub.process.pid),
            "hub_threads_before_storm": threads_before,
            "join_errors": errors[:3],
            "join_retries": sum(s[7] - 1 for s in everyone_end),
        }
        return self.result


def _counters(hub: HubProcess) -> dict[str, int]:
    try:
        # A hub drowning in a storm may take long to answer; its figures still count.
        return hub.counters(timeout=60)
    except OSError as exc:
        raise BenchError(f"/metrics: {exc}") from None


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.county", description=__doc__)
    parser.add_argument("--stations", type=int, help="stations (default 190)")
    parser.add_argument("--seconds", type=float, help="measuring window (default 30)")
    parser.add_argument("--quick", action="store_true", help="60 stations, a 10 s window")
    parser.add_argument("--json", action="store_true", help="only the JSON line")
    parser.add_argument(
        "--hub-source",
        type=Path,
        default=ROOT,
        help="run the hub from this checkout (a git worktree of another commit)",
    )
    parser.add_argument(
        "--no-console",
        action="store_true",
        help="the console receives nothing: the hub's cost per station alone (until the "
        "console tells the hub what it shows, it receives every publication)",
    )
    parser.add_argument(
        "--profile", type=Path, help="run the hub under cProfile, its stats written here"
    )
    parser.add_argument(
        "--udp-port", type=int, help="HUB_UDP_PORT for the hub: all media on one UDP port"
    )
    args = parser.parse_args(argv)
    n = args.stations or (60 if args.quick else 190)
    seconds = args.seconds or (10.0 if args.quick else 30.0)
    if n <= PROBES + ON_STAGE or seconds < 1:
        parser.error(f"--stations must be over {PROBES + ON_STAGE}, --seconds positive")
    if not (args.hub_source / "hub" / "__main__.py").is_file():
        parser.error(f"--hub-source {args.hub_source} has no hub/__main__.py")
    county = County(
        n, seconds, args.hub_source.resolve(), args.udp_port, not args.no_console, args.profile
    )
    limit = 88 if args.quick else 150 + seconds + n
    try:
        with hard_timeout(limit), ExitStack() as stack:
            result = county.run(stack)
    except (BenchError, _Deadline) as exc:
        print(f"bench.county: {exc}", file=sys.stderr)
        print(json.dumps({**county.result, "error": str(exc).splitlines()[0]}))
        sys.exit(1)
    except KeyboardInterrupt:
        print("bench.county: interrupted", file=sys.stderr)
        sys.exit(130)
    if not args.json:
        for key, value in result.items():
            print(f"{key:32} {value}")
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
