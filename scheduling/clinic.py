"""Clinic configuration → FHIR resources and materialised Slots.

:func:`load_clinic` creates or updates Location, Practitioner, PractitionerRole,
HealthcareService (one per visit type) and Schedule (one per practitioner and location), then
materialises Slots over the rolling horizon.  It is idempotent: a resource is written only when
its content changed.  Free Slots outside the configured hours are removed; busy ones are never
touched and are reported instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, func, select

from resources import service
from resources.search.engine import run_search
from resources.search.query import parse_query
from resources.store import Store, StoredVersion
from scheduling.availability import SlotSpec, schedule_id, slot_specs
from scheduling.config import ClinicConfig, Practitioner, VisitType

__all__ = [
    "VISIT_TYPE_SYSTEM",
    "LoadReport",
    "clinic_resources",
    "load_clinic",
    "lock_clinic_loads",
    "slot_resource",
]

VISIT_TYPE_SYSTEM = "urn:fhir-sched:visit-type"
SLOT_PAGE = 5000


@dataclass
class LoadReport:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    slots_created: int = 0
    slots_removed: int = 0
    slots_kept: int = 0
    outside_hours: list[str] = field(default_factory=list)  # busy Slot ids no longer in hours

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "slots_created": self.slots_created,
            "slots_removed": self.slots_removed,
            "slots_kept": self.slots_kept,
            "busy_slots_outside_hours": self.outside_hours,
        }


def _coding(system: str, code: str, display: str | None) -> dict[str, Any]:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return coding


def _visit_concept(v: VisitType) -> dict[str, Any]:
    return {"coding": [_coding(VISIT_TYPE_SYSTEM, v.code, v.display)], "text": v.display}


def _specialties(p: Practitioner) -> list[dict[str, Any]]:
    return [{"coding": [_coding(s.system, s.code, s.display)]} for s in p.specialties]


def _offered(config: ClinicConfig, practitioner: str) -> list[VisitType]:
    return [v for v in config.visit_types if config.offers(v, practitioner)]


def clinic_resources(config: ClinicConfig) -> list[dict[str, Any]]:
    """Every non-Slot resource the configuration describes, with stable ids."""
    out: list[dict[str, Any]] = []
    for loc in config.locations:
        resource: dict[str, Any] = {
            "resourceType": "Location",
            "id": loc.id,
            "status": "active",
            "name": loc.name,
        }
        address = {
            k: v
            for k, v in (
                ("line", loc.address or None),
                ("city", loc.city),
                ("state", loc.state),
                ("postalCode", loc.postal_code),
            )
            if v
        }
        if address:
            resource["address"] = address
        if loc.phone:
            resource["telecom"] = [{"system": "phone", "value": loc.phone}]
        out.append(resource)
    worked: dict[str, set[str]] = {}
    for h in config.hours:
        worked.setdefault(h.practitioner, set()).add(h.location)
    for v in config.visit_types:
        where = sorted({loc for p, locs in worked.items() if config.offers(v, p) for loc in locs})
        out.append(
            {
                "resourceType": "HealthcareService",
                "id": f"svc-{v.code}",
                "active": True,
                "name": v.display,
                "type": [_visit_concept(v)],
                "location": [{"reference": f"Location/{loc}"} for loc in where],
            }
        )
    for p in config.practitioners:
        name: dict[str, Any] = {"family": p.family}
        if p.given:
            name["given"] = list(p.given)
        if p.prefix:
            name["prefix"] = list(p.prefix)
        prac: dict[str, Any] = {
            "resourceType": "Practitioner",
            "id": p.id,
            "active": True,
            "name": [name],
        }
        if p.identifiers:
            prac["identifier"] = [{"system": i.system, "value": i.value} for i in p.identifiers]
        out.append(prac)
        offered = _offered(config, p.id)
        for loc_id in sorted(worked.get(p.id, set())):
            role: dict[str, Any] = {
                "resourceType": "PractitionerRole",
                "id": f"role-{p.id}-{loc_id}",
                "active": True,
                "practitioner": {"reference": f"Practitioner/{p.id}"},
                "location": [{"reference": f"Location/{loc_id}"}],
                "healthcareService": [
                    {"reference": f"HealthcareService/svc-{v.code}"} for v in offered
                ],
            }
            schedule: dict[str, Any] = {
                "resourceType": "Schedule",
                "id": schedule_id(p.id, loc_id),
                "active": True,
                "serviceType": [_visit_concept(v) for v in offered],
                "actor": [
                    {"reference": f"Practitioner/{p.id}"},
                    {"reference": f"Location/{loc_id}"},
                ],
            }
            if p.specialties:
                role["specialty"] = _specialties(p)
                schedule["specialty"] = _specialties(p)
            out += [role, schedule]
    return out


def _same(stored: StoredVersion, wanted: dict[str, Any]) -> bool:
    if stored.deleted:
        return False
    have = stored.resource()
    have.pop("meta", None)
    return have == wanted


def _put(conn: Connection, store: Store, resource: dict[str, Any], report: LoadReport) -> None:
    current = store.read(conn, resource["resourceType"], resource["id"])
    if current is not None and _same(current, resource):
        report.unchanged += 1
        return
    service.update(
        conn,
        store=store,
        resource_type=resource["resourceType"],
        resource_id=resource["id"],
        resource=dict(resource),
    )
    if current is None or current.deleted:
        report.created += 1
    else:
        report.updated += 1


def slot_resource(config: ClinicConfig, spec: SlotSpec) -> dict[str, Any]:
    tz = config.tz
    return {
        "resourceType": "Slot",
        "id": spec.id,
        "schedule": {"reference": f"Schedule/{spec.schedule_id}"},
        "status": "free",
        "start": spec.start.astimezone(tz).isoformat(),
        "end": spec.end.astimezone(tz).isoformat(),
    }


def _existing_slots(
    conn: Connection, store: Store, schedule: str, start: datetime, end: datetime
) -> list[StoredVersion]:
    params = [
        ("schedule", f"Schedule/{schedule}"),
        ("start", f"ge{start.isoformat()}"),
        ("start", f"lt{end.isoformat()}"),
    ]
    query = parse_query("Slot", params, default_count=SLOT_PAGE, max_count=SLOT_PAGE)
    query.total = "none"
    found: list[StoredVersion] = []
    while True:
        page = run_search(conn, store=store, query=query)
        found.extend(page.matches)
        if not page.next_cursor:
            return found
        query.cursor = page.next_cursor


def lock_clinic_loads(conn: Connection, *, wait: bool = True) -> bool:
    """Hold the clinic-load lock until this transaction ends (a PostgreSQL advisory lock;
    SQLite writes hold the database's one write lock already). ``wait=False``: only if no one
    holds it now; returns whether this transaction has it."""
    if conn.dialect.name != "postgresql":
        return True
    key = func.hashtext("fhir-sched:clinic-load")
    if wait:
        conn.execute(select(func.pg_advisory_xact_lock(key)))
        return True
    return bool(conn.execute(select(func.pg_try_advisory_xact_lock(key))).scalar_one())


def load_clinic(
    conn: Connection,
    *,
    store: Store,
    config: ClinicConfig,
    today: date,
    weeks: int | None = None,
) -> LoadReport:
    """Create or update the clinic's resources and materialise Slots from ``today``.

    Loads take turns (:func:`lock_clinic_loads`): ``fhir-sched clinic load`` beside a server's
    horizon job, or the jobs of several server processes, run one after the other, each later
    one finding the earlier one's resources and Slots in place."""
    lock_clinic_loads(conn)
    report = LoadReport()
    for resource in clinic_resources(config):
        _put(conn, store, resource, report)
    last_day = today + timedelta(weeks=weeks or config.horizon_weeks) - timedelta(days=1)
    wanted: dict[str, dict[str, SlotSpec]] = {}
    for spec in slot_specs(config, first_day=today, last_day=last_day):
        wanted.setdefault(spec.schedule_id, {})[spec.id] = spec
    window_start = datetime.combine(today, datetime.min.time(), tzinfo=config.tz).astimezone(UTC)
    window_end = datetime.combine(
        last_day + timedelta(days=1), datetime.min.time(), tzinfo=config.tz
    ).astimezone(UTC)
    schedules = {r["id"] for r in clinic_resources(config) if r["resourceType"] == "Schedule"}
    for sched in sorted(schedules):
        specs = wanted.get(sched, {})
        existing = {
            s.res_id: s for s in _existing_slots(conn, store, sched, window_start, window_end)
        }
        for slot_id_, stored in existing.items():
            if slot_id_ in specs:
                report.slots_kept += 1
                continue
            if stored.resource().get("status") == "free":
                service.delete(conn, store=store, resource_type="Slot", resource_id=slot_id_)
                report.slots_removed += 1
            else:
                report.outside_hours.append(slot_id_)
        for spec_id, spec in specs.items():
            if spec_id in existing:
                continue
            service.update(
                conn,
                store=store,
                resource_type="Slot",
                resource_id=spec_id,
                resource=slot_resource(config, spec),
            )
            report.slots_created += 1
    return report
