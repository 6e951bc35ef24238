"""Typed builders for test resources and small HTTP helpers."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

FHIR_JSON = {"content-type": "application/fhir+json"}


def make_patient(
    family: str = "Smith",
    given: list[str] | None = None,
    *,
    birth: str | None = "1980-05-02",
    phone: str | None = None,
    mrn: str | None = None,
    gender: str | None = None,
) -> dict[str, Any]:
    p: dict[str, Any] = {"resourceType": "Patient", "name": [{"family": family}]}
    if given:
        p["name"][0]["given"] = given
    if birth:
        p["birthDate"] = birth
    if phone:
        p["telecom"] = [{"system": "phone", "value": phone}]
    if mrn:
        p["identifier"] = [{"system": "urn:mrn", "value": mrn}]
    if gender:
        p["gender"] = gender
    return p


def make_practitioner(family: str = "Jones", npi: str = "1234") -> dict[str, Any]:
    return {
        "resourceType": "Practitioner",
        "name": [{"family": family}],
        "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": npi}],
    }


def make_schedule(actor: str, *, active: bool = True) -> dict[str, Any]:
    return {"resourceType": "Schedule", "active": active, "actor": [{"reference": actor}]}


def make_slot(schedule: str, start: str, end: str, status: str = "free") -> dict[str, Any]:
    return {
        "resourceType": "Slot",
        "schedule": {"reference": schedule},
        "status": status,
        "start": start,
        "end": end,
    }


def make_appointment(
    patient: str, practitioner: str, start: str, end: str, status: str = "booked"
) -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "status": status,
        "start": start,
        "end": end,
        "participant": [
            {"actor": {"reference": patient}, "status": "accepted"},
            {"actor": {"reference": practitioner}, "status": "accepted"},
        ],
    }


# one minimal valid resource per served type
MINIMAL: dict[str, dict[str, Any]] = {
    "Patient": make_patient(),
    "Practitioner": make_practitioner(),
    "PractitionerRole": {"resourceType": "PractitionerRole", "active": True},
    "Location": {"resourceType": "Location", "name": "Main"},
    "HealthcareService": {"resourceType": "HealthcareService", "name": "Primary care"},
    "Schedule": make_schedule("Practitioner/p1"),
    "Slot": make_slot("Schedule/s1", "2026-12-01T09:00:00Z", "2026-12-01T09:15:00Z"),
    "Appointment": make_appointment(
        "Patient/a", "Practitioner/b", "2026-12-01T09:00:00Z", "2026-12-01T09:30:00Z"
    ),
}


def create(client: TestClient, resource: dict[str, Any], **headers: str) -> dict[str, Any]:
    r = client.post(
        f"/fhir/{resource['resourceType']}", json=resource, headers={**FHIR_JSON, **headers}
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body
