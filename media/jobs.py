"""The durable queue of library processing jobs and the worker that runs them.

Jobs are rows (``library_jobs``), so they survive a restart: ``start()`` puts jobs left
``running`` by a previous process back in the queue. A failed attempt is retried after an
exponential backoff until ``max_attempts``; then the job is ``failed`` with the error kept
and the item is marked failed. Nothing fails silently: every error is stored and logged.

One worker by default (processing is CPU- and disk-heavy on a 2-core machine). The runner
owns its worker tasks. ``close()`` cancels only the processing (which kills ffmpeg), never
a database write: a write cut short can leave SQLite locked. The interrupted job goes back
to the queue without counting the attempt.

In a cluster sharing PostgreSQL, claiming is safe (a conditional UPDATE), but ``start()``
requeues every running job: start one node's runner at a time, or give only one node a runner.
"""

from __future__ import annotations

import asyncio
import enum
import json
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

CLOSE_TIMEOUT = 30.0
"""Seconds ``close()`` waits for workers to finish their last database write."""


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
    """The uploaded file (deleted once processed), or the recording's directories
    (a JSON list, one per part; a single path from an older hub is one part)."""
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


def job_sources(job: Job) -> list[Path]:
    """What a job processes: the uploaded file, or the recording's parts in order."""
    if job.kind == "recording" and job.source.startswith("["):
        return [Path(p) for p in json.loads(job.source)]
    return [Path(job.source)]


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
        progress_interval: float = 0.5,
    ) -> None:
        """``backoff`` seconds before the first retry, doubling after each failure;
        ``poll_interval`` bounds how late a job queued by another node is noticed;
        progress is written at most every ``progress_interval`` seconds."""
        self.engine = engine
        self.library = library
        self.processor = processor
        self.workers = workers
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.poll_interval = poll_interval
        self.progress_interval = progress_interval
        self._closing = False
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._processing: dict[str, asyncio.Task[float]] = {}
        """The running processing of each item: what ``close()`` and ``discard()`` cancel."""

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
        self._closing = False
        self._tasks = [
            asyncio.create_task(self._work(), name=f"library-worker-{n}")
            for n in range(self.workers)
        ]

    async def close(self) -> None:
        """Stop the workers; an interrupted job goes back to the queue, its attempt uncounted.

        A worker stuck past ``CLOSE_TIMEOUT`` (a database that does not answer) is cancelled.
        """
        self._closing = True
        self._wake.set()
        for processing in self._processing.values():
            processing.cancel()
        tasks, self._tasks = self._tasks, []
        if not tasks:
            return
        _, stuck = await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT)
        for task in stuck:
            log.error("library job worker did not stop within %.0fs: cancelled", CLOSE_TIMEOUT)
            task.cancel()
        for task in tasks:
            with suppress(asyncio.CancelledError):
                await task

    async def submit(
        self, item_id: str, kind: JobKind, sources: list[Path], layout: Layout = "lecturer"
    ) -> Job:
        """Queue the processing of an uploaded file, or of a recording (its parts'
        directories, in order), for an item."""
        source = json.dumps([str(p) for p in sources]) if kind == "recording" else str(sources[0])
        now = time.time()
        job_id = new_id()
        async with self.engine.begin() as conn:
            await conn.execute(
                jobs_table.insert().values(
                    id=job_id,
                    item_id=item_id,
                    kind=kind,
                    source=source,
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

    async def recording_sources(self) -> set[Path]:
        """Every recording directory a job has been given (resolved paths)."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(jobs_table).where(jobs_table.c.kind == "recording"))
            return {p.resolve() for row in rows for p in job_sources(_job(row))}

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
        processing = self._processing.get(item_id)
        if processing is not None:
            processing.cancel()
            await asyncio.wait([processing])

    async def _work(self) -> None:
        while not self._closing:
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
            if self._closing:
                break
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
        """One attempt: process while writing progress, then record how it ended."""
        latest = written = 0.0

        async def progress(percent: float) -> None:
            nonlocal latest
            latest = percent

        processing = asyncio.create_task(
            self.processor.process(job.item_id, job.kind, job_sources(job), job.layout, progress),
            name=f"library-job-{job.id}",
        )
        self._processing[job.item_id] = processing
        if self._closing:  # close() came while this job was being claimed
            processing.cancel()
        try:
            while not processing.done():
                await asyncio.wait([processing], timeout=self.progress_interval)
                if latest - written >= 1.0 and not processing.done():
                    written = latest
                    await self._update(job.id, progress=round(latest, 1))
        finally:
            if not processing.done():  # a progress write failed: no orphan ffmpeg
                processing.cancel()
                await asyncio.wait([processing])
            del self._processing[job.item_id]
        if processing.cancelled():
            await self._interrupted(job)
        elif (error := processing.exception()) is not None:
            await self._failed(job, f"{type(error).__name__}: {error}")
        else:
            await self._done(job, processing.result())

    async def _interrupted(self, job: Job) -> None:
        """Stopped by close() (requeued, not the job's fault) or by discard() (row gone)."""
        await self._update(
            job.id,
            _only_if=JobStatus.RUNNING,
            status=JobStatus.QUEUED.value,
            attempts=jobs_table.c.attempts - 1,
            progress=0.0,
        )

    async def _done(self, job: Job, duration: float) -> None:
        # The item first: whoever sees the job done finds the item ready.
        await self.library.mark_ready(job.item_id, duration)
        await self._update(job.id, status=JobStatus.DONE.value, progress=100.0, error=None)
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
            await self.library.mark_failed(job.item_id)
            await self._update(job.id, status=JobStatus.FAILED.value, error=error)

    async def _update(self, job_id: str, _only_if: JobStatus | None = None, **values: Any) -> None:
        where = [jobs_table.c.id == job_id]
        if _only_if is not None:
            where.append(jobs_table.c.status == _only_if.value)
        async with self.engine.begin() as conn:
            await conn.execute(
                jobs_table.update().where(*where).values(updated_at=time.time(), **values)
            )
