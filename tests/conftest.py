"""Shared fixtures: the real services this machine kind provides.

Without a service (a laptop) the tests that need it skip with the reason; under
``CI=true`` that skip becomes a failure, because CI must run them for real.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator

import pytest

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
POSTGRES_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
CHROMIUM = os.environ.get("TEST_CHROMIUM", "/usr/bin/chromium")


def missing_service(reason: str) -> None:
    """Skip on a laptop, fail on CI: a CI run must never silently skip real services."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"required under CI=true: {reason}")
    pytest.skip(reason)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def redis_url() -> Iterator[str]:
    if not _port_open("127.0.0.1", 6379):
        missing_service("no Redis on 127.0.0.1:6379")
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    client.close()
    yield REDIS_URL
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    client.close()


@pytest.fixture
def postgres_url() -> str:
    if not _port_open("127.0.0.1", 5432):
        missing_service("no PostgreSQL on 127.0.0.1:5432")
    return POSTGRES_URL


@pytest.fixture
def chromium_path() -> str:
    if shutil.which(CHROMIUM) is None and not os.path.exists(CHROMIUM):
        missing_service(f"no chromium at {CHROMIUM} (apt-get install -y chromium)")
    return CHROMIUM


@pytest.fixture
async def hub_server(tmp_path):  # type: ignore[no-untyped-def]
    from tests.hubserver import running_hub

    async with running_hub(tmp_path) as running:
        yield running
