"""The demo clinic: ``fhir_server/demo_clinic.yaml`` plus four demo patients (two of them seen
here last year, so they are existing patients), the demo's clients and users (the front desk's
record, ``PractitionerRole/front-desk``, with them), the booking agent's client (its key
made beside the key file) and the staff console's (``fhir_server/console_client.py``).

Three practitioners (two GPs, one physical therapist), two locations, a HealthcareService per
visit type, a Schedule per practitioner and location, and 15-minute Slots over the next weeks.
Loading is idempotent: running ``fhir-sched demo`` twice changes nothing.
"""

from __future__ import annotations

from collections import Counter
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from fhir_server.agent_runtime import register_agent
from fhir_server.console_client import register_console
from fhir_server.keyring import open_keys
from fhir_server.settings import Settings
from resources import service
from resources.sql.engine import Database, migrate
from resources.store import Store
from scheduling.clinic import VISIT_TYPE_SYSTEM, LoadReport, load_clinic
from scheduling.config import ClinicConfig, load_clinic_config

__all__ = [
    "DEMO_CLIENTS",
    "DEMO_CLINIC",
    "DEMO_USERS",
    "FRONT_DESK",
    "demo_history",
    "demo_patients",
    "load_demo",
]

DEMO_CLINIC = Path(__file__).parent / "demo_clinic.yaml"
MRN = "urn:oid:2.16.840.1.113883.19.5.99999.1"

PATIENTS = [
    ("pat-1", "Chalmers", ["Peter", "James"], "1974-12-25", "male", "555-0101", "MRN-1001"),
    ("pat-2", "Rivera", ["Maria"], "1988-03-14", "female", "555-0102", "MRN-1002"),
    ("pat-3", "Okafor", ["Chidi"], "1961-07-30", "male", "555-0103", "MRN-1003"),
    ("pat-4", "Lindqvist", ["Sara"], "2001-11-02", "female", "555-0104", "MRN-1004"),
]

# Peter Chalmers and Maria Rivera were seen here last year (a fulfilled visit with Dr. Smith),
# so they are existing patients and follow-up times are offered to them; the other two are new.
SEEN_LAST_YEAR = ("pat-1", "pat-2")


# Demo identities with published credentials: the demo serves on loopback only.
_APP_SCOPE = (
    "openid fhirUser launch launch/patient offline_access "
    "patient/*.rs patient/Appointment.$find patient/Appointment.$hold patient/Appointment.$book "
    "user/*.cruds user/Appointment.$find user/Appointment.$hold user/Appointment.$book "
    "user/AuditEvent.rs"  # named: a wildcard does not reach the audit log (compliance signs in)
)
DEMO_CLIENTS: list[dict[str, Any]] = [
    {
        "client_id": "demo-backend",
        "name": "Demo backend service (client_credentials, client_secret_basic)",
        "kind": "symmetric",
        "secret": "demo-backend-secret",
        "scope": "system/*.cruds",
    },
    {
        "client_id": "demo-app",
        "name": "Demo SMART app (public, PKCE)",
        "kind": "public",
        "scope": _APP_SCOPE,
        "redirect_uris": ["http://localhost:9000/callback", "http://127.0.0.1:9000/callback"],
    },
]
# The front desk signs in as a desk, not as a person, so its fhirUser is the position it holds:
# a PractitionerRole with no practitioner (R4 makes PractitionerRole.practitioner optional).
FRONT_DESK: dict[str, Any] = {
    "resourceType": "PractitionerRole",
    "id": "front-desk",
    "active": True,
    "code": [{"text": "Front desk"}],
    "location": [{"reference": "Location/loc-main"}, {"reference": "Location/loc-rehab"}],
}
# (login, password, role, fhirUser, patients acted for)
DEMO_USERS = [
    ("frontdesk", "frontdesk-demo", "front-desk", "PractitionerRole/front-desk", []),
    ("drsmith", "drsmith-demo", "clinician", "Practitioner/dr-smith", []),
    ("compliance", "compliance-demo", "compliance", None, []),
    ("interface", "interface-demo", "interface", None, []),
    ("peter", "peter-demo-1", "patient", "Patient/pat-1", []),
    ("maria", "maria-demo-1", "patient", "Patient/pat-2", ["pat-4"]),
]


def _load_identities(conn: Any, keys: Any) -> int:
    """Register the demo clients and users that are not registered yet."""
    from security.smart.registry import (
        RegistryError,
        add_client,
        add_user,
        get_client,
        set_fhir_user,
    )

    added = 0
    for spec in DEMO_CLIENTS:
        if get_client(conn, spec["client_id"]) is None:
            add_client(conn, **spec)
            added += 1
    for login, password, role, fhir_user, patients in DEMO_USERS:
        try:
            add_user(
                conn,
                keys,
                login=login,
                password=password,
                role=role,
                fhir_user=fhir_user,
                patients=patients,
            )
            added += 1
        except RegistryError:  # already there (the login is taken)
            if fhir_user and role != "patient":  # a demo loaded before it had one
                added += set_fhir_user(conn, keys, login=login, fhir_user=fhir_user)
    return added


def _register_console(conn: Any, settings: Settings) -> int:
    """The staff console's client at this server's /console/ (docs/console.md), unless the
    address is one no redirect URI may have (plain http beyond loopback, as in some tests)."""
    from security.smart.registry import RegistryError

    try:
        return int(register_console(conn, settings.public_root) != "unchanged")
    except RegistryError:
        return 0


def demo_patients() -> list[dict[str, Any]]:
    return [
        {
            "resourceType": "Patient",
            "id": pid,
            "active": True,
            "identifier": [{"system": MRN, "value": mrn}],
            "name": [{"family": family, "given": given}],
            "gender": gender,
            "birthDate": birth,
            "telecom": [{"system": "phone", "value": phone, "use": "mobile"}],
        }
        for pid, family, given, birth, gender, phone, mrn in PATIENTS
    ]


def demo_history(config: ClinicConfig, today: date) -> list[dict[str, Any]]:
    """A fulfilled new-patient visit a year before ``today`` (the same weekday, 10:00 and
    10:30 local) for each patient in ``SEEN_LAST_YEAR``."""
    day = today - timedelta(weeks=52)
    visits = []
    for k, pid in enumerate(SEEN_LAST_YEAR):
        start = datetime.combine(day, time(10, 30 * k), tzinfo=config.tz)
        visits.append(
            {
                "resourceType": "Appointment",
                "id": f"visit-{pid}-last-year",
                "status": "fulfilled",
                "serviceType": [
                    {
                        "coding": [
                            {
                                "system": VISIT_TYPE_SYSTEM,
                                "code": "new-patient",
                                "display": "New patient visit",
                            }
                        ]
                    }
                ],
                "start": start.isoformat(),
                "end": (start + timedelta(minutes=45)).isoformat(),
                "minutesDuration": 45,
                "participant": [
                    {"actor": {"reference": f"Patient/{pid}"}, "status": "accepted"},
                    {"actor": {"reference": "Practitioner/dr-smith"}, "status": "accepted"},
                    {"actor": {"reference": "Location/loc-main"}, "status": "accepted"},
                ],
            }
        )
    return visits


def load_demo(
    settings: Settings,
    *,
    weeks: int = 2,
    start_day: date | None = None,
    clinic: ClinicConfig | None = None,
) -> tuple[LoadReport, Counter[str]]:
    """Write the demo clinic and patients into the configured database.

    Returns the clinic load report and what else was written, by kind (``Patient``,
    ``PractitionerRole``, ``Appointment``: the past visits, ``identities``).
    """
    config = clinic or load_clinic_config(DEMO_CLINIC)
    db = Database(settings.database_url)
    migrate(db)
    keys = open_keys(settings, db)
    store = Store(keys, base_url=settings.fhir_base)
    today = start_day or datetime.now(config.tz).date()
    patients: Counter[str] = Counter()
    try:
        with db.write() as conn:
            report = load_clinic(conn, store=store, config=config, today=today, weeks=weeks)
            for resource in [*demo_patients(), FRONT_DESK, *demo_history(config, today)]:
                rtype = resource["resourceType"]
                if store.current(conn, rtype, resource["id"]) is None:
                    service.update(
                        conn,
                        store=store,
                        resource_type=rtype,
                        resource_id=resource["id"],
                        resource=resource,
                    )
                    patients[rtype] += 1
            patients["identities"] += _load_identities(conn, keys)
            patients["identities"] += int(register_agent(conn, settings))
            patients["identities"] += _register_console(conn, settings)
    finally:
        db.dispose()
    return report, patients
