"""Overlap queries bounded below by LONG_SPAN still see busy time longer than that (the
partial index's half), here for the holds a booking clears before it claims its time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, select

from resources.sql.engine import Database
from resources.sql.tables import BusyTime
from scheduling.booking import free_holds

BT = BusyTime.__table__
MONDAY = datetime(2031, 3, 3, tzinfo=UTC)


def _row(appointment: str, start: datetime, end: datetime, expires: timedelta) -> dict[str, object]:
    return {
        "schedule_id": "sched-a",
        "start": start,
        "end": end,
        "appointment_id": appointment,
        "kind": "held",
        "visit_type": None,
        "expires_at": NOW + expires,
    }


NOW = datetime(2031, 3, 1, tzinfo=UTC)
GONE, LIVE = timedelta(minutes=-1), timedelta(minutes=5)


def test_expired_holds_long_and_short_and_the_bookings_own_go_and_nothing_else(
    db: Database,
) -> None:
    h = timedelta(hours=1)
    rows = [
        _row("expired-long", MONDAY - timedelta(days=3), MONDAY + 8 * h, GONE),
        _row("expired-short", MONDAY + 8.5 * h, MONDAY + 9 * h, GONE),
        _row("live-long", MONDAY + 9 * h, MONDAY + timedelta(days=1, hours=12), LIVE),
        _row(
            "expired-later", MONDAY + timedelta(days=2), MONDAY + timedelta(days=2, hours=1), GONE
        ),
        _row("mine", MONDAY + timedelta(days=3), MONDAY + timedelta(days=3, hours=1), LIVE),
    ]
    with db.write() as conn:
        conn.execute(insert(BT), rows)
        free_holds(
            conn,
            schedule="sched-a",
            start=MONDAY + 7 * h,
            end=MONDAY + 10 * h,
            now=NOW,
            appointment_id="mine",
        )
    with db.read() as conn:
        left = set(conn.execute(select(BT.c.appointment_id)).scalars())
    assert left == {"live-long", "expired-later"}
