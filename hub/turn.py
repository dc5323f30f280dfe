"""Short-lived TURN credentials from a secret shared with coturn.

coturn's REST API scheme (``use-auth-secret`` with ``static-auth-secret``): the
username is ``<expiry unix time>:<identity>``, the password base64(HMAC-SHA1(secret,
username)). coturn checks both, and the expiry, on each allocation; nothing is
stored, and a credential read out of one browser is worthless after its TTL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any


def turn_credentials(secret: str, identity: str, ttl: int, now: float) -> tuple[str, str]:
    """(username, password) valid until ``now + ttl`` for ``identity``."""
    # coturn splits the username at its first colon: the identity keeps any colons it has.
    username = f"{int(now) + ttl}:{identity}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def turn_ice_server(
    urls: list[str], secret: str, identity: str, ttl: int, now: float
) -> dict[str, Any]:
    """One ``RTCIceServer`` (as JSON) for ``urls`` with fresh credentials."""
    username, credential = turn_credentials(secret, identity, ttl, now)
    return {"urls": urls, "username": username, "credential": credential}


def link_headers(servers: list[dict[str, Any]]) -> list[str]:
    """WHIP/WHEP ``Link`` header values for ICE servers (RFC 9725 section 4.6)."""
    values = []
    for server in servers:
        params = ""
        if "username" in server:
            params = (
                f'; username="{server["username"]}"; credential="{server["credential"]}"'
                '; credential-type="password"'
            )
        values += [f'<{url}>; rel="ice-server"{params}' for url in server["urls"]]
    return values
