"""Load the shipped county (1 center, 14 institutes, 176 stations; synthetic names).

    python -m scheduler.seed --database-url sqlite+aiosqlite:///data/hub.sqlite3

Idempotent: only sites whose code is missing are added, so edits made since survive."""

from __future__ import annotations

import argparse
import asyncio
from importlib.resources import files

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from scheduler.sites import Sites, parse_csv
from scheduler.tables import create_tables


def seed_csv() -> bytes:
    """The shipped seed file (package data)."""
    return files("scheduler").joinpath("seed_sites.csv").read_bytes()


async def load_seed(engine: AsyncEngine) -> int:
    """Create the tables and add the seed sites that are missing; how many were added."""
    await create_tables(engine)
    return await load_seed_into(Sites(engine))


async def load_seed_into(sites: Sites) -> int:
    """Add the seed sites missing from ``sites``; how many were added."""
    parsed, rows = parse_csv(seed_csv())
    return await sites.add_missing(parsed, rows)


async def _main(database_url: str) -> None:
    engine = create_async_engine(database_url)
    try:
        added = await load_seed(engine)
    finally:
        await engine.dispose()
    print(f"seed: {added} sites added")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m scheduler.seed", description=__doc__)
    parser.add_argument("--database-url", required=True, help="async SQLAlchemy URL")
    args = parser.parse_args(argv)
    asyncio.run(_main(args.database_url))


if __name__ == "__main__":
    main()
