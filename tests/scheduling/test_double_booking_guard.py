"""The database itself refuses overlapping busy time on one schedule, on both backends.

These tests bypass every service and write rows directly: the guard must hold anyway.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, update
from sqlalchemy.exc import DBAPIError

from resources.sql.engine import Database
from resources.sql.tables import BusyTime

BT = BusyTime.__table__
T0 = datetime(2026, 12, 1, 14, 0, tzinfo=UTC)


def busy(schedule: str, start_min: int, end_min: int, appt: str = "a1") -> dict[str, Any]:
    return {
        "schedule_id": schedule,
        "start": T0 + timedelta(minutes=start_min),
        "end": T0 + timedelta(minutes=end_min),
        "appointment_id": appt,
        "kind": "booked",
        "visit_type": "follow-up",
        "expires_at": None,
    }


def add(db: Database, *rows: dict[str, Any]) -> None:
    with db.write() as conn:
        for row in rows:
            conn.execute(insert(BT).values(**row))


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ((0, 30), (0, 30)),
        ((0, 30), (15, 45)),
        ((15, 45), (0, 30)),
        ((0, 60), (15, 30)),
        ((15, 30), (0, 60)),
    ],
    ids=["same", "overlap-end", "overlap-start", "inside", "around"],
)
def test_overlap_on_one_schedule_is_refused(
    db: Database, first: tuple[int, int], second: tuple[int, int]
) -> None:
    add(db, busy("s1", *first))
    with pytest.raises(DBAPIError):
        add(db, busy("s1", *second, appt="a2"))


def test_touching_and_other_schedules_are_fine(db: Database) -> None:
    add(db, busy("s1", 0, 30), busy("s1", 30, 60), busy("s2", 0, 30), busy("s2", 30, 45))


def test_refused_in_one_transaction_keeps_nothing(db: Database) -> None:
    with pytest.raises(DBAPIError):
        add(db, busy("s1", 0, 30), busy("s1", 60, 90), busy("s1", 20, 40))
    add(db, busy("s1", 0, 30))  # nothing of the failed transaction survived


def test_update_into_overlap_is_refused(db: Database) -> None:
    add(db, busy("s1", 0, 30), busy("s1", 60, 90, appt="a2"))
    with pytest.raises(DBAPIError), db.write() as conn:
        conn.execute(
            update(BT).where(BT.c.appointment_id == "a2").values(start=T0 + timedelta(minutes=15))
        )


def test_empty_or_negative_ranges_are_refused(db: Database) -> None:
    with pytest.raises(DBAPIError):
        add(db, busy("s1", 30, 30))


def _at(start: timedelta, end: timedelta, appt: str) -> dict[str, Any]:
    return {**busy("s1", 0, 1, appt), "start": T0 + start, "end": T0 + end}


DAY, US = timedelta(days=1), timedelta(microseconds=1)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ((-2 * DAY, DAY), (timedelta(0), timedelta(minutes=30))),  # inside a long row's tail
        ((timedelta(0), timedelta(minutes=30)), (-2 * DAY, DAY)),  # a long row over a short one
        ((-3 * DAY, -DAY + US), (-DAY, timedelta(0))),  # long, overlapping by a microsecond
        ((-DAY + 500 * US, 500 * US), (timedelta(0), timedelta(minutes=30))),  # exactly a day
    ],
    ids=["short-in-long", "long-over-short", "long-by-a-microsecond", "one-day-row"],
)
def test_rows_longer_than_a_day_are_guarded_like_the_rest(
    db: Database, first: tuple[timedelta, timedelta], second: tuple[timedelta, timedelta]
) -> None:
    """SQLite's guard scans short rows from a day before and finds long ones by their own
    index (migration 0008); overlaps across that boundary are refused all the same."""
    add(db, _at(*first, "a1"))
    with pytest.raises(DBAPIError):
        add(db, _at(*second, "a2"))
    add(db, _at(first[1], first[1] + timedelta(minutes=30), "a3"))  # touching is fine


def test_update_into_a_long_row_is_refused(db: Database) -> None:
    add(db, _at(-2 * DAY, DAY, "a1"), _at(2 * DAY, 2 * DAY + timedelta(hours=1), "a2"))
    with pytest.raises(DBAPIError), db.write() as conn:
        conn.execute(update(BT).where(BT.c.appointment_id == "a2").values(start=T0))
