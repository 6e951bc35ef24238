"""``Appointment/$find`` (IHE ITI-115): bookable options for a visit, after every rule.

Free Slots come from ``slot_time`` (kept with the Slots' index rows); time taken in
``busy_time`` (bookings, buffers, unexpired holds) is removed; contiguous Slots are composed to
the visit's length; each candidate start is checked against the clinic's rules for this
patient.  Nothing is written.
See https://profiles.ihe.net/ITI/Scheduling/ITI-115.html.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from itertools import islice, repeat
from typing import Any, cast
from zoneinfo import ZoneInfo

from sqlalchemy import Connection

from conformance.operations import OPERATIONS, parse_operation
from fhir_server.errors import BadRequest
from fhir_server.scheduling.availability import schedule_id
from fhir_server.scheduling.clinic import VISIT_TYPE_SYSTEM
from fhir_server.scheduling.config import ClinicConfig, VisitType
from fhir_server.scheduling.rules import Booked, DayPolicy, day_policy
from fhir_server.scheduling.spans import BUSY_OVERLAPPING_SQL, lower
from resources.fhirdate import as_utc, parse_fhir_date
from resources.search.lookup import blind_match
from resources.sql.async_reads import AsyncReader
from resources.sql.tables import BusyTime
from resources.store import Store

__all__ = [
    "Calendar",
    "FindPlan",
    "FindRequest",
    "Found",
    "Option",
    "compute_options",
    "find_options",
    "plan_find",
    "proposed_appointment",
    "read_calendar",
    "read_calendar_async",
    "schedule_days",
]

BT = BusyTime.__table__


@dataclass
class FindRequest:
    start: datetime
    end: datetime
    visit_type: str
    practitioners: list[str] = field(default_factory=list)  # Practitioner ids
    specialties: list[str] = field(default_factory=list)  # codes or system|code
    locations: list[str] = field(default_factory=list)  # Location ids
    location_text: str | None = None
    patient_id: str | None = None
    patient_resource: dict[str, Any] | None = None
    count: int = 50
    # the Appointment being moved: it does not make its patient an existing one
    moving: str | None = None


@dataclass(frozen=True)
class Option:
    practitioner: str
    location: str
    visit: VisitType
    start: datetime
    end: datetime
    slots: tuple[str, ...]


def _check_window(config: ClinicConfig, req: FindRequest) -> None:
    if req.end <= req.start:
        raise BadRequest("end must be after start", expression=["end"])
    widest = timedelta(days=config.rules.max_find_window_days)
    if req.end - req.start > widest:
        raise BadRequest(
            f"the window is wider than {widest.days} days; ask for a shorter window",
            expression=["end"],
        )


def _is_existing_patient(conn: Connection, store: Store, req: FindRequest) -> Callable[[], bool]:
    """New or existing, from our own records: an existing patient has had a visit here.

    Read straight from the search index (Appointment ``patient`` reference and ``status``
    token), as the Appointment search would, without building a Bundle. The query is sent
    now; the returned function reads the answer.
    """
    patient_id = req.patient_id or match_patient(conn, store, req.patient_resource)
    if patient_id is None:
        return lambda: False
    rows = _sent(conn, _ACTIVE_VISITS, None, (patient_id,))
    return lambda: any(res_id != req.moving for (res_id,) in rows())


# At most two: one may be the Appointment being moved.
_ACTIVE_VISITS = (
    "SELECT r.res_id FROM idx_reference ir JOIN resource r ON r.seq = ir.seq "
    "JOIN idx_token it ON it.seq = ir.seq AND it.res_type = 'Appointment' "
    "AND it.param = 'status' "
    "WHERE ir.res_type = 'Appointment' AND ir.param = 'patient' AND ir.target_id = {p} "
    "AND it.code IN ('booked', 'arrived', 'fulfilled', 'checked-in') LIMIT 2"
)


def match_patient(conn: Connection, store: Store, patient: dict[str, Any] | None) -> str | None:
    """Match a ``patient-resource`` by identifier, else by family name and birth date: the
    first of those searches that finds exactly one Patient (all sent at once)."""
    if not patient:
        return None
    tries: list[list[tuple[str, str]]] = [
        [("identifier", f"{i.get('system', '')}|{i['value']}")]
        for i in patient.get("identifier", [])
        if isinstance(i, dict) and isinstance(i.get("value"), str) and i["value"]
    ]
    names = [n.get("family") for n in patient.get("name", []) if isinstance(n, dict)]
    birth = patient.get("birthDate")
    if isinstance(birth, str) and birth and names and isinstance(names[0], str) and names[0]:
        tries.append([("family:exact", names[0]), ("birthdate", birth)])
    for ids in blind_match(conn, store.keys, "Patient", tries):
        if len(ids) == 1:
            return ids[0]
    return None


def _schedules(config: ClinicConfig, req: FindRequest, visit: VisitType) -> list[tuple[str, str]]:
    """(practitioner, location) pairs that offer this visit and fit the filters."""
    codes = {s.split("|")[-1] for s in req.specialties}
    text = req.location_text.lower() if req.location_text else None
    out = []
    for practitioner, location in config.schedule_pairs:
        if not config.offers(visit, practitioner):
            continue
        if req.practitioners and practitioner not in req.practitioners:
            continue
        if req.locations and location not in req.locations:
            continue
        if text and text not in config.location_names[location].lower():
            continue
        if codes and codes.isdisjoint(config.specialty_codes[practitioner]):
            continue
        out.append((practitioner, location))
    return out


def schedule_days(config: ClinicConfig, request: FindRequest) -> float:
    """How much calendar a ``$find`` will scan: schedules times days (0 if it is invalid)."""
    visit = config.visit_type(request.visit_type)
    if visit is None or request.end <= request.start:
        return 0.0
    return len(_schedules(config, request, visit)) * _days_asked(request)


def _days_asked(request: FindRequest) -> float:
    return max((request.end - request.start).total_seconds() / 86400, 1.0)


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


# (start, end, id) of a schedule's free Slots, as three lists in start order
FreeSlots = tuple[list[int], list[int], list[str]]


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


def _epoch(when: datetime) -> int:
    return int(as_utc(when).timestamp())


def _from_epoch(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class _Days:
    """Local days around a window, as epoch-second boundaries (for a bisect per candidate)."""

    def __init__(self, config: ClinicConfig, start: datetime, end: datetime) -> None:
        tz = config.tz
        first = start.astimezone(tz).date() - timedelta(days=1)
        count = (end.astimezone(tz).date() - first).days + 2
        self.days, self.bounds = _local_days(config.timezone, first, count)

    def index(self, instant: int) -> int:
        return bisect_right(self.bounds, instant) - 1


@lru_cache(maxsize=4096)
def _local_days(timezone: str, first: date, count: int) -> tuple[list[date], list[int]]:
    """``count`` local days from ``first`` and the epoch second each begins (shared: read only)."""
    tz = ZoneInfo(timezone)
    days = [first + timedelta(days=k) for k in range(count)]
    return days, [_epoch(datetime.combine(d, time(0), tzinfo=tz)) for d in days]


@dataclass(frozen=True)
class Found:
    """``$find``'s answer: how many options there are, and the first ``limit`` of them."""

    total: int
    options: list[Option]


@dataclass(frozen=True)
class FindPlan:
    """What a ``$find`` will look at: the visit, the schedules to offer, and the schedules
    whose busy time counts (every location of the practitioners asked about, since caps and
    buffers count their visits anywhere)."""

    visit: VisitType
    pairs: list[tuple[str, str]]  # (practitioner, location) to offer
    owner: dict[str, str]  # schedule id -> practitioner, for busy time

    @property
    def schedules(self) -> list[str]:
        return [schedule_id(p, loc) for p, loc in self.pairs]

    def schedule_days(self, request: FindRequest) -> float:
        """:func:`schedule_days` of a planned (so valid) request, without choosing again."""
        return len(self.pairs) * _days_asked(request)


def plan_find(config: ClinicConfig, request: FindRequest) -> FindPlan:
    """Check the request (400s that say what to fix) and choose the schedules."""
    _check_window(config, request)
    visit = config.visit_type(request.visit_type)
    if visit is None:
        known = ", ".join(v.code for v in config.visit_types)
        raise BadRequest(
            f"unknown visit-type {request.visit_type!r}; known: {known}", expression=["visit-type"]
        )
    pairs = _schedules(config, request, visit)
    asked = {p for p, _ in pairs}
    owner = {
        schedule_id(h.practitioner, h.location): h.practitioner
        for h in config.hours
        if h.practitioner in asked
    }
    return FindPlan(visit, pairs, owner)


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
    existing = _is_existing_patient(conn, store, request)
    busy = _busy(conn, list(plan.owner), start, end, now)
    free = _free_slots(conn, plan.schedules, _epoch(request.start), _epoch(request.end))
    return Calendar(new_patient=not existing(), busy=cast(Any, busy()), free=free())


async def read_calendar_async(
    reader: AsyncReader, plan: FindPlan, request: FindRequest, now: datetime
) -> Calendar:
    """The same reads as :func:`read_calendar`, on PostgreSQL's async connections (no thread
    hop). A ``patient-resource`` needs a Patient search: callers use the sync path for it."""
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
            (plan.schedules, _epoch(request.start), _epoch(request.end)),
        ),
    ]
    if request.patient_id is not None:
        queries.append((_dialect_sql(_ACTIVE_VISITS, "postgresql", 0), (request.patient_id,)))
    busy_rows, free_rows, *visits = await reader.fetch_all(queries)
    new_patient = not visits or not any(res_id != request.moving for (res_id,) in visits[0])
    return Calendar(new_patient, cast(Any, busy_rows), _free_by_schedule(free_rows))


def find_options(
    conn: Connection,
    *,
    store: Store,
    config: ClinicConfig,
    request: FindRequest,
    now: datetime,
    ignore_hold: str | None = None,
    limit: int | None = None,
) -> Found:
    """Bookable options in the window, ordered by start (then practitioner)."""
    plan = plan_find(config, request)
    calendar = read_calendar(conn, store, plan, request, now)
    return compute_options(
        config, plan, request, calendar, now=now, ignore_hold=ignore_hold, limit=limit
    )


def compute_options(
    config: ClinicConfig,
    plan: FindPlan,
    request: FindRequest,
    calendar: Calendar,
    *,
    now: datetime,
    ignore_hold: str | None = None,
    limit: int | None = None,
) -> Found:
    """The options (no database: all it needs is in ``calendar``).

    Every option is counted (``total``); only the first ``limit`` are built.  Times are epoch
    seconds inside the loop, and rules are compiled once per practitioner and day
    (:func:`~fhir_server.scheduling.rules.day_policy`), so a whole clinic's day is cheap.
    """
    visit, pairs, owner = plan.visit, plan.pairs, plan.owner
    new_patient = calendar.new_patient
    step = config.slot_minutes * 60
    length = visit.minutes * 60
    need = visit.minutes // config.slot_minutes
    window_end = _epoch(request.end)
    days = _Days(config, request.start, request.end)
    taken: dict[str, list[tuple[int, int]]] = {}
    booked: dict[tuple[str, int], list[Booked]] = {}
    for sched_id, b_start, b_end, kind, appointment_id, visit_type in calendar.busy:
        if ignore_hold and kind == "held" and appointment_id == ignore_hold:
            continue
        b_start, b_end = as_utc(b_start), as_utc(b_end)
        taken.setdefault(sched_id, []).append((_epoch(b_start), _epoch(b_end)))
        if kind == "booked" and sched_id in owner:
            key = (owner[sched_id], days.index(_epoch(b_start)))
            booked.setdefault(key, []).append(Booked(visit_type, b_start, b_end))
    policies: dict[tuple[str, int], DayPolicy] = {}
    total = 0
    streams = []  # per schedule: the admitted starts as (start, practitioner, location, index)
    for practitioner, location in pairs:
        sched = schedule_id(practitioner, location)
        starts, ends, ids = _untaken(calendar.free.get(sched), sorted(taken.get(sched, [])))
        # candidates: Slots followed by enough others without a gap to hold the visit, in
        # runs of Slots that follow each other (a run ends where the next Slot does not start
        # as this one ends); the visit must also end inside the window
        ends_run = [
            j
            for j, (start, end, following) in enumerate(zip(starts, ends, starts[1:], strict=False))
            if end - start != step or end != following
        ]
        ends_run.append(len(starts) - 1)
        cut = bisect_right(starts, window_end - length)
        candidates: list[int] = []
        first = 0
        for last in ends_run:
            candidates += range(first, min(last - need + 2, cut))
            first = last + 1
        admitted: list[int] = []
        lo = 0
        while lo < len(candidates):
            day = days.index(starts[candidates[lo]])
            next_day = days.bounds[day + 1] if day + 1 < len(days.bounds) else window_end + 1
            hi = bisect_left(candidates, next_day, lo, key=starts.__getitem__)
            policy = policies.get((practitioner, day))
            if policy is None:
                policy = day_policy(
                    config,
                    practitioner,
                    visit,
                    new_patient,
                    days.days[day],
                    now=now,
                    booked=booked.get((practitioner, day), []),
                )
                policies[(practitioner, day)] = policy
            admitted += policy.admits(starts, candidates[lo:hi], length)
            lo = hi
        total += len(admitted)
        streams.append(
            zip(
                map(starts.__getitem__, admitted),
                repeat(practitioner),
                repeat(location),
                admitted,
                repeat(ids),
                strict=False,  # the repeats are endless
            )
        )
    merged = heapq.merge(*streams, key=lambda o: o[:4])
    options = [
        Option(
            practitioner,
            location,
            visit,
            _from_epoch(start),
            _from_epoch(start + length),
            tuple(ids[i : i + need]),
        )
        for start, practitioner, location, i, ids in islice(merged, limit)
    ]
    return Found(total, options)


def _untaken(free: FreeSlots | None, taken: list[tuple[int, int]]) -> FreeSlots:
    """The free Slots that overlap no taken time (both in start order; taken never overlaps)."""
    if free is None:
        return [], [], []
    if not taken:
        return free
    starts, ends, ids = free
    keep = []
    j = 0
    for k, start in enumerate(starts):
        while j < len(taken) and taken[j][1] <= start:
            j += 1
        if j < len(taken) and taken[j][0] < ends[k]:
            continue
        keep.append(k)
    return [starts[k] for k in keep], [ends[k] for k in keep], [ids[k] for k in keep]


def proposed_appointment(
    config: ClinicConfig, option: Option, *, patient_id: str | None
) -> dict[str, Any]:
    """The IHE proposed Appointment for one option (not stored)."""
    tz = config.tz
    v = option.visit
    participants: list[dict[str, Any]] = [
        {
            "actor": {"reference": f"Practitioner/{option.practitioner}"},
            "required": "required",
            "status": "needs-action",
        },
        {
            "actor": {"reference": f"Location/{option.location}"},
            "required": "required",
            "status": "needs-action",
        },
    ]
    if patient_id:
        participants.append(
            {
                "actor": {"reference": f"Patient/{patient_id}"},
                "required": "required",
                "status": "needs-action",
            }
        )
    return {
        "resourceType": "Appointment",
        "status": "proposed",
        "serviceType": [
            {
                "coding": [{"system": VISIT_TYPE_SYSTEM, "code": v.code, "display": v.display}],
                "text": v.display,
            }
        ],
        "start": option.start.astimezone(tz).isoformat(),
        "end": option.end.astimezone(tz).isoformat(),
        "minutesDuration": v.minutes,
        "slot": [{"reference": f"Slot/{s}"} for s in option.slots],
        "participant": participants,
    }


def _instant(name: str, raw: str) -> datetime:
    try:
        value = parse_fhir_date(raw)
    except ValueError as exc:
        raise BadRequest(f"{name}: {exc}", expression=[name]) from exc
    if value.precision in ("year", "month", "day") or not value.has_offset:
        raise BadRequest(
            f"{name} must be a dateTime with a time zone offset, "
            f"e.g. 2026-12-01T09:00:00-05:00 (got {raw!r})",
            expression=[name],
        )
    return value.low


def _ref_id(raw: str, rtype: str) -> str:
    return raw.split("/")[-1] if raw.startswith(f"{rtype}/") or "/" not in raw else raw


def parse_find(params: list[tuple[str, Any]], *, max_count: int = 200) -> FindRequest:
    """Build a FindRequest from GET query pairs or POST Parameters (name, value) pairs."""
    values = parse_operation(OPERATIONS["appointment-find"], params)
    count = 50
    if "_count" in values:
        try:
            count = max(1, min(int(values["_count"][0]), max_count))
        except ValueError as exc:
            raise BadRequest("_count must be a whole number", expression=["_count"]) from exc
    resource = values.get("patient-resource", [None])[0]
    if resource is not None and not isinstance(resource, dict):
        raise BadRequest("patient-resource must be a Patient resource")
    return FindRequest(
        start=_instant("start", values["start"][0]),
        end=_instant("end", values["end"][0]),
        visit_type=str(values["visit-type"][0]).split("|")[-1],
        practitioners=[_ref_id(v, "Practitioner") for v in values.get("practitioner", [])],
        specialties=list(values.get("specialty", [])),
        locations=[_ref_id(v, "Location") for v in values.get("location-reference", [])],
        location_text=(values.get("location-string") or [None])[0],
        patient_id=next((_ref_id(v, "Patient") for v in values.get("patient-reference", [])), None),
        patient_resource=resource,
        count=count,
    )


def parameters_pairs(body: Any) -> list[tuple[str, Any]]:
    """(name, value) pairs from a FHIR Parameters resource (POST $find)."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise BadRequest("POST $find takes a Parameters resource")
    out: list[tuple[str, Any]] = []
    for p in body.get("parameter", []):
        name = p.get("name")
        if "resource" in p:
            out.append((name, p["resource"]))
            continue
        value = next((v for k, v in p.items() if k.startswith("value")), None)
        if isinstance(value, dict) and "reference" in value:
            value = value["reference"]
        elif isinstance(value, dict) and "coding" in value:
            c = value["coding"][0]
            value = f"{c.get('system', '')}|{c['code']}" if c.get("system") else c["code"]
        elif isinstance(value, dict) and "code" in value:
            value = value["code"]
        out.append((name, value))
    return out
