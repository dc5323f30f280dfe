"""Command: directives the center (or an institute) dispatches to sites, read receipts,
and the escalation of stations missing from a session they are expected at."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from cluster.store import Bus, Store
from hub.ids import RoomName
from scheduler.accounts import Account
from scheduler.command_tables import directive_targets, directives, escalations
from scheduler.notices import site_channel
from scheduler.permissions import Refusal, Role
from scheduler.recurrence import local
from scheduler.runner import Clock, Notifier, SystemClock
from scheduler.schedule import Schedule, SessionInfo
from scheduler.sites import SiteKind, Sites, SiteTree

logger = logging.getLogger(__name__)

DIRECTIVES_CHANNEL = "directives"
"""Read receipts and new directives, for the dashboards."""


class TargetKind(StrEnum):
    EVERYONE = "everyone"
    SUBTREES = "subtrees"
    SITES = "sites"
    REGIONS = "regions"
    """Every site whose region (street or township) is listed."""


def resolve_targets(tree: SiteTree, kind: TargetKind, codes: list[str]) -> set[str]:
    """The site codes a directive goes to; ValueError for unknown codes or regions."""
    if kind is TargetKind.EVERYONE:
        return {site.code for site in tree.all()}
    if not codes:
        raise ValueError(f"targets {kind} need at least one code")
    if kind is TargetKind.REGIONS:
        found = {site.code for site in tree.all() if site.region in codes}
        known = {site.region for site in tree.all()}
        unknown = sorted(set(codes) - known)
    else:
        unknown = sorted(c for c in codes if c not in tree)
        found = (
            set(codes) if kind is TargetKind.SITES else {m for c in codes for m in tree.subtree(c)}
        )
    if unknown:
        raise ValueError(f"unknown {kind}: {', '.join(unknown)}")
    return found


def visible_sites(account: Account, tree: SiteTree) -> set[str] | None:
    """The sites whose command state ``account`` may follow: None for all (the center),
    an institute's subtree, a station itself."""
    if account.role is Role.CENTER_ADMIN:
        return None
    if account.site is None or account.site not in tree:
        return set()
    return set(tree.subtree(account.site))


def check_dispatch(account: Account, tree: SiteTree, targets: set[str]) -> Refusal:
    if account.role is Role.CENTER_ADMIN:
        return None
    if account.role is Role.STATION_OPERATOR:
        return "station operators cannot dispatch directives"
    mine = visible_sites(account, tree) or set()
    outside = sorted(targets - mine)
    if outside:
        return f"only the center dispatches beyond your institute: {', '.join(outside[:5])}"
    return None


@dataclass(frozen=True)
class Directive:
    id: int
    title: str
    text: str
    sender_account: int
    sender_site: str | None
    created_at: datetime
    targets: dict[str, datetime | None]
    """Site → when it acknowledged (None: not read yet)."""
    read_within: timedelta | None = None
    """Unread this long after it was sent, a target is escalated (None: never)."""

    def notice(self) -> dict[str, Any]:
        """What a target site receives."""
        return {
            "type": "directive",
            "id": self.id,
            "title": self.title,
            "text": self.text,
            "from": self.sender_site,
            "created_at": local(self.created_at).isoformat(),
            "read_within_minutes": (
                None if self.read_within is None else round(self.read_within.total_seconds() / 60)
            ),
        }

    def to_json(self, visible: set[str] | None = None) -> dict[str, Any]:
        shown = {s: r for s, r in self.targets.items() if visible is None or s in visible}
        return {
            **self.notice(),
            "read": {s: local(r).isoformat() for s, r in sorted(shown.items()) if r},
            "unread": sorted(s for s, r in shown.items() if r is None),
        }


class Dispatch:
    """The directives tables; every change is also published on the Bus."""

    def __init__(self, engine: AsyncEngine, bus: Bus) -> None:
        self._engine = engine
        self._bus = bus

    async def send(
        self,
        account: Account,
        title: str,
        text: str,
        targets: set[str],
        read_within: timedelta | None = None,
    ) -> Directive:
        """Store a directive and push it to each target site's notice channel."""
        if not title.strip():
            raise ValueError("title is required")
        if not targets:
            raise ValueError("a directive needs at least one target site")
        now = datetime.now(UTC)
        async with self._engine.begin() as conn:
            new_id = (
                await conn.execute(
                    sa.insert(directives)
                    .values(
                        title=title.strip(),
                        text=text,
                        sender_account=account.id,
                        sender_site=account.site,
                        created_at=now,
                        read_within_minutes=(
                            None if read_within is None else int(read_within.total_seconds() // 60)
                        ),
                    )
                    .returning(directives.c.id)
                )
            ).scalar_one()
            await conn.execute(
                sa.insert(directive_targets),
                [{"directive_id": new_id, "site": code} for code in sorted(targets)],
            )
        directive = await self.get(new_id)
        for code in sorted(targets):
            await self._bus.publish(site_channel(code), directive.notice())
        await self._bus.publish(DIRECTIVES_CHANNEL, {"type": "directive", **directive.to_json()})
        return directive

    async def get(self, directive_id: int) -> Directive:
        """KeyError when unknown."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(sa.select(directives).where(directives.c.id == directive_id))
            ).first()
            if row is None:
                raise KeyError(directive_id)
            targets = (
                await conn.execute(
                    sa.select(directive_targets).where(
                        directive_targets.c.directive_id == directive_id
                    )
                )
            ).all()
        return Directive(
            id=row.id,
            title=row.title,
            text=row.text,
            sender_account=row.sender_account,
            sender_site=row.sender_site,
            created_at=row.created_at,
            targets={t.site: t.read_at for t in targets},
            read_within=(
                None
                if row.read_within_minutes is None
                else timedelta(minutes=row.read_within_minutes)
            ),
        )

    async def acknowledge(self, directive_id: int, site: str) -> datetime:
        """Mark the directive read by ``site`` (the first time counts); KeyError when
        ``site`` is not one of its targets."""
        now = datetime.now(UTC)
        key = sa.and_(
            directive_targets.c.directive_id == directive_id, directive_targets.c.site == site
        )
        async with self._engine.begin() as conn:
            read_at = (
                await conn.execute(sa.select(directive_targets.c.read_at).where(key))
            ).first()
            if read_at is None:
                raise KeyError(site)
            if read_at[0] is not None:
                return read_at[0]  # type: ignore[no-any-return]
            await conn.execute(sa.update(directive_targets).where(key).values(read_at=now))
        await self._bus.publish(
            DIRECTIVES_CHANNEL,
            {
                "type": "directive_read",
                "id": directive_id,
                "site": site,
                "read_at": local(now).isoformat(),
            },
        )
        return now

    async def recent(self, limit: int = 50) -> list[Directive]:
        """The newest directives, newest first."""
        async with self._engine.connect() as conn:
            ids = (
                await conn.execute(
                    sa.select(directives.c.id).order_by(directives.c.id.desc()).limit(limit)
                )
            ).scalars()
            found = list(ids)
        return [await self.get(i) for i in found]


def may_follow(account: Account, tree: SiteTree, directive: Directive) -> bool:
    """Whether ``account`` sees ``directive``: sent within its reach, or addressed to it."""
    visible = visible_sites(account, tree)
    if visible is None:
        return True
    sent_here = directive.sender_site is not None and directive.sender_site in visible
    addressed = account.site in directive.targets
    return (sent_here and account.role is Role.INSTITUTE_OPERATOR) or addressed


@dataclass(frozen=True)
class EscalationConfig:
    grace: timedelta = timedelta(minutes=5)
    """How long after the start an expected station may still be missing."""
    tick: float = 15.0
    """Seconds between two checks."""


class Escalator:
    """Raises each expected station still missing ``grace`` after its session's start,
    once per (occurrence, site): to its institute's (and the center's) notice channel
    and the notifier (webhooks)."""

    def __init__(
        self,
        engine: AsyncEngine,
        store: Store,
        notifier: Notifier,
        clock: Clock | None = None,
        config: EscalationConfig | None = None,
    ) -> None:
        self._engine = engine
        self._store = store
        self._notifier = notifier
        self._clock = clock or SystemClock()
        self._config = config or EscalationConfig()
        self._schedule = Schedule(engine)
        self._sites = Sites(engine)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="escalations")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:
                logger.exception("escalation check failed")
            await self._clock.sleep(self._config.tick)

    async def check(self) -> list[dict[str, Any]]:
        """Raise what is due now; the events raised."""
        now = self._clock.now()
        grace = self._config.grace
        tree = await self._sites.tree()
        raised = await self._unread_directives(tree, now)
        for info in await self._schedule.overlapping(tree, now - grace, now):
            if not info.start + grace <= now < info.end:
                continue
            present = set(await self._store.presence(RoomName(info.room)))
            for code in sorted(info.audience_sites - present - {info.host}):
                if code in tree and tree.get(code).kind is SiteKind.STATION:
                    event = await self._raise(tree, info, code, now)
                    if event is not None:
                        raised.append(event)
        return raised

    async def _unread_directives(self, tree: SiteTree, now: datetime) -> list[dict[str, Any]]:
        """Targets that have not read a directive within its ``read_within``: each is
        raised once (the first node to mark it raises it)."""
        overdue = (
            sa.select(directive_targets.c.directive_id, directive_targets.c.site, directives)
            .join(directives, directives.c.id == directive_targets.c.directive_id)
            .where(
                directive_targets.c.read_at.is_(None),
                directive_targets.c.escalated_at.is_(None),
                directives.c.read_within_minutes.is_not(None),
                # Only recent ones can be due: the window bounds the scan.
                directives.c.created_at >= now - timedelta(days=7),
            )
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(overdue)).all()
        raised: list[dict[str, Any]] = []
        for row in rows:
            if row.created_at + timedelta(minutes=row.read_within_minutes) > now:
                continue
            key = sa.and_(
                directive_targets.c.directive_id == row.directive_id,
                directive_targets.c.site == row.site,
                directive_targets.c.escalated_at.is_(None),
                directive_targets.c.read_at.is_(None),
            )
            async with self._engine.begin() as conn:
                marked = await conn.execute(
                    sa.update(directive_targets).where(key).values(escalated_at=now)
                )
            if marked.rowcount != 1:
                continue  # read meanwhile, or raised by another node
            institute = tree.institute_of(row.site) if row.site in tree else None
            event = {
                "type": "escalation",
                "reason": "unread",
                "directive_id": row.directive_id,
                "title": row.title,
                "site": row.site,
                "site_name": tree.get(row.site).name if row.site in tree else row.site,
                "institute": institute,
                "sent_at": local(row.created_at).isoformat(),
                "raised_at": local(now).isoformat(),
            }
            await self._notify(tree, institute, event)
            raised.append(event)
        return raised

    async def _notify(self, tree: SiteTree, institute: str | None, event: dict[str, Any]) -> None:
        center = [s.code for s in tree.all() if s.kind is SiteKind.CENTER]
        try:
            await self._notifier.notify({c for c in [institute, *center] if c}, event)
        except Exception:
            logger.exception("escalation of %s could not be notified", event["site"])

    async def _raise(
        self, tree: SiteTree, info: SessionInfo, code: str, now: datetime
    ) -> dict[str, Any] | None:
        institute = tree.institute_of(code)
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    sa.insert(escalations).values(
                        session_id=info.session_id,
                        occurrence_start=info.start,
                        site=code,
                        institute=institute,
                        room=info.room,
                        title=info.title,
                        raised_at=now,
                    )
                )
        except IntegrityError:
            return None  # raised before (by this node or another)
        event = {
            "type": "escalation",
            "reason": "absent",
            "session_id": info.session_id,
            "room": info.room,
            "title": info.title,
            "site": code,
            "site_name": tree.get(code).name,
            "institute": institute,
            "start": local(info.start).isoformat(),
            "raised_at": local(now).isoformat(),
        }
        await self._notify(tree, institute, event)
        return event


async def list_escalations(
    engine: AsyncEngine, tree: SiteTree, visible: set[str] | None, since: datetime
) -> list[dict[str, Any]]:
    """Escalations raised since ``since`` about ``visible`` sites (None: all), newest
    first: stations absent from a session (``reason`` "absent") and sites that left a
    directive unread past its time ("unread")."""
    absent = (
        sa.select(escalations)
        .where(escalations.c.raised_at >= since)
        .order_by(escalations.c.raised_at.desc(), escalations.c.site)
    )
    unread = (
        sa.select(directive_targets, directives.c.title, directives.c.created_at)
        .join(directives, directives.c.id == directive_targets.c.directive_id)
        .where(directive_targets.c.escalated_at >= since)
    )
    async with engine.connect() as conn:
        absent_rows = (await conn.execute(absent)).all()
        unread_rows = (await conn.execute(unread)).all()

    def name(code: str) -> str:
        return tree.get(code).name if code in tree else code

    found = [
        {
            "reason": "absent",
            "session_id": r.session_id,
            "room": r.room,
            "title": r.title,
            "site": r.site,
            "site_name": name(r.site),
            "institute": r.institute,
            "raised_at": local(r.raised_at).isoformat(),
        }
        for r in absent_rows
    ] + [
        {
            "reason": "unread",
            "directive_id": r.directive_id,
            "title": r.title,
            "site": r.site,
            "site_name": name(r.site),
            "institute": tree.institute_of(r.site) if r.site in tree else None,
            "sent_at": local(r.created_at).isoformat(),
            "raised_at": local(r.escalated_at).isoformat(),
        }
        for r in unread_rows
    ]
    found.sort(key=lambda e: e["site"])
    found.sort(key=lambda e: e["raised_at"], reverse=True)
    return [e for e in found if visible is None or e["site"] in visible]
