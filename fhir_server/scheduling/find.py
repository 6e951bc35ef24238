"""``Appointment/$find`` (IHE ITI-115): bookable options for a visit, after every rule.

Free Slots come from ``slot_time`` (kept with the Slots' index rows); time taken in
``busy_time`` (bookings, buffers, unexpired holds) is removed; contiguous Slots are composed to
the visit's length; each candidate start is checked against the clinic's rules for this
patient.  Nothing is written.
See https://profiles.ihe.net/ITI/Scheduling/ITI-115.html.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any, cast

from sqlalchemy import Connection, and_, bindparam, select

from conformance.operations import OPERATIONS, parse_operation
from fhir_server.errors import BadRequest
from fhir_server.scheduling.availability import schedule_id
from fhir_server.scheduling.clinic import VISIT_TYPE_SYSTEM
from fhir_server.scheduling.config import ClinicConfig, VisitType
from fhir_server.scheduling.rules import Booked, DayPolicy, day_policy
from fhir_server.scheduling.spans import BUSY_OVERLAPPING_SQL, lower
from resources import service
from resources.fhirdate import as_utc, parse_fhir_date
from resources.sql.async_reads import AsyncReader
from resources.sql.tables import BusyTime, SlotTime
from resources.store import INDEX_TABLES, R, Store

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
ST = SlotTime.__table__
IR = INDEX_TABLES["reference"]
IT = INDEX_TABLES["token"]
ACTIVE_STATUSES = "booked,arrived,fulfilled,checked-in"


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


def _is_existing_patient(conn: Connection, store: Store, req: FindRequest) -> bool:
    """New or existing, from our own records: an existing patient has had a visit here.

    Read straight from the search index (Appointment ``patient`` reference and ``status``
    token), as the Appointment search would, without building a Bundle.
    """
    patient_id = req.patient_id or match_patient(conn, store, req.patient_resource)
    if patient_id is None:
        return False
    rows = conn.execute(
        _ACTIVE_VISITS, {"pid": patient_id, "statuses": ACTIVE_STATUSES.split(",")}
    ).scalars()
    return any(res_id != req.moving for res_id in rows)


_ACTIVE_VISITS = (
    select(R.c.res_id)
    .select_from(IR)
    .join(R, R.c.seq == IR.c.seq)
    .join(
        IT,
        and_(IT.c.seq == IR.c.seq, IT.c.res_type == "Appointment", IT.c.param == "status"),
    )
    .where(
        IR.c.res_type == "Appointment",
        IR.c.param == "patient",
        IR.c.target_id == bindparam("pid"),
        IT.c.code.in_(bindparam("statuses", expanding=True)),
    )
    .limit(2)
)


def match_patient(conn: Connection, store: Store, patient: dict[str, Any] | None) -> str | None:
    """Match a ``patient-resource`` by identifier, else by family name and birth date."""
    if not patient:
        return None
    tries: list[list[tuple[str, str]]] = [
        [("identifier", f"{i.get('system', '')}|{i['value']}")]
        for i in patient.get("identifier", [])
        if isinstance(i, dict) and i.get("value")
    ]
    names = [n.get("family") for n in patient.get("name", []) if isinstance(n, dict)]
    if patient.get("birthDate") and names and names[0]:
        tries.append([("family:exact", names[0]), ("birthdate", patient["birthDate"])])
    for params in tries:
        _, result = service.search(
            conn,
            store=store,
            resource_type="Patient",
            params=[*params, ("_count", "2"), ("_total", "none")],  # one or not: no count
        )
        if len(result.matches) == 1:
            return result.matches[0].res_id
    return None


def _schedules(config: ClinicConfig, req: FindRequest, visit: VisitType) -> list[tuple[str, str]]:
    """(practitioner, location) pairs that offer this visit and fit the filters."""
    out = []
    specialties = {p.id: p.specialties for p in config.practitioners}
    loc_names = {loc.id: loc.name for loc in config.locations}
    for h in config.hours:
        pair = (h.practitioner, h.location)
        if pair in out or not config.offers(visit, h.practitioner):
            continue
        if req.practitioners and h.practitioner not in req.practitioners:
            continue
        if req.locations and h.location not in req.locations:
            continue
        if req.location_text and req.location_text.lower() not in loc_names[h.location].lower():
            continue
        if req.specialties and not any(
            s.split("|")[-1] == c.code for s in req.specialties for c in specialties[h.practitioner]
        ):
            continue
        out.append(pair)
    return out


def schedule_days(config: ClinicConfig, request: FindRequest) -> float:
    """How much calendar a ``$find`` will scan: schedules times days (0 if it is invalid)."""
    visit = config.visit_type(request.visit_type)
    if visit is None or request.end <= request.start:
        return 0.0
    days = (request.end - request.start).total_seconds() / 86400
    return len(_schedules(config, request, visit)) * max(days, 1.0)


def _busy(
    conn: Connection, schedules: list[str], start: datetime, end: datetime, now: datetime
) -> list[tuple[Any, ...]]:
    """Busy time on ``schedules`` overlapping [start, end): (schedule id, start, end, kind,
    appointment id, visit type). Datetimes go in and come out through SQLAlchemy's own
    processors for the column type, so SQLite sees and returns exactly what the ORM stores
    (naive UTC text)."""
    if not schedules:
        return []
    dialect = conn.dialect
    kind = BT.c.start.type.dialect_impl(dialect)
    put: Callable[[Any], Any] = kind.bind_processor(dialect) or _as_is
    when = (put(end), put(start), put(now))
    template = BUSY_OVERLAPPING_SQL[dialect.name]
    rows = _driver_rows(conn, template, schedules, (*when, put(lower(start))), when)
    get = kind.result_processor(dialect, None)
    if get is None:
        return [tuple(r) for r in rows]
    return [(r[0], get(r[1]), get(r[2]), r[3], r[4], r[5]) for r in rows]


def _as_is(value: Any) -> Any:
    return value


def _driver_rows(
    conn: Connection, template: str, schedules: list[str], *groups: tuple[Any, ...]
) -> list[Any]:
    """Run ``template`` on the driver's own cursor (building SQLAlchemy rows for a clinic's
    day of Slots cost more than the query). It matches the schedules at each ``{schedules}``
    and takes each group of other parameters (``{p}``) after them."""
    if conn.dialect.name == "sqlite":
        marks = f"IN ({','.join('?' * len(schedules))})"
        sql = template.format(schedules=marks, p="?")
        params = tuple(v for group in groups for v in (*schedules, *group))
    else:
        sql = template.format(schedules="= ANY(%s)", p="%s")
        params = tuple(v for group in groups for v in (schedules, *group))
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql, params)
        return list(cursor.fetchall())
    finally:
        cursor.close()


def _free_slots(
    conn: Connection, schedules: list[str], start: int, end: int
) -> dict[str, list[tuple[int, int, str]]]:
    """Free Slots starting in the window, by schedule, in start order.

    One range scan of a covering index per schedule.
    """
    if not schedules:
        return {}
    rows = _driver_rows(conn, _FREE_SLOTS, schedules, (start, end))
    out: dict[str, list[tuple[int, int, str]]] = {}
    for sched, s_start, s_end, sid in rows:
        out.setdefault(sched, []).append((s_start, s_end, sid))
    return out


_FREE_SLOTS = (
    "SELECT schedule_id, start_s, end_s, slot_id FROM slot_time "
    "WHERE schedule_id {schedules} AND status = 'free' AND start_s >= {p} AND start_s < {p} "
    "ORDER BY schedule_id, start_s"
)


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
        self.days = [first + timedelta(days=k) for k in range(count)]
        self.bounds = [_epoch(datetime.combine(d, time(0), tzinfo=tz)) for d in self.days]

    def index(self, instant: int) -> int:
        return bisect_right(self.bounds, instant) - 1


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
    free: dict[str, list[tuple[int, int, str]]]  # schedule id -> (start, end, Slot id)


def _busy_window(request: FindRequest) -> tuple[datetime, datetime]:
    return request.start - timedelta(days=1), request.end + timedelta(days=1)


def read_calendar(
    conn: Connection, store: Store, plan: FindPlan, request: FindRequest, now: datetime
) -> Calendar:
    start, end = _busy_window(request)
    return Calendar(
        new_patient=not _is_existing_patient(conn, store, request),
        busy=cast(Any, _busy(conn, list(plan.owner), start, end, now)),
        free=_free_slots(conn, plan.schedules, _epoch(request.start), _epoch(request.end)),
    )


_PG_ACTIVE_VISITS = (
    "SELECT r.res_id FROM idx_reference ir JOIN resource r ON r.seq = ir.seq "
    "JOIN idx_token it ON it.seq = ir.seq AND it.res_type = 'Appointment' "
    "AND it.param = 'status' "
    "WHERE ir.res_type = 'Appointment' AND ir.param = 'patient' AND ir.target_id = %s "
    "AND it.code = ANY(%s) LIMIT 2"
)


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
            BUSY_OVERLAPPING_SQL["postgresql"].format(schedules="= ANY(%s)", p="%s"),
            (owner, end, start, now, lower(start), owner, end, start, now),
        ),
        (
            _FREE_SLOTS.format(schedules="= ANY(%s)", p="%s"),
            (plan.schedules, _epoch(request.start), _epoch(request.end)),
        ),
    ]
    if request.patient_id is not None:
        queries.append((_PG_ACTIVE_VISITS, (request.patient_id, ACTIVE_STATUSES.split(","))))
    busy_rows, free_rows, *visits = await reader.fetch_all(queries)
    new_patient = not visits or not any(res_id != request.moving for (res_id,) in visits[0])
    free: dict[str, list[tuple[int, int, str]]] = {}
    for sched, s_start, s_end, sid in free_rows:
        free.setdefault(sched, []).append((s_start, s_end, sid))
    return Calendar(new_patient, cast(Any, busy_rows), free)


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
    free = calendar.free
    policies: dict[tuple[str, int], DayPolicy] = {}
    found: list[tuple[int, str, str, int]] = []  # start, practitioner, location, Slot index
    runs: dict[tuple[str, str], list[tuple[int, int, str]]] = {}
    for practitioner, location in pairs:
        sched = schedule_id(practitioner, location)
        slots = _untaken(free.get(sched, []), sorted(taken.get(sched, [])))
        runs[(practitioner, location)] = slots
        # chain[i]: how many Slots from i on follow each other without a gap
        chain = [1] * len(slots)
        for i in range(len(slots) - 2, -1, -1):
            s_start, s_end, _ = slots[i]
            if s_end - s_start == step and s_end == slots[i + 1][0]:
                chain[i] = chain[i + 1] + 1
        day, next_day, policy = -1, -1, None
        for i, (start, _, _) in enumerate(slots):
            if chain[i] < need or start + length > window_end:
                continue
            if start >= next_day or start < days.bounds[day]:
                day = days.index(start)
                next_day = days.bounds[day + 1] if day + 1 < len(days.bounds) else window_end
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
            assert policy is not None
            if policy.check(start, start + length) is None:
                found.append((start, practitioner, location, i))
    first = sorted(found) if limit is None else heapq.nsmallest(limit, found)
    options = []
    for start, practitioner, location, i in first:
        slots = runs[(practitioner, location)]
        ids = tuple(slot[2] for slot in slots[i : i + need])
        options.append(
            Option(
                practitioner, location, visit, _from_epoch(start), _from_epoch(start + length), ids
            )
        )
    return Found(len(found), options)


def _untaken(
    slots: list[tuple[int, int, str]], taken: list[tuple[int, int]]
) -> list[tuple[int, int, str]]:
    """Slots that overlap no taken time (both lists in start order; taken never overlaps)."""
    if not taken:
        return slots
    out = []
    j = 0
    for slot in slots:
        while j < len(taken) and taken[j][1] <= slot[0]:
            j += 1
        if j < len(taken) and taken[j][0] < slot[1]:
            continue
        out.append(slot)
    return out


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
