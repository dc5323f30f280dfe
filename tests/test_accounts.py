"""Accounts: argon2 passwords, cookie logins with CSRF, API tokens, the login rate limit
(raced too), managing accounts (list, reset, disable, one's own password) within
reach. Also home of the ``api`` fixture (a test app on the router)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import httpx
import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from scheduler.accounts import CSRF_COOKIE, LOGIN_COOKIE, Accounts, Auth, LoginLimiter
from scheduler.http import scheduler_router
from scheduler.permissions import Role
from scheduler.schedule import Schedule
from scheduler.seed import load_seed
from scheduler.sites import Sites, SiteTree
from scheduler.tables import accounts as accounts_table
from scheduler.tables import api_tokens, logins
from tests.test_sites import engine_fixture  # noqa: F401  (fixture import)

# Cheap parameters keep the suite fast; one test checks the production defaults.
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
PASSWORD = "correct horse battery"
USERS = {
    "admin": (Role.CENTER_ADMIN, None),
    "inst1": (Role.INSTITUTE_OPERATOR, "I01"),
    "inst2": (Role.INSTITUTE_OPERATOR, "I02"),
    "sta1": (Role.STATION_OPERATOR, "I01-S001"),
    "sta2": (Role.STATION_OPERATOR, "I01-S002"),
}


class FakeMonotonic:
    def __init__(self) -> None:
        self.value = 1000.0

    def __call__(self) -> float:
        return self.value


@dataclass
class Api:
    """A test app on ``scheduler_router`` with the seed county and one account per role."""

    app: FastAPI
    auth: Auth
    clock: FakeMonotonic
    engine: AsyncEngine
    schedule_changes: int = 0
    """Calls of the router's ``on_schedule_change``."""

    def schedule_changed(self) -> None:
        self.schedule_changes += 1

    def anonymous(
        self, base_url: str = "http://test", address: str = "127.0.0.1"
    ) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=(address, 50000))
        return httpx.AsyncClient(transport=transport, base_url=base_url)

    async def client(self, username: str) -> httpx.AsyncClient:
        """Logged in as ``username``, echoing the CSRF cookie like the page script does."""
        client = self.anonymous()
        response = await client.post(
            "/api/login", json={"username": username, "password": PASSWORD}
        )
        assert response.status_code == 200, response.text
        client.headers["X-CSRF-Token"] = client.cookies[CSRF_COOKIE]
        return client


@pytest.fixture(name="api")
async def api_fixture(engine: AsyncEngine) -> AsyncIterator[Api]:
    await load_seed(engine)
    sites = Sites(engine)
    accounts = Accounts(engine, hasher=FAST_HASHER)
    tree = await sites.tree()
    for username, (role, site) in USERS.items():
        await accounts.create(username, PASSWORD, role, site, tree)
    clock = FakeMonotonic()
    auth = Auth(accounts, LoginLimiter(clock=clock))
    app = FastAPI()
    api = Api(app, auth, clock, engine)
    app.include_router(scheduler_router(auth, sites, Schedule(engine), api.schedule_changed))
    yield api


async def test_passwords_are_argon2_hashed_and_verified(engine: AsyncEngine) -> None:
    accounts = Accounts(engine)  # production parameters
    admin = await accounts.create(
        "root", PASSWORD, Role.CENTER_ADMIN, None, await Sites(engine).tree()
    )
    async with engine.connect() as conn:
        stored = (await conn.execute(sa.select(accounts_table.c.password_hash))).scalar_one()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert await accounts.authenticate("root", PASSWORD) == admin
    assert await accounts.authenticate("root", "wrong password") is None
    assert await accounts.authenticate("nobody", PASSWORD) is None


async def test_weak_parameters_are_upgraded_on_login(engine: AsyncEngine) -> None:
    await Accounts(engine, hasher=FAST_HASHER).create(
        "root", PASSWORD, Role.CENTER_ADMIN, None, await Sites(engine).tree()
    )
    assert await Accounts(engine).authenticate("root", PASSWORD) is not None
    async with engine.connect() as conn:
        stored = (await conn.execute(sa.select(accounts_table.c.password_hash))).scalar_one()
    assert not PasswordHasher().check_needs_rehash(stored)


BAD_ACCOUNTS = [
    ("empty username", " ", PASSWORD, Role.CENTER_ADMIN, None, "username is required"),
    ("short password", "x", "short", Role.CENTER_ADMIN, None, "at least 10"),
    ("nine characters", "x", "123456789", Role.CENTER_ADMIN, None, "at least 10"),
    ("huge password", "x", "p" * 1025, Role.CENTER_ADMIN, None, "at most 1024"),
    ("admin bound to a site", "x", PASSWORD, Role.CENTER_ADMIN, "C", "bound to no site"),
    (
        "institute operator on a station",
        "x",
        PASSWORD,
        Role.INSTITUTE_OPERATOR,
        "I01-S001",
        "existing institute",
    ),
    (
        "station operator without site",
        "x",
        PASSWORD,
        Role.STATION_OPERATOR,
        None,
        "existing station",
    ),
    ("unknown site", "x", PASSWORD, Role.STATION_OPERATOR, "I99-S001", "existing station"),
    ("taken username", "taken", PASSWORD, Role.CENTER_ADMIN, None, "is taken"),
]


@pytest.mark.parametrize(
    ("username", "password", "role", "site", "message"),
    [case[1:] for case in BAD_ACCOUNTS],
    ids=[case[0] for case in BAD_ACCOUNTS],
)
async def test_invalid_accounts_are_refused(
    engine: AsyncEngine, username: str, password: str, role: Role, site: str | None, message: str
) -> None:
    await load_seed(engine)
    accounts = Accounts(engine, hasher=FAST_HASHER)
    tree = await Sites(engine).tree()
    await accounts.create("taken", PASSWORD, Role.CENTER_ADMIN, None, tree)
    with pytest.raises(ValueError, match=message):
        await accounts.create(username, password, role, site, tree)


async def test_login_tokens_and_api_tokens_are_stored_hashed_and_expire(
    engine: AsyncEngine,
) -> None:
    accounts = Accounts(engine, hasher=FAST_HASHER, login_ttl=timedelta(seconds=-1))
    admin = await accounts.create(
        "root", PASSWORD, Role.CENTER_ADMIN, None, await Sites(engine).tree()
    )
    expired_login, _ = await accounts.start_login(admin)
    assert await accounts.resolve_login(expired_login) is None
    api_token = await accounts.create_api_token(admin, "monitoring")
    assert await accounts.resolve_api_token(api_token) == admin
    assert await accounts.resolve_api_token(api_token + "x") is None
    async with engine.connect() as conn:
        stored = [r[0] for r in await conn.execute(sa.select(logins.c.token_hash))]
        stored += [r[0] for r in await conn.execute(sa.select(api_tokens.c.token_hash))]
    assert len(stored) == 2 and expired_login not in stored and api_token not in stored


def test_limiter_blocks_after_five_failures_until_the_window_passes() -> None:
    clock = FakeMonotonic()
    limiter = LoginLimiter(max_failures=5, window=300, clock=clock)
    for _ in range(4):
        limiter.count("user:a", "addr:1")
        clock.value += 10
    assert limiter.retry_after("user:a", "addr:1") is None
    limiter.count("user:a", "addr:1")
    assert limiter.retry_after("user:a") == 260  # the first failure leaves the window then
    assert limiter.retry_after("user:b", "addr:1") == 260  # the address is blocked too
    assert limiter.retry_after("user:b", "addr:2") is None
    clock.value += 260
    assert limiter.retry_after("user:a", "addr:1") is None


def test_limiter_drops_stale_keys_when_it_grows() -> None:
    clock = FakeMonotonic()
    limiter = LoginLimiter(window=300, clock=clock, max_keys=100)
    for n in range(100):
        limiter.count(f"user:{n}")
    assert len(limiter) == 100
    clock.value += 301
    limiter.count("user:new")
    assert len(limiter) == 1


async def test_login_sets_httponly_lax_cookies_and_me_answers(api: Api) -> None:
    async with api.anonymous() as client:
        response = await client.post("/api/login", json={"username": "sta1", "password": PASSWORD})
        assert response.status_code == 200
        cookies = {c.split("=")[0]: c.lower() for c in response.headers.get_list("set-cookie")}
        assert "httponly" in cookies[LOGIN_COOKIE] and "samesite=lax" in cookies[LOGIN_COOKIE]
        assert "httponly" not in cookies[CSRF_COOKIE]  # the page script must read it
        assert "secure" not in cookies[LOGIN_COOKIE]  # plain HTTP here
        me = await client.get("/api/me")
        assert me.json() == {
            "id": me.json()["id"],
            "username": "sta1",
            "role": "station_operator",
            "site": "I01-S001",
            "disabled": False,
        }
        assert (await client.post("/api/logout")).status_code == 204
        assert (await client.get("/api/me")).status_code == 401


async def test_cookies_are_secure_over_https(api: Api) -> None:
    async with api.anonymous("https://hub.example") as client:
        response = await client.post("/api/login", json={"username": "sta1", "password": PASSWORD})
        assert all("secure" in c.lower() for c in response.headers.get_list("set-cookie"))


async def test_secure_cookies_can_be_forced_behind_a_tls_proxy(api: Api) -> None:
    forced = Auth(api.auth.accounts, secure_cookies=True)
    app = FastAPI()
    app.include_router(scheduler_router(forced, Sites(api.engine), Schedule(api.engine)))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post("/api/login", json={"username": "sta1", "password": PASSWORD})
        assert all("secure" in c.lower() for c in response.headers.get_list("set-cookie"))


async def test_unauthenticated_requests_get_401_with_a_reason(api: Api) -> None:
    async with api.anonymous() as client:
        response = await client.get("/api/me")
        assert response.status_code == 401 and response.json()["detail"] == "not logged in"
        response = await client.get("/api/me", headers={"Authorization": "Bearer nope"})
        assert response.status_code == 401 and response.json()["detail"] == "unknown API token"
        response = await client.get("/api/me", headers={"Authorization": "Basic abc"})
        assert response.status_code == 401 and "Bearer" in response.json()["detail"]
        bad = await client.post("/api/login", json={"username": "sta1", "password": "nope nope"})
        assert bad.status_code == 401 and bad.json()["detail"] == "wrong username or password"


async def test_state_changing_cookie_requests_need_the_csrf_token(api: Api) -> None:
    client = await api.client("admin")
    token = client.headers.pop("X-CSRF-Token")
    body = {"label": "x"}
    missing = await client.post("/api/me/tokens", json=body)
    assert missing.status_code == 403 and "CSRF token missing" in missing.json()["detail"]
    wrong = await client.post("/api/me/tokens", json=body, headers={"X-CSRF-Token": "forged"})
    assert wrong.status_code == 403 and "does not match" in wrong.json()["detail"]
    # Reads need no token. A form field is not read: the header is the only way, so
    # nothing of a body (an upload) is read before a request is refused.
    assert (await client.get("/api/me")).status_code == 200
    form = await client.post(
        "/api/sites/import",
        data={"csrf_token": token},
        files={"file": ("sites.csv", b"code,name,kind,parent,region,contact_name,contact_phone\n")},
    )
    assert form.status_code == 403 and "CSRF token missing" in form.json()["detail"]
    assert (
        await client.post("/api/me/tokens", json=body, headers={"X-CSRF-Token": token})
    ).status_code == 201
    await client.aclose()


async def test_csrf_token_of_another_login_is_refused(api: Api) -> None:
    mine = await api.client("admin")
    other = await api.client("admin")
    mine.headers["X-CSRF-Token"] = other.cookies[CSRF_COOKIE]
    mine.cookies.set(CSRF_COOKIE, other.cookies[CSRF_COOKIE])
    response = await mine.post("/api/me/tokens", json={})
    assert response.status_code == 403 and "does not match" in response.json()["detail"]
    for client in (mine, other):
        await client.aclose()


async def test_api_token_works_as_bearer_without_csrf(api: Api) -> None:
    client = await api.client("inst1")
    token = (await client.post("/api/me/tokens", json={"label": "ci"})).json()["token"]
    await client.aclose()
    async with api.anonymous() as bearer:
        bearer.headers["Authorization"] = f"Bearer {token}"
        assert (await bearer.get("/api/me")).json()["username"] == "inst1"
        created = await bearer.post("/api/me/tokens", json={})
        assert created.status_code == 201


async def test_failed_logins_are_rate_limited_with_retry_after(api: Api) -> None:
    async with api.anonymous() as client:
        for _ in range(5):
            bad = await client.post("/api/login", json={"username": "sta1", "password": "wrong pw"})
            assert bad.status_code == 401
        blocked = await client.post("/api/login", json={"username": "sta1", "password": PASSWORD})
        assert blocked.status_code == 429
        assert blocked.headers["Retry-After"] == "300"
        # The same client address is blocked for other usernames too.
        other = await client.post("/api/login", json={"username": "sta2", "password": PASSWORD})
        assert other.status_code == 429
        api.clock.value += 301
        ok = await client.post("/api/login", json={"username": "sta1", "password": PASSWORD})
        assert ok.status_code == 200


async def test_a_username_is_limited_across_client_addresses(api: Api) -> None:
    for attempt in range(5):
        async with api.anonymous(address=f"10.0.0.{attempt}") as client:
            bad = await client.post("/api/login", json={"username": "sta1", "password": "wrong pw"})
            assert bad.status_code == 401
    async with api.anonymous(address="10.0.0.99") as client:
        blocked = await client.post("/api/login", json={"username": "STA1 ", "password": PASSWORD})
        assert blocked.status_code == 429 and "too many failed logins" in blocked.json()["detail"]
        other = await client.post("/api/login", json={"username": "sta2", "password": PASSWORD})
        assert other.status_code == 200


async def test_accounts_are_created_within_permissions(api: Api) -> None:
    admin = await api.client("admin")
    inst1 = await api.client("inst1")
    body = {"username": "s3", "password": PASSWORD, "role": "station_operator", "site": "I01-S002"}
    assert (await inst1.post("/api/accounts", json=body)).status_code == 201
    outside = {**body, "username": "s4", "site": "I02-S001"}
    refused = await inst1.post("/api/accounts", json=outside)
    assert refused.status_code == 403 and "outside your institute I01" in refused.json()["detail"]
    promote = {**body, "username": "i9", "role": "institute_operator", "site": "I01"}
    assert (await inst1.post("/api/accounts", json=promote)).status_code == 403
    assert (await admin.post("/api/accounts", json=promote)).status_code == 201
    taken = await admin.post("/api/accounts", json=promote)
    assert taken.status_code == 422 and "taken" in taken.json()["detail"]
    for client in (admin, inst1):
        await client.aclose()


async def account_id(api: Api, username: str) -> int:
    for account in await api.auth.accounts.all():
        if account.username == username:
            return account.id
    raise AssertionError(f"no account {username}")


async def test_accounts_are_listed_within_reach(api: Api) -> None:
    admin, inst1, sta1 = [await api.client(name) for name in ("admin", "inst1", "sta1")]
    everyone = {a["username"] for a in (await admin.get("/api/accounts")).json()}
    assert everyone == set(USERS)
    # an institute: itself and its stations' operators
    mine = {a["username"] for a in (await inst1.get("/api/accounts")).json()}
    assert mine == {"inst1", "sta1", "sta2"}
    refused = await sta1.get("/api/accounts")
    assert refused.status_code == 403 and "cannot manage accounts" in refused.json()["detail"]
    for client in (admin, inst1, sta1):
        await client.aclose()


async def test_a_password_is_reset_by_who_manages_the_account_and_ends_its_logins(
    api: Api,
) -> None:
    inst1, inst2, sta1 = [await api.client(name) for name in ("inst1", "inst2", "sta1")]
    sta1_id = await account_id(api, "sta1")
    body = {"password": "a new password 1"}
    other = await inst2.post(f"/api/accounts/{sta1_id}/password", json=body)
    assert other.status_code == 403 and "outside your institute I02" in other.json()["detail"]
    weak = await inst1.post(f"/api/accounts/{sta1_id}/password", json={"password": "short"})
    assert weak.status_code == 422 and "at least 10" in weak.json()["detail"]
    admin_id = await account_id(api, "admin")
    up = await inst1.post(f"/api/accounts/{admin_id}/password", json=body)
    assert up.status_code == 403 and "only station operators" in up.json()["detail"]
    assert (await inst1.post("/api/accounts/9999/password", json=body)).status_code == 404
    assert (await inst1.post(f"/api/accounts/{sta1_id}/password", json=body)).status_code == 204
    assert (await sta1.get("/api/me")).status_code == 401  # its login ended
    async with api.anonymous() as fresh:
        old = await fresh.post("/api/login", json={"username": "sta1", "password": PASSWORD})
        assert old.status_code == 401
        new = await fresh.post("/api/login", json={"username": "sta1", **body})
        assert new.status_code == 200
    for client in (inst1, inst2, sta1):
        await client.aclose()


async def test_a_disabled_account_cannot_log_in_and_its_tokens_stop(api: Api) -> None:
    admin, inst1, sta2 = [await api.client(name) for name in ("admin", "inst1", "sta2")]
    token = (await sta2.post("/api/me/tokens", json={})).json()["token"]
    sta2_id = await account_id(api, "sta2")
    inst2_id = await account_id(api, "inst2")
    # an institute operator may not disable another institute or the center
    refused = await inst1.patch(f"/api/accounts/{inst2_id}", json={"disabled": True})
    assert refused.status_code == 403
    done = await inst1.patch(f"/api/accounts/{sta2_id}", json={"disabled": True})
    assert done.status_code == 200 and done.json()["disabled"] is True
    assert (await sta2.get("/api/me")).status_code == 401
    async with api.anonymous() as client:
        blocked = await client.post("/api/login", json={"username": "sta2", "password": PASSWORD})
        assert blocked.status_code == 403 and "disabled" in blocked.json()["detail"]
        client.headers["Authorization"] = f"Bearer {token}"
        assert (await client.get("/api/me")).status_code == 401
    own = await admin.patch(
        f"/api/accounts/{await account_id(api, 'admin')}", json={"disabled": True}
    )
    assert own.status_code == 403 and "your own account" in own.json()["detail"]
    again = await admin.patch(f"/api/accounts/{sta2_id}", json={"disabled": False})
    assert again.json()["disabled"] is False
    assert (await api.client("sta2")) is not None  # logs in again
    for client in (admin, inst1, sta2):
        await client.aclose()


async def test_operators_change_their_own_password(api: Api) -> None:
    sta1 = await api.client("sta1")
    other_login = await api.client("sta1")
    wrong = await sta1.post(
        "/api/me/password", json={"old_password": "not it at all", "new_password": "x" * 12}
    )
    assert wrong.status_code == 403 and "current password is wrong" in wrong.json()["detail"]
    weak = await sta1.post(
        "/api/me/password", json={"old_password": PASSWORD, "new_password": "short"}
    )
    assert weak.status_code == 422
    changed = await sta1.post(
        "/api/me/password", json={"old_password": PASSWORD, "new_password": "brand new pass"}
    )
    assert changed.status_code == 204
    assert (await sta1.get("/api/me")).status_code == 200  # this login stays
    assert (await other_login.get("/api/me")).status_code == 401  # the others end
    for client in (sta1, other_login):
        await client.aclose()


async def test_the_setup_status_says_whether_an_administrator_exists(engine: AsyncEngine) -> None:
    accounts = Accounts(engine, hasher=FAST_HASHER)
    auth = Auth(accounts)
    app = FastAPI()
    app.include_router(scheduler_router(auth, Sites(engine), Schedule(engine)))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/api/setup")).json() == {"admin_exists": False}
        await accounts.create("root", PASSWORD, Role.CENTER_ADMIN, None, await Sites(engine).tree())
        assert (await client.get("/api/setup")).json() == {"admin_exists": True}


async def test_only_the_center_loads_the_countys_tree(engine: AsyncEngine) -> None:
    accounts = Accounts(engine, hasher=FAST_HASHER)
    auth = Auth(accounts)
    app = FastAPI()
    app.include_router(scheduler_router(auth, Sites(engine), Schedule(engine)))
    await accounts.create("root", PASSWORD, Role.CENTER_ADMIN, None, SiteTree([]))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        login = await client.post("/api/login", json={"username": "root", "password": PASSWORD})
        client.headers["X-CSRF-Token"] = login.cookies[CSRF_COOKIE]
        assert (await client.post("/api/sites/seed")).json() == {"added": 191, "sites": 191}
        assert (await client.post("/api/sites/seed")).json() == {"added": 0, "sites": 191}
        tree = await Sites(engine).tree()
        await accounts.create("i1", PASSWORD, Role.INSTITUTE_OPERATOR, "I01", tree)
        login = await client.post("/api/login", json={"username": "i1", "password": PASSWORD})
        client.headers["X-CSRF-Token"] = login.cookies[CSRF_COOKIE]
        refused = await client.post("/api/sites/seed")
        assert refused.status_code == 403 and "only the center" in refused.json()["detail"]


async def test_concurrent_wrong_logins_cannot_race_the_limit(engine: AsyncEngine) -> None:
    """15 wrong passwords for one name at once: the attempts are counted before the
    (slow) checks, so only the limit's 5 are checked and the rest are refused at once."""
    await Accounts(engine, hasher=FAST_HASHER).create(
        "target", PASSWORD, Role.CENTER_ADMIN, None, SiteTree([])
    )
    accounts = Accounts(engine)  # production argon2: each check takes real time
    app = FastAPI()
    app.include_router(scheduler_router(Auth(accounts), Sites(engine), Schedule(engine)))
    tries = []
    for n in range(15):
        transport = httpx.ASGITransport(app=app, client=(f"10.1.0.{n}", 50000))
        tries.append(httpx.AsyncClient(transport=transport, base_url="http://test"))
    wrong = {"username": "target", "password": "not the password"}
    answers = await asyncio.gather(*(client.post("/api/login", json=wrong) for client in tries))
    codes = sorted(response.status_code for response in answers)
    assert codes == [401] * 5 + [429] * 10, codes
    for client in tries:
        await client.aclose()
