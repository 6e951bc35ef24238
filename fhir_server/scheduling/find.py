"""``Appointment/$find`` (IHE ITI-115): bookable options for a visit, after every rule.

Free Slots come from the store; time taken in ``busy_time`` (bookings, buffers, unexpired
holds) is removed; contiguous Slots are composed to the visit's length; each candidate start is
checked against the clinic's rules for this patient.  Nothing is written.
See https://profiles.ihe.net/ITI/Scheduling/ITI-115.html.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, or_, select

from conformance.operations import OPERATIONS, parse_operation
from fhir_server.errors import BadRequest
from fhir_server.scheduling.availability import schedule_id
from fhir_server.scheduling.clinic import VISIT_TYPE_SYSTEM
from fhir_server.scheduling.config import ClinicConfig, VisitType
from fhir_server.scheduling.rules import Booked, Candidate, check_rules
from resources import service
from resources.fhirdate import parse_fhir_date
from resources.search.engine import run_search
from resources.search.query import parse_query
from resources.sql.tables import BusyTime
from resources.store import Store

__all__ = ["FindRequest", "Option", "find_options", "proposed_appointment"]

BT = BusyTime.__table__
PAGE = 2000
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
    """New or existing, from our own records: an existing patient has had a visit here."""
    patient_id = req.patient_id or _match_patient(conn, store, req.patient_resource)
    if patient_id is None:
        return False
    _, result = service.search(
        conn,
        store=store,
        resource_type="Appointment",
        params=[
            ("patient", f"Patient/{patient_id}"),
            ("status", ACTIVE_STATUSES),
            ("_count", "2"),
        ],
    )
    return any(m.res_id != req.moving for m in result.matches)


def _match_patient(conn: Connection, store: Store, patient: dict[str, Any] | None) -> str | None:
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
            conn, store=store, resource_type="Patient", params=[*params, ("_count", "2")]
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


def _busy(
    conn: Connection, schedules: list[str], start: datetime, end: datetime, now: datetime
) -> list[Any]:
    live_hold = or_(BT.c.kind != "held", BT.c.expires_at > now)
    return list(
        conn.execute(
            select(BT).where(
                BT.c.schedule_id.in_(schedules), BT.c.start < end, BT.c.end > start, live_hold
            )
        ).all()
    )


def _free_slots(
    conn: Connection, store: Store, sched: str, start: datetime, end: datetime
) -> list[tuple[datetime, datetime, str]]:
    params = [
        ("schedule", f"Schedule/{sched}"),
        ("status", "free"),
        ("start", f"ge{start.isoformat()}"),
        ("start", f"lt{end.isoformat()}"),
    ]
    query = parse_query("Slot", params, default_count=PAGE, max_count=PAGE)
    query.total = "none"
    out = []
    while True:
        page = run_search(conn, store=store, query=query)
        for m in page.matches:
            r = m.resource()
            out.append((parse_fhir_date(r["start"]).low, parse_fhir_date(r["end"]).low, m.res_id))
        if not page.next_cursor:
            return sorted(out)
        query.cursor = page.next_cursor


def find_options(
    conn: Connection,
    *,
    store: Store,
    config: ClinicConfig,
    request: FindRequest,
    now: datetime,
    ignore_hold: str | None = None,
) -> list[Option]:
    """Every bookable option in the window, ordered by start (then practitioner)."""
    _check_window(config, request)
    visit = config.visit_type(request.visit_type)
    if visit is None:
        known = ", ".join(v.code for v in config.visit_types)
        raise BadRequest(
            f"unknown visit-type {request.visit_type!r}; known: {known}", expression=["visit-type"]
        )
    new_patient = not _is_existing_patient(conn, store, request)
    pairs = _schedules(config, request, visit)
    step = timedelta(minutes=config.slot_minutes)
    need = visit.minutes // config.slot_minutes
    day_start = request.start - timedelta(days=1)
    day_end = request.end + timedelta(days=1)
    all_scheds = [
        schedule_id(p, loc) for p, loc in {(h.practitioner, h.location) for h in config.hours}
    ]
    busy_rows = [
        b
        for b in _busy(conn, all_scheds, day_start, day_end, now)
        if not (ignore_hold and b.kind == "held" and b.appointment_id == ignore_hold)
    ]
    options: list[Option] = []
    for practitioner, location in pairs:
        sched = schedule_id(practitioner, location)
        taken = [(b.start, b.end) for b in busy_rows if b.schedule_id == sched]
        booked = [
            Booked(b.visit_type, _utc(b.start), _utc(b.end))
            for b in busy_rows
            if b.kind == "booked" and b.schedule_id.startswith(f"sched-{practitioner}-")
        ]
        slots = [
            s
            for s in _free_slots(conn, store, sched, request.start, request.end)
            if not any(_utc(a) < s[1] and s[0] < _utc(b) for a, b in taken)
        ]
        for i in range(len(slots) - need + 1):
            run = slots[i : i + need]
            if any(
                run[k + 1][0] != run[k][1] or run[k][1] - run[k][0] != step for k in range(need - 1)
            ):
                continue
            cand = Candidate(practitioner, visit, run[0][0], new_patient)
            if cand.end > request.end:
                continue
            same_day = [
                b
                for b in booked
                if b.start.astimezone(config.tz).date() == cand.start.astimezone(config.tz).date()
            ]
            if check_rules(config, cand, now=now, booked_that_day=same_day) is None:
                options.append(
                    Option(
                        practitioner,
                        location,
                        visit,
                        cand.start,
                        cand.end,
                        tuple(s[2] for s in run),
                    )
                )
    options.sort(key=lambda o: (o.start, o.practitioner))
    return options


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


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
