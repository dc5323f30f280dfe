"""HTTP for live HLS: the playlist with blocking reload, init, parts and segments.

The Cache-Control of every answer is written for a shared cache that collapses
requests (nginx's ``proxy_cache_lock``, ``deploy/nginx.conf``), so that origin cost
stays independent of the number of viewers:

- media files never change once written: immutable for a year;
- a blocking reload (``_HLS_msn``/``_HLS_part``) that got its part is the same for
  every viewer asking for it: a few seconds;
- everything else (a plain playlist, a blocking reload that timed out, 404 for a part
  not there, 503 while starting) changes soon: a shared cache keeps it one second,
  browsers not at all. A cache must be allowed to keep these too: it does not
  collapse what it may not store, and would queue the waiting viewers one by one.

Players are counted by the ``player`` query parameter of their playlist requests: a
random id the household page keeps for its tab. Only playlist URLs carry it (init,
parts and segments are the same URL for everyone), and it changes no answer (a
malformed one counts as no id), so a shared cache keys on ``_HLS_msn``/``_HLS_part``
and leaves it out. Behind such a cache the hub hears only the requests the cache
passes on, and counts fewer households than watch.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response

from media.hls import PLAYLIST, HlsPackager

PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
CONTENT_TYPES = {".mp4": "video/mp4", ".m4s": "video/iso.segment"}
STARTING_RETRY = 2
"""Seconds a player should wait when the stream has not enough media yet."""
SHORT_CACHE = "public, max-age=0, s-maxage=1"
"""One second in a shared cache, revalidated by browsers: answers that change soon."""
BLOCKING_PLAYLIST_CACHE = "public, max-age=4"
"""A blocking reload that got its part: the answer for that msn/part holds."""
MEDIA_CACHE = "public, max-age=31536000, immutable"
_SHORT = {"Cache-Control": SHORT_CACHE}
DECIMAL_INTEGER = re.compile(r"[0-9]{1,20}")
"""RFC 8216's decimal-integer: ASCII digits, at most 2^64 - 1. ``str.isdigit`` would
also take "²" (which ``int`` refuses) and "٣" (which it reads)."""
DECIMAL_INTEGER_MAX = 2**64 - 1
PLAYER_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
"""What a player id looks like (the watch page makes 24 hex digits)."""


def _number(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    if DECIMAL_INTEGER.fullmatch(value) is None or int(value) > DECIMAL_INTEGER_MAX:
        raise HTTPException(
            400, f"{name} must be an integer from 0 to {DECIMAL_INTEGER_MAX}", headers=_SHORT
        )
    return int(value)


def live_router(
    get_packager: Callable[[str], HlsPackager | None],
    on_playlist: Callable[[str, str, str | None], None] | None = None,
) -> APIRouter:
    """Routes ``/live/{room}/index.m3u8`` and ``/live/{room}/{name}``.

    ``on_playlist(room, address, player)`` hears every playlist request: the client's
    address and the player's id (None when it sends none), how the hub counts
    household viewers."""
    router = APIRouter(prefix="/live", tags=["live"])

    def packager_for(room: str) -> HlsPackager:
        packager = get_packager(room)
        if packager is None:
            raise HTTPException(404, f"room {room!r} is not live", headers=_SHORT)
        return packager

    @router.get(f"/{{room}}/{PLAYLIST}")
    async def playlist(
        request: Request,
        room: str,
        hls_msn: Annotated[str | None, Query(alias="_HLS_msn")] = None,
        hls_part: Annotated[str | None, Query(alias="_HLS_part")] = None,
        player: str | None = None,
    ) -> Response:
        packager = packager_for(room)
        if player is not None and not PLAYER_ID.fullmatch(player):
            # Counted as a player without an id, never refused: a shared cache keys the
            # answer without ``player``, so it must not change the answer.
            player = None
        if on_playlist is not None:
            on_playlist(room, request.client.host if request.client else "?", player)
        msn = _number(hls_msn, "_HLS_msn")
        part = _number(hls_part, "_HLS_part")
        problem = packager.validate(msn, part)
        if problem is not None:
            raise HTTPException(400, problem, headers=_SHORT)
        if not packager.state.playable:
            raise HTTPException(
                503,
                f"room {room!r} is starting",
                headers={"Retry-After": str(STARTING_RETRY), **_SHORT},
            )
        cache = SHORT_CACHE
        if msn is not None and await packager.wait_for(msn, part):
            # Every viewer asks for the same msn/part: a CDN may answer them all.
            cache = BLOCKING_PLAYLIST_CACHE
        text = packager.state.render()
        return Response(text, media_type=PLAYLIST_TYPE, headers={"Cache-Control": cache})

    @router.get("/{room}/{name}")
    async def media_file(room: str, name: str) -> Response:
        packager = packager_for(room)
        # Only names the packager listed: no path from the request reaches the disk.
        path = await packager.file(name)
        content_type = CONTENT_TYPES.get(name[name.rfind(".") :]) if "." in name else None
        data = None
        if path is not None and content_type is not None:
            # Read at once (a part is tens of kB): the window may slide and remove the
            # file between a check and a streamed read, which was a 500.
            with contextlib.suppress(FileNotFoundError):
                data = path.read_bytes()
        if data is None:
            raise HTTPException(404, f"{name!r} is not in room {room!r}'s stream", headers=_SHORT)
        return Response(data, media_type=content_type, headers={"Cache-Control": MEDIA_CACHE})

    return router
