"""Join tokens: a Grant signed as a compact HS256 JWT.

The token is a standard JWT so that any JWT library can issue one (a portal, a
script); verification is done here with ``hmac`` and accepts nothing but HS256.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from hub.ids import ParticipantIdentity, RoomName, valid_room_name

MAX_TOKEN_LENGTH = 4096
"""Longer tokens are refused before any decoding (they arrive in URLs and headers)."""

_HEADER = {"alg": "HS256", "typ": "JWT"}
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


class Role(StrEnum):
    """What a participant is in the organisation, which decides its default grant."""

    CENTER = "center"
    INSTITUTE = "institute"
    STATION = "station"
    VIEWER = "viewer"
    INGEST = "ingest"


class Source(StrEnum):
    """A kind of publication."""

    CAMERA = "camera"
    MICROPHONE = "microphone"
    SCREEN = "screen"


@dataclass(frozen=True)
class Grant:
    """The permissions one join token carries."""

    room: RoomName
    """The only room the token admits to."""
    identity: ParticipantIdentity
    """Who joins: a site code, a person, an ingest name."""
    name: str
    """Display name shown to the other participants."""
    role: Role
    """The participant's role, kept so the UI and roll call can tell sites apart."""
    can_publish: bool
    """May send media (only of ``sources``)."""
    can_subscribe: bool
    """May receive the room's media."""
    can_moderate: bool
    """May mute, remove and call participants on stage."""
    can_chat: bool
    """May send chat messages to the room."""
    sources: frozenset[Source]
    """What may be published."""
    expires_at: float
    """Unix seconds after which the token no longer admits anyone."""

    def may_publish(self, source: Source) -> bool:
        """Whether a publication of ``source`` is allowed."""
        return self.can_publish and source in self.sources


class _Defaults(NamedTuple):
    publish: bool
    subscribe: bool
    moderate: bool
    chat: bool


_ALL_SOURCES = frozenset(Source)
_ROLE_DEFAULTS: dict[Role, _Defaults] = {
    Role.CENTER: _Defaults(publish=True, subscribe=True, moderate=True, chat=True),
    Role.INSTITUTE: _Defaults(publish=True, subscribe=True, moderate=False, chat=True),
    Role.STATION: _Defaults(publish=True, subscribe=True, moderate=False, chat=True),
    # Households watch; a chat open to them would be open to anyone with a link.
    Role.VIEWER: _Defaults(publish=False, subscribe=True, moderate=False, chat=False),
    # WHIP tools (OBS, ffmpeg) only send.
    Role.INGEST: _Defaults(publish=True, subscribe=False, moderate=False, chat=False),
}


def grant_for_role(
    room: RoomName,
    identity: ParticipantIdentity,
    role: Role,
    *,
    ttl: float,
    name: str | None = None,
    now: float | None = None,
) -> Grant:
    """The default grant of ``role``, valid for ``ttl`` seconds from ``now``; ValueError
    for a bad ``ttl`` or a ``room`` that is not a room name."""
    if not (ttl > 0 and math.isfinite(ttl)):
        raise ValueError("ttl must be a positive number of seconds")
    defaults = _ROLE_DEFAULTS[role]
    return Grant(
        room=valid_room_name(room),
        identity=identity,
        name=identity if name is None else name,
        role=role,
        can_publish=defaults.publish,
        can_subscribe=defaults.subscribe,
        can_moderate=defaults.moderate,
        can_chat=defaults.chat,
        sources=_ALL_SOURCES if defaults.publish else frozenset(),
        expires_at=(time.time() if now is None else now) + ttl,
    )


class TokenError(ValueError):
    """A token was refused; ``reason`` is short and safe to show to the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _decode_json(segment: str) -> Any:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        return json.loads(raw)
    # RecursionError: deeply nested arrays fit in 4096 characters.
    except (binascii.Error, ValueError, RecursionError):
        raise TokenError("malformed token") from None


def _claim(claims: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = claims.get(key)
    # bool is an int subclass: a flag is never a number.
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise TokenError(f"invalid claim {key!r}")
    return value


def _time_claim(claims: dict[str, Any], key: str) -> float:
    try:
        value = float(_claim(claims, key, (int, float)))
    except OverflowError:
        value = math.inf
    if not math.isfinite(value):
        raise TokenError(f"invalid claim {key!r}")
    return value


def _grant_from_claims(claims: Any) -> Grant:
    if not isinstance(claims, dict):
        raise TokenError("malformed token")
    _time_claim(claims, "iat")
    try:
        role = Role(_claim(claims, "role", str))
    except ValueError:
        raise TokenError("unknown role") from None
    sources = _claim(claims, "src", list)
    if not all(isinstance(source, str) for source in sources):
        raise TokenError("invalid claim 'src'")
    try:
        source_set = frozenset(Source(source) for source in sources)
    except ValueError:
        raise TokenError("unknown source") from None
    try:
        room = valid_room_name(_claim(claims, "room", str))
    except ValueError:
        raise TokenError("invalid claim 'room'") from None
    # Tokens of an older hub, or of a portal, may carry no "chat": the role decides.
    chat = _claim(claims, "chat", bool) if "chat" in claims else _ROLE_DEFAULTS[role].chat
    return Grant(
        room=room,
        identity=ParticipantIdentity(_claim(claims, "sub", str)),
        name=_claim(claims, "name", str),
        role=role,
        can_publish=_claim(claims, "pub", bool),
        can_subscribe=_claim(claims, "sub_ok", bool),
        can_moderate=_claim(claims, "mod", bool),
        can_chat=chat,
        sources=source_set,
        expires_at=_time_claim(claims, "exp"),
    )


class TokenSigner:
    """Issues and verifies join tokens with one shared secret."""

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("the token secret must not be empty")
        self._key = secret.encode()

    def _sign(self, signing_input: str) -> str:
        return _encode(hmac.digest(self._key, signing_input.encode("ascii"), hashlib.sha256))

    def issue(self, grant: Grant, *, now: float | None = None) -> str:
        """A token carrying ``grant``; ``now`` is its issue time (default: the clock)."""
        claims = {
            "sub": grant.identity,
            "name": grant.name,
            "room": grant.room,
            "role": grant.role.value,
            "pub": grant.can_publish,
            "sub_ok": grant.can_subscribe,
            "mod": grant.can_moderate,
            "chat": grant.can_chat,
            "src": sorted(grant.sources),
            "exp": grant.expires_at,
            "iat": int(time.time() if now is None else now),
        }
        signing_input = ".".join(
            _encode(json.dumps(part, separators=(",", ":")).encode()) for part in (_HEADER, claims)
        )
        return f"{signing_input}.{self._sign(signing_input)}"

    def verify(self, token: str, *, now: float | None = None) -> Grant:
        """The grant of a valid, unexpired token; TokenError for anything else."""
        if not isinstance(token, str):
            raise TokenError("malformed token")
        if len(token) > MAX_TOKEN_LENGTH:
            raise TokenError("token too long")
        parts = token.split(".")
        if len(parts) != 3 or not all(_BASE64URL.fullmatch(part) for part in parts):
            raise TokenError("malformed token")
        header_segment, claims_segment, signature = parts
        header = _decode_json(header_segment)
        # Only HS256: "none" and public-key algorithms would let the client choose.
        if not isinstance(header, dict) or header.get("alg") != "HS256":
            raise TokenError("unsupported algorithm")
        # Compare the encoded signatures, so no second spelling of one signature passes.
        expected = self._sign(f"{header_segment}.{claims_segment}")
        if not hmac.compare_digest(signature, expected):
            raise TokenError("bad signature")
        grant = _grant_from_claims(_decode_json(claims_segment))
        if (time.time() if now is None else now) >= grant.expires_at:
            raise TokenError("token expired")
        return grant
