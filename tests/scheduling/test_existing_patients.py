"""Who is an existing patient (the clinic file's ``existing_patient``), as ``$find`` sees it
through patient-reference (the async reads on PostgreSQL) and patient-resource (the
synchronous ones), on both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from scheduling.config import parse_clinic_config
from tests.builders import FHIR_JSON, create, make_patient
from tests.scheduling.conftest import ClientFor
from tests.scheduling.test_find import MONDAY, clinic_data, local

TAG = {"system": "urn:fhir-sched:patient-status", "code": "existing"}


# (id, the patient's visits here as (status, days from now or None for no start), tagged,
#  the clinic file's existing_patient, existing?)
CASES: list[tuple[str, list[tuple[str, int | None]], bool, dict[str, Any], bool]] = [
    ("nothing-here", [], False, {}, False),
    ("fulfilled-no-start", [("fulfilled", None)], False, {}, True),
    ("fulfilled-last-year", [("fulfilled", -365)], False, {}, True),
    ("booked-last-month", [("booked", -30)], False, {}, True),  # never marked fulfilled
    ("booked-to-come-only", [("booked", 3)], False, {}, False),  # not seen yet
    ("cancelled-last-year", [("cancelled", -365)], False, {}, False),
    ("noshow-last-month", [("noshow", -30)], False, {}, False),
    ("noshow-counted", [("noshow", -30)], False, {"visits": ["fulfilled", "noshow"]}, True),
    ("booked-not-counted", [("booked", -30)], False, {"visits": ["fulfilled"]}, False),
    ("seen-4-years-ago", [("fulfilled", -4 * 365)], False, {"within_years": 3}, False),
    ("seen-2-years-ago", [("fulfilled", -2 * 365)], False, {"within_years": 3}, True),
    ("tagged", [], True, {}, True),
    ("tagged-flag-off", [], True, {"flag": False}, False),
    ("visits-off", [("fulfilled", -30)], False, {"visits": []}, False),
    ("visits-off-tagged", [("fulfilled", -30)], True, {"visits": []}, True),
]


@pytest.mark.parametrize(
    ("visits", "tagged", "existing_patient", "existing"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_who_is_an_existing_patient(
    client_for: ClientFor,
    visits: list[tuple[str, int | None]],
    tagged: bool,
    existing_patient: dict[str, Any],
    existing: bool,
) -> None:
    client = client_for({**clinic_data(), "existing_patient": existing_patient})
    patient = make_patient("Known", mrn="K-9")
    if tagged:
        patient["meta"] = {"tag": [TAG]}
    pid = create(client, patient)["id"]
    now = datetime.now(UTC)
    for status, days in visits:
        visit: dict[str, Any] = {
            "resourceType": "Appointment",
            "status": status,
            "participant": [{"actor": {"reference": f"Patient/{pid}"}, "status": "accepted"}],
        }
        if days is not None:
            visit["start"] = (now + timedelta(days=days)).isoformat()
            visit["end"] = (now + timedelta(days=days, minutes=30)).isoformat()
        create(client, visit)
    cfg = parse_clinic_config(clinic_data())
    window = {
        "start": local(cfg, MONDAY, 0).isoformat(),
        "end": local(cfg, MONDAY, 23).isoformat(),
        "visit-type": "follow-up",  # for existing patients only
    }
    by_reference = client.get(
        "/fhir/Appointment/$find", params={**window, "patient-reference": f"Patient/{pid}"}
    )
    by_resource = client.post(  # matched by identifier
        "/fhir/Appointment/$find",
        json={
            "resourceType": "Parameters",
            "parameter": [
                *({"name": k, "valueString": v} for k, v in window.items()),
                {"name": "patient-resource", "resource": make_patient("Known", mrn="K-9")},
            ],
        },
        headers=FHIR_JSON,
    )
    assert by_reference.status_code == by_resource.status_code == 200, by_reference.text
    assert (by_reference.json()["total"] > 0) is existing
    assert (by_resource.json()["total"] > 0) is existing
