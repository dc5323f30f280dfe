"""Roll call: the center calls the roll, each site answers within a set time."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hub.ids import ParticipantIdentity


class Answer(StrEnum):
    WAITING = "waiting"
    PRESENT = "present"
    LATE = "late"
    ABSENT = "absent"


@dataclass
class RollCall:
    """One roll call in one room; pure state, the room sends the messages."""

    started_at: float
    deadline: float
    expected: list[ParticipantIdentity]
    """Who must answer: the sites the caller named, and those in the room at the start."""
    id: str = field(default_factory=lambda: f"RC_{secrets.token_urlsafe(6)}")
    answers: dict[ParticipantIdentity, float] = field(default_factory=dict)
    closed: bool = False

    def answer(self, identity: ParticipantIdentity, at: float) -> Answer:
        """Record a site's answer (the first one counts) and return its standing."""
        self.answers.setdefault(identity, at)
        if identity not in self.expected:
            self.expected.append(identity)
        return self.standing(identity, at)

    def standing(self, identity: ParticipantIdentity, now: float) -> Answer:
        answered = self.answers.get(identity)
        if answered is not None:
            return Answer.PRESENT if answered <= self.deadline else Answer.LATE
        return Answer.ABSENT if now > self.deadline or self.closed else Answer.WAITING

    def status(self, now: float) -> dict[str, Any]:
        standings = {identity: self.standing(identity, now) for identity in self.expected}
        entries = {
            identity: {"status": answer.value, "at": self.answers.get(identity)}
            for identity, answer in standings.items()
        }
        counts = {a.value: 0 for a in Answer}
        for answer in standings.values():
            counts[answer.value] += 1
        return {
            "type": "rollcall_status",
            "id": self.id,
            "started_at": self.started_at,
            "deadline": self.deadline,
            "closed": self.closed,
            "entries": entries,
            "counts": counts,
        }
