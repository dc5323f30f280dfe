"""Accounts of the people who run sites: argon2 passwords, cookie logins with CSRF
protection, API tokens, and a login rate limit.

    python -m scheduler.accounts create-admin --username U --password P --database-url URL

Login and API tokens are 256-bit random strings; only their SHA-256 is stored (a fast
hash is enough for values that cannot be guessed, unlike passwords)."""

from __future__ import annotations

import argparse
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
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from scheduler.permissions import Actor, Refusal, Role
from scheduler.sites import SiteKind, SiteTree
from scheduler.tables import accounts as accounts_table
from scheduler.tables import api_tokens, create_tables, logins

LOGIN_COOKIE = "hub_login"
CSRF_COOKIE = "hub_csrf"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_ROLE_KIND = {Role.INSTITUTE_OPERATOR: SiteKind.INSTITUTE, Role.STATION_OPERATOR: SiteKind.STATION}


@dataclass(frozen=True)
class Account:
    id: int
    username: str
    role: Role
    site: str | None
    """The bound institute or station; None for a center administrator."""

    @property
    def actor(self) -> Actor:
        return Actor(self.role, self.site)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _from_row(row: Row[Any]) -> Account:
    return Account(id=row.id, username=row.username, role=Role(row.role), site=row.site)


class Accounts:
    """The account, login and API token tables. Argon2 runs in a thread: it is meant to
    be slow, and the event loop is also forwarding media."""

    def __init__(
        self,
        engine: AsyncEngine,
        hasher: PasswordHasher | None = None,
        login_ttl: timedelta = timedelta(hours=12),
    ) -> None:
        self._engine = engine
        self._hasher = hasher or PasswordHasher()
        self._login_ttl = login_ttl
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
        if len(password) < 8:
            raise ValueError("password must be at least 8 characters")
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
        """The account when the password matches, None otherwise."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(accounts_table).where(accounts_table.c.username == username)
                )
            ).first()
        stored = row.password_hash if row is not None else self._dummy_hash
        try:
            await asyncio.to_thread(self._hasher.verify, stored, password)
        except (VerificationError, InvalidHashError):
            return None
        if row is None:
            return None
        if self._hasher.check_needs_rehash(stored):
            rehashed = await asyncio.to_thread(self._hasher.hash, password)
            async with self._engine.begin() as conn:
                await conn.execute(
                    sa.update(accounts_table)
                    .where(accounts_table.c.id == row.id)
                    .values(password_hash=rehashed)
                )
        return _from_row(row)

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
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else _from_row(row)


@dataclass
class LoginLimiter:
    """At most ``max_failures`` failed logins per key (a username, a client address)
    within ``window`` seconds. In memory: each hub process counts its own attempts."""

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

    def failed(self, *keys: str) -> None:
        if len(self._failures) >= self.max_keys:
            for stale in list(self._failures):
                self._recent(stale)
        for key in keys:
            self._failures.setdefault(key, deque()).append(self.clock())

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
        client = request.client.host if request.client else "unknown"
        keys = (f"user:{username.strip().lower()}", f"addr:{client}")
        wait = self.limiter.retry_after(*keys)
        if wait is not None:
            raise HTTPException(
                status.HTTP_429_TOO_MANY_REQUESTS,
                detail=f"too many failed logins; try again in {wait} s",
                headers={"Retry-After": str(wait)},
            )
        account = await self.accounts.authenticate(username, password)
        if account is None:
            self.limiter.failed(*keys)
            raise _reject(401, "wrong username or password")
        self.limiter.forget(keys[0])
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

    async def logout(self, request: Request, response: Response) -> None:
        token = request.cookies.get(LOGIN_COOKIE)
        if token:
            await self.accounts.end_login(token)
        response.delete_cookie(LOGIN_COOKIE, path="/")
        response.delete_cookie(CSRF_COOKIE, path="/")

    async def current_account(self, request: Request) -> Account:
        """The caller: a Bearer API token, or a login cookie (state-changing requests then
        need the CSRF token in the header or form field, matching the cookie). 401/403."""
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
            await self._check_csrf(request, csrf)
        return account

    async def _check_csrf(self, request: Request, expected: str) -> None:
        sent = request.headers.get(CSRF_HEADER)
        if sent is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")
        ):
            field_value = (await request.form()).get(CSRF_FIELD)
            sent = field_value if isinstance(field_value, str) else None
        cookie = request.cookies.get(CSRF_COOKIE, "")
        if not sent:
            raise _reject(403, f"CSRF token missing: send the {CSRF_COOKIE} cookie's value")
        if not (hmac.compare_digest(sent, cookie) and hmac.compare_digest(sent, expected)):
            raise _reject(403, "CSRF token does not match this login")


async def create_admin(engine: AsyncEngine, username: str, password: str) -> Account:
    """Create the tables if needed and a center administrator."""
    await create_tables(engine)
    return await Accounts(engine).create(username, password, Role.CENTER_ADMIN, None, SiteTree([]))


async def _main(args: argparse.Namespace) -> None:
    engine = create_async_engine(args.database_url)
    try:
        account = await create_admin(engine, args.username, args.password)
    finally:
        await engine.dispose()
    print(f"created center administrator {account.username} (id {account.id})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m scheduler.accounts")
    commands = parser.add_subparsers(dest="command", required=True)
    admin = commands.add_parser("create-admin", help="create a center administrator")
    admin.add_argument("--username", required=True)
    admin.add_argument("--password", required=True)
    admin.add_argument("--database-url", required=True, help="async SQLAlchemy URL")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_main(args))
    except ValueError as exc:
        parser.exit(1, f"error: {exc}\n")


if __name__ == "__main__":
    main()
