"""What the database says for one ``$find`` (or ``$book``'s check): busy time, free Slots, and
whether the patient is new here, all read straight from ``busy_time``, ``slot_time`` and the
search index on the driver's cursor, sent together and read after (one round trip on
PostgreSQL inside a caller's pipeline, or one async pipeline). :mod:`.find` turns them into
options. See https://profiles.ihe.net/ITI/Scheduling/ITI-115.html.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import Connection

from resources.fhirdate import as_utc
from resources.search.lookup import send_blind_match
from resources.sql.async_reads import AsyncReader
from resources.sql.direct import pipelined
from resources.sql.tables import BusyTime, IdxDate
from resources.store import Store
from scheduling.config import ExistingPatient
from scheduling.patients import EXISTING_TAG, match_patients
from scheduling.plan import FindPlan, FindRequest
from scheduling.spans import BUSY_OVERLAPPING_SQL, lower

__all__ = [
    "Calendar",
    "FreeSlots",
    "epoch",
    "match_patient",
    "read_calendar",
    "read_calendar_async",
]

BT = BusyTime.__table__

# (start, end, id) of a schedule's free Slots, as three lists in start order
FreeSlots = tuple[list[int], list[int], list[str]]


@dataclass(frozen=True)
class Calendar:
    """What the database says for one ``$find``: everything the rules need."""

    new_patient: bool
    busy: list[tuple[str, datetime, datetime, str, str, str | None]]
    # (schedule id, start, end, kind, appointment id, visit type)
    free: dict[str, FreeSlots]  # schedule id -> its free Slots


def _busy_window(request: FindRequest) -> tuple[datetime, datetime]:
    return request.start - timedelta(days=1), request.end + timedelta(days=1)


def read_calendar(
    conn: Connection, store: Store, plan: FindPlan, request: FindRequest, now: datetime
) -> Calendar:
    start, end = _busy_window(request)
    # all three sent before any is read: one round trip in a caller's pipeline ($book's,
    # which sends its Slot locks first)
    existing = _is_existing_patient(conn, store, plan, request, now)
    busy = _busy(conn, list(plan.owner), start, end, now)
    free = _free_slots(conn, plan.schedules, epoch(request.start), epoch(request.end))
    return Calendar(new_patient=not existing(), busy=cast(Any, busy()), free=free())


async def read_calendar_async(
    reader: AsyncReader, plan: FindPlan, request: FindRequest, now: datetime
) -> Calendar:
    """The same reads as :func:`read_calendar`, on PostgreSQL's async connections (no thread
    hop). A ``patient-resource`` is matched on a sync connection: callers use the sync path
    for it."""
    assert request.patient_resource is None
    start, end = _busy_window(request)
    owner = list(plan.owner)
    queries: list[tuple[str, tuple[Any, ...]]] = [
        (
            _dialect_sql(BUSY_OVERLAPPING_SQL["postgresql"], "postgresql", 1),
            (owner, end, start, now, lower(start), owner, end, start, now),
        ),
        (
            _dialect_sql(_FREE_SLOTS["postgresql"], "postgresql", 1),
            (plan.schedules, epoch(request.start), epoch(request.end)),
        ),
    ]
    existing = _existing_sql(plan.existing)
    if request.patient_id is not None and existing is not None:
        params = _existing_params(plan.existing, request.patient_id, request, now, _as_is)
        queries.append((_dialect_sql(existing, "postgresql", 0), params))
    busy_rows, free_rows, *visits = await reader.fetch_all(queries)
    new_patient = not (visits and visits[0])
    return Calendar(new_patient, cast(Any, busy_rows), _free_by_schedule(free_rows))


def _is_existing_patient(
    conn: Connection, store: Store, plan: FindPlan, req: FindRequest, now: datetime
) -> Callable[[], bool]:
    """New or existing, from our own records (the clinic file's ``existing_patient``): an
    earlier visit here, or the Patient's tag.

    Read straight from the search index (Appointment ``patient`` reference, ``status`` token
    and ``date``; Patient ``_tag``), as the searches would, without building a Bundle. The
    query is sent now; the returned function reads the answer.
    """
    patient_id = req.patient_id or match_patients(conn, store, req.patient_resource).id
    sql = _existing_sql(plan.existing)
    if patient_id is None or sql is None:
        return lambda: False
    date_type = IdxDate.__table__.c.low.type.dialect_impl(conn.dialect)
    put: Callable[[Any], Any] = date_type.bind_processor(conn.dialect) or _as_is
    rows = _sent(conn, sql, None, _existing_params(plan.existing, patient_id, req, now, put))
    return lambda: bool(rows())


def _existing_params(
    existing: ExistingPatient,
    patient_id: str,
    req: FindRequest,
    now: datetime,
    put: Callable[[Any], Any],
) -> tuple[Any, ...]:
    """The parameters of :func:`_existing_sql`'s query, in its order."""
    params: tuple[Any, ...] = ()
    if existing.visits:
        params = (patient_id, req.moving or "", *existing.visits, put(now))
        if existing.within_years is not None:
            params += (put(_years_before(now, existing.within_years)),)
    if existing.flag:
        params += (patient_id, *EXISTING_TAG)
    return params


def _years_before(now: datetime, years: int) -> datetime:
    try:
        return now.replace(year=now.year - years)
    except ValueError:  # 29 February
        return now.replace(year=now.year - years, day=28)


# A visit of the patient's with a counted status that began before now (and not before
# ``within_years`` ago), other than the Appointment being moved; an Appointment without a start
# counts by its status.
_EARLIER_VISIT = (
    "SELECT r.res_id FROM idx_reference ir JOIN resource r ON r.seq = ir.seq "
    "JOIN idx_token it ON it.seq = ir.seq AND it.res_type = 'Appointment' "
    "AND it.param = 'status' "
    "LEFT JOIN idx_date d ON d.seq = ir.seq AND d.res_type = 'Appointment' AND d.param = 'date' "
    "WHERE ir.res_type = 'Appointment' AND ir.param = 'patient' AND ir.target_id = {p} "
    "AND r.res_id <> {p} AND it.code IN ({statuses}) "
    "AND (d.low IS NULL OR (d.low < {p}{since}))"
)
_SINCE = " AND d.low >= {p}"
# The Patient's tag (scheduling.patients.EXISTING_TAG).
_TAGGED = (
    "SELECT r.res_id FROM resource r JOIN idx_token t ON t.seq = r.seq "
    "AND t.res_type = 'Patient' AND t.param = '_tag' "
    "WHERE r.res_type = 'Patient' AND r.res_id = {p} AND t.system = {p} AND t.code = {p}"
)


@lru_cache(maxsize=16)
def _existing_sql(existing: ExistingPatient) -> str | None:
    """A row if the patient is an existing one as the clinic file says (parameters from
    :func:`_existing_params`); None when nothing can make anyone an existing patient."""
    parts = []
    if existing.visits:
        statuses = ", ".join(["{p}"] * len(existing.visits))
        since = _SINCE if existing.within_years is not None else ""
        parts.append(_EARLIER_VISIT.format(statuses=statuses, since=since, p="{p}"))
    if existing.flag:
        parts.append(_TAGGED)
    return " UNION ALL ".join(parts) + " LIMIT 1" if parts else None


def match_patient(conn: Connection, store: Store, patient: dict[str, Any] | None) -> str | None:
    """Match an HL7 message's patient by identifier, else by family name and birth date: the
    first of those searches that finds exactly one Patient (all sent at once). ``$find`` and
    ``$book`` match with :func:`scheduling.patients.match_patients`, which also breaks a tie
    by phone number and tells none from several."""
    with pipelined(conn):
        read = send_match_patient(conn, store, patient)
    return read()


def send_match_patient(
    conn: Connection, store: Store, patient: dict[str, Any] | None
) -> Callable[[], str | None]:
    """:func:`match_patient`'s queries, sent now (call inside ``pipelined``, with others); the
    returned function reads the match."""
    if not patient:
        return lambda: None
    tries: list[list[tuple[str, str]]] = [
        [("identifier", f"{i.get('system', '')}|{i['value']}")]
        for i in patient.get("identifier", [])
        if isinstance(i, dict) and isinstance(i.get("value"), str) and i["value"]
    ]
    names = [n.get("family") for n in patient.get("name", []) if isinstance(n, dict)]
    birth = patient.get("birthDate")
    if isinstance(birth, str) and birth and names and isinstance(names[0], str) and names[0]:
        tries.append([("family:exact", names[0]), ("birthdate", birth)])
    read = send_blind_match(conn, store.keys, "Patient", tries)
    return lambda: next((ids[0] for ids in read() if len(ids) == 1), None)


def _busy(
    conn: Connection, schedules: list[str], start: datetime, end: datetime, now: datetime
) -> Callable[[], list[tuple[Any, ...]]]:
    """Busy time on ``schedules`` overlapping [start, end): (schedule id, start, end, kind,
    appointment id, visit type), from the returned function (the query is sent now).
    Datetimes go in and come out through SQLAlchemy's own processors for the column type, so
    SQLite sees and returns exactly what the ORM stores (naive UTC text)."""
    if not schedules:
        return list
    dialect = conn.dialect
    kind = BT.c.start.type.dialect_impl(dialect)
    put: Callable[[Any], Any] = kind.bind_processor(dialect) or _as_is
    when = (put(end), put(start), put(now))
    template = BUSY_OVERLAPPING_SQL[dialect.name]
    rows = _sent(conn, template, schedules, (*when, put(lower(start))), when)
    get = kind.result_processor(dialect, None)

    def read() -> list[tuple[Any, ...]]:
        if get is None:
            return [tuple(r) for r in rows()]
        return [(r[0], get(r[1]), get(r[2]), r[3], r[4], r[5]) for r in rows()]

    return read


def _as_is(value: Any) -> Any:
    return value


def _sent(
    conn: Connection, template: str, schedules: list[str] | None, *groups: tuple[Any, ...]
) -> Callable[[], list[Any]]:
    """Send ``template`` on the driver's own cursor (building SQLAlchemy rows for a clinic's
    day of Slots cost more than the query); the returned function reads its rows. It matches
    the schedules at each ``{schedules}`` (if any) and takes each group of other parameters
    (``{p}``) after them. Queries sent before any is read go to PostgreSQL in one round trip
    inside the caller's pipeline (``resources.sql.direct.pipelined``)."""
    sql = _dialect_sql(template, conn.dialect.name, len(schedules or ()))
    if schedules is None:
        params = tuple(v for group in groups for v in group)
    elif conn.dialect.name == "sqlite":
        params = tuple(v for group in groups for v in (*schedules, *group))
    else:
        params = tuple(v for group in groups for v in (schedules, *group))
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql, params)
    except BaseException:
        cursor.close()
        raise

    def rows() -> list[Any]:
        try:
            return list(cursor.fetchall())
        finally:
            cursor.close()

    return rows


def _dialect_sql(template: str, dialect: str, schedules: int) -> str:
    if dialect == "sqlite":
        return template.format(schedules=f"IN ({','.join('?' * schedules)})", p="?")
    return template.format(schedules="= ANY(%s)", p="%s")


def _free_slots(
    conn: Connection, schedules: list[str], start: int, end: int
) -> Callable[[], dict[str, FreeSlots]]:
    """Free Slots starting in the window, by schedule, in start order, from the returned
    function (the query is sent now).

    One range scan of a covering index per schedule, each schedule's Slots aggregated into
    one row (a clinic's day is 2,000 Slots: a Python row apiece cost more than the scan).
    """
    if not schedules:
        return dict
    rows = _sent(conn, _FREE_SLOTS[conn.dialect.name], schedules, (start, end))
    return lambda: _free_by_schedule(rows())


_FREE_SLOTS_WHERE = (
    "FROM slot_time WHERE schedule_id {schedules} AND status = 'free' "
    "AND start_s >= {p} AND start_s < {p} GROUP BY schedule_id"
)
_FREE_SLOTS = {
    # Both aggregate in the covering index's order, which _free_by_schedule checks rather than
    # trusts (SQLite 3.40 has no ORDER BY inside an aggregate; PostgreSQL 15 would sort every
    # group again). Ids cannot hold a comma.
    "sqlite": "SELECT schedule_id, group_concat(start_s), group_concat(end_s), "
    "group_concat(slot_id) " + _FREE_SLOTS_WHERE,
    "postgresql": "SELECT schedule_id, array_agg(start_s), array_agg(end_s), array_agg(slot_id) "
    + _FREE_SLOTS_WHERE,
}


def _free_by_schedule(rows: list[Any]) -> dict[str, FreeSlots]:
    out: dict[str, FreeSlots] = {}
    for sched, starts, ends, ids in rows:
        if isinstance(starts, str):  # SQLite's group_concat
            starts = list(map(int, starts.split(",")))
            ends = list(map(int, ends.split(",")))
            ids = ids.split(",")
        if len(ids) != len(starts):
            raise RuntimeError(f"slot_time: a Slot id of schedule {sched} holds a comma")
        if starts != sorted(starts):
            order = sorted(range(len(starts)), key=starts.__getitem__)
            starts = [starts[k] for k in order]
            ends = [ends[k] for k in order]
            ids = [ids[k] for k in order]
        out[sched] = (starts, ends, ids)
    return out


def epoch(when: datetime) -> int:
    return int(as_utc(when).timestamp())
