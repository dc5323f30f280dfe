"""Recurrence rules expanded into occurrences: pure functions, no I/O.

Times repeat on the local wall clock of Asia/Shanghai (a lecture at 09:00 is at 09:00
every day), and every instant handed back is aware UTC, as stored."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

LOCAL_ZONE = ZoneInfo("Asia/Shanghai")
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
"""Sessions fall between these: far from ``datetime``'s years 1 and 9999, which time-zone
conversion and series arithmetic would otherwise cross."""
MAX_COUNT = 3660
"""Occurrences in a counted series: ten years of daily sessions."""


class Repeat(StrEnum):
    NONE = "none"
    DAILY = "daily"
    WEEKLY = "weekly"


@dataclass(frozen=True)
class Recurrence:
    """How a session repeats. The first start is the first occurrence (for weekly it must
    fall on one of the weekdays); as in RFC 5545, ``until`` and ``count`` exclude each other
    and a rule with neither repeats without end."""

    repeat: Repeat = Repeat.NONE
    weekdays: frozenset[int] = field(default_factory=frozenset)
    """For weekly: 0 = Monday … 6 = Sunday."""
    until: date | None = None
    """Last local date an occurrence may start on (inclusive)."""
    count: int | None = None
    """Number of occurrences."""


@dataclass(frozen=True)
class Occurrence:
    """One time window of a (possibly repeating) session, in UTC."""

    start: datetime
    end: datetime


def local(instant: datetime) -> datetime:
    """An aware instant shown in Asia/Shanghai."""
    return instant.astimezone(LOCAL_ZONE)


def to_utc(value: datetime) -> datetime:
    """An instant in UTC; a naive value is read as Asia/Shanghai wall-clock time."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=LOCAL_ZONE)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{value.isoformat()} is out of range") from None


def validate(start: datetime, end: datetime, rule: Recurrence) -> None:
    """Raise ValueError for a rule that describes no sensible series."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be aware instants")
    if end <= start:
        raise ValueError("end must be after start")
    if rule.until is not None and rule.count is not None:
        raise ValueError("give until or count, not both")
    if rule.count is not None and rule.count < 1:
        raise ValueError("count must be at least 1")
    if rule.repeat is Repeat.NONE:
        if rule.weekdays or rule.until is not None or rule.count is not None:
            raise ValueError("a one-off session takes no weekdays, until or count")
        return
    if rule.until is not None and rule.until < local(start).date():
        raise ValueError("until is before the first start")
    if rule.repeat is Repeat.WEEKLY:
        if not rule.weekdays:
            raise ValueError("weekly needs at least one weekday")
        if not rule.weekdays <= set(range(7)):
            raise ValueError("weekdays are 0 (Monday) to 6 (Sunday)")
        if local(start).weekday() not in rule.weekdays:
            raise ValueError("the first start is not on one of the weekdays")
    elif rule.weekdays:
        raise ValueError("only weekly takes weekdays")
    if local(end) - local(start) > timedelta(days=1):
        raise ValueError("a repeating session lasts at most one day")


def check_bounds(start: datetime, end: datetime, rule: Recurrence) -> None:
    """Raise ValueError for a new series beyond the bounds (sessions already stored are
    read as they are)."""
    if start < EARLIEST or end > LATEST:
        raise ValueError(f"sessions fall between {EARLIEST:%Y} and {LATEST:%Y}")
    if rule.count is not None and rule.count > MAX_COUNT:
        raise ValueError(f"count must be between 1 and {MAX_COUNT}")
    if rule.until is not None and rule.until >= LATEST.date():
        raise ValueError(f"until must be before {LATEST.date()}")


def _series(start: datetime, end: datetime, rule: Recurrence) -> Iterator[Occurrence]:
    first = local(start)
    duration = end - start
    wall_clock: time = first.timetz().replace(tzinfo=None)
    day = first.date()
    produced = 0
    while True:
        if rule.until is not None and day > rule.until:
            return
        if rule.repeat is not Repeat.WEEKLY or day.weekday() in rule.weekdays:
            begin = datetime.combine(day, wall_clock, LOCAL_ZONE).astimezone(UTC)
            yield Occurrence(begin, begin + duration)
            produced += 1
            if rule.repeat is Repeat.NONE or produced == rule.count:
                return
        day += timedelta(days=1)


def occurrences(
    start: datetime, end: datetime, rule: Recurrence, after: datetime, before: datetime
) -> list[Occurrence]:
    """The occurrences of the series first held from ``start`` to ``end`` that overlap
    the window [``after``, ``before``), in order. ValueError for an invalid rule."""
    validate(start, end, rule)
    if before <= after:
        return []
    found: list[Occurrence] = []
    for occurrence in _series(start, end, rule):
        if occurrence.start >= before:
            break
        if occurrence.end > after:
            found.append(occurrence)
    return found


def last_end(start: datetime, end: datetime, rule: Recurrence) -> datetime | None:
    """When the series is over, None for an endless one."""
    validate(start, end, rule)
    if rule.repeat is not Repeat.NONE and rule.until is None and rule.count is None:
        return None
    last = end
    for occurrence in _series(start, end, rule):
        last = occurrence.end
    return last
