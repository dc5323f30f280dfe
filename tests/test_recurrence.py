"""Recurrence expansion, table-driven, in Asia/Shanghai wall-clock time."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from scheduler.recurrence import (
    LOCAL_ZONE,
    Occurrence,
    Recurrence,
    Repeat,
    last_end,
    local,
    occurrences,
    to_utc,
)


def sh(text: str) -> datetime:
    """A Shanghai wall-clock time, 'YYYY-MM-DD HH:MM'."""
    return datetime.fromisoformat(text).replace(tzinfo=LOCAL_ZONE)


def starts(found: list[Occurrence]) -> list[str]:
    return [f"{local(o.start):%Y-%m-%d %H:%M}" for o in found]


WIDE = (sh("2000-01-01 00:00"), sh("2100-01-01 00:00"))
MON, WED, FRI = 0, 2, 4

EXPANSIONS = [
    ("one-off", "2026-03-02 09:00", Recurrence(), WIDE, ["2026-03-02 09:00"]),
    (
        "daily with count",
        "2026-03-02 09:00",
        Recurrence(Repeat.DAILY, count=3),
        WIDE,
        ["2026-03-02 09:00", "2026-03-03 09:00", "2026-03-04 09:00"],
    ),
    (
        "weekly Mon/Wed/Fri until a date (inclusive)",
        "2026-03-02 19:30",
        Recurrence(Repeat.WEEKLY, frozenset({MON, WED, FRI}), until=date(2026, 3, 13)),
        WIDE,
        [
            "2026-03-02 19:30",
            "2026-03-04 19:30",
            "2026-03-06 19:30",
            "2026-03-09 19:30",
            "2026-03-11 19:30",
            "2026-03-13 19:30",
        ],
    ),
    (
        "weekly with count counts occurrences, not weeks",
        "2026-03-02 08:00",
        Recurrence(Repeat.WEEKLY, frozenset({MON, FRI}), count=3),
        WIDE,
        ["2026-03-02 08:00", "2026-03-06 08:00", "2026-03-09 08:00"],
    ),
    (
        "daily across a month end and a leap day",
        "2028-02-28 09:00",
        Recurrence(Repeat.DAILY, count=3),
        WIDE,
        ["2028-02-28 09:00", "2028-02-29 09:00", "2028-03-01 09:00"],
    ),
    (
        "daily across the year end",
        "2026-12-30 20:00",
        Recurrence(Repeat.DAILY, until=date(2027, 1, 2)),
        WIDE,
        ["2026-12-30 20:00", "2026-12-31 20:00", "2027-01-01 20:00", "2027-01-02 20:00"],
    ),
    (
        "early morning local is the previous day in UTC",
        "2026-05-01 06:00",
        Recurrence(Repeat.DAILY, count=2),
        WIDE,
        ["2026-05-01 06:00", "2026-05-02 06:00"],
    ),
    (
        "window picks the middle of an endless series",
        "2026-01-05 09:00",
        Recurrence(Repeat.WEEKLY, frozenset({MON})),
        (sh("2026-06-01 00:00"), sh("2026-06-16 00:00")),
        ["2026-06-01 09:00", "2026-06-08 09:00", "2026-06-15 09:00"],
    ),
    (
        "an occurrence in progress at the window start is included",
        "2026-03-02 09:00",
        Recurrence(Repeat.DAILY, count=5),
        (sh("2026-03-03 10:00"), sh("2026-03-04 09:00")),
        ["2026-03-03 09:00"],
    ),
    (
        "count is spent before the window",
        "2026-03-02 09:00",
        Recurrence(Repeat.DAILY, count=2),
        (sh("2026-03-05 00:00"), sh("2026-04-01 00:00")),
        [],
    ),
]


@pytest.mark.parametrize(
    ("first", "rule", "window", "expected"),
    [case[1:] for case in EXPANSIONS],
    ids=[case[0] for case in EXPANSIONS],
)
def test_occurrences(
    first: str, rule: Recurrence, window: tuple[datetime, datetime], expected: list[str]
) -> None:
    start = sh(first).astimezone(UTC)
    found = occurrences(start, start + timedelta(hours=2), rule, *window)
    assert starts(found) == expected
    assert all(o.start.tzinfo is UTC and o.end - o.start == timedelta(hours=2) for o in found)


def test_local_times_become_utc() -> None:
    start = sh("2026-05-01 06:00").astimezone(UTC)
    (first,) = occurrences(start, start + timedelta(hours=1), Recurrence(), *WIDE)
    assert first.start == datetime(2026, 4, 30, 22, 0, tzinfo=UTC)
    assert to_utc(datetime(2026, 5, 1, 6, 0)) == first.start  # naive is read as Shanghai
    assert to_utc(datetime(2026, 4, 30, 22, 0, tzinfo=UTC)) == first.start


INVALID = [
    ("zero length", "2026-03-02 09:00", timedelta(0), Recurrence()),
    ("end before start", "2026-03-02 09:00", timedelta(hours=-1), Recurrence()),
    ("count zero", "2026-03-02 09:00", timedelta(hours=1), Recurrence(Repeat.DAILY, count=0)),
    (
        "until and count together",
        "2026-03-02 09:00",
        timedelta(hours=1),
        Recurrence(Repeat.DAILY, until=date(2026, 4, 1), count=3),
    ),
    (
        "until before the first start",
        "2026-03-02 09:00",
        timedelta(hours=1),
        Recurrence(Repeat.DAILY, until=date(2026, 3, 1)),
    ),
    ("weekly without weekdays", "2026-03-02 09:00", timedelta(hours=1), Recurrence(Repeat.WEEKLY)),
    (
        "weekday out of range",
        "2026-03-02 09:00",
        timedelta(hours=1),
        Recurrence(Repeat.WEEKLY, frozenset({0, 7})),
    ),
    (
        "first start not on a listed weekday",
        "2026-03-03 09:00",  # a Tuesday
        timedelta(hours=1),
        Recurrence(Repeat.WEEKLY, frozenset({MON})),
    ),
    (
        "weekdays on a daily rule",
        "2026-03-02 09:00",
        timedelta(hours=1),
        Recurrence(Repeat.DAILY, frozenset({MON})),
    ),
    ("count on a one-off", "2026-03-02 09:00", timedelta(hours=1), Recurrence(count=2)),
    (
        "repeating session longer than a day",
        "2026-03-02 09:00",
        timedelta(days=2),
        Recurrence(Repeat.DAILY, count=2),
    ),
]


@pytest.mark.parametrize(
    ("first", "duration", "rule"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_rules_are_rejected(first: str, duration: timedelta, rule: Recurrence) -> None:
    start = sh(first)
    with pytest.raises(ValueError):
        occurrences(start, start + duration, rule, *WIDE)


def test_naive_instants_are_rejected() -> None:
    with pytest.raises(ValueError, match="aware"):
        occurrences(datetime(2026, 3, 2, 9), datetime(2026, 3, 2, 10), Recurrence(), *WIDE)


LAST_ENDS = [
    ("one-off", Recurrence(), "2026-03-02 11:00"),
    ("count", Recurrence(Repeat.DAILY, count=3), "2026-03-04 11:00"),
    (
        "until",
        Recurrence(Repeat.WEEKLY, frozenset({MON}), until=date(2026, 3, 20)),
        "2026-03-16 11:00",
    ),
    ("endless", Recurrence(Repeat.DAILY), None),
]


@pytest.mark.parametrize(
    ("rule", "expected"), [c[1:] for c in LAST_ENDS], ids=[c[0] for c in LAST_ENDS]
)
def test_last_end(rule: Recurrence, expected: str | None) -> None:
    start = sh("2026-03-02 09:00")
    end = last_end(start, start + timedelta(hours=2), rule)
    assert (end and f"{local(end):%Y-%m-%d %H:%M}") == expected
