"""Distinct identifier types (see the vocabulary in ../shared/DESIGN.md)."""

from typing import NewType

RoomName = NewType("RoomName", str)
"""A room's name, chosen by whoever creates it (a session, an API call, a token)."""

ParticipantIdentity = NewType("ParticipantIdentity", str)
"""The stable identity behind joins: a site code, a person, an ingest name."""

ParticipantID = NewType("ParticipantID", str)
"""One join of one identity: a new one for every join, so a rejoin is distinguishable."""

PublicationID = NewType("PublicationID", str)
"""One published track."""

NodeID = NewType("NodeID", str)
"""One hub process in a cluster."""
