"""Appointment/$hold and $book (new bookings) over HTTP, on both databases."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, func, insert, select

from resources.sql.engine import Database
from resources.sql.tables import BusyTime
from scheduling.config import ClinicConfig
from tests.builders import FHIR_JSON, create, make_patient
from tests.conftest import someone_waits_for_a_lock
from tests.scheduling.test_find import MONDAY, existing_patient, find, local

BT = BusyTime.__table__


def params(**values: Any) -> dict[str, Any]:
    out = []
    for name, value in values.items():
        name = name.replace("_", "-")
        if isinstance(value, dict):
            out.append({"name": name, "resource": value})
        else:
            out.append({"name": name, "valueReference": {"reference": value}})
    return {"resourceType": "Parameters", "parameter": out}


def first_option(client: TestClient, cfg: ClinicConfig, pid: str) -> dict[str, Any]:
    b = find(client, cfg, MONDAY, "follow-up", **{"patient-reference": pid, "_count": "1"})
    appt: dict[str, Any] = b.json()["entry"][0]["resource"]
    return appt


def op(client: TestClient, name: str, **values: Any) -> Any:
    return client.post(f"/fhir/Appointment/${name}", json=params(**values), headers=FHIR_JSON)


def count_appointments(client: TestClient, status: str) -> int:
    r = client.get("/fhir/Appointment", params={"status": status, "_summary": "count"})
    return int(r.json()["total"])


def test_hold_then_book_by_reference(app_client: TestClient, cfg: ClinicConfig) -> None:
    pid = existing_patient(app_client)
    proposed = first_option(app_client, cfg, pid)
    held = op(app_client, "hold", appointment_resource=proposed)
    assert held.status_code == 200, held.text
    assert held.json()["status"] == "pending"
    expires = parsedate_to_datetime(held.headers["expires"])
    assert timedelta(seconds=60) < expires - datetime.now(UTC) <= timedelta(seconds=91)
    # held time is invisible to the next $find
    after_hold = find(app_client, cfg, MONDAY, "follow-up", **{"patient-reference": pid}).json()
    starts = {
        (e["resource"]["participant"][0]["actor"]["reference"], e["resource"]["start"])
        for e in after_hold["entry"]
    }
    mine = (proposed["participant"][0]["actor"]["reference"], proposed["start"])
    assert mine not in starts
    booked = op(app_client, "book", appointment_reference=f"Appointment/{held.json()['id']}")
    assert booked.status_code == 201, booked.text
    appt = booked.json()
    assert appt["status"] == "booked"
    assert appt["id"] == held.json()["id"]
    assert {p["status"] for p in appt["participant"]} == {"accepted"}
    for slot in appt["slot"]:
        assert app_client.get(f"/fhir/{slot['reference']}").json()["status"] == "busy"


def test_second_booking_of_the_same_time_is_409(app_client: TestClient, cfg: ClinicConfig) -> None:
    pid = existing_patient(app_client)
    proposed = first_option(app_client, cfg, pid)
    first = op(app_client, "book", appointment_resource=proposed)
    assert first.status_code == 201, first.text
    second = op(app_client, "book", appointment_resource=proposed)
    assert second.status_code == 409
    issue = second.json()["issue"][0]
    assert issue["code"] == "conflict"
    assert proposed["start"] in issue["diagnostics"]
    assert count_appointments(app_client, "booked") == 1


def test_held_time_is_not_bookable_by_anyone_else(
    app_client: TestClient, cfg: ClinicConfig
) -> None:
    pid = existing_patient(app_client)
    proposed = first_option(app_client, cfg, pid)
    assert op(app_client, "hold", appointment_resource=proposed).status_code == 200
    other = op(app_client, "book", appointment_resource=proposed)
    assert other.status_code == 409
    failed_hold = op(app_client, "hold", appointment_resource=proposed)
    assert failed_hold.status_code == 404
    issue = failed_hold.json()["issue"][0]
    assert (issue["severity"], issue["code"]) == ("fatal", "not-found")


def _add_busy(
    conn: Connection,
    start: datetime,
    appointment_id: str,
    kind: str,
    expires_at: datetime | None = None,
) -> None:
    """Half an hour of Dr Evans's time at Main taken behind the service's back."""
    conn.execute(
        insert(BT).values(
            schedule_id="sched-evans-main",
            start=start,
            end=start + timedelta(minutes=30),
            appointment_id=appointment_id,
            kind=kind,
            visit_type="follow-up",
            expires_at=expires_at,
        )
    )


def test_an_expired_hold_frees_itself(
    app_client: TestClient, db: Database, cfg: ClinicConfig
) -> None:
    pid = existing_patient(app_client)
    proposed = first_option(app_client, cfg, pid)
    start = datetime.fromisoformat(proposed["start"]).astimezone(UTC)
    with db.write() as conn:  # someone's hold that ran out a second ago; no sweeper runs
        _add_busy(conn, start, "stale", "held", datetime.now(UTC) - timedelta(seconds=1))
    booked = op(app_client, "book", appointment_resource=proposed)
    assert booked.status_code == 201, booked.text
    with db.read() as conn:
        kinds = conn.execute(select(BT.c.kind, func.count()).group_by(BT.c.kind)).all()
    assert dict(kinds) == {"booked": 1}


def test_time_taken_after_the_check_is_refused_by_the_guard(
    app_client: TestClient, db: Database, cfg: ClinicConfig
) -> None:
    """PostgreSQL: another transaction books the time while this $book is past its check (the
    time looked free: the other had not committed). The claim waits for it, the guard refuses,
    and the request is a 409 that leaves nothing behind. (SQLite's one writer makes the check
    and the claim see the same rows, so there the guard never has to speak.)"""
    if db.is_sqlite:
        pytest.skip("SQLite runs one writer at a time: its check already sees every claim")
    pid = existing_patient(app_client)
    proposed = first_option(app_client, cfg, pid)
    start = datetime.fromisoformat(proposed["start"]).astimezone(UTC)
    other_ready, answer = threading.Event(), {}

    def other() -> None:
        with db.write() as conn:
            _add_busy(conn, start, "booked-elsewhere", "booked")
            other_ready.set()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not someone_waits_for_a_lock(db):
                time.sleep(0.02)
        # committed: the waiting claim now meets the guard

    def book() -> None:
        answer["r"] = op(app_client, "book", appointment_resource=proposed)

    holder = threading.Thread(target=other)
    holder.start()
    assert other_ready.wait(30)
    booker = threading.Thread(target=book)
    booker.start()
    booker.join(60)
    holder.join(60)
    r = answer["r"]
    assert r.status_code == 409, r.text
    assert "was just taken" in r.json()["issue"][0]["diagnostics"]
    assert count_appointments(app_client, "booked") == 0
    with db.read() as conn:
        rows = conn.execute(select(BT.c.appointment_id)).scalars().all()
    assert rows == ["booked-elsewhere"]


def test_rules_are_checked_again_at_booking(app_client: TestClient, cfg: ClinicConfig) -> None:
    proposed = first_option(app_client, cfg, existing_patient(app_client))
    newcomer = {"actor": {"reference": f"Patient/{create(app_client, make_patient('New'))['id']}"}}
    stranger = {**proposed, "participant": [*proposed["participant"][:2], newcomer]}
    r = op(app_client, "book", appointment_resource=stranger)  # follow-up: not for a new patient
    assert r.status_code == 409
    assert count_appointments(app_client, "booked") == 0


def test_bad_book_requests(app_client: TestClient) -> None:
    assert op(app_client, "book").status_code == 400
    r = op(app_client, "book", appointment_reference="Appointment/nope")
    assert r.status_code == 404
    r = op(
        app_client,
        "book",
        appointment_resource={
            "resourceType": "Appointment",
            "status": "proposed",
            "participant": [{"actor": {"reference": "Patient/p1"}}],
        },
    )
    assert r.status_code == 400


@pytest.mark.parametrize("name", ["hold", "book"])
@pytest.mark.parametrize(
    "parameter",
    [
        [True, False],
        [{"name": 6.3e16, "resource": {"resourceType": "Appointment"}}],
        [{"name": "appointment-reference", "valueReference": {"reference": 7}}],
    ],
    ids=["not-objects", "name-not-text", "reference-not-text"],
)
def test_malformed_parameters_are_400(app_client: TestClient, name: str, parameter: Any) -> None:
    """Found by tests/integration/test_fuzz_api.py: each of these was a 500 (or an outcome
    whose expression was not text)."""
    body = {"resourceType": "Parameters", "parameter": parameter}
    r = app_client.post(f"/fhir/Appointment/${name}", json=body, headers=FHIR_JSON)
    assert r.status_code == 400, r.text
    issue = r.json()["issue"][0]
    assert all(isinstance(e, str) for e in issue.get("expression", [])), issue


def test_cancel_frees_the_time(app_client: TestClient, cfg: ClinicConfig) -> None:
    pid = existing_patient(app_client)
    proposed = first_option(app_client, cfg, pid)
    booked = op(app_client, "book", appointment_resource=proposed).json()
    cancelled = op(app_client, "book", appointment_resource={**booked, "status": "cancelled"})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    for slot in booked["slot"]:
        assert app_client.get(f"/fhir/{slot['reference']}").json()["status"] == "free"
    again = op(app_client, "book", appointment_resource=proposed)
    assert again.status_code == 201


def _later(client: TestClient, cfg: ClinicConfig, pid: str) -> dict[str, Any]:
    b = find(client, cfg, MONDAY, "follow-up", **{"patient-reference": pid, "_count": "8"})
    appt: dict[str, Any] = b.json()["entry"][-1]["resource"]
    return appt


def test_reschedule_is_one_transaction(app_client: TestClient, cfg: ClinicConfig) -> None:
    pid = existing_patient(app_client)
    first = op(app_client, "book", appointment_resource=first_option(app_client, cfg, pid)).json()
    later = _later(app_client, cfg, pid)
    body = params(appointment_resource=later)
    body["parameter"].append({"name": "cancelled-appointment-id", "valueId": first["id"]})
    moved = app_client.post("/fhir/Appointment/$book", json=body, headers=FHIR_JSON)
    assert moved.status_code == 201, moved.text
    assert app_client.get(f"/fhir/Appointment/{first['id']}").json()["status"] == "cancelled"
    # a reschedule onto a taken time changes nothing: the old booking stays booked
    other = op(app_client, "book", appointment_resource=first_option(app_client, cfg, pid)).json()
    body = params(appointment_resource=later)
    body["parameter"].append({"name": "cancelled-appointment-id", "valueId": other["id"]})
    refused = app_client.post("/fhir/Appointment/$book", json=body, headers=FHIR_JSON)
    assert refused.status_code == 409
    assert app_client.get(f"/fhir/Appointment/{other['id']}").json()["status"] == "booked"
    assert count_appointments(app_client, "booked") == 2


def test_a_reschedule_books_what_find_offered(app_client: TestClient, cfg: ClinicConfig) -> None:
    """A new patient's first visit (a procedure, for any patient, in Dr. Smith's new-patient
    window on Tuesday) is rescheduled to what $find then offers that patient. The booking not
    yet begun never made them an existing patient, so $find offers only times a new patient
    may have, and the reschedule books them (it once answered 409 "no longer available" for a
    Monday time that $find had offered and a plain $book accepted)."""
    pid = create(app_client, make_patient("Newcomer", mrn="N-7"))["id"]
    smith = {"patient-reference": f"Patient/{pid}", "practitioner": "Practitioner/smith"}
    tuesday = find(app_client, cfg, MONDAY + timedelta(days=1), "procedure", **smith).json()
    first = op(app_client, "book", appointment_resource=tuesday["entry"][0]["resource"])
    assert first.status_code == 201, first.text
    window = {
        "start": local(cfg, MONDAY, 0).isoformat(),
        "end": local(cfg, MONDAY + timedelta(days=2), 0).isoformat(),
        "visit-type": "procedure",
        **smith,
    }
    offered = app_client.get("/fhir/Appointment/$find", params=window).json()
    assert offered["total"] > 0
    days = {e["resource"]["start"][:10] for e in offered["entry"]}
    assert days == {str(MONDAY + timedelta(days=1))}  # Monday: new patients not seen then
    body = params(appointment_resource=offered["entry"][0]["resource"])
    body["parameter"].append({"name": "cancelled-appointment-id", "valueId": first.json()["id"]})
    moved = app_client.post("/fhir/Appointment/$book", json=body, headers=FHIR_JSON)
    assert moved.status_code == 201, moved.text
    old = app_client.get(f"/fhir/Appointment/{first.json()['id']}").json()
    assert old["status"] == "cancelled"


def test_retry_with_idempotency_key_books_once(app_client: TestClient, cfg: ClinicConfig) -> None:
    proposed = first_option(app_client, cfg, existing_patient(app_client))
    body = params(appointment_resource=proposed)
    headers = {**FHIR_JSON, "idempotency-key": "retry-1"}
    first = app_client.post("/fhir/Appointment/$book", json=body, headers=headers)
    again = app_client.post("/fhir/Appointment/$book", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"]
    assert count_appointments(app_client, "booked") == 1
    other_key = app_client.post(
        "/fhir/Appointment/$book", json=body, headers={**FHIR_JSON, "idempotency-key": "retry-2"}
    )
    assert other_key.status_code == 409


def test_appointment_identifier_is_an_idempotency_key(
    app_client: TestClient, cfg: ClinicConfig
) -> None:
    proposed = first_option(app_client, cfg, existing_patient(app_client))
    proposed["identifier"] = [{"system": "urn:client", "value": "req-77"}]
    first = op(app_client, "book", appointment_resource=proposed)
    again = op(app_client, "book", appointment_resource=proposed)
    assert (first.status_code, again.status_code) == (201, 201)
    assert first.json()["id"] == again.json()["id"]


@pytest.mark.parametrize("name", ["hold", "book"])
def test_a_bare_appointment_is_answered_with_how_to_wrap_it(
    app_client: TestClient, cfg: ClinicConfig, name: str
) -> None:
    proposed = first_option(app_client, cfg, existing_patient(app_client))
    r = app_client.post(f"/fhir/Appointment/${name}", json=proposed, headers=FHIR_JSON)
    assert r.status_code == 400, r.text
    issue = r.json()["issue"][0]
    assert issue["diagnostics"] == (
        f"POST ${name} takes a Parameters resource holding appointment-resource; this body is "
        'an Appointment: wrap it as {"resourceType": "Parameters", "parameter": '
        '[{"name": "appointment-resource", "resource": {...}}]}'
    )
    assert issue["expression"] == ["resourceType"]
    assert count_appointments(app_client, "booked") == 0


@pytest.mark.parametrize(
    ("name", "body", "said"),
    [
        (
            "find",
            {"resourceType": "Slot"},
            "POST $find takes a Parameters resource; this body is a Slot",
        ),
        (
            "book",
            {"resourceType": "Patient"},
            "POST $book takes a Parameters resource; this body is a Patient",
        ),
        ("book", [1, 2], "POST $book takes a Parameters resource; this body is not one"),
        (
            "hold",
            {"resourceType": "<b>x</b>"},
            "POST $hold takes a Parameters resource; this body is not one",
        ),
    ],
    ids=["find-slot", "book-patient", "book-list", "hold-odd-type"],
)
def test_a_body_that_is_not_parameters_names_what_was_sent(
    app_client: TestClient, name: str, body: Any, said: str
) -> None:
    r = app_client.post(f"/fhir/Appointment/${name}", json=body, headers=FHIR_JSON)
    assert r.status_code == 400, r.text
    assert r.json()["issue"][0]["diagnostics"] == said


def test_a_booking_without_a_patient_is_422(app_client: TestClient, cfg: ClinicConfig) -> None:
    proposed = first_option(app_client, cfg, existing_patient(app_client))
    nobody = {**proposed, "participant": proposed["participant"][:2]}  # clinician, location
    r = op(app_client, "book", appointment_resource=nobody)
    assert r.status_code == 422, r.text
    issue = r.json()["issue"][0]
    assert issue["expression"] == ["Appointment.participant"]
    assert "patient-reference" in issue["diagnostics"]
    assert "Patient/<id>" in issue["diagnostics"]
    assert count_appointments(app_client, "booked") == 0
    booked = op(app_client, "book", appointment_resource=proposed).json()
    moved = {**booked, "participant": booked["participant"][:2], "comment": "no patient"}
    r = op(app_client, "book", appointment_resource=moved)  # a modification keeps its patient
    assert r.status_code == 422, r.text
    kept = app_client.get(f"/fhir/Appointment/{booked['id']}").json()
    assert kept["participant"] == booked["participant"]


def test_a_hold_without_a_patient_is_booked_once_one_is_named(
    app_client: TestClient, cfg: ClinicConfig
) -> None:
    bundle = find(app_client, cfg, MONDAY, "new-patient", _count="1").json()
    proposed = bundle["entry"][0]["resource"]
    assert not any("Patient/" in p["actor"]["reference"] for p in proposed["participant"])
    held = op(app_client, "hold", appointment_resource=proposed)
    assert held.status_code == 200, held.text
    by_reference = op(app_client, "book", appointment_reference=f"Appointment/{held.json()['id']}")
    assert by_reference.status_code == 422, by_reference.text
    assert by_reference.json()["issue"][0]["expression"] == ["Appointment.participant"]
    newcomer = create(app_client, make_patient("New"))
    named = {
        **held.json(),
        "participant": [
            *held.json()["participant"],
            {"actor": {"reference": f"Patient/{newcomer['id']}"}, "status": "needs-action"},
        ],
    }
    booked = op(app_client, "book", appointment_resource=named)
    assert booked.status_code == 201, booked.text
    assert booked.json()["id"] == held.json()["id"]
