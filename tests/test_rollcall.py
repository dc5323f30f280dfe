"""Roll call: pure standings by table, and end to end over /ws."""

from __future__ import annotations

import pytest

from hub.client import HubClient
from hub.ids import ParticipantIdentity
from hub.rollcall import Answer, RollCall
from tests.hubserver import RunningHub

S1, S2 = ParticipantIdentity("S1"), ParticipantIdentity("S2")


@pytest.mark.parametrize(
    ("answered_at", "now", "closed", "standing"),
    [
        (None, 5.0, False, Answer.WAITING),
        (3.0, 5.0, False, Answer.PRESENT),
        (10.0, 11.0, False, Answer.PRESENT),  # exactly at the deadline
        (10.5, 11.0, False, Answer.LATE),
        (None, 10.5, False, Answer.ABSENT),
        (None, 5.0, True, Answer.ABSENT),  # stopped early
    ],
)
def test_standing(answered_at: float | None, now: float, closed: bool, standing: Answer) -> None:
    rollcall = RollCall(started_at=0.0, deadline=10.0, expected=[S1])
    if answered_at is not None:
        rollcall.answer(S1, answered_at)
    rollcall.closed = closed
    assert rollcall.standing(S1, now) == standing


def test_first_answer_counts_and_unexpected_sites_are_added() -> None:
    rollcall = RollCall(started_at=0.0, deadline=10.0, expected=[S1])
    rollcall.answer(S2, 4.0)
    rollcall.answer(S2, 12.0)
    status = rollcall.status(now=20.0)
    assert status["entries"]["S2"] == {"status": "present", "at": 4.0}
    assert status["entries"]["S1"] == {"status": "absent", "at": None}
    assert status["counts"] == {"waiting": 0, "present": 1, "late": 0, "absent": 1}


async def test_rollcall_over_signaling(hub_server: RunningHub) -> None:
    center = HubClient(hub_server.ws, hub_server.token("rc", "C", "center"))
    s1 = HubClient(hub_server.ws, hub_server.token("rc", "S1", "station"))
    s2 = HubClient(hub_server.ws, hub_server.token("rc", "S2", "station"))
    events: list[dict[str, object]] = []
    try:
        for client in (center, s1, s2):
            await client.connect()
        async with hub_server.hub.bus.subscribe("rollcall") as subscription:
            await s1.send({"type": "rollcall", "action": "start", "seconds": 5})
            refused = await s1.wait_for(lambda m: m["type"] == "error")
            assert refused["code"] == "forbidden"
            await center.send(
                {"type": "rollcall", "action": "start", "seconds": 5, "expected": ["S3"]}
            )
            call = await s1.wait_for(lambda m: m["type"] == "rollcall")
            first = await center.wait_for(lambda m: m["type"] == "rollcall_status")
            assert set(first["entries"]) == {"S1", "S2", "S3"}
            assert first["counts"]["waiting"] == 3
            await s1.send({"type": "rollcall_ack", "id": call["id"]})
            answered = await center.wait_for(
                lambda m: m["type"] == "rollcall_status" and m["counts"]["present"] == 1
            )
            assert answered["entries"]["S1"]["status"] == "present"
            events.append(await anext(aiter(subscription)))
            final = await center.wait_for(
                lambda m: m["type"] == "rollcall_status" and m["counts"]["absent"] == 2,
                timeout=10,
            )
            assert final["entries"]["S2"]["status"] == "absent"
            await s2.send({"type": "rollcall_ack", "id": call["id"]})
            late = await center.wait_for(
                lambda m: m["type"] == "rollcall_status" and m["counts"]["late"] == 1
            )
            assert late["entries"]["S2"]["status"] == "late"
        assert events[0]["identity"] == "S1" and events[0]["status"] == "present"
        assert events[0]["room"] == "rc"
    finally:
        for client in (s2, s1, center):
            await client.close()
