"""The permission matrix: role × action × target, one row each."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from scheduler.permissions import (
    Actor,
    Refusal,
    Role,
    check_cancel_session,
    check_create_site,
    check_edit_site,
    check_join_session,
    check_moderate,
    check_schedule,
    check_view_session,
    check_view_site,
)
from scheduler.schedule import Audience, AudienceKind
from scheduler.sites import SiteKind, SiteTree
from tests.test_sites import small_tree

TREE = small_tree()  # C; I01 → I01-S001, I01-S002; I02 → I02-S001

ADMIN = Actor(Role.CENTER_ADMIN)
INST1 = Actor(Role.INSTITUTE_OPERATOR, "I01")
STA1 = Actor(Role.STATION_OPERATOR, "I01-S001")
STA2 = Actor(Role.STATION_OPERATOR, "I01-S002")

EVERYONE = Audience(AudienceKind.EVERYONE)
I01_SUBTREE = Audience(AudienceKind.SUBTREES, ("I01",))
I02_SUBTREE = Audience(AudienceKind.SUBTREES, ("I02",))
LIST_S002 = Audience(AudienceKind.SITES, ("I01-S002",))
LIST_ACROSS = Audience(AudienceKind.SITES, ("I01-S001", "I02-S001"))

# A session as the checks see it: (host, audience).
COUNTY = ("C", EVERYONE)
I01_LOCAL = ("I01", I01_SUBTREE)
I01_LIST = ("I01", LIST_S002)
I02_LOCAL = ("I02", I02_SUBTREE)


def site_action(check: Callable[[Actor, SiteTree, str], Refusal]) -> Callable[..., Refusal]:
    return lambda actor, target: check(actor, TREE, target)


def session_action(
    check: Callable[[Actor, SiteTree, str, Audience], Refusal],
) -> Callable[..., Refusal]:
    return lambda actor, target: check(actor, TREE, *target)


ACTIONS: dict[str, Callable[..., Refusal]] = {
    "view site": site_action(check_view_site),
    "edit site": site_action(check_edit_site),
    "add station under": lambda actor, parent: check_create_site(
        actor, TREE, parent, SiteKind.STATION
    ),
    "add institute under": lambda actor, parent: check_create_site(
        actor, TREE, parent, SiteKind.INSTITUTE
    ),
    "schedule": session_action(check_schedule),
    "view session": session_action(check_view_session),
    "join session": session_action(check_join_session),
    "cancel session": session_action(check_cancel_session),
    "moderate": session_action(check_moderate),
}

Y, N = True, False
MATRIX: list[tuple[str, Actor, str, object, bool]] = [
    # view site
    ("admin views any site", ADMIN, "view site", "I02-S001", Y),
    ("institute views its station", INST1, "view site", "I01-S002", Y),
    ("institute views the center above it", INST1, "view site", "C", Y),
    ("institute views another institute's station", INST1, "view site", "I02-S001", N),
    ("station views itself", STA1, "view site", "I01-S001", Y),
    ("station views its institute", STA1, "view site", "I01", Y),
    ("station views a sibling station", STA1, "view site", "I01-S002", N),
    # edit site
    ("admin edits an institute", ADMIN, "edit site", "I01", Y),
    ("institute edits its station", INST1, "edit site", "I01-S001", Y),
    ("institute edits its own record", INST1, "edit site", "I01", N),
    ("institute edits another's station", INST1, "edit site", "I02-S001", N),
    ("institute edits the center", INST1, "edit site", "C", N),
    ("station edits itself", STA1, "edit site", "I01-S001", N),
    ("institute adds a station under itself", INST1, "add station under", "I01", Y),
    ("institute adds under another institute", INST1, "add station under", "I02", N),
    ("institute adds a root", INST1, "add station under", None, N),
    ("station adds a site", STA1, "add station under", "I01-S001", N),
    ("admin adds a station anywhere", ADMIN, "add station under", "I02", Y),
    ("admin adds an institute", ADMIN, "add institute under", "C", Y),
    ("institute adds an institute", INST1, "add institute under", "I01", N),
    ("station adds an institute", STA1, "add institute under", "I01", N),
    # schedule
    ("admin schedules for everyone", ADMIN, "schedule", COUNTY, Y),
    ("admin schedules across institutes", ADMIN, "schedule", ("C", LIST_ACROSS), Y),
    ("institute schedules its subtree", INST1, "schedule", I01_LOCAL, Y),
    ("institute schedules a list inside", INST1, "schedule", I01_LIST, Y),
    ("institute schedules for everyone", INST1, "schedule", ("I01", EVERYONE), N),
    ("institute schedules another subtree", INST1, "schedule", ("I01", I02_SUBTREE), N),
    ("institute schedules a list across", INST1, "schedule", ("I01", LIST_ACROSS), N),
    ("institute hosts at another institute", INST1, "schedule", ("I02", LIST_S002), N),
    (
        "institute schedules the center's subtree",
        INST1,
        "schedule",
        ("I01", Audience(AudienceKind.SUBTREES, ("C",))),
        N,
    ),
    ("station schedules", STA1, "schedule", ("I01-S001", LIST_S002), N),
    # view session
    ("admin views any session", ADMIN, "view session", I02_LOCAL, Y),
    ("institute views a county lecture", INST1, "view session", COUNTY, Y),
    ("institute views its own session", INST1, "view session", I01_LIST, Y),
    ("institute views another's session", INST1, "view session", I02_LOCAL, N),
    ("institute views a session its station attends", INST1, "view session", ("C", LIST_ACROSS), Y),
    ("station views a county lecture", STA1, "view session", COUNTY, Y),
    ("station views its institute's session", STA1, "view session", I01_LOCAL, Y),
    ("station views a list it is not on", STA1, "view session", I01_LIST, N),
    ("station views a list it is on", STA2, "view session", I01_LIST, Y),
    ("station views another institute's session", STA1, "view session", I02_LOCAL, N),
    # join session
    ("admin joins anything", ADMIN, "join session", I02_LOCAL, Y),
    ("station joins a county lecture", STA1, "join session", COUNTY, Y),
    ("station joins a list it is not on", STA1, "join session", I01_LIST, N),
    ("station joins a list it is on", STA2, "join session", I01_LIST, Y),
    ("station joins another institute's session", STA1, "join session", I02_LOCAL, N),
    ("institute joins its own session", INST1, "join session", I01_LIST, Y),
    ("institute joins a county lecture", INST1, "join session", COUNTY, Y),
    ("institute joins another's session", INST1, "join session", I02_LOCAL, N),
    # cancel session
    ("admin cancels anything", ADMIN, "cancel session", I02_LOCAL, Y),
    ("institute cancels its own session", INST1, "cancel session", I01_LOCAL, Y),
    ("institute cancels a county lecture", INST1, "cancel session", COUNTY, N),
    ("institute cancels another's session", INST1, "cancel session", I02_LOCAL, N),
    ("station cancels", STA1, "cancel session", I01_LOCAL, N),
    # moderate
    ("admin moderates a county lecture", ADMIN, "moderate", COUNTY, Y),
    ("institute moderates its own session", INST1, "moderate", I01_LOCAL, Y),
    ("institute moderates a county lecture", INST1, "moderate", COUNTY, N),
    ("institute moderates another's session", INST1, "moderate", I02_LOCAL, N),
    ("station moderates its institute's session", STA1, "moderate", I01_LOCAL, N),
]


@pytest.mark.parametrize(
    ("actor", "action", "target", "allowed"),
    [row[1:] for row in MATRIX],
    ids=[row[0] for row in MATRIX],
)
def test_permission_matrix(actor: Actor, action: str, target: object, allowed: bool) -> None:
    refusal = ACTIONS[action](actor, target)
    if allowed:
        assert refusal is None
    else:
        assert isinstance(refusal, str) and refusal  # a reason for the 403


def test_every_action_is_covered_for_every_role() -> None:
    covered = {(row[1].role, row[2]) for row in MATRIX}
    assert covered == {(role, action) for role in Role for action in ACTIONS}


def test_an_account_whose_site_was_removed_is_refused() -> None:
    ghost = Actor(Role.STATION_OPERATOR, "I09-S999")
    assert check_view_site(ghost, TREE, "C") == "your account's site I09-S999 does not exist"
    assert check_join_session(ghost, TREE, *COUNTY) is not None
