"""The durable queue of library processing jobs and the worker that runs them.

Jobs are rows (``library_jobs``), so they survive a restart. A running job is held by a
lease: its runner renews it (``updated_at``) while it works, and a job whose lease ran
out (its process or its whole node died) is taken by whichever runner claims it next,
on any node sharing the database. The attempt count fences the claim: a runner whose
job was taken writes nothing more to it and stops its processing. A failed attempt is
retried after an exponential backoff until ``max_attempts``; then the job is ``failed``
with the error kept and the item is marked failed. Nothing fails silently: every error
is stored and logged.

One worker by default (processing is CPU- and disk-heavy on a 2-core machine). The runner
owns its worker tasks. ``close()`` cancels only the processing (which kills ffmpeg), never
a database write: a write cut short can leave SQLite locked. The interrupted job goes back
to the queue without counting the attempt.

In a cluster sharing PostgreSQL (and the media directory, ``HUB_MEDIA_DIR``) every node may
run a runner: claiming is a conditional UPDATE, so a job is processed by one runner at a time.
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
LEASE = 30.0
"""Seconds a running job stays its runner's without a renewal (renewed every third of it)."""


class LeaseLost(Exception):
    """Another runner took the job (this one was thought dead): stop, write nothing."""


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
        lease: float = LEASE,
    ) -> None:
        """``backoff`` seconds before the first retry, doubling after each failure;
        ``poll_interval`` bounds how late a job queued by another node is noticed;
        progress is written at most every ``progress_interval`` seconds; a running job
        not renewed for ``lease`` seconds is taken by another runner."""
        self.engine = engine
        self.library = library
        self.processor = processor
        self.workers = workers
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.poll_interval = poll_interval
        self.progress_interval = progress_interval
        self.lease = lease
        self._closing = False
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._processing: dict[str, asyncio.Task[float]] = {}
        """The running processing of each item: what ``close()`` and ``discard()`` cancel."""

    async def start(self) -> None:
        """Start the workers. Jobs a dead process left running are taken once their
        lease runs out."""
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
        """Until the next retry is due or a running job's lease runs out, at most
        ``poll_interval``."""
        t = jobs_table
        async with self.engine.connect() as conn:
            retry, renewed = (
                await conn.execute(
                    sa.select(
                        sa.func.min(t.c.run_after).filter(t.c.status == JobStatus.QUEUED.value),
                        sa.func.min(t.c.updated_at).filter(t.c.status == JobStatus.RUNNING.value),
                    )
                )
            ).one()
        due = [float(retry)] if retry is not None else []
        if renewed is not None:
            due.append(float(renewed) + self.lease)
        if not due:
            return self.poll_interval
        return max(0.01, min(self.poll_interval, min(due) - time.time()))

    def _claimable(self, now: float) -> sa.ColumnElement[bool]:
        """A due queued job, or a running one whose runner stopped renewing its lease."""
        t = jobs_table
        return sa.or_(
            sa.and_(t.c.status == JobStatus.QUEUED.value, t.c.run_after <= now),
            sa.and_(t.c.status == JobStatus.RUNNING.value, t.c.updated_at <= now - self.lease),
        )

    async def _claim(self) -> Job | None:
        """Take the oldest claimable job; a conditional UPDATE (on the attempt count seen)
        so two runners never share one."""
        t = jobs_table
        while True:
            now = time.time()
            async with self.engine.begin() as conn:
                found = (
                    await conn.execute(
                        sa.select(t.c.id, t.c.status, t.c.attempts)
                        .where(self._claimable(now))
                        .order_by(t.c.created_at)
                        .limit(1)
                    )
                ).first()
                if found is None:
                    return None
                if found.status == JobStatus.RUNNING.value:
                    log.warning("library job %s: its runner stopped, taking it over", found.id)
                taken = await conn.execute(
                    t.update()
                    .where(
                        t.c.id == found.id,
                        t.c.attempts == found.attempts,
                        self._claimable(now),
                    )
                    .values(
                        status=JobStatus.RUNNING.value,
                        attempts=t.c.attempts + 1,
                        progress=0.0,
                        updated_at=now,
                    )
                )
            if taken.rowcount == 1:
                return await self.get(found.id)

    async def _run(self, job: Job) -> None:
        """One attempt: process while renewing the lease and writing progress, then
        record how it ended."""
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
        renewed = time.monotonic()
        try:
            while not processing.done():
                await asyncio.wait([processing], timeout=self.progress_interval)
                if processing.done():
                    break
                if latest - written >= 1.0 or time.monotonic() - renewed >= self.lease / 3:
                    written, renewed = latest, time.monotonic()
                    if not await self._held(job, progress=round(latest, 1)):
                        raise LeaseLost
        except LeaseLost:
            log.warning("library job %s was taken by another runner: stopped", job.id)
        finally:
            if not processing.done():  # lost, or a write failed: no orphan ffmpeg
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
        """Stopped by close() (requeued, not the job's fault), by discard() (row gone) or
        by losing the job to another runner (nothing to write)."""
        await self._held(
            job, status=JobStatus.QUEUED.value, attempts=job.attempts - 1, progress=0.0
        )

    async def _done(self, job: Job, duration: float) -> None:
        # The item first, while the job is still ours: whoever sees the job done finds
        # the item ready.
        if not await self._held(job):
            return
        await self.library.mark_ready(job.item_id, duration)
        await self._held(job, status=JobStatus.DONE.value, progress=100.0, error=None)
        if job.kind == "upload":
            await asyncio.to_thread(Path(job.source).unlink, missing_ok=True)

    async def _failed(self, job: Job, error: str) -> None:
        if job.attempts < job.max_attempts:
            delay = self.backoff * 2 ** (job.attempts - 1)
            log.warning(
                "library job %s attempt %d/%d failed, retry in %.1fs: %s",
                job.id, job.attempts, job.max_attempts, delay, error,
            )  # fmt: skip
            await self._held(
                job, status=JobStatus.QUEUED.value, error=error, run_after=time.time() + delay
            )
        elif await self._held(job, status=JobStatus.FAILED.value, error=error):
            log.error("library job %s failed after %d attempts: %s", job.id, job.attempts, error)
            await self.library.mark_failed(job.item_id)

    async def _held(self, job: Job, **values: Any) -> bool:
        """Write ``values`` (and renew the lease) if this attempt still holds the job:
        running, with the attempt count its claim set. False when it is gone or taken."""
        t = jobs_table
        async with self.engine.begin() as conn:
            result = await conn.execute(
                t.update()
                .where(
                    t.c.id == job.id,
                    t.c.status == JobStatus.RUNNING.value,
                    t.c.attempts == job.attempts,
                )
                .values(updated_at=time.time(), **values)
            )
        return bool(result.rowcount == 1)
