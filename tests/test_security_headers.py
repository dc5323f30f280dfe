"""The security headers (web/security_headers.py) on every kind of answer, and a
Host header that cannot write into the policy."""

from __future__ import annotations

import httpx
import pytest

from tests.hubserver import RunningHub
from web.security_headers import policy_for


@pytest.mark.parametrize("path", ["/healthz", "/api/rooms/nowhere", "/static/css/app.css"])
async def test_every_answer_carries_the_headers(hub_server: RunningHub, path: str) -> None:
    async with httpx.AsyncClient(base_url=hub_server.base) as http:
        response = await http.get(path)
    policy = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "default-src 'self'" in policy
    host = hub_server.base.removeprefix("http://")
    assert policy.endswith(f"connect-src 'self' ws://{host} wss://{host}")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize(
    "host", ["evil.example; script-src *", "a b", "x\r\ny", "", "[::1", "hub:99999999"]
)
def test_a_strange_host_header_adds_no_source(host: str) -> None:
    assert policy_for(host).endswith("connect-src 'self'")


@pytest.mark.parametrize("host", ["10.0.0.4:8443", "hub.county.local", "[::1]:8080"])
def test_the_hub_s_own_host_is_a_websocket_source(host: str) -> None:
    assert policy_for(host).endswith(f"connect-src 'self' ws://{host} wss://{host}")


def test_a_cluster_page_may_connect_to_the_other_nodes() -> None:
    policy = policy_for(
        "127.0.0.1:8080",
        ["https://hub.county.lan/node/hub-2", "http://10.0.0.6:8080", "javascript:alert(1)"],
    )
    assert policy.endswith(
        "connect-src 'self' ws://127.0.0.1:8080 wss://127.0.0.1:8080"
        " https://hub.county.lan wss://hub.county.lan http://10.0.0.6:8080 ws://10.0.0.6:8080"
    )
