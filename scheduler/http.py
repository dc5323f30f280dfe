"""The scheduler's HTTP API: login, sites (tree, CRUD, CSV) and sessions.

Every refusal is a 4xx whose ``detail`` says why. Times go out in Asia/Shanghai and
come in either with an offset or as Asia/Shanghai wall-clock time.

No ``from __future__ import annotations`` here: FastAPI must see the route-local
``AccountDep`` alias when it reads the signatures."""

from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import UTC, date, datetime
from typing import Annotated, Any

from fastapi import (
    APIRouter,
    Depends,
    HTTPException,
    Path,
    Request,
    Response,
    status,
)
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from media.processing import Layout
from media.restream import hide_key
from scheduler.accounts import LOGIN_COOKIE, MAX_PASSWORD_LENGTH, Account, Auth, require
from scheduler.permissions import (
    Refusal,
    Role,
    check_cancel_session,
    check_create_site,
    check_edit_site,
    check_manage_account,
    check_schedule,
    check_view_session,
    check_view_site,
)
from scheduler.recurrence import EARLIEST, LATEST, Recurrence, Repeat, local, to_utc
from scheduler.schedule import (
    Audience,
    AudienceKind,
    Schedule,
    Session,
    SessionOptions,
    Theme,
)
from scheduler.seed import load_seed_into
from scheduler.sites import Site, SiteError, SiteKind, Sites, SiteTree, export_csv, parse_csv

Password = Annotated[str, Field(max_length=MAX_PASSWORD_LENGTH)]


class LoginBody(BaseModel):
    username: Annotated[str, Field(max_length=200)]
    password: Password


class TokenBody(BaseModel):
    label: Annotated[str, Field(max_length=200)] = ""


class AccountBody(BaseModel):
    username: Annotated[str, Field(max_length=100)]
    password: Password
    role: Role
    site: str | None = None


class AccountPatch(BaseModel):
    disabled: bool


class PasswordBody(BaseModel):
    password: Password


class OwnPasswordBody(BaseModel):
    old_password: Password
    new_password: Password


class SiteBody(BaseModel):
    code: str = Field(min_length=1, max_length=32)
    name: str = Field(min_length=1)
    kind: SiteKind
    parent: str | None = None
    region: str = ""
    contact_name: str = ""
    contact_phone: str = ""


class SitePatch(BaseModel):
    name: str | None = Field(default=None, min_length=1)
    kind: SiteKind | None = None
    parent: str | None = None
    region: str | None = None
    contact_name: str | None = None
    contact_phone: str | None = None


class AudienceBody(BaseModel):
    kind: AudienceKind
    codes: list[str] = Field(default_factory=list)


class RecurrenceBody(BaseModel):
    repeat: Repeat = Repeat.NONE
    weekdays: list[int] = Field(default_factory=list)
    until: date | None = None
    count: int | None = None


class OptionsBody(BaseModel):
    record: bool = False
    publish: bool = False
    live_households: bool = False
    restream_urls: list[Annotated[str, Field(max_length=2048)]] = Field(
        default_factory=list, max_length=10
    )
    layout: Layout = "lecturer"


class SessionBody(BaseModel):
    title: Annotated[str, Field(max_length=300)]
    theme: Theme
    host: str
    audience: AudienceBody
    start: datetime
    """With an offset, or naive for Asia/Shanghai wall-clock time."""
    end: datetime
    recurrence: RecurrenceBody = Field(default_factory=RecurrenceBody)
    options: OptionsBody = Field(default_factory=OptionsBody)


RowId = Annotated[int, Path(ge=1, le=2**31 - 1)]
"""An id in a route: what an INTEGER primary key holds in PostgreSQL (SQLite's hold
more), so a larger number is a 422 and never reaches the database."""


def check_days(days: int, most: int) -> None:
    """A ``days`` parameter out of 1..``most``: a 422 that says so, rather than dates
    beyond what ``datetime`` holds."""
    if not 1 <= days <= most:
        raise HTTPException(422, detail=f"days must be between 1 and {most}")


def _refuse(
    reason: str,
    errors: list[tuple[int, str]] | None = None,
    status_code: int = status.HTTP_422_UNPROCESSABLE_CONTENT,
) -> JSONResponse:
    """A 4xx whose ``detail`` says why; ``errors`` lists file rows."""
    content: dict[str, Any] = {"detail": reason}
    if errors is not None:
        content["errors"] = [{"row": row, "message": message} for row, message in errors]
    return JSONResponse(content, status_code=status_code)


def account_json(account: Account) -> dict[str, Any]:
    return {
        "id": account.id,
        "username": account.username,
        "role": account.role.value,
        "site": account.site,
        "disabled": account.disabled,
    }


def site_json(site: Site) -> dict[str, Any]:
    return {**asdict(site), "kind": site.kind.value}


def session_json(session: Session, *, editable: bool) -> dict[str, Any]:
    """The session as the caller may see it: restream URLs carry stream keys, in full
    only for a caller who may edit the session (``editable``), hidden for the others."""
    rule = session.recurrence
    urls = session.options.restream_urls
    return {
        "id": session.id,
        "title": session.title,
        "theme": session.theme.value,
        "theme_label": session.theme.label,
        "host": session.host,
        "audience": {"kind": session.audience.kind.value, "codes": list(session.audience.codes)},
        "start": local(session.start).isoformat(),
        "end": local(session.end).isoformat(),
        "recurrence": {
            "repeat": rule.repeat.value,
            "weekdays": sorted(rule.weekdays),
            "until": rule.until.isoformat() if rule.until else None,
            "count": rule.count,
        },
        "options": {
            **asdict(session.options),
            "restream_urls": list(urls) if editable else [hide_key(url) for url in urls],
        },
        "status": session.status.value,
        "created_by": session.created_by,
    }


def _check_site_change(account: Account, tree: SiteTree, site: Site) -> Refusal:
    """Whether ``account`` may write ``site`` (a new one, or a change to an existing one)."""
    actor = account.actor
    if site.code not in tree:
        return check_create_site(actor, tree, site.parent, site.kind)
    refusal = check_edit_site(actor, tree, site.code)
    if refusal is None and site.kind is not tree.get(site.code).kind:
        refusal = None if actor.role is Role.CENTER_ADMIN else "only the center changes a kind"
    if refusal is None and site.parent != tree.get(site.code).parent:
        refusal = check_create_site(actor, tree, site.parent, site.kind)
    return refusal


def _session_fields(body: SessionBody) -> dict[str, Any]:
    """What a create or an update of a session takes, from its body; ValueError for a
    time no calendar holds."""
    rule, options = body.recurrence, body.options
    return {
        "title": body.title,
        "theme": body.theme,
        "host": body.host,
        "audience": Audience(body.audience.kind, tuple(body.audience.codes)),
        "start": to_utc(body.start),
        "end": to_utc(body.end),
        "recurrence": Recurrence(rule.repeat, frozenset(rule.weekdays), rule.until, rule.count),
        "options": SessionOptions(
            record=options.record,
            publish=options.publish,
            live_households=options.live_households,
            restream_urls=tuple(options.restream_urls),
            layout=options.layout,
        ),
    }


def scheduler_router(
    auth: Auth,
    sites: Sites,
    schedule: Schedule,
    on_schedule_change: Callable[[], None] | None = None,
) -> APIRouter:
    """The routes under ``/api``: login, ``/sites``, ``/sessions``, ``/accounts``.
    ``on_schedule_change`` is called after a session is created or cancelled here (the
    runner's :meth:`~scheduler.runner.Runner.wake`)."""
    router = APIRouter(prefix="/api", tags=["scheduler"])

    def changed() -> None:
        if on_schedule_change is not None:
            on_schedule_change()

    AccountDep = Annotated[Account, Depends(auth.current_account)]

    async def visible_session(account: Account, session_id: int) -> tuple[Session, SiteTree]:
        try:
            session = await schedule.get(session_id)
        except KeyError:
            raise HTTPException(404, detail=f"no session {session_id}") from None
        tree = await sites.tree()
        require(check_view_session(account.actor, tree, session.host, session.audience))
        return session, tree

    def may_edit(account: Account, tree: SiteTree, session: Session) -> bool:
        refusal = check_cancel_session(account.actor, tree, session.host, session.audience)
        return refusal is None

    # --- login ---

    @router.get("/setup")
    async def setup() -> dict[str, bool]:
        """Anyone: whether the first administrator exists yet (a fresh install says how
        to make one instead of offering a login that cannot succeed)."""
        return {"admin_exists": await auth.accounts.admin_exists()}

    @router.post("/login")
    async def login(body: LoginBody, request: Request, response: Response) -> dict[str, Any]:
        account = await auth.login(request, response, body.username, body.password)
        return {"account": account_json(account)}

    @router.post("/logout", status_code=204)
    async def logout(request: Request, response: Response) -> None:
        """Ends the login of the cookie sent. No CSRF check: a forged logout only logs out."""
        await auth.logout(request, response)

    @router.get("/me")
    async def me(account: AccountDep) -> dict[str, Any]:
        return account_json(account)

    @router.post("/me/tokens", status_code=201)
    async def create_token(account: AccountDep, body: TokenBody) -> dict[str, str]:
        return {"token": await auth.accounts.create_api_token(account, body.label)}

    @router.post("/me/password", status_code=204)
    async def change_own_password(
        account: AccountDep, body: OwnPasswordBody, request: Request
    ) -> Response:
        """Needs the current password; the caller's other logins end."""
        try:
            await auth.verify(request, account.username, body.old_password)
        except HTTPException as exc:
            if exc.status_code != status.HTTP_401_UNAUTHORIZED:
                raise
            require("the current password is wrong")
        try:
            await auth.accounts.set_password(
                account.id, body.new_password, keep_login=request.cookies.get(LOGIN_COOKIE)
            )
        except ValueError as exc:
            return _refuse(str(exc))
        return Response(status_code=204)

    # --- accounts: the center any; an institute its stations' operators ---

    async def managed(account: Account, account_id: int) -> Account:
        try:
            target = await auth.accounts.get(account_id)
        except KeyError:
            raise HTTPException(404, detail=f"no account {account_id}") from None
        tree = await sites.tree()
        require(check_manage_account(account.actor, tree, target.role, target.site))
        return target

    @router.get("/accounts")
    async def list_accounts(account: AccountDep) -> list[dict[str, Any]]:
        """The accounts the caller manages (itself included), by username."""
        if account.role is Role.STATION_OPERATOR:
            require("station operators cannot manage accounts")
        tree = await sites.tree()
        return [
            account_json(a)
            for a in await auth.accounts.all()
            if a.id == account.id
            or check_manage_account(account.actor, tree, a.role, a.site) is None
        ]

    @router.post("/accounts", status_code=201, response_model=None)
    async def create_account(
        account: AccountDep, body: AccountBody
    ) -> dict[str, Any] | JSONResponse:
        tree = await sites.tree()
        require(check_manage_account(account.actor, tree, body.role, body.site))
        try:
            created = await auth.accounts.create(
                body.username, body.password, body.role, body.site, tree
            )
        except ValueError as exc:
            return _refuse(str(exc))
        return account_json(created)

    @router.patch("/accounts/{account_id}")
    async def patch_account(
        account: AccountDep, account_id: RowId, body: AccountPatch
    ) -> dict[str, Any]:
        """Disable an account (its logins end at once, its API tokens stop) or enable it."""
        target = await managed(account, account_id)
        if target.id == account.id and body.disabled:
            require("you cannot disable your own account")
        return account_json(await auth.accounts.set_disabled(target.id, body.disabled))

    @router.post("/accounts/{account_id}/password", status_code=204, response_model=None)
    async def reset_password(
        account: AccountDep, account_id: RowId, body: PasswordBody
    ) -> Response | JSONResponse:
        """A new password set by whoever manages the account; its logins end."""
        target = await managed(account, account_id)
        try:
            await auth.accounts.set_password(target.id, body.password)
        except ValueError as exc:
            return _refuse(str(exc))
        return Response(status_code=204)

    # --- sites ---

    @router.get("/sites")
    async def list_sites(account: AccountDep) -> list[dict[str, Any]]:
        """The sites the caller may see, parents before children."""
        tree = await sites.tree()
        return [
            site_json(site)
            for site in tree.all()
            if check_view_site(account.actor, tree, site.code) is None
        ]

    @router.post("/sites/seed")
    async def load_county(account: AccountDep) -> dict[str, int]:
        """Load the county's tree shipped with the hub (1 center, 14 institutes, 176
        stations): the sites missing by code are added, edits made since are kept."""
        if account.role is not Role.CENTER_ADMIN:
            require("only the center loads the county's tree")
        added = await load_seed_into(sites)
        return {"added": added, "sites": len(await sites.tree())}

    @router.get("/sites/export.csv")
    async def export_sites(account: AccountDep) -> Response:
        tree = await sites.tree()
        visible = SiteTree(
            s for s in tree.all() if check_view_site(account.actor, tree, s.code) is None
        )
        return Response(
            export_csv(visible),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="sites.csv"'},
        )

    @router.post("/sites/import", response_model=None)
    async def import_sites(account: AccountDep, request: Request) -> dict[str, int] | JSONResponse:
        """Add or update sites from CSV (multipart ``file``), all or nothing; 422 lists
        each bad row. Who may not edit sites is refused before the body is read."""
        if account.role is Role.STATION_OPERATOR:
            require("station operators cannot edit sites")
        try:
            async with request.form(max_files=1, max_fields=1) as form:
                file = form.get("file")
                if not isinstance(file, UploadFile):
                    return _refuse("the form needs a 'file' part")
                data = await file.read()
        except MultiPartException as exc:
            return _refuse(f"not a valid multipart form: {exc.message}", status_code=400)
        try:
            parsed, rows = parse_csv(data)
        except SiteError as exc:
            return _refuse("the file has errors; nothing was imported", exc.errors)
        tree = await sites.tree()
        refused = [
            (rows[site.code], refusal)
            for site in parsed
            if (refusal := _check_site_change(account, tree, site)) is not None
        ]
        if refused:
            reason = "some rows are outside your permissions; nothing was imported"
            return _refuse(reason, refused, status.HTTP_403_FORBIDDEN)
        try:
            await sites.upsert(parsed, rows)
        except SiteError as exc:
            return _refuse("the file has errors; nothing was imported", exc.errors)
        return {"imported": len(parsed)}

    @router.get("/sites/{code}")
    async def get_site(account: AccountDep, code: str) -> dict[str, Any]:
        tree = await sites.tree()
        if code not in tree:
            raise HTTPException(404, detail=f"no site {code}")
        require(check_view_site(account.actor, tree, code))
        return {**site_json(tree.get(code)), "children": tree.children(code)}

    @router.post("/sites", status_code=201, response_model=None)
    async def create_site(account: AccountDep, body: SiteBody) -> dict[str, Any] | JSONResponse:
        tree = await sites.tree()
        if body.code in tree:
            raise HTTPException(409, detail=f"site {body.code} exists")
        site = Site(**body.model_dump())
        require(_check_site_change(account, tree, site))
        try:
            await sites.upsert([site])
        except SiteError as exc:
            return _refuse(str(exc))
        return site_json(site)

    @router.patch("/sites/{code}", response_model=None)
    async def update_site(
        account: AccountDep, code: str, body: SitePatch
    ) -> dict[str, Any] | JSONResponse:
        tree = await sites.tree()
        if code not in tree:
            raise HTTPException(404, detail=f"no site {code}")
        changes = body.model_dump(exclude_unset=True)
        if any(v is None for k, v in changes.items() if k != "parent"):
            return _refuse("only parent may be set to null")
        site = replace(tree.get(code), **changes)
        require(_check_site_change(account, tree, site))
        try:
            await sites.upsert([site])
        except SiteError as exc:
            return _refuse(str(exc))
        return site_json(site)

    @router.delete("/sites/{code}", status_code=204)
    async def delete_site(account: AccountDep, code: str) -> None:
        tree = await sites.tree()
        if code not in tree:
            raise HTTPException(404, detail=f"no site {code}")
        require(check_edit_site(account.actor, tree, code))
        try:
            await sites.delete(code)
        except SiteError as exc:
            raise HTTPException(409, detail=str(exc)) from None

    @router.get("/sites/{code}/sessions")
    async def site_sessions(
        account: AccountDep, code: str, day: date | None = None, days: int = 7
    ) -> list[dict[str, Any]]:
        """Today's (or ``day``'s) and upcoming occurrences the site hosts or attends."""
        tree = await sites.tree()
        if code not in tree:
            raise HTTPException(404, detail=f"no site {code}")
        require(check_view_site(account.actor, tree, code))
        check_days(days, 62)
        day = day or local(datetime.now(UTC)).date()
        if not EARLIEST.date() <= day < LATEST.date():
            raise HTTPException(
                422, detail=f"day must be between {EARLIEST.date()} and {LATEST.date()}"
            )
        found = await schedule.sessions_for_site(tree, code, day, days)
        return [info.to_json() for info in found]

    # --- sessions ---

    @router.post("/sessions", status_code=201, response_model=None)
    async def create_session(
        account: AccountDep, body: SessionBody
    ) -> dict[str, Any] | JSONResponse:
        tree = await sites.tree()
        try:
            fields = _session_fields(body)
        except ValueError as exc:
            return _refuse(str(exc))
        require(check_schedule(account.actor, tree, body.host, fields["audience"]))
        try:
            session = await schedule.create(tree, **fields, created_by=account.id)
        except ValueError as exc:
            return _refuse(str(exc))
        changed()
        return session_json(session, editable=True)

    @router.put("/sessions/{session_id}", response_model=None)
    async def update_session(
        account: AccountDep, session_id: RowId, body: SessionBody
    ) -> dict[str, Any] | JSONResponse:
        """Replace a session's fields: allowed to whoever could schedule it both as it
        was and as it becomes (an institute cannot move a session out of its reach)."""
        session, tree = await visible_session(account, session_id)
        require(check_schedule(account.actor, tree, session.host, session.audience))
        try:
            fields = _session_fields(body)
        except ValueError as exc:
            return _refuse(str(exc))
        require(check_schedule(account.actor, tree, body.host, fields["audience"]))
        try:
            updated = await schedule.update(session_id, tree, **fields)
        except ValueError as exc:
            return _refuse(str(exc))
        changed()
        return session_json(updated, editable=True)

    @router.get("/sessions")
    async def list_sessions(account: AccountDep) -> list[dict[str, Any]]:
        """The sessions the caller may see, newest first."""
        tree = await sites.tree()
        return [
            session_json(s, editable=may_edit(account, tree, s))
            for s in await schedule.all()
            if check_view_session(account.actor, tree, s.host, s.audience) is None
        ]

    @router.get("/sessions/{session_id}")
    async def get_session(account: AccountDep, session_id: RowId) -> dict[str, Any]:
        session, tree = await visible_session(account, session_id)
        return session_json(session, editable=may_edit(account, tree, session))

    @router.post("/sessions/{session_id}/cancel")
    async def cancel_session(account: AccountDep, session_id: RowId) -> dict[str, Any]:
        session, tree = await visible_session(account, session_id)
        require(check_cancel_session(account.actor, tree, session.host, session.audience))
        cancelled = await schedule.cancel(session_id)
        changed()
        return session_json(cancelled, editable=True)

    return router
