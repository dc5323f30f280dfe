"""The organisation tree: seed, queries, CSV import/export (SQLite and PostgreSQL).

Also home of the ``engine`` fixture the other scheduler suites import."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from scheduler.seed import load_seed
from scheduler.sites import CSV_HEADER, Site, SiteError, SiteKind, Sites, SiteTree, export_csv
from scheduler.tables import create_tables, drop_tables, metadata

ROOT = Path(__file__).resolve().parent.parent


_RESET: set[str] = set()
"""Databases whose scheduler tables this run has already dropped and recreated."""


@pytest.fixture(name="engine", params=["sqlite", "postgres"])
async def engine_fixture(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[AsyncEngine]:
    """The scheduler's tables on a fresh SQLite file or on the real PostgreSQL, emptied
    after each test so reruns start clean. PostgreSQL's tables are recreated once per
    run (a schema left by an older run is dropped), then only emptied: DDL is slow."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'scheduler.sqlite3'}"
    else:
        url = request.getfixturevalue("postgres_url")
    engine = create_async_engine(url)
    if url not in _RESET:
        await drop_tables(engine)
        _RESET.add(url)
    await create_tables(engine)
    yield engine
    async with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            await conn.execute(table.delete())
    await engine.dispose()


def small_tree() -> SiteTree:
    return SiteTree(
        [
            Site("C", "中心", SiteKind.CENTER, None),
            Site("I01", "城关街道所", SiteKind.INSTITUTE, "C", "城关街道"),
            Site("I01-S001", "文化路社区站", SiteKind.STATION, "I01", "城关街道"),
            Site("I01-S002", "张庄村站", SiteKind.STATION, "I01", "城关街道"),
            Site("I02", "柳林镇所", SiteKind.INSTITUTE, "C", "柳林镇"),
            Site("I02-S001", "李家庄村站", SiteKind.STATION, "I02", "柳林镇"),
        ]
    )


def test_tree_queries_subtree_ancestors_and_institute() -> None:
    tree = small_tree()
    assert tree.subtree("I01") == ["I01", "I01-S001", "I01-S002"]
    assert tree.subtree("C")[0] == "C" and len(tree.subtree("C")) == 6
    assert tree.subtree("I02-S001") == ["I02-S001"]
    assert tree.ancestors("I01-S002") == ["I01", "C"]
    assert tree.ancestors("C") == []
    assert tree.institute_of("I02-S001") == "I02"
    assert tree.institute_of("I01") == "I01"
    assert tree.institute_of("C") is None
    assert tree.is_within("I01-S001", "C") and not tree.is_within("I01-S001", "I02")
    with pytest.raises(KeyError):
        tree.subtree("nope")


async def test_seed_loads_the_county_idempotently(engine: AsyncEngine) -> None:
    assert await load_seed(engine) == 191
    tree = await Sites(engine).tree()
    kinds = Counter(site.kind for site in tree.all())
    assert kinds == {SiteKind.CENTER: 1, SiteKind.INSTITUTE: 14, SiteKind.STATION: 176}
    institutes = [s for s in tree.all() if s.kind is SiteKind.INSTITUTE]
    assert sum(s.name.endswith("街道新时代文明实践所") for s in institutes) == 5
    assert sum(s.region.endswith(("镇", "乡")) for s in institutes) == 9
    stations = [s for s in tree.all() if s.kind is SiteKind.STATION]
    assert sum("社区" in s.name for s in stations) == 10
    assert sum("村" in s.name for s in stations) == 166
    assert all(tree.get(s.parent or "").kind is SiteKind.INSTITUTE for s in stations)
    assert len({s.name for s in stations}) == 176

    # An edit made since the seed survives a second run, which adds nothing.
    edited = tree.get("I03-S001")
    await Sites(engine).upsert([Site(**{**edited.__dict__, "contact_phone": "110"})])
    assert await load_seed(engine) == 0
    assert (await Sites(engine).tree()).get("I03-S001").contact_phone == "110"


async def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m <args>`` in the project, off the event loop."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_seed_command_line(engine: AsyncEngine) -> None:
    url = engine.url.render_as_string(hide_password=False)
    for expected in ("191 sites added", "0 sites added"):
        done = await run_module("scheduler.seed", "--database-url", url)
        assert expected in done.stdout, done.stderr
    assert len(await Sites(engine).tree()) == 191


async def test_csv_export_is_excel_friendly_and_round_trips(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    await load_seed(engine)
    exported = export_csv(await Sites(engine).tree())
    assert exported.startswith(b"\xef\xbb\xbf")
    lines = exported.decode("utf-8-sig").splitlines()
    assert lines[0] == ",".join(CSV_HEADER)
    assert lines[1].startswith("C,清河县新时代文明实践中心,center,,")
    assert len(lines) == 192

    other = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'other.sqlite3'}")
    await create_tables(other)
    assert await Sites(other).import_csv(exported) == 191
    assert (await Sites(other).tree()).all() == (await Sites(engine).tree()).all()
    await other.dispose()


async def test_csv_import_updates_existing_sites(engine: AsyncEngine) -> None:
    await load_seed(engine)
    sites = Sites(engine)
    data = (
        ",".join(CSV_HEADER) + "\n"
        "I01-S001,文化路社区站(新),station,I01,城关街道,王芳,13900000000\n"
        "I01-S900,新建村站,station,I01,城关街道,,\n"
    ).encode()
    assert await sites.import_csv(data) == 2
    tree = await sites.tree()
    assert tree.get("I01-S001").contact_name == "王芳"
    assert tree.get("I01-S900").parent == "I01"
    assert len(tree) == 192


# Row 1 is the header, row 2 a valid change (proving all or nothing), the case from row 3.
BAD_IMPORTS = [
    ("unknown parent", "X1,某站,station,NOPE,,,\n", [(3, "X1: unknown parent NOPE")]),
    (
        "duplicate code",
        "X1,甲站,station,I01,,,\nX1,乙站,station,I01,,,\n",
        [(4, "duplicate code X1 (first on row 3)")],
    ),
    ("bad kind", "X1,某站,village,I01,,,\n", [(3, "X1: bad kind 'village'")]),
    ("cycle", "X1,甲,station,X2,,,\nX2,乙,station,X1,,,\n", [(3, "cycle: X1 → X2 → X1")]),
    (
        "existing site moved under its own station",
        "I01,城关街道所,institute,I01-S001,,,\n",
        [(2, "cycle: I01 → I01-S001 → I01")],  # the first row of the loop
    ),
    ("second center", "C2,另一个中心,center,,,,\n", [(3, "more than one center: C, C2")]),
    ("station without parent", "X1,某站,station,,,,\n", [(3, "X1: a station needs a parent")]),
    ("missing column", "X1,某站,station\n", [(3, "expected 7 columns, got 3")]),
    (
        "several problems at once",
        "X1,某站,village,I01,,,\nX2,某站,station,I01\n",
        [(3, "X1: bad kind 'village'"), (4, "expected 7 columns, got 4")],
    ),
]


@pytest.mark.parametrize(
    ("rows", "errors"), [c[1:] for c in BAD_IMPORTS], ids=[c[0] for c in BAD_IMPORTS]
)
async def test_csv_import_rejects_with_row_numbers_and_writes_nothing(
    engine: AsyncEngine, rows: str, errors: list[tuple[int, str]]
) -> None:
    await load_seed(engine)
    sites = Sites(engine)
    before = (await sites.tree()).all()
    data = (",".join(CSV_HEADER) + "\nI01-S001,改名站,station,I01,,,\n" + rows).encode()
    with pytest.raises(SiteError) as raised:
        await sites.import_csv(data)
    assert raised.value.errors == errors
    assert (await sites.tree()).all() == before


async def test_csv_import_rejects_a_wrong_header(engine: AsyncEngine) -> None:
    with pytest.raises(SiteError) as raised:
        await Sites(engine).import_csv("编码,名称\nC,中心\n".encode())
    assert raised.value.errors[0][0] == 1
    assert len(await Sites(engine).tree()) == 0


async def test_delete_only_leaves(engine: AsyncEngine) -> None:
    await load_seed(engine)
    sites = Sites(engine)
    with pytest.raises(SiteError, match="still has"):
        await sites.delete("I01")
    await sites.delete("I01-S001")
    assert "I01-S001" not in await sites.tree()
    with pytest.raises(KeyError):
        await sites.delete("I01-S001")
