"""The runner acts on the schedule: opens rooms before sessions, records, closes them
and hands recordings to the library.

It depends on three small protocols the hub implements (``RoomControl``, ``Notifier``,
``Lease``) and on a ``Clock`` that tests control. Every step done is written to
``scheduler_runner_steps`` before the next one is attempted, so a restarted hub resumes
where it stopped. With several hub processes, only the holder of the lease
``scheduler-runner`` acts. A crash between an action and its record repeats that one
action once: room control should treat opening an open room as a no-op."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

import httpx
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from scheduler.recurrence import Occurrence
from scheduler.schedule import Schedule, SessionInfo, SessionStatus, occurrence_info
from scheduler.sites import Sites
from scheduler.tables import runner_steps

logger = logging.getLogger(__name__)

LEASE_NAME = "scheduler-runner"


class RoomControl(Protocol):
    async def open_room(self, room: str, session: SessionInfo) -> None: ...
    async def start_recording(self, room: str) -> None: ...
    async def stop_recording(self, room: str) -> None: ...
    async def close_room(self, room: str) -> None: ...
    async def hand_to_library(self, room: str, session: SessionInfo) -> None: ...


class Notifier(Protocol):
    async def notify(self, site_codes: set[str], event: dict[str, Any]) -> None:
        """Tell the clients of these sites (live notice)."""


class Lease(Protocol):
    async def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        """Take or renew ``name`` for ``ttl`` seconds; False when someone else holds it."""

    async def release_lease(self, name: str, holder: str) -> None: ...


class Clock(Protocol):
    def now(self) -> datetime:
        """The current aware UTC instant."""

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Step(StrEnum):
    """What the runner does for one occurrence, in this order."""

    OPEN = "open"
    NOTIFY = "notify"
    START_RECORDING = "start_recording"
    STOP_RECORDING = "stop_recording"
    CLOSE = "close"
    LIBRARY = "library"


@dataclass(frozen=True)
class RunnerConfig:
    lead: timedelta = timedelta(minutes=10)
    """Rooms open this long before the start."""
    grace: timedelta = timedelta(minutes=5)
    """Rooms close this long after the end (lectures overrun)."""
    tick: float = 1.0
    """Seconds before a refused lease or a failed step is tried again."""
    poll_interval: float = 5.0
    """Most seconds between two looks at the schedule while nothing is due: bounds how
    late a change made on another node is noticed (changes made here call
    :meth:`Runner.wake`, and the runner wakes by itself when a step falls due)."""
    lease_ttl: float = 10.0
    """Seconds a lease lasts; it is renewed every third of that."""


def due_steps(
    info: SessionInfo, now: datetime, done: set[Step], config: RunnerConfig
) -> list[Step]:
    """The steps still to do for one occurrence at ``now``, in order (pure)."""
    recording = Step.START_RECORDING in done
    closing = [
        *([Step.STOP_RECORDING] if recording else []),
        Step.CLOSE,
    ]
    if info.status is SessionStatus.CANCELLED:
        return [s for s in closing if s not in done] if Step.OPEN in done else []
    if now < info.start - config.lead:
        return []
    # Closed before its time (a moderator ended it): nothing opens again.
    if now < info.end + config.grace and Step.CLOSE not in done:
        wanted = [Step.OPEN, Step.NOTIFY]
        if info.options.record and info.start <= now < info.end:
            wanted.append(Step.START_RECORDING)
        return [s for s in wanted if s not in done]
    if Step.OPEN not in done:
        return []  # missed entirely (the hub was down): nothing to close
    if info.options.publish and recording:
        closing.append(Step.LIBRARY)
    return [s for s in closing if s not in done]


class Runner:
    """Acts on the schedule while holding the lease; ``start()``/``stop()`` own its task."""

    def __init__(
        self,
        engine: AsyncEngine,
        rooms: RoomControl,
        notifier: Notifier,
        lease: Lease,
        holder: str,
        clock: Clock | None = None,
        config: RunnerConfig | None = None,
    ) -> None:
        self._engine = engine
        self._schedule = Schedule(engine)
        self._sites = Sites(engine)
        self._rooms = rooms
        self._notifier = notifier
        self._lease = lease
        self.holder = holder
        self._clock = clock or SystemClock()
        self._config = config or RunnerConfig()
        self._held_until: datetime | None = None
        self._renew_at: datetime | None = None
        self._act_at: datetime | None = None
        """When to look at the schedule next; None: at the next tick."""
        self._changes = 0
        self._woken = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def leading(self) -> bool:
        """Whether this runner holds the lease now (and so may act)."""
        return self._held_until is not None and self._clock.now() < self._held_until

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"scheduler-runner {self.holder}")

    async def stop(self) -> None:
        """Stop acting and give the lease up, so another node takes over at once."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._held_until is not None:
            self._held_until = self._renew_at = None
            await self._lease.release_lease(LEASE_NAME, self.holder)

    def wake(self) -> None:
        """The schedule changed on this node: look at it now, not at the next poll."""
        self._changes += 1
        self._act_at = None
        self._woken.set()

    async def _run(self) -> None:
        while True:
            self._woken.clear()
            try:
                wake_at = await self.tick()
            except Exception:
                logger.exception("scheduler runner tick failed")
                wake_at = self._clock.now() + timedelta(seconds=self._config.tick)
            await self._sleep_until(wake_at)

    async def _sleep_until(self, when: datetime) -> None:
        seconds = max(0.0, (when - self._clock.now()).total_seconds())
        sleep = asyncio.ensure_future(self._clock.sleep(seconds))
        woken = asyncio.ensure_future(self._woken.wait())
        try:
            await asyncio.wait((sleep, woken), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleep.cancel()
            woken.cancel()

    async def tick(self) -> datetime:
        """Renew the lease when due, then act if it is held and something may be due.
        Returns when the next tick is needed."""
        now = self._clock.now()
        if self._renew_at is None or now >= self._renew_at:
            await self._renew(now)
        if self.leading and (self._act_at is None or now >= self._act_at):
            changes = self._changes
            act_at = await self.act(now)
            # A change made while acting may not have been read: look again at once.
            self._act_at = act_at if changes == self._changes else None
        assert self._renew_at is not None  # set by _renew
        if self.leading and self._act_at is not None:
            return min(self._renew_at, self._act_at)
        return self._renew_at

    async def _renew(self, now: datetime) -> None:
        ttl = self._config.lease_ttl
        try:
            held = await self._lease.acquire_lease(LEASE_NAME, self.holder, ttl)
        except Exception:
            logger.exception("scheduler runner could not renew its lease")
            held = False
        if held:
            if not self.leading:
                self._act_at = None  # newly the holder: what is due is unknown
            # Act only within the first 80% of the lease: the store's clock decides.
            self._held_until = now + timedelta(seconds=ttl * 0.8)
            self._renew_at = now + timedelta(seconds=ttl / 3)
        else:
            if self._held_until is not None:
                logger.warning("scheduler runner %s lost the lease", self.holder)
            self._held_until = None
            self._renew_at = now + timedelta(seconds=self._config.tick)

    async def act(self, now: datetime) -> datetime:
        """Do every step due at ``now`` that is not recorded as done. Returns when the
        schedule must be looked at again: the next instant a step of an occurrence in
        view falls due, sooner after a failed step, at the latest after the poll
        interval."""
        config = self._config
        poll = timedelta(seconds=config.poll_interval)
        tree = await self._sites.tree()
        # A wider window than needed (both ends included, whatever the poll interval):
        # due_steps decides what happens, and nothing outside it can fall due before
        # the next look.
        margin = timedelta(minutes=1) + poll
        window = await self._schedule.overlapping(
            tree, now - config.grace - margin, now + config.lead + margin, cancelled=True
        )
        infos = {(i.session_id, i.start): i for i in window}
        done = await self._done_steps()
        for key in done.keys() - infos.keys():
            if Step.OPEN in done[key] and Step.CLOSE not in done[key]:
                # Opened, then the hub was down past its close time: close it now.
                session = await self._schedule.get(key[0])
                occurrence = Occurrence(key[1], key[1] + (session.end - session.start))
                sites = frozenset(session.audience.sites(tree))
                infos[key] = occurrence_info(session, occurrence, sites)
        next_look = now + poll
        for key, info in sorted(infos.items()):
            if not await self._advance(info, now, done.get(key, set())):
                next_look = min(next_look, now + timedelta(seconds=config.tick))
            for moment in (info.start - config.lead, info.start, info.end + config.grace):
                if now < moment < next_look:
                    next_look = moment
        return next_look

    async def _advance(self, info: SessionInfo, now: datetime, done: set[Step]) -> bool:
        """Do the due steps in order; False when one failed (the rest wait for it)."""
        for step in due_steps(info, now, done, self._config):
            if not self.leading:
                return True  # the next holder takes over
            try:
                await self._do(step, info)
            except Exception:
                logger.exception("step %s of room %s failed; retrying later", step, info.room)
                return False
            await self._record(info, step)
            done.add(step)
        return True

    async def _do(self, step: Step, info: SessionInfo) -> None:
        rooms = self._rooms
        match step:
            case Step.OPEN:
                await rooms.open_room(info.room, info)
            case Step.NOTIFY:
                event = {"type": "session.opening", **info.to_json()}
                await self._notifier.notify(set(info.audience_sites), event)
            case Step.START_RECORDING:
                await rooms.start_recording(info.room)
            case Step.STOP_RECORDING:
                await rooms.stop_recording(info.room)
            case Step.CLOSE:
                await rooms.close_room(info.room)
            case Step.LIBRARY:
                await rooms.hand_to_library(info.room, info)

    async def end_now(self, info: SessionInfo) -> None:
        """End an occurrence before its time: stop its recording, close its room and
        hand the recording to the library now, each recorded as done, so neither this
        runner nor another node opens or records it again. Any node may call it (a
        repeated step is harmless, see :class:`RoomControl`)."""
        done = await steps_done(self._engine, info)
        ended = replace(info, end=min(info.end, self._clock.now()))
        far = ended.end + self._config.grace
        for step in due_steps(ended, far, done | {Step.OPEN}, self._config):
            await self._do(step, info)
            await self._record(info, step)

    async def _done_steps(self) -> dict[tuple[int, datetime], set[Step]]:
        """Steps of occurrences that are not closed yet, plus recent ones."""
        recent = self._clock.now() - timedelta(days=2)
        unclosed = (
            sa.select(runner_steps.c.session_id, runner_steps.c.occurrence_start)
            .group_by(runner_steps.c.session_id, runner_steps.c.occurrence_start)
            .having(
                sa.func.sum(sa.case((runner_steps.c.step == Step.CLOSE.value, 1), else_=0)) == 0
            )
        )
        query = sa.select(runner_steps).where(
            sa.or_(
                runner_steps.c.occurrence_start >= recent,
                sa.tuple_(runner_steps.c.session_id, runner_steps.c.occurrence_start).in_(unclosed),
            )
        )
        async with self._engine.connect() as conn:
            rows = await conn.execute(query)
            return _group(rows)

    async def _record(self, info: SessionInfo, step: Step) -> None:
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    sa.insert(runner_steps).values(
                        session_id=info.session_id,
                        occurrence_start=info.start,
                        step=step.value,
                        done_at=self._clock.now(),
                        holder=self.holder,
                    )
                )
        except IntegrityError:
            logger.warning("step %s of room %s was already recorded", step, info.room)


async def steps_done(engine: AsyncEngine, info: SessionInfo) -> set[Step]:
    """The steps recorded as done for one occurrence."""
    query = sa.select(runner_steps.c.step).where(
        runner_steps.c.session_id == info.session_id,
        runner_steps.c.occurrence_start == info.start,
    )
    async with engine.connect() as conn:
        return {Step(step) for step in (await conn.execute(query)).scalars()}


def _group(rows: Iterable[Any]) -> dict[tuple[int, datetime], set[Step]]:
    done: dict[tuple[int, datetime], set[Step]] = {}
    for row in rows:
        done.setdefault((row.session_id, row.occurrence_start), set()).add(Step(row.step))
    return done


class WebhookNotifier:
    """Posts ``{"sites": [...], "event": {...}}`` as JSON to each configured URL, with a
    timeout and a bounded number of attempts (5xx and network errors are retried; a
    webhook that stays down is logged and skipped, it must not stall the runner)."""

    def __init__(
        self,
        urls: Iterable[str],
        timeout: float = 5.0,
        attempts: int = 3,
        backoff: float = 0.5,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self._urls = list(urls)
        self._attempts = attempts
        self._backoff = backoff
        self._client = httpx.AsyncClient(timeout=timeout)

    async def notify(self, site_codes: set[str], event: dict[str, Any]) -> None:
        body = {"sites": sorted(site_codes), "event": event}
        await asyncio.gather(*(self._post(url, body) for url in self._urls))

    async def _post(self, url: str, body: dict[str, Any]) -> None:
        for attempt in range(1, self._attempts + 1):
            try:
                response = await self._client.post(url, json=body)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 500:
                    if response.status_code >= 400:
                        logger.warning("webhook %s refused: HTTP %s", url, response.status_code)
                    return
                problem = f"HTTP {response.status_code}"
            if attempt < self._attempts:
                await asyncio.sleep(self._backoff * 2 ** (attempt - 1))
        logger.warning("webhook %s failed %d times, last: %s", url, self._attempts, problem)

    async def aclose(self) -> None:
        await self._client.aclose()
