"""Security headers on every HTTP answer: a Content-Security-Policy the pages keep
(no inline script or style, nothing from elsewhere, never framed), no MIME sniffing,
and no Referer (join links carry their token in the query string)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
"""A Host header fit to be written into the policy (anything else gets no ws: source)."""

_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    # llhls.js plays live HLS through MediaSource (blob: URLs).
    "media-src 'self' blob:; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'; connect-src 'self'"
)
_FIXED = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),  # frame-ancestors for browsers without CSP level 2
]


def policy_for(host: str | None, nodes: Iterable[str] = ()) -> str:
    """The policy for a page served as ``host``: signaling's websocket goes to the same
    host, which older browsers do not count as 'self'; in a cluster, also to the other
    nodes (``nodes``, their URLs), where a room held elsewhere sends the page."""
    sources = []
    if host is not None and _HOST.fullmatch(host) is not None:
        sources += [f"ws://{host}", f"wss://{host}"]
    for url in nodes:
        parts = urlsplit(url)
        if parts.scheme in ("http", "https") and _HOST.fullmatch(parts.netloc):
            secure = parts.scheme == "https"
            sources += [
                f"{parts.scheme}://{parts.netloc}",
                f"ws{'s' if secure else ''}://{parts.netloc}",
            ]
    return " ".join([_POLICY, *dict.fromkeys(sources)])


class SecurityHeaders:
    """ASGI middleware: the headers above on every HTTP response (websockets pass).
    ``nodes`` gives the URLs of the cluster's nodes, if any."""

    def __init__(self, app: ASGIApp, nodes: Callable[[], Iterable[str]] = tuple) -> None:
        self.app = app
        self.nodes = nodes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
        added = [
            *_FIXED,
            (b"content-security-policy", policy_for(host, self.nodes()).encode("latin-1")),
        ]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *added]
            await send(message)

        await self.app(scope, receive, send_with_headers)
