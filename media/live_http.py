"""HTTP for live HLS: the playlist with blocking reload, init, parts and segments.

A plain playlist request is revalidated every time; a blocking reload
(``_HLS_msn``/``_HLS_part``) that got its part may be cached a few seconds, as every
viewer asks for the same one. Media files never change once written: immutable
for a year. A reverse proxy or CDN in front (with request collapsing) then carries
the viewers, and origin cost stays independent of their number.

Players are counted by the ``player`` query parameter of their playlist requests: a
random id the household page keeps for its tab. Only playlist URLs carry it (init,
parts and segments are the same URL for everyone), and it changes no answer, so a
shared cache keys on ``_HLS_msn``/``_HLS_part`` and leaves it out.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response

from media.hls import PLAYLIST, HlsPackager

PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
CONTENT_TYPES = {".mp4": "video/mp4", ".m4s": "video/iso.segment"}
STARTING_RETRY = 2
"""Seconds a player should wait when the stream has not enough media yet."""
PLAYLIST_CACHE = "no-cache"
BLOCKING_PLAYLIST_CACHE = "public, max-age=4"
"""A blocking reload that got its part: the answer for that msn/part holds."""
MEDIA_CACHE = "public, max-age=31536000, immutable"
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
        raise HTTPException(400, f"{name} must be an integer from 0 to {DECIMAL_INTEGER_MAX}")
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
            raise HTTPException(404, f"room {room!r} is not live")
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
            raise HTTPException(400, "player must be 8 to 64 letters, digits, '-' or '_'")
        if on_playlist is not None:
            on_playlist(room, request.client.host if request.client else "?", player)
        msn = _number(hls_msn, "_HLS_msn")
        part = _number(hls_part, "_HLS_part")
        problem = packager.validate(msn, part)
        if problem is not None:
            raise HTTPException(400, problem)
        if not packager.state.playable:
            raise HTTPException(
                503, f"room {room!r} is starting", headers={"Retry-After": str(STARTING_RETRY)}
            )
        cache = PLAYLIST_CACHE
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
        if path is None or content_type is None or not path.is_file():
            raise HTTPException(404, f"{name!r} is not in room {room!r}'s stream")
        return FileResponse(path, media_type=content_type, headers={"Cache-Control": MEDIA_CACHE})

    return router
