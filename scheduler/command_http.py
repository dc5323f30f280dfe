"""The command side's HTTP API and pages: attendance, escalations, the site notice
stream, dispatch, the dashboard (snapshot + live stream), statistics, one-click join,
and the pages ``/dashboard`` and ``/sessions``.

:class:`CommandCenter` owns every background task; :func:`command_router` serves it.

No ``from __future__ import annotations`` here: FastAPI must see the route-local
``AccountDep`` alias when it reads the signatures."""

from collections.abc import AsyncGenerator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Response
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncEngine

from hub.ids import ParticipantIdentity, RoomName
from hub.store import Bus, Store
from hub.tokens import Role as HubRole
from hub.tokens import TokenSigner, grant_for_role
from scheduler.accounts import Account, Auth, require
from scheduler.attendance import AttendanceRecorder, attendance, find_occurrence
from scheduler.command import (
    Dispatch,
    EscalationConfig,
    Escalator,
    TargetKind,
    check_dispatch,
    list_escalations,
    may_follow,
    resolve_targets,
    visible_sites,
)
from scheduler.command_tables import create_tables
from scheduler.dashboard import Dashboard
from scheduler.http import RowId, check_days
from scheduler.notices import (
    KEEPALIVE_SECONDS,
    BusNotifier,
    FanoutNotifier,
    StreamOwner,
    site_notices,
    sse,
    stream_announcer,
)
from scheduler.permissions import Role, check_join_session, check_view_session
from scheduler.runner import Clock, Notifier, SystemClock
from scheduler.schedule import Schedule
from scheduler.sites import SiteKind, Sites, SiteTree
from scheduler.statistics import statistics

STATIC_DIR = Path(__file__).resolve().parent.parent / "web" / "static"
JOIN_LEAD = timedelta(minutes=10)
"""A session is joinable from the moment the runner opens its room."""

STATISTICS_MAX_DAYS = 3660
"""Statistics reach back ten years at most."""

IssueToken = Callable[[str, str, str, str], str]
"""(room, identity, role, name) → a signed join token."""


def hub_token_issuer(signer: TokenSigner, ttl: float = 12 * 3600) -> IssueToken:
    """``issue_token`` backed by the hub's signer: the role's default grant."""

    def issue(room: str, identity: str, role: str, name: str) -> str:
        grant = grant_for_role(
            RoomName(room), ParticipantIdentity(identity), HubRole(role), ttl=ttl, name=name
        )
        return signer.issue(grant)

    return issue


class CommandCenter:
    """The command side's moving parts; ``start()``/``stop()`` own every background task
    (attendance recorder, escalation check, dashboard fan-out) and end open streams."""

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        store: Store,
        bus: Bus,
        notifier: Notifier | None = None,
        clock: Clock | None = None,
        node: str | None = None,
        escalation: EscalationConfig | None = None,
        keepalive: float = KEEPALIVE_SECONDS,
        dashboard_refresh: float = 5.0,
    ) -> None:
        self.engine = engine
        self.store = store
        self.bus = bus
        self.clock = clock or SystemClock()
        self.node = node
        self.keepalive = keepalive
        self.notifier = FanoutNotifier(BusNotifier(bus), notifier)
        """Live notices to the sites' pages plus the configured notifier (webhooks):
        give it to the runner too, so ``session.opening`` reaches the pages."""
        self.sites = Sites(engine)
        self.schedule = Schedule(engine)
        self.dispatch = Dispatch(engine, bus)
        self.recorder = AttendanceRecorder(engine, bus, node)
        self.escalator = Escalator(engine, store, self.notifier, self.clock, escalation)
        self.dashboard = Dashboard(engine, store, bus, refresh=dashboard_refresh)
        self.streams = StreamOwner()

    async def start(self) -> None:
        await create_tables(self.engine)
        self.streams = StreamOwner()
        await self.recorder.start()
        await self.dashboard.start()
        self.escalator.start()

    async def stop(self) -> None:
        self.streams.close()
        await self.escalator.stop()
        await self.dashboard.stop()
        await self.recorder.stop()


class TargetsBody(BaseModel):
    kind: TargetKind
    codes: list[str] = Field(default_factory=list)


class DirectiveBody(BaseModel):
    title: str = Field(min_length=1, max_length=300)
    text: str = Field(default="", max_length=10_000)
    targets: TargetsBody


def _page(name: str) -> FileResponse:
    return FileResponse(
        STATIC_DIR / name,
        media_type="text/html; charset=utf-8",
        headers={"Cache-Control": "no-cache"},
    )


def _event_stream(chunks: AsyncGenerator[bytes, None]) -> StreamingResponse:
    return StreamingResponse(
        chunks,
        media_type="text/event-stream",
        # No proxy buffering: a notice must arrive now, not when a buffer fills.
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _home_site(account: Account, tree: SiteTree) -> str:
    """The site an account speaks for: its own, or the center for the administrator."""
    if account.site is not None:
        return account.site
    centers = [s.code for s in tree.all() if s.kind is SiteKind.CENTER]
    if not centers:
        raise HTTPException(409, detail="the site tree has no center")
    return centers[0]


def _dashboard_scope(account: Account, tree: SiteTree) -> set[str] | None:
    if account.role is Role.STATION_OPERATOR:
        require("the dashboard is for the center and institute operators")
    return visible_sites(account, tree)


def command_router(*, auth: Auth, center: CommandCenter, issue_token: IssueToken) -> APIRouter:
    """The routes: ``/dashboard``, ``/sessions`` and under ``/api``."""
    router = APIRouter(tags=["command"])
    AccountDep = Annotated[Account, Depends(auth.current_account)]
    engine, dispatch, dashboard = center.engine, center.dispatch, center.dashboard

    @router.get("/dashboard", include_in_schema=False)
    async def dashboard_page() -> FileResponse:
        return _page("dashboard.html")

    @router.get("/sessions", include_in_schema=False)
    async def sessions_page() -> FileResponse:
        return _page("sessions.html")

    # --- joining and attendance ---

    @router.post("/api/sessions/{session_id}/join")
    async def join(account: AccountDep, session_id: RowId) -> dict[str, str]:
        """The join token of the occurrence live now (its room is open)."""
        try:
            session = await center.schedule.get(session_id)
        except KeyError:
            raise HTTPException(404, detail=f"no session {session_id}") from None
        tree = await center.sites.tree()
        require(check_join_session(account.actor, tree, session.host, session.audience))
        now = center.clock.now()
        live = [
            info
            for info in await center.schedule.overlapping(tree, now, now + JOIN_LEAD)
            if info.session_id == session_id
        ]
        if not live:
            raise HTTPException(409, detail="this session is not open now")
        site = tree.get(_home_site(account, tree))
        role = "center" if site.kind is SiteKind.CENTER else site.kind.value
        token = issue_token(live[0].room, site.code, role, site.name)
        return {"room": live[0].room, "token": token, "url": f"/station?token={token}"}

    @router.get("/api/attendance/{room}")
    async def room_attendance(account: AccountDep, room: str) -> dict[str, Any]:
        """Expected, joined (first join, seconds), absent and roll-call answers."""
        tree = await center.sites.tree()
        info = await find_occurrence(center.schedule, tree, room)
        if info is None:
            raise HTTPException(404, detail=f"no session occurrence has the room {room}")
        session = await center.schedule.get(info.session_id)
        require(check_view_session(account.actor, tree, session.host, session.audience))
        report = await attendance(engine, info, center.clock.now())
        return report.to_json(visible_sites(account, tree))

    @router.get("/api/escalations")
    async def escalations(account: AccountDep, days: int = 1) -> list[dict[str, Any]]:
        """Expected stations that were missing, in the caller's subtree, newest first."""
        check_days(days, 62)
        tree = await center.sites.tree()
        since = center.clock.now() - timedelta(days=days)
        return await list_escalations(engine, tree, visible_sites(account, tree), since)

    # --- notices ---

    @router.get("/api/notices/stream")
    async def notices(account: AccountDep) -> StreamingResponse:
        """Server-Sent Events of the caller's site channel."""
        tree = await center.sites.tree()
        code = _home_site(account, tree)
        announce = stream_announcer(center.bus, center.node, code)
        chunks = site_notices(center.bus, code, announce)
        return _event_stream(center.streams.relay(chunks, center.keepalive))

    # --- dispatch ---

    @router.post("/api/directives", status_code=201)
    async def send_directive(account: AccountDep, body: DirectiveBody) -> dict[str, Any]:
        tree = await center.sites.tree()
        try:
            targets = resolve_targets(tree, body.targets.kind, body.targets.codes)
        except ValueError as exc:
            raise HTTPException(422, detail=str(exc)) from None
        targets.discard(_home_site(account, tree))
        require(check_dispatch(account, tree, targets))
        try:
            directive = await dispatch.send(account, body.title, body.text, targets)
        except ValueError as exc:
            raise HTTPException(422, detail=str(exc)) from None
        return directive.to_json()

    @router.get("/api/directives")
    async def list_directives(account: AccountDep) -> list[dict[str, Any]]:
        """Directives sent within the caller's reach or addressed to its site."""
        tree = await center.sites.tree()
        visible = visible_sites(account, tree)
        return [d.to_json(visible) for d in await dispatch.recent() if may_follow(account, tree, d)]

    @router.get("/api/directives/{directive_id}")
    async def get_directive(account: AccountDep, directive_id: RowId) -> dict[str, Any]:
        tree = await center.sites.tree()
        try:
            directive = await dispatch.get(directive_id)
        except KeyError:
            raise HTTPException(404, detail=f"no directive {directive_id}") from None
        if not may_follow(account, tree, directive):
            require("this directive is neither yours nor addressed to your site")
        return directive.to_json(visible_sites(account, tree))

    @router.post("/api/directives/{directive_id}/ack")
    async def acknowledge(account: AccountDep, directive_id: RowId) -> dict[str, str]:
        tree = await center.sites.tree()
        code = _home_site(account, tree)
        try:
            read_at = await dispatch.acknowledge(directive_id, code)
        except KeyError:
            raise HTTPException(
                404, detail=f"directive {directive_id} is not addressed to {code}"
            ) from None
        return {"site": code, "read_at": read_at.isoformat()}

    # --- dashboard and statistics ---

    @router.get("/api/dashboard")
    async def dashboard_snapshot(account: AccountDep) -> dict[str, Any]:
        tree = await center.sites.tree()
        return dashboard.snapshot(_dashboard_scope(account, tree))

    @router.get("/api/dashboard/stream")
    async def dashboard_stream(account: AccountDep) -> StreamingResponse:
        """A snapshot, then batched ``sites`` changes and directive read receipts."""
        tree = await center.sites.tree()
        visible = _dashboard_scope(account, tree)

        async def chunks() -> AsyncGenerator[bytes, None]:
            async with dashboard.listen(visible) as listener:
                yield sse("snapshot", dashboard.snapshot(visible))
                while True:
                    message = await listener.queue.get()
                    yield sse(str(message["type"]), message)

        return _event_stream(center.streams.relay(chunks(), center.keepalive))

    @router.get("/api/statistics")
    async def statistics_json(account: AccountDep, days: int = 365) -> dict[str, Any]:
        check_days(days, STATISTICS_MAX_DAYS)
        tree = await center.sites.tree()
        visible = _dashboard_scope(account, tree)
        stats = await statistics(engine, tree, center.clock.now(), days, visible)
        return stats.to_json(tree)

    @router.get("/api/statistics.csv")
    async def statistics_csv(account: AccountDep, days: int = 365) -> Response:
        check_days(days, STATISTICS_MAX_DAYS)
        tree = await center.sites.tree()
        visible = _dashboard_scope(account, tree)
        stats = await statistics(engine, tree, center.clock.now(), days, visible)
        return Response(
            stats.to_csv(tree),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="statistics.csv"'},
        )

    return router
