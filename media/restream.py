"""Restream the stage to RTMP targets (a county portal, a video platform).

The room's single ffmpeg (see :mod:`media.stagefeed`) turns the stage into H.264 +
AAC in MPEG-TS on a pipe: H.264 copied, VP8 transcoded once for all targets. That
byte stream is fanned out to one small ``ffmpeg -c copy -f flv`` per target, so a
target can start, stop, drop and reconnect without touching the others. A target
that drops is retried with exponential backoff; its status says where it stands.
When the room's ffmpeg is replaced (a codec switch, a crash), every push reconnects.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import subprocess
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import IO, Literal

from media.muxing import ffmpeg_exe
from media.stagefeed import StageFeed

log = logging.getLogger(__name__)

TargetState = Literal["connecting", "live", "retrying", "stopped", "failed"]

CHUNK = 188 * 348
"""About 64 KiB of whole MPEG-TS packets."""
RESTART = b""
"""Queued to a target when a new MPEG-TS stream begins: reconnect with it."""


@dataclass(frozen=True, slots=True)
class TargetStatus:
    """A snapshot of one RTMP target."""

    target_id: str
    url: str
    """The URL with its stream key hidden."""
    state: TargetState
    error: str | None = None
    """The last error (ffmpeg's last message), kept while retrying."""
    attempts: int = 0
    since: float = 0.0
    """``time.time()`` of the last state change."""


HIDDEN = "***"
MIN_SECRET = 4
"""Parts of a URL shorter than this are not hunted down in ffmpeg's messages."""


def _split(url: str) -> tuple[urllib.parse.SplitResult, str, str] | None:
    """The URL's parts, the app (the path's first segment) and what follows it."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return None
    app, slash, rest = parts.path.removeprefix("/").partition("/")
    return parts, app, rest if slash else ""


def hide_key(url: str) -> str:
    """The URL with its secrets hidden, its target still recognisable:
    ``rtmp://user:PASSWORD@host/app/KEY?sig=SIG`` → ``rtmp://user:***@host/app/***?sig=***``.
    Kept: scheme, user, host, port and the app; hidden: the password, everything
    after the app (the stream key, with or without a trailing slash), query values
    and the fragment."""
    split = _split(url)
    if split is None:
        return f"{url.partition('://')[0]}://{HIDDEN}"
    parts, app, rest = split
    user, at, host = parts.netloc.rpartition("@")
    if at and parts.password is not None:
        user = f"{user.partition(':')[0]}:{HIDDEN}"
    path = parts.path
    if rest.strip("/"):
        path = f"/{app}/{HIDDEN}"
    query = "&".join(
        f"{name}={HIDDEN}" if is_pair else HIDDEN
        for name, is_pair, _ in (pair.partition("=") for pair in parts.query.split("&") if pair)
    )
    return urllib.parse.urlunsplit(
        (
            parts.scheme,
            f"{user}{at}{host}",
            path,
            query,
            HIDDEN if parts.fragment else "",
        )
    )


def hide_secrets(text: str, url: str) -> str:
    """``text`` (ffmpeg's words about ``url``) without the secrets of ``url``, however
    ffmpeg spelled the URL."""
    text = text.replace(url, hide_key(url))
    split = _split(url)
    if split is None:
        return text.replace(url.partition("://")[2], HIDDEN)
    parts, _, rest = split
    secrets = [parts.password or "", rest.strip("/"), parts.query, parts.fragment]
    secrets += rest.split("/") + parts.query.replace("=", "&").split("&")
    # Longest first: a secret containing another is hidden whole. Shorter pieces are
    # no secret worth the garbling (a "1" in every port number).
    for secret in sorted({s for s in secrets if len(s) >= MIN_SECRET}, key=len, reverse=True):
        text = text.replace(secret, HIDDEN)
    return text


class _Target:
    """One RTMP push: its thread, its ffmpeg, its queue of MPEG-TS chunks."""

    def __init__(
        self,
        target_id: str,
        url: str,
        *,
        want_keyframe: Callable[[], None],
        on_failed: Callable[[str], None],
        retry_initial: float,
        retry_max: float,
        max_attempts: int | None,
    ) -> None:
        self.url = url
        self.status = TargetStatus(target_id, hide_key(url), "connecting", since=time.time())
        self.chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=256)
        self._want_keyframe = want_keyframe
        self._on_failed = on_failed
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._max_attempts = max_attempts
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._run, name=f"restream:{target_id}", daemon=True)
        self._thread.start()

    def feed(self, chunk: bytes | None) -> None:
        """Queue a chunk (None: the stream ended, :data:`RESTART`: a new stream
        follows); a stalled push loses the oldest."""
        while True:
            try:
                self.chunks.put_nowait(chunk)
                return
            except queue.Full:
                try:
                    self.chunks.get_nowait()
                except queue.Empty:
                    pass

    def stop(self) -> None:
        """Stop pushing and wait for the push to end (blocks: call through a thread)."""
        self._stopping.set()
        self.feed(None)  # the push ends its ffmpeg's input itself...
        self._thread.join(timeout=5)
        if self._thread.is_alive():
            with self._lock:  # ... unless a stalled connection blocks its writes
                process = self._process
            if process is not None:
                process.kill()
            self._thread.join()

    def _set(self, state: TargetState, error: str | None, attempts: int | None = None) -> None:
        self.status = replace(
            self.status,
            state=state,
            error=error,
            attempts=self.status.attempts if attempts is None else attempts,
            since=time.time(),
        )
        log.info("restream %s: %s", self.status.url, state)

    def _run(self) -> None:
        delay = self._retry_initial
        attempts = failures = 0
        while not self._stopping.is_set():
            first = self.chunks.get()
            if first is None:
                break
            if first == RESTART:
                continue
            attempts += 1
            # A reconnection stays "retrying" (with the last error) until it is live.
            self._set(self.status.state, self.status.error, attempts)
            outcome, error = self._push(first)
            if self._stopping.is_set() or outcome == "ended":
                break
            if self.status.state == "live":  # it worked for a while: start over
                delay, failures = self._retry_initial, 0
            if outcome == "restart":
                # The room's ffmpeg was replaced: connect again, at once, to the new stream.
                self._set("connecting", None)
                continue
            failures += 1
            if self._max_attempts is not None and failures >= self._max_attempts:
                self._set("failed", error)
                self._on_failed(f"restream to {self.status.url} failed: {error}")
                return
            self._set("retrying", error)
            self._stopping.wait(delay)
            delay = min(delay * 2, self._retry_max)
            # Start again from fresh data, at the next keyframe.
            _drain(self.chunks)
            self._want_keyframe()
        self._set("stopped", self.status.error)

    def _push(self, first: bytes) -> tuple[Literal["ended", "restart", "failed"], str]:
        """Run one ffmpeg push until it ends; why it ended, and ffmpeg's last words."""
        process = subprocess.Popen(
            [
                ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostats",
                "-progress", "pipe:1", "-stats_period", "0.5",
                # Probing is all that happens before the connection: keep it short, yet
                # long enough for a keyframe with its SPS (VP8 input: one every 2 s).
                "-probesize", "2M", "-analyzeduration", "2500000",
                "-f", "mpegts", "-i", "pipe:0",
                "-c", "copy", "-f", "flv", "-flvflags", "no_duration_filesize", self.url,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )  # fmt: skip
        with self._lock:
            self._process = process
        errors: deque[str] = deque(maxlen=5)
        assert process.stdin and process.stdout and process.stderr
        watchers = [
            threading.Thread(target=self._watch_progress, args=(process.stdout,), daemon=True),
            threading.Thread(target=_collect, args=(process.stderr, errors), daemon=True),
        ]
        for watcher in watchers:
            watcher.start()
        chunk: bytes | None = first
        try:
            while chunk and not self._stopping.is_set():
                process.stdin.write(chunk)
                chunk = self.chunks.get()
        except (OSError, ValueError):
            pass  # ffmpeg is gone: its stderr says why
        _end(process)
        for watcher in watchers:
            watcher.join(timeout=5)
        with self._lock:
            self._process = None
        message = "; ".join(errors) or f"ffmpeg exited with status {process.returncode}"
        message = hide_secrets(message, self.url)
        if chunk is None or self._stopping.is_set():
            return "ended", message
        return ("restart" if chunk == RESTART else "failed"), message

    def _watch_progress(self, progress: IO[bytes]) -> None:
        # ffmpeg counts frames only once its output (the RTMP connection) is open.
        for line in progress:
            key, _, value = line.decode(errors="replace").strip().partition("=")
            if key == "frame" and value.isdigit() and int(value) > 0:
                if self.status.state != "live":
                    self._set("live", None)


def _collect(stderr: IO[bytes], errors: deque[str]) -> None:
    for line in stderr:
        text = line.decode(errors="replace").strip()
        if text:
            errors.append(text)


def _drain(chunks: queue.Queue[bytes | None]) -> None:
    while True:
        try:
            chunks.get_nowait()
        except queue.Empty:
            return


def _end(process: subprocess.Popen[bytes]) -> None:
    """Close ffmpeg's input so it finishes cleanly; kill it if it does not."""
    if process.stdin is not None:
        try:
            process.stdin.close()
        except OSError:
            pass
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Restreamer(StageFeed):
    """A :class:`~media.frames.FrameSink` pushing the stage to RTMP targets.

    ``start_target``/``stop_target`` may be called at any time; ``status()`` is a
    snapshot per target. ``max_attempts`` consecutive failures (None: retry forever)
    turn a target into "failed", reported through ``on_error``.
    """

    def __init__(
        self,
        name: str = "restream",
        *,
        request_keyframe: Callable[[str], None] | None = None,
        on_error: Callable[[str], None] | None = None,
        video_size: tuple[int, int] = (1280, 720),
        retry_initial: float = 0.5,
        retry_max: float = 10.0,
        max_attempts: int | None = None,
    ) -> None:
        self._targets: dict[str, _Target] = {}
        self._stopped: dict[str, TargetStatus] = {}
        self._ids = itertools.count(1)
        self._retry = (retry_initial, retry_max, max_attempts)
        super().__init__(
            name, request_keyframe=request_keyframe, on_error=on_error, video_size=video_size
        )

    def start_target(self, url: str) -> str:
        """Start pushing to ``url`` (rtmp:// or rtmps://); returns the target id."""
        target_id = f"target-{next(self._ids)}"
        retry_initial, retry_max, max_attempts = self._retry
        self._targets[target_id] = _Target(
            target_id,
            url,
            want_keyframe=self.want_keyframe,
            # Only this target failed: report it, the stage feed carries on.
            on_failed=self._on_error,
            retry_initial=retry_initial,
            retry_max=retry_max,
            max_attempts=max_attempts,
        )
        self.want_keyframe()
        return target_id

    async def stop_target(self, target_id: str) -> None:
        """Stop one target; the others carry on."""
        target = self._targets.pop(target_id, None)
        if target is not None:
            await asyncio.to_thread(target.stop)
            self._stopped[target_id] = target.status

    def status(self) -> dict[str, TargetStatus]:
        return {
            **self._stopped,
            **{target_id: target.status for target_id, target in self._targets.items()},
        }

    async def close(self) -> None:
        await super().close()
        for target_id in list(self._targets):
            await self.stop_target(target_id)

    def output_args(self) -> list[str]:
        return ["-f", "mpegts", "-muxdelay", "0", "-flush_packets", "1", "pipe:1"]

    def consume_output(self, stdout: IO[bytes]) -> None:
        while chunk := stdout.read(CHUNK):
            for target in list(self._targets.values()):
                target.feed(chunk)

    def end_of_epoch(self) -> None:
        marker = None if self._closed else RESTART
        for target in list(self._targets.values()):
            target.feed(marker)
