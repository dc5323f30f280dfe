"""``practice-hub admin create``: the first center administrator, made on the hub's
machine. The password comes from ``HUB_ADMIN_PASSWORD`` or is asked for on the
terminal (a real pseudo-terminal here), never from an argument."""

from __future__ import annotations

import asyncio
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from scheduler.accounts import Accounts
from scheduler.permissions import Role
from tests.test_sites import ROOT, engine_fixture  # noqa: F401  (fixture import)

PASSWORD = "county-admin-2026"


def admin_create(
    username: str, env: dict[str, str], data_dir: Path | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "hub", "admin", "create", "--username", username]
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir)]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    return subprocess.run(
        argv,
        cwd=ROOT,
        env=clean | env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_creates_an_administrator_from_the_environment(engine: AsyncEngine) -> None:
    url = engine.url.render_as_string(hide_password=False)
    env = {"HUB_DATABASE_URL": url, "HUB_ADMIN_PASSWORD": PASSWORD}
    done = admin_create("chief", env)
    assert done.returncode == 0, done.stderr
    assert "created center administrator chief" in done.stdout
    account = await Accounts(engine).authenticate("chief", PASSWORD)
    assert account is not None and account.role is Role.CENTER_ADMIN and account.site is None

    again = admin_create("chief", env)
    assert again.returncode == 2 and "username chief is taken" in again.stderr


def test_refuses_a_weak_password_and_creates_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    weak = admin_create("chief", {"HUB_ADMIN_PASSWORD": "123456789"}, data)
    assert weak.returncode == 2
    assert "password must be at least 10 characters" in weak.stderr
    assert not (data / "hub.sqlite3").exists()


def test_the_password_is_never_an_argument(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "hub", "admin", "create", "--username", "x", "--password", "y"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unrecognized arguments: --password" in done.stderr


def test_without_the_variable_or_a_terminal_it_says_what_to_do(tmp_path: Path) -> None:
    done = admin_create("chief", {}, tmp_path / "data")
    assert done.returncode == 2
    assert "set HUB_ADMIN_PASSWORD or run this on a terminal" in done.stderr


def _talk(fd: int, until: bytes, timeout: float = 30.0) -> bytes:
    """Read the terminal until ``until`` appears."""
    seen = b""
    deadline = time.monotonic() + timeout
    while until not in seen:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"terminal never said {until!r}; it said {seen!r}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                chunk = os.read(fd, 1024)
            except OSError:  # the child closed the terminal
                break
            seen += chunk
    return seen


def test_asks_for_the_password_twice_on_the_terminal(tmp_path: Path) -> None:
    data = tmp_path / "data"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    pid, fd = pty.fork()
    if pid == 0:  # the child: the command on a real terminal
        os.chdir(ROOT)
        argv = [sys.executable, "-m", "hub", "admin", "create", "--username", "chief"]
        os.execve(sys.executable, [*argv, "--data-dir", str(data)], clean)
    try:
        _talk(fd, b"password for chief: ")
        os.write(fd, PASSWORD.encode() + b"\n")
        _talk(fd, b"again: ")
        os.write(fd, PASSWORD.encode() + b"\n")
        said = _talk(fd, b"created center administrator chief")
        assert PASSWORD.encode() not in said  # not echoed
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0

    async def check() -> None:
        engine = create_async_engine(f"sqlite+aiosqlite:///{data / 'hub.sqlite3'}")
        try:
            assert await Accounts(engine).authenticate("chief", PASSWORD) is not None
        finally:
            await engine.dispose()

    asyncio.run(check())


@pytest.mark.parametrize("second", ["a different one", ""])
def test_two_different_answers_create_nothing(tmp_path: Path, second: str) -> None:
    data = tmp_path / "data"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(ROOT)
        argv = [sys.executable, "-m", "hub", "admin", "create", "--username", "chief"]
        os.execve(sys.executable, [*argv, "--data-dir", str(data)], clean)
    try:
        _talk(fd, b"password for chief: ")
        os.write(fd, PASSWORD.encode() + b"\n")
        _talk(fd, b"again: ")
        os.write(fd, second.encode() + b"\n")
        said = _talk(fd, b"the two passwords differ")
        assert b"created" not in said
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 2
    assert not (data / "hub.sqlite3").exists()
