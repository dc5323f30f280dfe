"""Who may do what, as pure functions over the site tree.

Each ``check_*`` returns the reason for a refusal, or None when the action is allowed,
so an HTTP 403 can say why. The rules:

* the center administrator may do everything, and is the only one who schedules
  county-wide (audience everyone, or sites outside one institute);
* an institute operator manages its own subtree: edits its stations, schedules and
  moderates sessions hosted there whose audience stays inside it;
* a station operator sees its own site and its ancestors, and sees and joins only the
  sessions its station is the host or in the audience of.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from scheduler.schedule import Audience, AudienceKind
from scheduler.sites import SiteKind, SiteTree

Refusal = str | None


class Role(StrEnum):
    CENTER_ADMIN = "center_admin"
    INSTITUTE_OPERATOR = "institute_operator"
    STATION_OPERATOR = "station_operator"


@dataclass(frozen=True)
class Actor:
    """Whoever asks: a role and, except for the center administrator, the bound site."""

    role: Role
    site: str | None = None


def _home(actor: Actor, tree: SiteTree) -> tuple[str, Refusal]:
    """The actor's site, or a refusal when it is not (or no longer) in the tree."""
    if actor.site is None or actor.site not in tree:
        return "", f"your account's site {actor.site} does not exist"
    return actor.site, None


def check_view_site(actor: Actor, tree: SiteTree, code: str) -> Refusal:
    if actor.role is Role.CENTER_ADMIN:
        return None
    home, refusal = _home(actor, tree)
    if refusal:
        return refusal
    if code not in tree:
        return f"unknown site {code}"
    if tree.is_within(code, home) or code in tree.ancestors(home):
        return None
    return f"{code} is outside your site {home}"


def check_edit_site(actor: Actor, tree: SiteTree, code: str) -> Refusal:
    """Edit or delete an existing site."""
    if actor.role is Role.CENTER_ADMIN:
        return None
    if actor.role is Role.STATION_OPERATOR:
        return "station operators cannot edit sites"
    home, refusal = _home(actor, tree)
    if refusal:
        return refusal
    if code == home:
        return "only the center edits an institute's own record"
    if code not in tree:
        return f"unknown site {code}"
    if not tree.is_within(code, home):
        return f"{code} is outside your institute {home}"
    return None


def check_create_site(actor: Actor, tree: SiteTree, parent: str | None, kind: SiteKind) -> Refusal:
    """Add a site of ``kind`` under ``parent`` (or move one there)."""
    if actor.role is Role.CENTER_ADMIN:
        return None
    if actor.role is Role.STATION_OPERATOR:
        return "station operators cannot add sites"
    if kind is not SiteKind.STATION:
        return "institute operators add only stations"
    home, refusal = _home(actor, tree)
    if refusal:
        return refusal
    if parent is None or parent not in tree or not tree.is_within(parent, home):
        return f"sites can only be added inside your institute {home}"
    return None


def check_schedule(actor: Actor, tree: SiteTree, host: str, audience: Audience) -> Refusal:
    """Create a session hosted at ``host`` for ``audience``."""
    if actor.role is Role.CENTER_ADMIN:
        return None
    if actor.role is Role.STATION_OPERATOR:
        return "station operators cannot schedule sessions"
    home, refusal = _home(actor, tree)
    if refusal:
        return refusal
    if host not in tree or not tree.is_within(host, home):
        return f"the host {host} is outside your institute {home}"
    if audience.kind is AudienceKind.EVERYONE:
        return "only the center schedules for everyone"
    outside = sorted(c for c in audience.codes if c not in tree or not tree.is_within(c, home))
    if outside:
        return f"only the center schedules beyond your institute: {', '.join(outside)}"
    return None


def check_view_session(actor: Actor, tree: SiteTree, host: str, audience: Audience) -> Refusal:
    if actor.role is Role.CENTER_ADMIN:
        return None
    home, refusal = _home(actor, tree)
    if refusal:
        return refusal
    if actor.role is Role.INSTITUTE_OPERATOR:
        mine = set(tree.subtree(home))
        if host in mine or mine & audience.sites(tree):
            return None
        return f"neither the host nor the audience is in your institute {home}"
    return _station_in(home, tree, host, audience)


def _station_in(home: str, tree: SiteTree, host: str, audience: Audience) -> Refusal:
    if home == host or home in audience.sites(tree):
        return None
    return f"your station {home} is not in this session's audience"


def check_join_session(actor: Actor, tree: SiteTree, host: str, audience: Audience) -> Refusal:
    if actor.role is Role.CENTER_ADMIN:
        return None
    home, refusal = _home(actor, tree)
    if refusal:
        return refusal
    if actor.role is Role.INSTITUTE_OPERATOR and tree.is_within(host, home):
        return None
    return _station_in(home, tree, host, audience)


def check_cancel_session(actor: Actor, tree: SiteTree, host: str, audience: Audience) -> Refusal:
    """Cancelling belongs to whoever could have scheduled the session."""
    refusal = check_schedule(actor, tree, host, audience)
    return f"cannot cancel: {refusal}" if refusal else None


def check_moderate(actor: Actor, tree: SiteTree, host: str, audience: Audience) -> Refusal:
    """Mute, call on stage, remove participants in the session's room."""
    if actor.role is Role.CENTER_ADMIN:
        return None
    if actor.role is Role.STATION_OPERATOR:
        return "station operators cannot moderate"
    home, refusal = _home(actor, tree)
    if refusal:
        return refusal
    if not tree.is_within(host, home):
        return f"the host {host} is outside your institute {home}"
    return None


def check_manage_account(actor: Actor, tree: SiteTree, role: Role, site: str | None) -> Refusal:
    """Create an account of ``role`` bound to ``site``, reset its password or disable it:
    the center any account; an institute operator station operators of its own
    stations only."""
    if actor.role is Role.CENTER_ADMIN:
        return None
    if actor.role is Role.STATION_OPERATOR:
        return "station operators cannot manage accounts"
    if role is not Role.STATION_OPERATOR or site is None:
        return "institute operators manage only station operators"
    home, refusal = _home(actor, tree)
    if refusal:
        return refusal
    if site not in tree or not tree.is_within(site, home):
        return f"{site} is outside your institute {home}"
    return None
