"""``Appointment/$find`` (IHE ITI-115): bookable options for a visit, after every rule.

Free Slots come from ``slot_time`` (kept with the Slots' index rows); time taken in
``busy_time`` (bookings, buffers, unexpired holds) is removed; contiguous Slots are composed to
the visit's length; each candidate start is checked against the clinic's rules for this
patient.  Nothing is written; the database reads are in :mod:`.calendar_reads`.
See https://profiles.ihe.net/ITI/Scheduling/ITI-115.html.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from itertools import dropwhile, islice, repeat
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection

from base.errors import BadRequest
from conformance.operations import OPERATIONS, parse_operation
from resources.fhirdate import as_utc, parse_fhir_date
from resources.store import Store
from scheduling.availability import schedule_id
from scheduling.calendar_reads import Calendar, FreeSlots, epoch, read_calendar
from scheduling.clinic import VISIT_TYPE_SYSTEM
from scheduling.config import ClinicConfig, VisitType
from scheduling.explain import Reason, explain_empty
from scheduling.patients import contained_proposal
from scheduling.plan import FindPlan, FindRequest, plan_find
from scheduling.rules import Booked, DayPolicy, day_policy

__all__ = [
    "Found",
    "Option",
    "compute_options",
    "find_options",
    "page_cursor",
    "parse_cursor",
    "proposed_appointment",
]


@dataclass(frozen=True)
class Option:
    practitioner: str
    location: str
    visit: VisitType
    start: datetime
    end: datetime
    slots: tuple[str, ...]


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
    return days, [epoch(datetime.combine(d, time(0), tzinfo=tz)) for d in days]


@dataclass(frozen=True)
class Found:
    """``$find``'s answer: how many options there are, and the first ``limit`` of them; when
    there are none and reasons were asked for, the rules that left nothing."""

    total: int
    options: list[Option]
    reasons: tuple[Reason, ...] = ()
    # where the next page starts (a FindRequest's ``after``), when there are more options
    next: tuple[int, str, str] | None = None


def find_options(
    conn: Connection,
    *,
    store: Store,
    config: ClinicConfig,
    request: FindRequest,
    now: datetime,
    ignore_hold: str | None = None,
    limit: int | None = None,
    explain: bool = False,
) -> Found:
    """Bookable options in the window, ordered by start (then practitioner)."""
    plan = plan_find(config, request)
    calendar = read_calendar(conn, store, plan, request, now)
    return compute_options(
        config,
        plan,
        request,
        calendar,
        now=now,
        ignore_hold=ignore_hold,
        limit=limit,
        explain=explain,
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
    explain: bool = False,
) -> Found:
    """The options (no database: all it needs is in ``calendar``).

    Every option is counted (``total``); only the first ``limit`` are built.  Times are epoch
    seconds inside the loop, and rules are compiled once per practitioner and day
    (:func:`~scheduling.rules.day_policy`), so a whole clinic's day is cheap. With
    ``explain``, an empty answer carries the rules that left nothing
    (:func:`~scheduling.explain.explain_empty`, which runs only then).
    """
    visit, pairs, owner = plan.visit, plan.pairs, plan.owner
    new_patient = calendar.new_patient
    step = config.slot_minutes * 60
    length = visit.minutes * 60
    need = visit.minutes // config.slot_minutes
    window_end = epoch(request.end)
    days = _Days(config, request.start, request.end)
    taken: dict[str, list[tuple[int, int]]] = {}
    booked: dict[tuple[str, int], list[Booked]] = {}
    for sched_id, b_start, b_end, kind, appointment_id, visit_type in calendar.busy:
        if ignore_hold and kind == "held" and appointment_id == ignore_hold:
            continue
        b_start, b_end = as_utc(b_start), as_utc(b_end)
        taken.setdefault(sched_id, []).append((epoch(b_start), epoch(b_end)))
        if kind == "booked" and sched_id in owner:
            key = (owner[sched_id], days.index(epoch(b_start)))
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
    merged: Iterator[tuple[Any, ...]] = heapq.merge(*streams, key=lambda o: o[:4])
    if request.after is not None:  # a later page: the options after the last one shown
        after = request.after
        merged = dropwhile(lambda o: o[:3] <= after, merged)
    page = list(islice(merged, None if limit is None else limit + 1))
    more = limit is not None and len(page) > limit
    page = page[:limit]
    options = [
        Option(
            practitioner,
            location,
            visit,
            _from_epoch(start),
            _from_epoch(start + length),
            tuple(ids[i : i + need]),
        )
        for start, practitioner, location, i, ids in page
    ]
    if total == 0 and explain:
        reasons = explain_empty(config, plan, request, calendar, now=now)
        return Found(0, [], tuple(reasons))
    return Found(total, options, next=tuple(page[-1][:3]) if more else None)


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
    config: ClinicConfig,
    option: Option,
    *,
    patient_id: str | None,
    patient: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The IHE proposed Appointment for one option (not stored), its clinician and location
    named for a client that may not read them (a booking agent). Its patient participant is
    ``Patient/<patient_id>``, or else ``patient`` (a ``patient-resource``) contained as it was
    sent, which ``$book`` matches again or creates (:mod:`scheduling.patients`)."""
    tz = config.tz
    v = option.visit
    participants: list[dict[str, Any]] = [
        {
            "actor": {
                "reference": f"Practitioner/{option.practitioner}",
                "display": config.practitioner_names[option.practitioner],
            },
            "required": "required",
            "status": "needs-action",
        },
        {
            "actor": {
                "reference": f"Location/{option.location}",
                "display": config.location_names[option.location],
            },
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
    proposal = {
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
    if not patient_id and patient is not None:
        return contained_proposal(proposal, patient)
    return proposal


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
    cursor = values.get("_cursor", [None])[0]
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
        after=None if cursor is None else parse_cursor(str(cursor)),
    )


def page_cursor(after: tuple[int, str, str]) -> str:
    """A ``$find`` page's ``_cursor``: the last option shown, as its start (epoch seconds),
    practitioner and location (ids hold no ``~``)."""
    return "~".join(map(str, after))


def parse_cursor(raw: str) -> tuple[int, str, str]:
    """:func:`page_cursor` read back; 400 for anything this server did not give."""
    parts = raw.split("~")
    if len(parts) != 3 or not (parts[0].isascii() and parts[0].isdigit() and len(parts[0]) < 16):
        raise BadRequest(
            "_cursor is not one this server gave; follow the next link as given",
            expression=["_cursor"],
        )
    return int(parts[0]), parts[1], parts[2]


def parameters_pairs(body: Any) -> list[tuple[str, Any]]:
    """(name, value) pairs from a FHIR Parameters resource (POST $find, $hold, $book): a
    Reference gives its reference, a Coding its code, a CodeableConcept its first coding as
    ``system|code``. Anything not shaped so is a 400.
    See https://hl7.org/fhir/R4/parameters.html."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise BadRequest("the operation takes a Parameters resource")
    entries = body.get("parameter", [])
    if not isinstance(entries, list) or not all(
        isinstance(p, dict) and isinstance(p.get("name"), str) for p in entries
    ):
        raise BadRequest(
            "Parameters.parameter must be a list of parameters, each with a name",
            expression=["Parameters.parameter"],
        )
    return [(p["name"], p["resource"] if "resource" in p else _value(p)) for p in entries]


def _value(parameter: dict[str, Any]) -> Any:
    value = next((v for k, v in parameter.items() if k.startswith("value")), None)
    if isinstance(value, dict) and "reference" in value:
        return value["reference"]
    if isinstance(value, dict) and "coding" in value:
        codings = value["coding"]
        if not (isinstance(codings, list) and codings and isinstance(codings[0], dict)):
            codings = [{}]
        c = codings[0]
        if "code" not in c:
            raise BadRequest(
                "a CodeableConcept parameter needs a coding with a code",
                expression=["Parameters.parameter"],
            )
        return f"{c['system']}|{c['code']}" if c.get("system") else c["code"]
    if isinstance(value, dict) and "code" in value:
        return value["code"]
    return value
