"""Every page of the app works under its Content-Security-Policy (no inline script or
style, nothing from elsewhere) and cannot be framed (issue 13, item 12).

The pages are found, not listed: every GET route of the app that answers HTML, and
every ``web/static/*.html`` no route serves (opened under ``/static/``)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
from fastapi.routing import iter_route_contexts

from hub.settings import Settings
from tests.browser.conftest import CHROMIUM_ARGS, HubProcess
from web.app import create_app
from web.pages import STATIC_DIR

ROOM = "csp-room"
SAMPLE_PARAMETERS = {"room": ROOM, "item_id": "0" * 32}
"""A value for each path parameter of a page route (anything else gets "x")."""

WATCH_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (e) => {
    window.__violations.push(`${e.violatedDirective} blocked ${e.blockedURI || "inline"}`
        + ` at ${e.sourceFile}:${e.lineNumber} (${e.sample})`);
});
"""


def page_paths(hub: HubProcess, data_dir: Path) -> dict[str, str]:
    """Path → the page it serves (the static file's name when it is one)."""
    app = create_app(Settings(data_dir=data_dir, secret="x" * 32))
    files = {f.name: f.read_bytes() for f in STATIC_DIR.glob("*.html")}
    pages: dict[str, str] = {}
    with httpx.Client(base_url=hub.base_url, timeout=10) as http:
        for route in iter_route_contexts(app.routes):
            if route.path is None or "GET" not in (route.methods or ()):
                continue
            names = re.findall(r"{(\w+)(?::\w+)?}", route.path)
            if ":path}" in route.path:
                continue  # the static files themselves
            path = route.path
            for name in names:
                path = path.replace(f"{{{name}}}", SAMPLE_PARAMETERS.get(name, "x"))
            with http.stream("GET", path) as response:
                if not response.headers.get("content-type", "").startswith("text/html"):
                    continue
                body = response.read()
            served = [name for name, content in files.items() if content == body]
            pages[path] = served[0] if served else path
    for name in files.keys() - set(pages.values()):
        pages[f"/static/{name}"] = name
    return pages


def test_every_page_runs_under_the_csp_and_refuses_framing(
    hub: HubProcess, playwright_instance: Any, chromium_path: str, tmp_path: Path
) -> None:
    pages = page_paths(hub, tmp_path / "routes")
    assert {"console.html", "station.html", "watch.html", "index.html"} <= set(pages.values())
    assert set(pages.values()) >= {f.name for f in STATIC_DIR.glob("*.html")}
    token = hub.token(ROOM, "C", "center", name="市中心")
    context = playwright_instance.chromium.launch_persistent_context(
        str(tmp_path / "profile"),
        executable_path=chromium_path,
        headless=True,
        args=CHROMIUM_ARGS,
    )
    found: dict[str, list[str]] = {}
    try:
        context.add_init_script(WATCH_VIOLATIONS)
        page = context.pages[0] if context.pages else context.new_page()
        refused: list[str] = []
        page.on(
            "console",
            lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None,
        )
        for path in sorted(pages):
            refused.clear()
            response = page.goto(f"{hub.base_url}{path}?token={token}")
            assert response is not None and response.status == 200, path
            headers = response.headers
            policy = headers.get("content-security-policy", "")
            assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy, path
            assert "unsafe-inline" not in policy and "unsafe-eval" not in policy, policy
            assert headers.get("x-content-type-options") == "nosniff", path
            assert headers.get("referrer-policy") == "no-referrer", path
            assert headers.get("x-frame-options") == "DENY", path
            time.sleep(2)  # the page's scripts run: join, fetch, open sockets
            violations = page.evaluate("window.__violations") + refused
            if violations:
                found[path] = violations
    finally:
        context.close()
    assert found == {}, found
