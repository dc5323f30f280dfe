"""The library pages' router: its pages, the assets they load, and ids refused."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from web.library_pages import library_pages_router
from web.pages import pages_router


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.include_router(library_pages_router())
    app.include_router(pages_router())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
        yield client


async def test_pages_and_every_asset_they_load_are_served_by_the_hub(
    http: httpx.AsyncClient,
) -> None:
    for path in ("/library", f"/replay/{'0' * 32}"):
        page = await http.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.headers["cache-control"] == "no-cache"
        assets = re.findall(r'(?:href|src)="(/static/[^"]+)"|from "(/static/[^"]+)"', page.text)
        urls = {a or b for a, b in assets}
        assert {"/static/css/library.css", "/static/css/app.css"} <= urls
        assert any(url.endswith(("library-page.js", "replay.js")) for url in urls)
        for url in urls:
            assert (await http.get(url)).status_code == 200, url
        assert "http://" not in page.text and "https://" not in page.text  # no CDN


async def test_replay_refuses_what_cannot_be_an_item_id(http: httpx.AsyncClient) -> None:
    for bad in ("nope", "0" * 31, "0" * 33, "A" * 32):
        assert (await http.get(f"/replay/{bad}")).status_code == 404, bad
