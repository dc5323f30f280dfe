"""The durable queue of library processing jobs and the worker that runs them.

Jobs are rows (``library_jobs``), so they survive a restart: ``start()`` puts jobs left
``running`` by a previous process back in the queue. A failed attempt is retried after an
exponential backoff until ``max_attempts``; then the job is ``failed`` with the error kept
and the item is marked failed. Nothing fails silently: every error is stored and logged.

One worker by default (processing is CPU- and disk-heavy on a 2-core machine). The runner
owns its worker tasks: ``close()`` cancels them, kills ffmpeg and requeues the interrupted
job without counting the attempt.

In a cluster sharing PostgreSQL, claiming is safe (a conditional UPDATE), but ``start()``
requeues every running job: start one node's runner at a time, or give only one node a runner.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from media.library import Library, jobs_table, new_id
from media.processing import JobKind, Layout, Processor

log = logging.getLogger(__name__)


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    item_id: str
    kind: JobKind
    source: str
    """The recording directory, or the uploaded file (deleted once processed)."""
    layout: Layout
    status: JobStatus
    attempts: int
    """Attempts started so far (an attempt interrupted by ``close()`` is not counted)."""
    max_attempts: int
    progress: float
    """Percent of the current attempt, 0 to 100."""
    error: str | None
    """The last attempt's error, kept while retrying and when failed."""
    run_after: float
    """``time.time()`` before which a queued job waits (the retry backoff)."""
    created_at: float
    updated_at: float


def _job(row: sa.Row[Any]) -> Job:
    m = dict(row._mapping)
    m["status"] = JobStatus(m["status"])
    return Job(**m)


class JobRunner:
    """Queue (``submit``) and run library jobs with ``workers`` concurrent tasks."""

    def __init__(
        self,
        engine: AsyncEngine,
        library: Library,
        processor: Processor,
        *,
        workers: int = 1,
        max_attempts: int = 3,
        backoff: float = 30.0,
        poll_interval: float = 5.0,
    ) -> None:
        """``backoff`` seconds before the first retry, doubling after each failure;
        ``poll_interval`` bounds how late a job queued by another node is noticed."""
        self.engine = engine
        self.library = library
        self.processor = processor
        self.workers = workers
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.poll_interval = poll_interval
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._attempts: dict[str, asyncio.Task[None]] = {}
        """The running attempt of each item, so deleting an item can stop it."""

    async def start(self) -> None:
        """Requeue jobs a previous process left running, then start the workers."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                jobs_table.update()
                .where(jobs_table.c.status == JobStatus.RUNNING.value)
                .values(status=JobStatus.QUEUED.value, progress=0.0, updated_at=time.time())
            )
        if result.rowcount:
            log.warning("requeued %d interrupted library job(s)", result.rowcount)
        self._tasks = [
            asyncio.create_task(self._work(), name=f"library-worker-{n}")
            for n in range(self.workers)
        ]

    async def close(self) -> None:
        """Stop the workers; an interrupted job goes back to the queue."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with suppress(asyncio.CancelledError):
                await task

    async def submit(
        self, item_id: str, kind: JobKind, source: Path, layout: Layout = "lecturer"
    ) -> Job:
        """Queue the processing of a recording directory or an uploaded file for an item."""
        now = time.time()
        job_id = new_id()
        async with self.engine.begin() as conn:
            await conn.execute(
                jobs_table.insert().values(
                    id=job_id,
                    item_id=item_id,
                    kind=kind,
                    source=str(source),
                    layout=layout,
                    status=JobStatus.QUEUED.value,
                    attempts=0,
                    max_attempts=self.max_attempts,
                    progress=0.0,
                    error=None,
                    run_after=now,
                    created_at=now,
                    updated_at=now,
                )
            )
        self._wake.set()
        job = await self.get(job_id)
        assert job is not None
        return job

    async def get(self, job_id: str) -> Job | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(jobs_table.select().where(jobs_table.c.id == job_id))).first()
        return None if row is None else _job(row)

    async def latest_for_item(self, item_id: str) -> Job | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    jobs_table.select()
                    .where(jobs_table.c.item_id == item_id)
                    .order_by(jobs_table.c.created_at.desc())
                    .limit(1)
                )
            ).first()
        return None if row is None else _job(row)

    async def discard(self, item_id: str) -> None:
        """Forget an item's jobs and stop its running attempt (before deleting the item)."""
        async with self.engine.begin() as conn:
            await conn.execute(jobs_table.delete().where(jobs_table.c.item_id == item_id))
        attempt = self._attempts.get(item_id)
        if attempt is not None:
            attempt.cancel()
            await asyncio.wait([attempt])

    async def _work(self) -> None:
        while True:
            self._wake.clear()
            try:
                job = await self._claim()
                if job is not None:
                    await self._run(job)
                    continue
                idle = await self._idle_time()
            except Exception:
                # The database is away (a PostgreSQL restart): say so, keep the worker alive.
                log.exception("library job worker: database error, retrying")
                idle = self.poll_interval
            with suppress(TimeoutError):
                async with asyncio.timeout(idle):
                    await self._wake.wait()

    async def _idle_time(self) -> float:
        """Until the next retry is due, at most ``poll_interval``."""
        async with self.engine.connect() as conn:
            due = (
                await conn.execute(
                    sa.select(sa.func.min(jobs_table.c.run_after)).where(
                        jobs_table.c.status == JobStatus.QUEUED.value
                    )
                )
            ).scalar_one()
        if due is None:
            return self.poll_interval
        return max(0.01, min(self.poll_interval, float(due) - time.time()))

    async def _claim(self) -> Job | None:
        """Take the oldest due queued job; a conditional UPDATE so two workers never share one."""
        t = jobs_table
        while True:
            now = time.time()
            async with self.engine.begin() as conn:
                job_id = (
                    await conn.execute(
                        sa.select(t.c.id)
                        .where(t.c.status == JobStatus.QUEUED.value, t.c.run_after <= now)
                        .order_by(t.c.created_at)
                        .limit(1)
                    )
                ).scalar_one_or_none()
                if job_id is None:
                    return None
                taken = await conn.execute(
                    t.update()
                    .where(t.c.id == job_id, t.c.status == JobStatus.QUEUED.value)
                    .values(
                        status=JobStatus.RUNNING.value,
                        attempts=t.c.attempts + 1,
                        progress=0.0,
                        updated_at=now,
                    )
                )
            if taken.rowcount == 1:
                return await self.get(job_id)

    async def _run(self, job: Job) -> None:
        attempt = asyncio.create_task(self._attempt(job), name=f"library-job-{job.id}")
        self._attempts[job.item_id] = attempt
        try:
            await attempt
        except asyncio.CancelledError:
            this = asyncio.current_task()
            if this is not None and this.cancelling():
                # close(): not the job's fault, so the attempt does not count.
                await self._update(
                    job.id,
                    status=JobStatus.QUEUED.value,
                    attempts=jobs_table.c.attempts - 1,
                    progress=0.0,
                )
                raise
            # Otherwise discard() stopped it: the item is being deleted.
        finally:
            del self._attempts[job.item_id]

    async def _attempt(self, job: Job) -> None:
        reported = 0.0

        async def progress(percent: float) -> None:
            nonlocal reported
            # A row update per whole percent at most: ffmpeg reports twice a second.
            if percent - reported >= 1.0 or (percent >= 100.0 > reported):
                reported = percent
                await self._update(job.id, progress=round(percent, 1))

        try:
            duration = await self.processor.process(
                job.item_id, job.kind, Path(job.source), job.layout, progress
            )
        except Exception as e:
            await self._failed(job, f"{type(e).__name__}: {e}")
            return
        await self._update(job.id, status=JobStatus.DONE.value, progress=100.0, error=None)
        await self.library.mark_ready(job.item_id, duration)
        if job.kind == "upload":
            await asyncio.to_thread(Path(job.source).unlink, missing_ok=True)

    async def _failed(self, job: Job, error: str) -> None:
        if job.attempts < job.max_attempts:
            delay = self.backoff * 2 ** (job.attempts - 1)
            log.warning(
                "library job %s attempt %d/%d failed, retry in %.1fs: %s",
                job.id, job.attempts, job.max_attempts, delay, error,
            )  # fmt: skip
            await self._update(
                job.id, status=JobStatus.QUEUED.value, error=error, run_after=time.time() + delay
            )
        else:
            log.error("library job %s failed after %d attempts: %s", job.id, job.attempts, error)
            await self._update(job.id, status=JobStatus.FAILED.value, error=error)
            await self.library.mark_failed(job.item_id)

    async def _update(self, job_id: str, **values: Any) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                jobs_table.update()
                .where(jobs_table.c.id == job_id)
                .values(updated_at=time.time(), **values)
            )
