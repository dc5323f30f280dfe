"""Every request about a room reaches the node holding it (see :mod:`cluster.router`).

A request for a room another node holds is answered here, before any route runs:
HTTP with ``307 Temporary Redirect`` to the same path and query on the owner (WHIP and
WHEP offers keep their method and body), a signaling websocket that names its room
(``/ws?room=R``) with a ``redirect`` message carrying the owner's websocket URL, then
a close. A room held here, or by nobody (this node may claim it), goes on to the
routes. In one process nothing is ever elsewhere and this costs a dict lookup.
"""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send

from cluster.router import RoomRouter
from hub.ids import RoomName, valid_room_name
from hub.service import Hub

_ROOM_PATHS = re.compile(
    r"^/(?:whip|whep|live)/(?P<a>[^/]+)(?:/[^/]*)?$"
    r"|^/api/rooms/(?P<b>[^/]+)(?:/recording|/live|/restreams(?:/[^/]+)?)?$"
)
"""The routes that act on a room's node: WHIP/WHEP and their sessions, live HLS, and
the room API (not the console grant or invitations, which any node issues)."""


def room_of(scope: Scope) -> RoomName | None:
    """The room a request is about, if it is one of the routed ones."""
    if scope["type"] == "websocket":
        if scope["path"] != "/ws":
            return None
        rooms = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("room")
        name = rooms[0] if rooms else None
    else:
        match = _ROOM_PATHS.match(scope["path"])
        name = (match["a"] or match["b"]) if match else None
    if name is None:
        return None
    try:
        return valid_room_name(RoomName(name))
    except ValueError:
        return None  # the route answers a bad name with its reason


class RoomRouting:
    """ASGI middleware sending requests about rooms held elsewhere to their node."""

    def __init__(self, app: ASGIApp, hub: Hub, router: RoomRouter) -> None:
        self.app = app
        self.hub = hub
        self.router = router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        room = room_of(scope)
        held = self.hub.rooms.get(room) if room is not None else None
        owner = None
        if room is not None and (held is None or held.closed):
            owner = await self.router.elsewhere(room)
        if owner is None:
            await self.app(scope, receive, send)
            return
        node, url = owner
        target = url + scope["path"]
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        if scope["type"] == "websocket":
            await _redirect_websocket(receive, send, "ws" + target.removeprefix("http"), node)
            return
        body = json.dumps(
            {"detail": f"room {room} is held by node {node}", "code": "room_elsewhere"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 307,
                "headers": [
                    (b"location", target.encode("latin-1")),
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def _redirect_websocket(receive: Receive, send: Send, url: str, node: str) -> None:
    """Browsers do not follow an HTTP redirect of a websocket handshake: accept, say
    where to go, close."""
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    message = {"type": "redirect", "url": url, "node": node}
    await send({"type": "websocket.send", "text": json.dumps(message)})
    await send({"type": "websocket.close", "code": 1000, "reason": "room_elsewhere"})
