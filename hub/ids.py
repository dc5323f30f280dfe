"""Distinct identifier types (see the vocabulary in ../shared/DESIGN.md)."""

import re
from typing import NewType

RoomName = NewType("RoomName", str)
"""A room's name, chosen by whoever creates it (a session, an API call, a token)."""

ROOM_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
"""The rule for room names (also the room API's path pattern). A room name becomes a
directory (``data/live/<room>``, ``data/recordings/<room>-…``): no slash, no leading
dot, so no name is ``.`` or ``..`` or leaves its parent."""
_ROOM_NAME = re.compile(ROOM_NAME_PATTERN.removeprefix("^").removesuffix("$"))


def valid_room_name(value: str) -> RoomName:
    """``value`` as a RoomName; ValueError when it breaks the rule."""
    # fullmatch: "$" alone would let a trailing newline through.
    if not isinstance(value, str) or _ROOM_NAME.fullmatch(value) is None:
        raise ValueError(
            "a room name is 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return RoomName(value)


ParticipantIdentity = NewType("ParticipantIdentity", str)
"""The stable identity behind joins: a site code, a person, an ingest name."""

ParticipantID = NewType("ParticipantID", str)
"""One join of one identity: a new one for every join, so a rejoin is distinguishable."""

PublicationID = NewType("PublicationID", str)
"""One published track."""

NodeID = NewType("NodeID", str)
"""One hub process in a cluster."""
