"""The data directory holds the token secret, password hashes and CSRF tokens (the
SQLite file): nobody but the hub's user may read any of it, at any moment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# Runs in its own interpreter: an audit hook cannot be removed once added. At every
# audited event (each open, chmod, rename, sqlite3.connect...) of the real app's
# start, it notes the mode of the data directory and of every file in it, so a file
# that is readable by others for a moment (write, then chmod) is seen in that moment.
WATCH = """
import asyncio, json, os, stat, sys
from pathlib import Path

os.umask(0o022)  # the usual umask: what is not created private ends up readable
data = Path(sys.argv[1]) / "data"
loose = {}  # name -> the first event at which it was open to others, and its mode
busy = False

def modes(event):
    try:
        found = [(".", os.stat(data).st_mode)]
        found += [(e.name, e.stat().st_mode) for e in os.scandir(data) if e.is_file()]
    except FileNotFoundError:
        return
    for name, mode in found:
        if stat.S_IMODE(mode) & 0o077:
            loose.setdefault(name, [event, oct(stat.S_IMODE(mode))])

def hook(event, args):
    global busy
    if busy:
        return
    busy = True
    try:
        modes(event)
    finally:
        busy = False

sys.addaudithook(hook)

from hub.settings import Settings
from web.app import create_app

async def start_and_stop():
    app = create_app(Settings(data_dir=data))
    async with app.router.lifespan_context(app):
        pass

asyncio.run(start_and_stop())
modes("end")
names = (".", "secret", "hub.sqlite3")
final = {name: oct(stat.S_IMODE(os.stat(data / name).st_mode)) for name in names}
print(json.dumps({"loose": loose, "final": final}))
"""


def test_the_data_dir_secret_and_database_are_private_from_the_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    env["HUB_ICE_GATHER_ADDRESSES"] = '["127.0.0.1"]'
    done = subprocess.run(
        [sys.executable, "-c", WATCH, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["final"] == {".": "0o700", "secret": "0o600", "hub.sqlite3": "0o600"}
    assert report["loose"] == {}


def test_the_generated_secret_is_the_same_for_every_process(tmp_path: Path) -> None:
    """Two processes starting at once on a fresh data dir agree on one secret."""
    from hub.settings import Settings

    script = (
        "import sys; from pathlib import Path; from hub.settings import Settings; "
        "print(Settings(data_dir=Path(sys.argv[1])).resolved_secret())"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path / "data")],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    secrets = {process.communicate(timeout=60)[0].strip() for process in processes}
    assert secrets == {Settings(data_dir=tmp_path / "data").resolved_secret()}
    assert len(secrets.pop()) >= 32
