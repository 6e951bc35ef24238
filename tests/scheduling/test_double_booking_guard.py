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
