"""The pages router: every page and asset is served by the hub, nothing escapes
``web/static``, and no page loads anything from outside (intranets have no internet)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from web.pages import STATIC_DIR, pages_router, resolve_static


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.include_router(pages_router())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as c:
        yield c


@pytest.mark.parametrize(
    ("path", "marker"),
    [
        ("/", "/static/js/index.js"),
        ("/console", "/static/js/console.js"),
        ("/station", "/static/js/station.js"),
        ("/watch/lecture-1", "/static/js/watch.js"),
    ],
)
async def test_pages_are_served(client: httpx.AsyncClient, path: str, marker: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert marker in response.text


async def test_scripts_are_served_as_javascript(client: httpx.AsyncClient) -> None:
    response = await client.get("/static/js/protocol.js")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")


@pytest.mark.parametrize(
    "path",
    [
        "/static/../pages.py",
        "/static/%2e%2e/pages.py",
        "/static/js/%2e%2e/%2e%2e/pages.py",
        "/static/nope.js",
        "/static/js",
        "/static/",
    ],
)
async def test_nothing_outside_static(client: httpx.AsyncClient, path: str) -> None:
    assert (await client.get(path)).status_code == 404


def test_resolve_static_refuses_escapes(tmp_path: Path) -> None:
    (tmp_path / "a.js").write_text("x")
    outside = tmp_path.parent / "secret.txt"
    assert resolve_static("a.js", tmp_path) == (tmp_path / "a.js").resolve()
    assert resolve_static("../secret.txt", tmp_path) is None
    assert resolve_static(str(outside), tmp_path) is None
    assert resolve_static("a.js\x00", tmp_path) is None
    assert resolve_static("..\\secret.txt", tmp_path) is None


def test_no_external_resources() -> None:
    pattern = re.compile(r"""(?:src|href)\s*=\s*["'](?:https?:)?//""", re.I)
    imports = re.compile(r"""(?:import|from)\s*\(?\s*["'](?:https?:)?//""")
    for file in STATIC_DIR.rglob("*"):
        if file.suffix in {".html", ".js", ".css"}:
            text = file.read_text(encoding="utf-8")
            assert not pattern.search(text), f"{file.name} loads something from outside"
            assert not imports.search(text), f"{file.name} imports from outside"
            assert "url(http" not in text, f"{file.name} loads a remote asset"


def test_every_message_key_is_in_the_dictionaries() -> None:
    source = (STATIC_DIR / "js" / "i18n.js").read_text(encoding="utf-8")
    zh_block = source.split("const zh = {", 1)[1].split("\n};", 1)[0]
    en_block = source.split("const en = {", 1)[1].split("\n};", 1)[0]
    key = re.compile(r'^\s*"([a-zA-Z0-9_.]+)":', re.M)
    zh, en = set(key.findall(zh_block)), set(key.findall(en_block))
    assert zh == en
    used: set[str] = set()
    # the pages that use js/i18n.js (other pages keep their own dictionaries)
    for name in ("index.html", "console.html", "station.html", "watch.html"):
        text = (STATIC_DIR / name).read_text(encoding="utf-8")
        used |= set(re.findall(r'data-i18n="([^"]+)"', text))
        for spec in re.findall(r'data-i18n-attr="([^"]+)"', text):
            used |= {pair.split(":")[1] for pair in spec.split(";")}
    for name in ("index.js", "console.js", "station.js", "watch.js", "ui.js"):
        text = (STATIC_DIR / "js" / name).read_text(encoding="utf-8")
        used |= set(re.findall(r'\bt\(\s*"([a-zA-Z0-9_.]+)"', text))
    assert used - zh == set(), f"keys used but missing from the dictionaries: {used - zh}"
