"""Overlap queries on busy time and Slots whose cost does not grow with a schedule's history.

"Starts before the window ends and ends after it starts" alone range-scans every row of the
schedule that starts before the window's end: all of its past. Here the rows no longer than
``LONG_SPAN`` are read by a range scan from the window's start minus ``LONG_SPAN`` (no shorter
row that overlaps can start earlier), and the longer ones through their own partial index
(see ``resources/sql/tables.py``); each row comes from exactly one of the two.

Parameters of the busy-time queries: ``start``, ``end`` and ``lower`` (:func:`lower`); of the
Slot query: ``start_s``, ``end_s`` and ``lower_s`` (epoch seconds).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, CompoundSelect, Select, Table, bindparam, select, text

from resources.sql.tables import BUSY_IS_LONG, LONG_SPAN, SLOT_IS_LONG, BusyTime, SlotTime
from resources.validation import REQUIRED_CODES

__all__ = ["BUSY_OVERLAPPING_SQL", "busy_overlapping", "lower", "slots_overlapping"]

BT = cast(Table, BusyTime.__table__)
ST = cast(Table, SlotTime.__table__)
_SLOT_STATUSES = REQUIRED_CODES["Slot"]["status"]  # every status a stored Slot can have


def lower(start: datetime) -> datetime:
    """No short row that overlaps a window starting at ``start`` starts earlier (with a
    second of slack: SQLite's julianday differences that classify rows are floating point)."""
    return start - LONG_SPAN - timedelta(seconds=1)


def busy_overlapping(
    dialect: str, columns: list[Any], *where: ColumnElement[bool]
) -> tuple[Select[Any], Select[Any]]:
    """``columns`` of the busy-time rows that satisfy ``where`` and overlap the window: the
    short ones and the long ones, for the caller's ``union_all``."""
    long = BUSY_IS_LONG[dialect]
    span = (BT.c.start < bindparam("end"), BT.c.end > bindparam("start"), *where)
    short = select(*columns).where(*span, BT.c.start >= bindparam("lower"), text(f"NOT ({long})"))
    return short, select(*columns).where(*span, text(long))


def _busy_overlapping_sql(dialect: str) -> str:
    """:func:`busy_overlapping` as SQL text for the driver's cursor, the schedules matched by
    ``{schedules}`` and every other parameter a ``{p}``: schedules, end, start, now and lower,
    then schedules, end, start and now again (busy time that is not an expired hold)."""
    long = BUSY_IS_LONG[dialect]
    select_ = 'SELECT schedule_id, start, "end", kind, appointment_id, visit_type FROM busy_time'
    where = (
        'WHERE schedule_id {schedules} AND start < {p} AND "end" > {p} '
        "AND (kind <> 'held' OR expires_at > {p})"
    )
    return (
        f"{select_} {where} AND start >= {{p}} AND NOT ({long}) "
        f"UNION ALL {select_} {where} AND {long}"
    )


BUSY_OVERLAPPING_SQL = {dialect: _busy_overlapping_sql(dialect) for dialect in BUSY_IS_LONG}


def slots_overlapping(schedule: ColumnElement[bool]) -> CompoundSelect[Any]:
    """Slot ids of the Slots of ``schedule`` (a condition) that overlap the window. The status
    list lets the scan use ``ix_slot_time_free`` (schedule, status, start) one status at a
    time."""
    span = (schedule, ST.c.start_s < bindparam("end_s"), ST.c.end_s > bindparam("start_s"))
    short = select(ST.c.slot_id).where(
        *span,
        # bound by name with their values, so the statement is fixed (it can run on the driver)
        ST.c.status.in_([bindparam(f"status_{i}", v) for i, v in enumerate(_SLOT_STATUSES)]),
        ST.c.start_s >= bindparam("lower_s"),
        text(f"NOT ({SLOT_IS_LONG})"),
    )
    return short.union_all(select(ST.c.slot_id).where(*span, text(SLOT_IS_LONG)))
