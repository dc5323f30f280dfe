"""The browser code type-checks: JSDoc + ``// @ts-check`` under ``tsc --checkJs``.

Needs Node and the pinned TypeScript (``npm ci`` at the repo root).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.conftest import missing_service

ROOT = Path(__file__).resolve().parents[2]


def test_browser_code_typechecks() -> None:
    if shutil.which("node") is None or shutil.which("npx") is None:
        missing_service("no node/npx (apt-get install -y nodejs npm)")
    if not (ROOT / "node_modules" / "typescript").exists():
        missing_service("typescript not installed: run `npm ci` at the repository root")
    result = subprocess.run(
        ["npx", "--no-install", "tsc", "-p", "web/jsconfig.json", "--noEmit"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_script_is_checked() -> None:
    for script in (ROOT / "web" / "static" / "js").glob("*.js"):
        first = script.read_text(encoding="utf-8").splitlines()[0]
        assert first == "// @ts-check", f"{script.name} does not start with // @ts-check"
