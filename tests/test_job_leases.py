"""Library jobs shared by the nodes of a cluster (real PostgreSQL, real ffmpeg): each job
is processed exactly once, and a job whose node died is finished by another."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from media.jobs import JobRunner, JobStatus
from media.library import ItemStatus, Library, create_tables
from media.processing import Processor
from tests.helpers import wait_until
from tests.test_processing import ffmpeg_processes, job_status, make_recording, new_item

pytestmark = pytest.mark.postgres

LEASE = 2.0
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def h264_recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_recording(tmp_path_factory.mktemp("rec-h264"), "H264")


@pytest.fixture(scope="module")
def vp8_recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_recording(tmp_path_factory.mktemp("rec-vp8"), "VP8")


@pytest.fixture
async def schema_url(postgres_url: str) -> AsyncIterator[tuple[str, str]]:
    """A PostgreSQL schema of this test's own, as every node would share it."""
    schema = f"jobs_test_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(postgres_url)
    async with admin.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield postgres_url, schema
    finally:
        async with admin.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await admin.dispose()


def node_engine(schema_url: tuple[str, str]) -> AsyncEngine:
    url, schema = schema_url
    return create_async_engine(url, connect_args={"options": f"-csearch_path={schema}"})


def node_runner(engine: AsyncEngine, media: Path) -> JobRunner:
    library = Library(engine, media / "library")
    return JobRunner(
        engine, library, Processor(library.library_dir), poll_interval=0.1, lease=LEASE
    )


async def test_two_nodes_process_each_job_exactly_once(
    schema_url: tuple[str, str], tmp_path: Path, h264_recording: Path
) -> None:
    engines = [node_engine(schema_url) for _ in range(2)]
    await create_tables(engines[0])
    nodes = [node_runner(engine, tmp_path) for engine in engines]
    library = nodes[0].library
    jobs = [
        await nodes[0].submit(await new_item(library), "recording", [h264_recording])
        for _ in range(4)
    ]
    await nodes[0].start()
    try:
        # The second node starts while the first works: it must leave that job alone.
        await wait_until(lambda: job_status(nodes[0], jobs[0].id, JobStatus.RUNNING), timeout=30)
        await nodes[1].start()

        async def all_done() -> str | None:
            for job in jobs:
                if (waiting := await job_status(nodes[1], job.id, JobStatus.DONE)) is not None:
                    return waiting
            return None

        await wait_until(all_done, timeout=120)
    finally:
        for node in nodes:
            await node.close()
        for engine in engines:
            await engine.dispose()
    for job in jobs:
        done = await nodes[0].get(job.id)
        # One claim each: a second runner never took a job the first held.
        assert done is not None and done.attempts == 1
        item = await library.get(done.item_id)
        assert item is not None and item.status == ItemStatus.READY


NODE = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from sqlalchemy.ext.asyncio import create_async_engine
    from tests.test_job_leases import node_runner

    async def main() -> None:
        url, schema, media = sys.argv[1:4]
        engine = create_async_engine(url, connect_args={"options": f"-csearch_path={schema}"})
        runner = node_runner(engine, Path(media))
        await runner.start()
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)


async def test_a_job_on_a_killed_node_is_finished_by_another_once(
    schema_url: tuple[str, str], tmp_path: Path, vp8_recording: Path
) -> None:
    engine = node_engine(schema_url)
    await create_tables(engine)
    survivor = node_runner(engine, tmp_path)
    library = survivor.library
    item_id = await new_item(library)
    job = await survivor.submit(item_id, "recording", [vp8_recording], layout="composite")
    node = subprocess.Popen(  # noqa: ASYNC220 (a node of its own, killed below)
        [sys.executable, "-c", NODE, *schema_url, str(tmp_path)], cwd=ROOT
    )
    try:
        await wait_until(lambda: job_status(survivor, job.id, JobStatus.RUNNING), timeout=30)
        await wait_until(lambda: None if ffmpeg_processes(item_id) else "no ffmpeg", timeout=30)
        orphans = ffmpeg_processes(item_id)
        os.kill(node.pid, signal.SIGKILL)
        node.wait(timeout=10)
        # The dead node's ffmpeg loses its progress pipe and stops.
        await wait_until(
            lambda: None if not set(orphans) & set(ffmpeg_processes(item_id)) else "orphans",
            timeout=15,
        )
        await survivor.start()
        await wait_until(lambda: job_status(survivor, job.id, JobStatus.DONE), timeout=120)
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
        await survivor.close()
        await engine.dispose()
    done = await survivor.get(job.id)
    assert done is not None and done.attempts == 2
    item = await library.get(item_id)
    assert item is not None and item.status == ItemStatus.READY
    assert (library.library_dir / item_id / "index.m3u8").is_file()


async def test_an_idle_runner_wakes_for_a_lease_running_out(
    schema_url: tuple[str, str], tmp_path: Path, h264_recording: Path
) -> None:
    """A runner waiting for work notices a dead node's job within about its lease, not
    only at its next poll."""
    engine = node_engine(schema_url)
    await create_tables(engine)
    library = Library(engine, tmp_path / "library")
    runner = JobRunner(
        engine, library, Processor(library.library_dir), poll_interval=3600.0, lease=LEASE
    )
    item_id = await new_item(library)
    job = await runner.submit(item_id, "recording", [h264_recording])
    async with engine.begin() as conn:  # held by a node that dies at once
        await conn.execute(text("UPDATE library_jobs SET status = 'running', attempts = 1"))
    await runner.start()
    try:
        await wait_until(lambda: job_status(runner, job.id, JobStatus.DONE), timeout=30)
    finally:
        await runner.close()
        await engine.dispose()
