"""The demo clinic: three practitioners, two locations, services, schedules, patients and
two weeks of 30-minute Slots on weekdays (09:00-17:00 America/New_York).

Loading is idempotent: every resource has a fixed id and is written only if absent, so running
``fhir-sched demo`` twice changes nothing.  (The YAML clinic format replaces this module when
the scheduling capability lands.)
"""

from __future__ import annotations

from collections import Counter
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from fhir_server.settings import Settings
from resources import service
from resources.sql.engine import Database, migrate
from resources.store import Store
from security.crypto import load_keyring

__all__ = ["demo_resources", "load_demo"]

TZ = ZoneInfo("America/New_York")
NPI = "http://hl7.org/fhir/sid/us-npi"
MRN = "urn:oid:2.16.840.1.113883.19.5.99999.1"
SLOT_MINUTES = 30

PRACTITIONERS = [
    ("dr-smith", "Smith", "Alice", "1234567893", "394814009", "General practice"),
    ("dr-evans", "Evans", "Robert", "1245319599", "394814009", "General practice"),
    ("pt-nguyen", "Nguyen", "Linh", "1679576722", "394602003", "Rehabilitation"),
]
PATIENTS = [
    ("pat-1", "Chalmers", ["Peter", "James"], "1974-12-25", "male", "555-0101", "MRN-1001"),
    ("pat-2", "Rivera", ["Maria"], "1988-03-14", "female", "555-0102", "MRN-1002"),
    ("pat-3", "Okafor", ["Chidi"], "1961-07-30", "male", "555-0103", "MRN-1003"),
    ("pat-4", "Lindqvist", ["Sara"], "2001-11-02", "female", "555-0104", "MRN-1004"),
]


def _code(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def _static() -> list[dict[str, Any]]:
    sct = "http://snomed.info/sct"
    out: list[dict[str, Any]] = [
        {
            "resourceType": "Location",
            "id": "loc-main",
            "status": "active",
            "name": "Main Street Clinic",
            "address": {"line": ["1 Main Street"], "city": "Springfield", "state": "MA"},
        },
        {
            "resourceType": "Location",
            "id": "loc-rehab",
            "status": "active",
            "name": "Riverside Rehab Center",
            "address": {"line": ["20 River Road"], "city": "Springfield", "state": "MA"},
        },
        {
            "resourceType": "HealthcareService",
            "id": "svc-primary",
            "active": True,
            "name": "Primary care",
            "type": [_code(sct, "394814009", "General practice")],
            "location": [{"reference": "Location/loc-main"}],
        },
        {
            "resourceType": "HealthcareService",
            "id": "svc-pt",
            "active": True,
            "name": "Physical therapy",
            "type": [_code(sct, "394602003", "Rehabilitation")],
            "location": [{"reference": "Location/loc-rehab"}],
        },
    ]
    for pid, family, given, npi, spec, spec_name in PRACTITIONERS:
        location = "loc-rehab" if pid.startswith("pt-") else "loc-main"
        service_id = "svc-pt" if pid.startswith("pt-") else "svc-primary"
        out += [
            {
                "resourceType": "Practitioner",
                "id": pid,
                "active": True,
                "identifier": [{"system": NPI, "value": npi}],
                "name": [{"family": family, "given": [given], "prefix": ["Dr."]}],
            },
            {
                "resourceType": "PractitionerRole",
                "id": f"role-{pid}",
                "active": True,
                "practitioner": {"reference": f"Practitioner/{pid}"},
                "location": [{"reference": f"Location/{location}"}],
                "healthcareService": [{"reference": f"HealthcareService/{service_id}"}],
                "specialty": [_code(sct, spec, spec_name)],
            },
            {
                "resourceType": "Schedule",
                "id": f"sched-{pid}",
                "active": True,
                "serviceType": [_code(sct, spec, spec_name)],
                "specialty": [_code(sct, spec, spec_name)],
                "actor": [
                    {"reference": f"Practitioner/{pid}"},
                    {"reference": f"Location/{location}"},
                ],
            },
        ]
    for pid, family, given_names, birth, gender, phone, mrn in PATIENTS:
        out.append(
            {
                "resourceType": "Patient",
                "id": pid,
                "active": True,
                "identifier": [{"system": MRN, "value": mrn}],
                "name": [{"family": family, "given": given_names}],
                "gender": gender,
                "birthDate": birth,
                "telecom": [{"system": "phone", "value": phone, "use": "mobile"}],
            }
        )
    return out


def _slots(start_day: date, days: int) -> list[dict[str, Any]]:
    out = []
    for pid, *_ in PRACTITIONERS:
        for offset in range(days):
            day = start_day + timedelta(days=offset)
            if day.weekday() >= 5:
                continue
            t = datetime.combine(day, time(9, 0), TZ)
            close = datetime.combine(day, time(17, 0), TZ)
            while t < close:
                end = t + timedelta(minutes=SLOT_MINUTES)
                out.append(
                    {
                        "resourceType": "Slot",
                        "id": f"slot-{pid}-{t:%Y%m%d%H%M}",
                        "schedule": {"reference": f"Schedule/sched-{pid}"},
                        "status": "free",
                        "start": t.isoformat(),
                        "end": end.isoformat(),
                    }
                )
                t = end
    return out


def demo_resources(*, start_day: date, days: int) -> list[dict[str, Any]]:
    return _static() + _slots(start_day, days)


def load_demo(settings: Settings, *, days: int = 14, start_day: date | None = None) -> Counter[str]:
    """Write the demo clinic into the configured database; returns counts by type."""
    keys = load_keyring(
        key_file=settings.key_file,
        keys_json=settings.keys.get_secret_value() if settings.keys else None,
    )
    db = Database(settings.database_url)
    migrate(db)
    store = Store(keys, base_url=settings.fhir_base)
    start = start_day or datetime.now(TZ).date()
    counts: Counter[str] = Counter()
    with db.write() as conn:
        for resource in demo_resources(start_day=start, days=days):
            counts[resource["resourceType"]] += 1
            if store.current(conn, resource["resourceType"], resource["id"]) is None:
                service.update(
                    conn,
                    store=store,
                    resource_type=resource["resourceType"],
                    resource_id=resource["id"],
                    resource=resource,
                )
    db.dispose()
    return counts
