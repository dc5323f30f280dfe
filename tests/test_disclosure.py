"""What a stranger learns without an account or a token: a room's household view,
node-wide figures, and nothing of who is where (issue 13, item 5)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from hub.client import HubClient
from scheduler.accounts import Accounts
from scheduler.permissions import Role
from scheduler.seed import load_seed
from scheduler.sites import Sites
from tests.helpers import wait_until
from tests.hubserver import RunningHub, running_hub
from tests.test_accounts import FAST_HASHER, PASSWORD

HOUSEHOLD_VIEW = {"name", "public", "live", "hls_url"}
"""What web/static/js/watch.js reads, and the name it asked for."""


async def test_anonymous_room_info_carries_only_what_the_household_page_needs(
    hub_server: RunningHub,
) -> None:
    center = HubClient(hub_server.ws, hub_server.token("info", "C", "center", name="市中心"))
    station = HubClient(
        hub_server.ws, hub_server.token("info", "I01-S001", "station", name="东湖村")
    )
    moderator = {"Authorization": f"Bearer {hub_server.token('info', 'C', 'center')}"}
    try:
        await center.connect()
        await station.connect()
        await station.send({"type": "hand", "raised": True})
        await center.wait_for(lambda m: m["type"] == "participant_updated")
        async with httpx.AsyncClient(base_url=hub_server.base) as http:
            anonymous = await http.get("/api/rooms/info")
            as_station = await http.get(
                "/api/rooms/info",
                headers={"Authorization": f"Bearer {hub_server.token('info', 'S', 'station')}"},
            )
            other_room = await http.get(
                "/api/rooms/info",
                headers={"Authorization": f"Bearer {hub_server.token('other', 'C', 'center')}"},
            )
            full = await http.get("/api/rooms/info", headers=moderator)
            forged = await http.get("/api/rooms/info", headers={"Authorization": "Bearer x.y.z"})
        for view in (anonymous, as_station, other_room):
            assert view.status_code == 200
            assert view.json() == {
                "name": "info",
                "public": False,
                "recording": False,  # households are told when it records
                "live": False,
                "hls_url": None,
            }
            assert "I01-S001" not in view.text and "东湖村" not in view.text
        # The console (a moderator of this room) still gets the whole room.
        assert full.status_code == 200
        info = full.json()
        assert set(info) > HOUSEHOLD_VIEW
        assert info["participants"] == 2 and len(info["hands"]) == 1
        assert [p["identity"] for p in info["stage"]] == ["C"]
        assert forged.status_code == 401
    finally:
        await station.close()
        await center.close()


async def test_metrics_without_a_token_setting_show_no_room_nor_identity(tmp_path: Path) -> None:
    """Node-wide figures for anyone; who is in which room, and their links, for no one."""
    async with running_hub(tmp_path, metrics_token=None) as hub:
        station = HubClient(hub.ws, hub.token("quiet-room", "I01-S001", "station"))
        try:
            await station.connect()
            async with httpx.AsyncClient(base_url=hub.base) as http:
                response = await http.get("/metrics")
            assert response.status_code == 200
            assert "practicehub_participants 1" in response.text
            assert "quiet-room" not in response.text and "I01-S001" not in response.text
            assert "identity=" not in response.text and "room=" not in response.text
        finally:
            await station.close()


async def test_metrics_with_a_token_setting_need_it_and_show_everything(tmp_path: Path) -> None:
    token = "metrics-token-0123456789"
    async with running_hub(tmp_path, metrics_token=token) as hub:
        station = HubClient(hub.ws, hub.token("watched", "I01-S001", "station"))
        try:
            await station.connect()
            async with httpx.AsyncClient(base_url=hub.base) as http:
                refused = [
                    await http.get("/metrics"),
                    await http.get("/metrics", headers={"Authorization": "Bearer wrong"}),
                    await http.get("/metrics", headers={"Authorization": token}),
                ]

                async def scraped() -> str | None:
                    response = await http.get(
                        "/metrics", headers={"Authorization": f"Bearer {token}"}
                    )
                    assert response.status_code == 200, response.text
                    labels = 'room="watched",identity="I01-S001"'
                    return None if labels in response.text else "no per-participant series"

                await wait_until(scraped)
            for response in refused:
                assert response.status_code == 401, response.text
                assert "practicehub" not in response.text
                assert response.headers["www-authenticate"] == "Bearer"
        finally:
            await station.close()


@pytest.mark.parametrize("path", ["/docs", "/openapi.json", "/redoc"])
async def test_the_api_docs_are_for_center_administrators(
    hub_server: RunningHub, path: str
) -> None:
    engine = hub_server.app.state.engine
    await load_seed(engine)
    accounts = Accounts(engine, hasher=FAST_HASHER)
    tree = await Sites(engine).tree()
    admin = await accounts.create("root", PASSWORD, Role.CENTER_ADMIN, None, tree)
    operator = await accounts.create("sta1", PASSWORD, Role.STATION_OPERATOR, "I01-S001", tree)
    as_admin = {"Authorization": f"Bearer {await accounts.create_api_token(admin)}"}
    as_operator = {"Authorization": f"Bearer {await accounts.create_api_token(operator)}"}
    async with httpx.AsyncClient(base_url=hub_server.base) as http:
        anonymous = await http.get(path)
        operator_sees = await http.get(path, headers=as_operator)
        admin_sees = await http.get(path, headers=as_admin)
    if path == "/redoc":  # not served at all
        assert [anonymous.status_code, operator_sees.status_code, admin_sees.status_code] == [
            404,
            404,
            404,
        ]
        return
    assert anonymous.status_code == 401, anonymous.text
    assert operator_sees.status_code == 403, operator_sees.text
    assert "/api/rooms/{name}" not in anonymous.text + operator_sees.text
    assert admin_sees.status_code == 200, admin_sees.text
    if path == "/openapi.json":
        assert "/api/rooms/{name}" in admin_sees.json()["paths"]
    else:
        assert "/openapi.json" in admin_sees.text and "/api/rooms/{name}" in admin_sees.text
