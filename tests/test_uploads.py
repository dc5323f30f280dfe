"""Bodies are refused before they are read, and counted while they stream (issue 13,
item 6): a cookie login without the CSRF header, an operator who may not import sites,
a chunked upload past its limit. Raw HTTP over a socket to a real hub, so the test sees
when the hub answers against how much of the body it was sent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from scheduler.accounts import CSRF_COOKIE, LOGIN_COOKIE, Accounts
from scheduler.permissions import Role
from scheduler.seed import load_seed
from scheduler.sites import Sites
from tests.hubserver import RunningHub, running_hub

PASSWORD = "upload-password-1"
BOUNDARY = "practicehub-boundary"
FILE_PART = (
    f"--{BOUNDARY}\r\n"
    'Content-Disposition: form-data; name="file"; filename="talk.mp4"\r\n'
    "Content-Type: video/mp4\r\n\r\n"
).encode()


async def logged_in(hub: RunningHub, username: str, role: Role, site: str | None) -> dict[str, str]:
    """The cookies of a fresh login of a new account."""
    engine = hub.app.state.engine
    await load_seed(engine)
    tree = await Sites(engine).tree()
    await Accounts(engine).create(username, PASSWORD, role, site, tree)
    async with httpx.AsyncClient(base_url=hub.base) as http:
        login = await http.post("/api/login", json={"username": username, "password": PASSWORD})
        assert login.status_code == 200, login.text
        return {LOGIN_COOKIE: login.cookies[LOGIN_COOKIE], CSRF_COOKIE: login.cookies[CSRF_COOKIE]}


@asynccontextmanager
async def raw_request(
    hub: RunningHub, path: str, headers: dict[str, str]
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    host, port = hub.base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
    await writer.drain()
    try:
        yield reader, writer
    finally:
        writer.close()


async def status_within(reader: asyncio.StreamReader, seconds: float) -> tuple[int, bytes]:
    """The status and what follows, if the hub answers within ``seconds``."""
    line = await asyncio.wait_for(reader.readline(), seconds)
    assert line.startswith(b"HTTP/1.1 "), line
    rest = await asyncio.wait_for(reader.read(4096), seconds)
    return int(line.split()[1]), rest


def cookie_header(cookies: dict[str, str]) -> str:
    return "; ".join(f"{name}={value}" for name, value in cookies.items())


async def test_a_cookie_upload_without_the_csrf_header_is_refused_before_its_body(
    hub_server: RunningHub,
) -> None:
    cookies = await logged_in(hub_server, "root", Role.CENTER_ADMIN, None)
    headers = {
        "Cookie": cookie_header(cookies),
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        "Content-Length": str(50 * 1024 * 1024),
    }
    async with raw_request(hub_server, "/api/library/uploads", headers) as (reader, writer):
        writer.write(f"--{BOUNDARY}\r\n".encode() + b"x" * 1024)
        await writer.drain()
        # 1 KB of 50 MB sent: the refusal comes now, not after the rest
        status, rest = await status_within(reader, 10)
    assert status == 403 and b"CSRF token missing" in rest


async def test_an_operator_who_may_not_import_is_refused_before_the_file(
    hub_server: RunningHub,
) -> None:
    cookies = await logged_in(hub_server, "sta1", Role.STATION_OPERATOR, "I01-S001")
    headers = {
        "Cookie": cookie_header(cookies),
        "X-CSRF-Token": cookies[CSRF_COOKIE],
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        "Content-Length": str(900 * 1024),
    }
    async with raw_request(hub_server, "/api/sites/import", headers) as (reader, writer):
        writer.write(f"--{BOUNDARY}\r\n".encode() + b"x" * 1024)
        await writer.drain()
        status, rest = await status_within(reader, 10)
    assert status == 403 and b"station operators cannot edit sites" in rest


async def send_then_wait(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, size: int, chunked: bool
) -> tuple[int, bytes]:
    """Stream ``size`` bytes of a body that never ends (chunked: no last chunk; else
    more is declared than sent) in 64 KiB pieces, then wait for the hub's answer: a hub
    that waited for the rest would never answer. Nothing more is written once the hub
    answers, so its answer is read before the socket closes."""
    piece = b"y" * 65536
    sent = 0
    while sent < size:
        data = (FILE_PART if sent == 0 else b"") + piece
        writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n" if chunked else data)
        try:
            await writer.drain()
        except ConnectionError:
            break
        sent += len(data)
    return await status_within(reader, 30)


async def test_an_upload_is_counted_while_it_streams_and_cut_off_at_the_limit(
    tmp_path: Path,
) -> None:
    limit = 1024 * 1024  # the smallest the setting takes; with framing, 2 MiB a body
    async with running_hub(tmp_path, max_upload_bytes=limit) as hub:
        cookies = await logged_in(hub, "root", Role.CENTER_ADMIN, None)
        headers = {
            "Cookie": cookie_header(cookies),
            "X-CSRF-Token": cookies[CSRF_COOKIE],
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
            "Transfer-Encoding": "chunked",  # no length to check before reading
        }
        async with raw_request(hub, "/api/library/uploads", headers) as (reader, writer):
            status, body = await send_then_wait(reader, writer, 3 * limit, chunked=True)
    assert status == 413 and b"larger than" in body, body
    uploads = hub.hub.settings.data_dir / "library" / "uploads"
    assert not uploads.exists() or all(f.stat().st_size <= limit for f in uploads.iterdir())


async def test_a_json_body_past_the_limit_is_refused(hub_server: RunningHub) -> None:
    json_type = {"Content-Type": "application/json"}
    declared = json_type | {"Content-Length": str(2 * 1024 * 1024)}
    async with raw_request(hub_server, "/api/login", declared) as (reader, _):
        status, body = await status_within(reader, 10)  # before a byte of it was sent
    assert status == 413 and b"larger than 1048576 bytes" in body
    chunked = json_type | {"Transfer-Encoding": "chunked"}
    async with raw_request(hub_server, "/api/login", chunked) as (reader, writer):
        status, body = await send_then_wait(reader, writer, 3 * 1024 * 1024, chunked=True)
    assert status == 413 and b"larger than 1048576 bytes" in body
