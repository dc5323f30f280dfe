"""A room's recording, live HLS and restreams: sinks that receive the stage's
encoded frames like any other subscriber (Galene's "a recording is just another
client"). Nothing here decodes; ``media/`` does the muxing."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hub.messages import MediaStatus, ModeratorMediaStatus
from media.hls import HlsPackager
from media.recorder import Recorder
from media.restream import Restreamer

if TYPE_CHECKING:
    from hub.room import Room

logger = logging.getLogger(__name__)

HLS_PLAYER_TIMEOUT = 15.0
"""Seconds after its last playlist request that an HLS player stops counting."""

Recorded = Callable[[str, list[Path]], Awaitable[None]]
"""Called with (room name, the recording's parts in order) once a recording has ended:
one directory, or several when hub restarts cut it into parts."""


class MediaError(Exception):
    """A media action that cannot be done now; the message says why."""


@dataclass(frozen=True, slots=True)
class MediaDirs:
    """Where a room's media go: recordings where every node of a cluster reaches them
    (``HUB_MEDIA_DIR``), live HLS on the node that serves it."""

    recordings: Path
    live: Path

    @classmethod
    def under(cls, directory: Path) -> MediaDirs:
        return cls(directory / "recordings", directory / "live")


class RoomMedia:
    def __init__(self, room: Room, dirs: MediaDirs, on_recorded: Recorded | None) -> None:
        self.room = room
        self.dirs = dirs
        self.on_recorded = on_recorded
        self.recorder: Recorder | None = None
        self.recording_started_at: float | None = None
        self.live: HlsPackager | None = None
        self.restreamer: Restreamer | None = None
        self._restream_urls: dict[str, str] = {}
        """Target id → its URL in full (the room's state keeps them)."""
        self.errors: dict[str, str] = {}
        """The last error of each of recording, live and restream, until it restarts."""
        self.last_recording: Path | None = None
        self._hls_players: dict[str, dict[str | None, float]] = {}
        """Address → player id (None: players that send none, counted as one) → when
        it last asked for the playlist."""

    def _request_keyframe(self, track_id: str) -> None:
        for participant in self.room.participants.values():
            for publication in participant.publications.values():
                if publication.id == track_id:
                    publication.up.top.request_keyframe()  # sinks take the top layer

    def _failed(self, what: str) -> Callable[[str], None]:
        def report(message: str) -> None:
            logger.error("room %s: %s failed: %s", self.room.name, what, message)
            self.errors[what] = message
            # A failed recorder or packager has stopped: end it here too, keeping
            # what was written; the room goes on.
            if what == "recording" and self.recorder is not None:
                self.room.tasks.spawn(self.stop_recording(), name="recording-failed")
            elif what == "live" and self.live is not None:
                self.room.tasks.spawn(self.stop_live(), name="live-failed")
            self.announce()

        return report

    # --- recording ---

    def start_recording(self) -> Path:
        if self.recorder is not None:
            raise MediaError("already recording")
        directory = self._record_part()
        self.room.state.recording = [str(directory)]
        self.room.state_changed()
        return directory

    def _record_part(self) -> Path:
        """A recorder for a new part in a directory of its own, on the stage now."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        directory = self.dirs.recordings / f"{self.room.name}-{stamp}"
        self.errors.pop("recording", None)
        recorder = Recorder(
            directory,
            on_error=self._failed("recording"),
            request_keyframe=self._request_keyframe,
        )
        self.recorder = recorder
        self.recording_started_at = time.time()
        self.room.add_sink(recorder)
        self.announce()
        return directory

    async def stop_recording(self) -> Path:
        """End the recording: every part it has (a restart cut it into more than one)
        goes to the library as one recording."""
        recorder = self.recorder
        if recorder is None:
            raise MediaError("not recording")
        parts = [Path(p) for p in self.room.state.recording or [str(recorder.directory)]]
        self.recorder = None
        self.recording_started_at = None
        self.room.state.recording = None
        self.room.state_changed()
        self.room.remove_sink(recorder)
        await recorder.close()
        self.last_recording = recorder.directory
        self.announce()
        if self.on_recorded is not None and (recorder.manifest.tracks or len(parts) > 1):
            await self.on_recorded(self.room.name, parts)
        return recorder.directory

    def resume(self) -> None:
        """After a restart, what the room's state says was on comes back: live HLS, the
        restreams, and the recording, as a new part of the same recording."""
        state = self.room.state
        if state.live and self.live is None:
            self.start_live()
        for url in list(state.restreams):
            if url not in self._restream_urls.values():
                self._start_restream(url)
        if state.recording is not None and self.recorder is None:
            state.recording.append(str(self._record_part()))
            self.room.state_changed()

    # --- live HLS for households ---

    def start_live(self) -> None:
        if self.live is not None:
            raise MediaError("already live")
        self.errors.pop("live", None)
        self.live = HlsPackager(
            self.dirs.live / self.room.name,
            request_keyframe=self._request_keyframe,
            on_error=self._failed("live"),
        )
        self.room.public = True
        self.room.state.live = True
        self.room.state_changed()
        self.room.add_sink(self.live)
        self.announce()

    async def stop_live(self) -> None:
        live = self.live
        if live is None:
            raise MediaError("not live")
        self.live = None
        self.room.state.live = False
        self.room.state_changed()
        self.room.remove_sink(live)
        await live.close()
        self.announce()

    # --- restream to RTMP ---

    def add_restream(self, url: str) -> str:
        if not url.startswith(("rtmp://", "rtmps://")):
            raise MediaError("a restream URL starts with rtmp:// or rtmps://")
        target = self._start_restream(url)
        self.room.state.restreams.append(url)
        self.room.state_changed()
        return target

    def _start_restream(self, url: str) -> str:
        if self.restreamer is None:
            self.restreamer = Restreamer(
                f"restream-{self.room.name}",
                request_keyframe=self._request_keyframe,
                on_error=self._failed("restream"),
            )
            self.room.add_sink(self.restreamer)
        target = self.restreamer.start_target(url)
        self._restream_urls[target] = url
        self.announce()
        return target

    async def remove_restream(self, target_id: str) -> None:
        if self.restreamer is None or target_id not in self.restreamer.status():
            raise MediaError(f"no restream {target_id}")
        url = self._restream_urls.pop(target_id, None)
        if url in self.room.state.restreams:
            self.room.state.restreams.remove(url)
            self.room.state_changed()
        await self.restreamer.stop_target(target_id)
        self.announce()

    # --- household viewers ---

    def note_hls_player(self, address: str, player: str | None) -> None:
        """A playlist request from ``player`` (the id its page keeps) at ``address``;
        an address adds at most ``hls_players_per_address`` players."""
        players = self._hls_players.setdefault(address, {})
        if player in players or len(players) < self.room.limits.hls_players_per_address:
            players[player] = time.monotonic()

    def household_viewers(self) -> int:
        """WHEP viewers, plus the HLS players that asked for the playlist lately (a
        player reloads it every few seconds; one that stopped drops out)."""
        cutoff = time.monotonic() - HLS_PLAYER_TIMEOUT
        lately = {
            address: {player: at for player, at in players.items() if at >= cutoff}
            for address, players in self._hls_players.items()
        }
        self._hls_players = {address: players for address, players in lately.items() if players}
        whep = sum(1 for p in self.room.participants.values() if p.kind == "whep")
        return whep + sum(len(players) for players in self._hls_players.values())

    # --- status ---

    def public_status(self) -> dict[str, Any]:
        """What everyone in the room and every household may know: whether it is
        recorded and live for households (people are told when they are captured)."""
        return {
            "recording": self.recorder is not None,
            "recording_started_at": self.recording_started_at,
            "live": self.live is not None,
            "hls_url": f"/live/{self.room.name}/index.m3u8" if self.live is not None else None,
        }

    def status(self) -> dict[str, Any]:
        """The moderators' view: also the restream targets (their URLs with the
        secrets hidden) and the last errors, ffmpeg's words included."""
        restreams = self.restreamer.status() if self.restreamer is not None else {}
        return {
            **self.public_status(),
            "restreams": [{**asdict(s), "state": str(s.state)} for s in restreams.values()],
            "errors": dict(self.errors),
        }

    def message_for(self, moderator: bool) -> MediaStatus | ModeratorMediaStatus:
        """The ``media`` message for a moderator or anyone else."""
        if moderator:
            return ModeratorMediaStatus.model_validate(self.status())
        return MediaStatus.model_validate(self.public_status())

    def announce(self) -> None:
        full, public = self.message_for(True), self.message_for(False)
        for participant in self.room.participants.values():
            participant.send(full if participant.grant.can_moderate else public)

    async def close(self, suspend: bool = False) -> None:
        """End recording, live HLS and restreams. ``suspend``: the hub stops and will
        come back (a restart), so they end cleanly but nothing goes to the library and
        the room's state (already saved) keeps them on for :meth:`resume`."""
        if suspend:
            recorder, live, self.recorder, self.live = self.recorder, self.live, None, None
            for sink in (recorder, live):
                if sink is not None:
                    self.room.remove_sink(sink)
                    await sink.close()
        else:
            if self.recorder is not None:
                await self.stop_recording()
            if self.live is not None:
                await self.stop_live()
        if self.restreamer is not None:
            restreamer, self.restreamer = self.restreamer, None
            self.room.remove_sink(restreamer)
            await restreamer.close()
