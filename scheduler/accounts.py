"""Accounts of the people who run sites: argon2 passwords, cookie logins with CSRF
protection, API tokens, and a login rate limit.

The first center administrator is made on the hub's machine with
``practice-hub admin create`` (:func:`create_admin`); everyone else from the browser.

Login and API tokens are 256-bit random strings; only their SHA-256 is stored (a fast
hash is enough for values that cannot be guessed, unlike passwords)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import HTTPException, Request, Response, status
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from scheduler.permissions import Actor, Refusal, Role
from scheduler.sites import SiteKind, SiteTree
from scheduler.tables import accounts as accounts_table
from scheduler.tables import api_tokens, create_tables, logins

LOGIN_COOKIE = "hub_login"
CSRF_COOKIE = "hub_csrf"
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_ROLE_KIND = {Role.INSTITUTE_OPERATOR: SiteKind.INSTITUTE, Role.STATION_OPERATOR: SiteKind.STATION}
MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024
"""Argon2 of a longer password is work a stranger could make the hub do for nothing."""
CHECK_WAIT = 10.0
"""Seconds a login may wait for a free password check before it is told to retry."""


def check_password(password: str) -> None:
    """ValueError, saying why, for a password the hub will not store."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ValueError(f"password must be at most {MAX_PASSWORD_LENGTH} characters")


class LoginBusy(Exception):
    """Every password check is taken; the caller should try again shortly."""


@dataclass(frozen=True)
class Account:
    id: int
    username: str
    role: Role
    site: str | None
    """The bound institute or station; None for a center administrator."""
    disabled: bool = False

    @property
    def actor(self) -> Actor:
        return Actor(self.role, self.site)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _from_row(row: Row[Any]) -> Account:
    return Account(
        id=row.id,
        username=row.username,
        role=Role(row.role),
        site=row.site,
        disabled=bool(row.disabled),
    )


_ENABLED = accounts_table.c.disabled.is_(False)


class Accounts:
    """The account, login and API token tables. Argon2 runs in a thread: it is meant to
    be slow, and the event loop is also forwarding media. At most ``concurrent_checks``
    passwords are checked at once, so a burst of logins cannot take every core."""

    def __init__(
        self,
        engine: AsyncEngine,
        hasher: PasswordHasher | None = None,
        login_ttl: timedelta = timedelta(hours=12),
        concurrent_checks: int = 2,
    ) -> None:
        self._engine = engine
        self._hasher = hasher or PasswordHasher()
        self._login_ttl = login_ttl
        self._checks = asyncio.Semaphore(concurrent_checks)
        # Verified against when the username is unknown, so both cases take as long.
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))

    async def create(
        self, username: str, password: str, role: Role, site: str | None, tree: SiteTree
    ) -> Account:
        """Add an account; ValueError for a bad name, short password, a site that does
        not fit the role, or a taken username."""
        username = username.strip()
        if not username:
            raise ValueError("username is required")
        if len(username) > 100:
            raise ValueError("username must be at most 100 characters")
        check_password(password)
        if role is Role.CENTER_ADMIN:
            if site is not None:
                raise ValueError("a center administrator is bound to no site")
        elif site is None or site not in tree or tree.get(site).kind is not _ROLE_KIND[role]:
            raise ValueError(f"a {role} must be bound to an existing {_ROLE_KIND[role]}")
        password_hash = await asyncio.to_thread(self._hasher.hash, password)
        try:
            async with self._engine.begin() as conn:
                result = await conn.execute(
                    sa.insert(accounts_table)
                    .values(
                        username=username,
                        password_hash=password_hash,
                        role=role.value,
                        site=site,
                        created_at=datetime.now(UTC),
                    )
                    .returning(accounts_table.c.id)
                )
                account_id = result.scalar_one()
        except IntegrityError as exc:
            raise ValueError(f"username {username} is taken") from exc
        return Account(account_id, username, role, site)

    async def authenticate(self, username: str, password: str) -> Account | None:
        """The account when the password matches (disabled or not), None otherwise.
        :class:`LoginBusy` when no password check frees up within :data:`CHECK_WAIT`."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(accounts_table).where(accounts_table.c.username == username)
                )
            ).first()
        stored = row.password_hash if row is not None else self._dummy_hash
        try:
            await asyncio.wait_for(self._checks.acquire(), CHECK_WAIT)
        except TimeoutError:
            raise LoginBusy from None
        try:
            await asyncio.to_thread(self._hasher.verify, stored, password)
        except (VerificationError, InvalidHashError):
            return None
        finally:
            self._checks.release()
        if row is None:
            return None
        if self._hasher.check_needs_rehash(stored):
            await self._store_password(row.id, password)
        return _from_row(row)

    async def _store_password(self, account_id: int, password: str) -> None:
        password_hash = await asyncio.to_thread(self._hasher.hash, password)
        async with self._engine.begin() as conn:
            await conn.execute(
                sa.update(accounts_table)
                .where(accounts_table.c.id == account_id)
                .values(password_hash=password_hash)
            )

    async def get(self, account_id: int) -> Account:
        """KeyError when unknown."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(accounts_table).where(accounts_table.c.id == account_id)
                )
            ).first()
        if row is None:
            raise KeyError(account_id)
        return _from_row(row)

    async def all(self) -> list[Account]:
        """Every account, by username."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(sa.select(accounts_table).order_by(accounts_table.c.username))
            return [_from_row(row) for row in rows]

    async def admin_exists(self) -> bool:
        """Whether an enabled center administrator exists (a fresh install has none)."""
        query = (
            sa.select(accounts_table.c.id)
            .where(accounts_table.c.role == Role.CENTER_ADMIN.value, _ENABLED)
            .limit(1)
        )
        async with self._engine.connect() as conn:
            return (await conn.execute(query)).first() is not None

    async def set_password(
        self, account_id: int, password: str, keep_login: str | None = None
    ) -> None:
        """A new password; every login of the account ends but ``keep_login`` (the one
        that changed its own password). ValueError for a weak password."""
        check_password(password)
        await self._store_password(account_id, password)
        await self._end_logins(account_id, keep_login)

    async def set_disabled(self, account_id: int, disabled: bool) -> Account:
        """Disable (its logins end, its API tokens stop working) or enable again."""
        async with self._engine.begin() as conn:
            await conn.execute(
                sa.update(accounts_table)
                .where(accounts_table.c.id == account_id)
                .values(disabled=disabled)
            )
        if disabled:
            await self._end_logins(account_id, None)
        return await self.get(account_id)

    async def _end_logins(self, account_id: int, keep: str | None) -> None:
        query = sa.delete(logins).where(logins.c.account_id == account_id)
        if keep is not None:
            query = query.where(logins.c.token_hash != _digest(keep))
        async with self._engine.begin() as conn:
            await conn.execute(query)

    async def start_login(self, account: Account) -> tuple[str, str]:
        """A new login: (login token for the cookie, its CSRF token)."""
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        async with self._engine.begin() as conn:
            await conn.execute(sa.delete(logins).where(logins.c.expires_at < datetime.now(UTC)))
            await conn.execute(
                sa.insert(logins).values(
                    token_hash=_digest(token),
                    account_id=account.id,
                    csrf_token=csrf,
                    expires_at=datetime.now(UTC) + self._login_ttl,
                )
            )
        return token, csrf

    async def resolve_login(self, token: str) -> tuple[Account, str] | None:
        """The account and CSRF token of a live login, None when unknown or expired."""
        query = (
            sa.select(accounts_table, logins.c.csrf_token)
            .join(logins, logins.c.account_id == accounts_table.c.id)
            .where(logins.c.token_hash == _digest(token))
            .where(logins.c.expires_at > datetime.now(UTC))
            .where(_ENABLED)
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else (_from_row(row), row.csrf_token)

    async def end_login(self, token: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(sa.delete(logins).where(logins.c.token_hash == _digest(token)))

    async def create_api_token(self, account: Account, label: str = "") -> str:
        """A new API token for ``account``; shown once, stored hashed."""
        token = "pht_" + secrets.token_urlsafe(32)
        async with self._engine.begin() as conn:
            await conn.execute(
                sa.insert(api_tokens).values(
                    token_hash=_digest(token),
                    account_id=account.id,
                    label=label,
                    created_at=datetime.now(UTC),
                )
            )
        return token

    async def resolve_api_token(self, token: str) -> Account | None:
        query = (
            sa.select(accounts_table)
            .join(api_tokens, api_tokens.c.account_id == accounts_table.c.id)
            .where(api_tokens.c.token_hash == _digest(token))
            .where(_ENABLED)
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else _from_row(row)


@dataclass
class LoginLimiter:
    """At most ``max_failures`` failed logins per key (a username, a client address)
    within ``window`` seconds. In memory: each hub process counts its own attempts.

    An attempt is counted before its password is checked and refunded when it was
    right: concurrent guesses then cannot all slip under the limit while the slow
    checks run."""

    max_failures: int = 5
    window: float = 300.0
    clock: Callable[[], float] = time.monotonic
    max_keys: int = 10_000
    """Past this many keys, stale ones are dropped, so guessing many usernames from
    many addresses cannot grow memory without bound."""
    _failures: dict[str, deque[float]] = field(default_factory=dict)

    def _recent(self, key: str) -> deque[float]:
        failures = self._failures.get(key, deque())
        cutoff = self.clock() - self.window
        while failures and failures[0] <= cutoff:
            failures.popleft()
        if not failures:
            self._failures.pop(key, None)
        return failures

    def retry_after(self, *keys: str) -> int | None:
        """Seconds until any of ``keys`` may try again, None when none is blocked."""
        waits = [
            recent[-self.max_failures] + self.window - self.clock()
            for recent in map(self._recent, keys)
            if len(recent) >= self.max_failures
        ]
        return max(1, math.ceil(max(waits))) if waits else None

    def count(self, *keys: str) -> float:
        """Count an attempt against every key; its stamp, for :meth:`refund`."""
        if len(self._failures) >= self.max_keys:
            for stale in list(self._failures):
                self._recent(stale)
        stamp = self.clock()
        for key in keys:
            self._failures.setdefault(key, deque()).append(stamp)
        return stamp

    def refund(self, stamp: float, *keys: str) -> None:
        """Take back an attempt counted at ``stamp`` (it was not a failure)."""
        for key in keys:
            failures = self._failures.get(key)
            if failures is not None and stamp in failures:
                failures.remove(stamp)
                if not failures:
                    del self._failures[key]

    def __len__(self) -> int:
        """How many keys have failures on record."""
        return len(self._failures)

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)


def require(refusal: Refusal) -> None:
    """Turn a permission check's refusal into a 403 that says why."""
    if refusal is not None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=refusal)


def _reject(status_code: int, reason: str) -> HTTPException:
    headers = {"WWW-Authenticate": "Bearer"} if status_code == 401 else None
    return HTTPException(status_code, detail=reason, headers=headers)


class Auth:
    """The HTTP side of accounts: log in and out, and the ``current_account`` dependency.

    Use it as ``Annotated[Account, Depends(auth.current_account)]``."""

    def __init__(
        self,
        accounts: Accounts,
        limiter: LoginLimiter | None = None,
        secure_cookies: bool | None = None,
    ) -> None:
        self.accounts = accounts
        self.limiter = LoginLimiter() if limiter is None else limiter
        self._secure_cookies = secure_cookies
        """True/False forces the cookies' Secure flag; None sets it when served over HTTPS."""

    async def login(
        self, request: Request, response: Response, username: str, password: str
    ) -> Account:
        """Check the password (rate limited) and set the login and CSRF cookies."""
        account = await self.verify(request, username, password)
        if account.disabled:
            raise _reject(403, "this account is disabled; ask your administrator")
        token, csrf = await self.accounts.start_login(account)
        secure = (
            request.url.scheme == "https" if self._secure_cookies is None else self._secure_cookies
        )
        response.set_cookie(
            LOGIN_COOKIE, token, httponly=True, secure=secure, samesite="lax", path="/"
        )
        # Readable by the page's script, which echoes it in the X-CSRF-Token header.
        response.set_cookie(
            CSRF_COOKIE, csrf, httponly=False, secure=secure, samesite="lax", path="/"
        )
        return account

    async def verify(self, request: Request, username: str, password: str) -> Account:
        """The account whose password this is, rate limited per username and per client
        address: 429 when blocked, 401 when wrong, 503 when every check is busy."""
        client = request.client.host if request.client else "unknown"
        keys = (f"user:{username.strip().lower()}", f"addr:{client}")
        wait = self.limiter.retry_after(*keys)
        if wait is not None:
            raise HTTPException(
                status.HTTP_429_TOO_MANY_REQUESTS,
                detail=f"too many failed logins; try again in {wait} s",
                headers={"Retry-After": str(wait)},
            )
        attempt = self.limiter.count(*keys)
        try:
            account = await self.accounts.authenticate(username, password)
        except LoginBusy:
            self.limiter.refund(attempt, *keys)
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                detail="too many logins at once; try again in a few seconds",
                headers={"Retry-After": "5"},
            ) from None
        if account is None:
            raise _reject(401, "wrong username or password")
        self.limiter.forget(keys[0])
        self.limiter.refund(attempt, keys[1])
        return account

    async def logout(self, request: Request, response: Response) -> None:
        token = request.cookies.get(LOGIN_COOKIE)
        if token:
            await self.accounts.end_login(token)
        response.delete_cookie(LOGIN_COOKIE, path="/")
        response.delete_cookie(CSRF_COOKIE, path="/")

    async def current_account(self, request: Request) -> Account:
        """The caller: a Bearer API token, or a login cookie (state-changing requests then
        need the CSRF token in the header, matching the cookie). 401/403. Nothing of
        the body is read here."""
        authorization = request.headers.get("Authorization", "")
        if authorization:
            scheme, _, bearer = authorization.partition(" ")
            if scheme.lower() != "bearer" or not bearer.strip():
                raise _reject(401, "Authorization must be 'Bearer <API token>'")
            account = await self.accounts.resolve_api_token(bearer.strip())
            if account is None:
                raise _reject(401, "unknown API token")
            return account
        login = request.cookies.get(LOGIN_COOKIE)
        if not login:
            raise _reject(401, "not logged in")
        resolved = await self.accounts.resolve_login(login)
        if resolved is None:
            raise _reject(401, "login expired or unknown; log in again")
        account, csrf = resolved
        if request.method not in _SAFE_METHODS:
            self._check_csrf(request, csrf)
        return account

    def _check_csrf(self, request: Request, expected: str) -> None:
        # The header only: reading a form field would mean reading the body (an upload)
        # before refusing it.
        sent = request.headers.get(CSRF_HEADER)
        cookie = request.cookies.get(CSRF_COOKIE, "")
        if not sent:
            raise _reject(403, f"CSRF token missing: send the {CSRF_COOKIE} cookie's value")
        if not (hmac.compare_digest(sent, cookie) and hmac.compare_digest(sent, expected)):
            raise _reject(403, "CSRF token does not match this login")


async def create_admin(engine: AsyncEngine, username: str, password: str) -> Account:
    """Create the tables if needed and a center administrator; ValueError, saying why,
    for a weak password or a taken name."""
    await create_tables(engine)
    return await Accounts(engine).create(username, password, Role.CENTER_ADMIN, None, SiteTree([]))
