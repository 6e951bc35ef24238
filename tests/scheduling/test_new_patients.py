"""Patients described rather than named: ``$find`` proposes them contained, ``$book`` matches
them again or creates them with the booking (once, however many conversations race), and
cancels or moves a booking named by its patient and start. Driven over HTTP with a client
allowed only ``$find`` and ``$book``, on both databases."""

from __future__ import annotations

import threading
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from resources.sql.engine import Database
from scheduling.config import ClinicConfig
from tests.builders import FHIR_JSON, create, make_patient
from tests.scheduling.test_find import MONDAY, existing_patient, local
from tests.smart import backend_token

AGENT_SCOPE = "system/Appointment.$find system/Appointment.$book"
NEWCOMER = {
    **make_patient("Newcomer", ["Nora"], birth="1990-03-04", phone="+1 555 0100"),
    "gender": "female",
}


def agent(c: TestClient, db: Database) -> dict[str, str]:
    """The booking agent's headers: a backend token for $find and $book only."""
    return {"Authorization": f"Bearer {backend_token(c, db, AGENT_SCOPE, registered=True)}"}


def find_for(
    c: TestClient,
    auth: dict[str, str],
    cfg: ClinicConfig,
    patient: dict[str, Any],
    visit: str,
    day: date = MONDAY,
) -> list[dict[str, Any]]:
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "start", "valueDateTime": local(cfg, day, 0).isoformat()},
            {"name": "end", "valueDateTime": local(cfg, day, 23).isoformat()},
            {"name": "visit-type", "valueString": visit},
            {"name": "patient-resource", "resource": patient},
        ],
    }
    r = c.post("/fhir/Appointment/$find", json=body, headers={**auth, **FHIR_JSON})
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match"]


def book(
    c: TestClient, auth: dict[str, str], appointment: dict[str, Any], **more: Any
) -> httpx.Response:
    parameter = [{"name": "appointment-resource", "resource": appointment}]
    for name, value in more.items():
        parameter.append({"name": name.replace("_", "-"), "resource": value})
    body = {"resourceType": "Parameters", "parameter": parameter}
    return c.post("/fhir/Appointment/$book", json=body, headers={**auth, **FHIR_JSON})


def patients_named(c: TestClient, family: str) -> list[dict[str, Any]]:
    r = c.get("/fhir/Patient", params={"family:exact": family})
    return [e["resource"] for e in r.json().get("entry", [])]


def patient_of(appointment: dict[str, Any]) -> str:
    refs = [p["actor"]["reference"] for p in appointment["participant"]]
    return next(r for r in refs if r.startswith("Patient/")).split("/")[1]


def count_booked(c: TestClient) -> int:
    r = c.get("/fhir/Appointment", params={"status": "booked", "_summary": "count"})
    return int(r.json()["total"])


def test_find_proposes_an_unknown_patient_contained_as_sent(
    app_client: TestClient, db: Database, cfg: ClinicConfig
) -> None:
    proposals = find_for(app_client, agent(app_client, db), cfg, NEWCOMER, "new-patient")
    assert proposals
    for appt in proposals:
        assert appt["contained"] == [{**NEWCOMER, "id": "patient"}]
        refs = [p["actor"]["reference"] for p in appt["participant"]]
        assert "#patient" in refs
        assert not [r for r in refs if r.startswith("Patient/")]


def test_book_creates_the_described_patient_once(
    app_client: TestClient, db: Database, cfg: ClinicConfig
) -> None:
    auth = agent(app_client, db)
    assert not find_for(app_client, auth, cfg, NEWCOMER, "follow-up")  # new here
    r = book(app_client, auth, find_for(app_client, auth, cfg, NEWCOMER, "new-patient")[0])
    assert r.status_code == 201, r.text
    booked = r.json()
    assert "contained" not in booked
    pid = patient_of(booked)
    stored = app_client.get(f"/fhir/Patient/{pid}").json()
    assert {k: v for k, v in stored.items() if k not in ("id", "meta")} == NEWCOMER
    # a visit still to come does not make them an existing patient (they have not been seen)
    assert not find_for(app_client, auth, cfg, NEWCOMER, "follow-up")
    # but they are a Patient here now: booked again as the same one
    tuesday = MONDAY + timedelta(days=1)
    later = find_for(app_client, auth, cfg, NEWCOMER, "procedure", tuesday)[-1]
    again = book(app_client, auth, later)
    assert again.status_code == 201, again.text
    assert patient_of(again.json()) == pid
    assert [p["id"] for p in patients_named(app_client, "Newcomer")] == [pid]
    # the creation is audited as this client's, in the booking's transaction
    created = audit_events(app_client, db, entity=f"Patient/{pid}", subtype="create")
    assert len(created) == 1
    assert created[0]["outcome"] == "0"
    client_ids = {a["who"].get("identifier", {}).get("value") for a in created[0]["agent"]}
    assert any(cid and cid.startswith("test-") for cid in client_ids)


def audit_events(c: TestClient, db: Database, **params: str) -> list[dict[str, Any]]:
    token = backend_token(c, db, "system/AuditEvent.rs", registered=True)
    r = c.get("/fhir/AuditEvent", params=params, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", [])]


def test_book_matches_a_known_patient_again(
    app_client: TestClient, db: Database, cfg: ClinicConfig
) -> None:
    pid = existing_patient(app_client)  # Known, MRN K-1, with a past visit
    auth = agent(app_client, db)
    described = make_patient("Known", mrn="K-1")
    proposals = find_for(app_client, auth, cfg, described, "follow-up")
    assert proposals, "a known patient gets the existing-patient visits"
    r = book(app_client, auth, proposals[0])
    assert r.status_code == 201, r.text
    assert patient_of(r.json()) == pid
    assert [p["id"] for p in patients_named(app_client, "Known")] == [pid]


def test_two_matching_patients_are_refused_unless_the_phone_tells_them_apart(
    app_client: TestClient, db: Database, cfg: ClinicConfig
) -> None:
    twin_a = create(app_client, make_patient("Twin", ["A"], birth="1970-01-01", phone="555-0001"))
    create(app_client, make_patient("Twin", ["B"], birth="1970-01-01", phone="555-0002"))
    auth = agent(app_client, db)
    vague = make_patient("Twin", birth="1970-01-01")
    r = book(app_client, auth, find_for(app_client, auth, cfg, vague, "new-patient")[0])
    assert r.status_code == 422, r.text
    issue = r.json()["issue"][0]
    assert issue["code"] == "multiple-matches"
    assert "staff" in issue["diagnostics"]
    assert issue["details"]["coding"][0]["code"] == "FS-0603"
    assert len(patients_named(app_client, "Twin")) == 2
    assert count_booked(app_client) == 0
    told = make_patient("Twin", birth="1970-01-01", phone="555-0001")
    r = book(app_client, auth, find_for(app_client, auth, cfg, told, "new-patient")[0])
    assert r.status_code == 201, r.text
    assert patient_of(r.json()) == twin_a["id"]


def test_a_refused_booking_creates_no_patient(
    app_client: TestClient, db: Database, cfg: ClinicConfig
) -> None:
    auth = agent(app_client, db)
    proposal = find_for(app_client, auth, cfg, NEWCOMER, "new-patient")[0]
    stranger = make_patient("Stranger", birth="1960-06-06")
    taken = book(app_client, auth, find_for(app_client, auth, cfg, stranger, "new-patient")[0])
    assert taken.status_code == 201, taken.text  # Stranger takes the same first time
    r = book(app_client, auth, proposal)
    assert r.status_code == 409, r.text
    assert patients_named(app_client, "Newcomer") == []


def test_a_patient_who_could_never_be_matched_again_is_not_created(
    app_client: TestClient, db: Database, cfg: ClinicConfig
) -> None:
    auth = agent(app_client, db)
    vague = make_patient("Vague", birth=None)  # no identifier, no birth date
    r = book(app_client, auth, find_for(app_client, auth, cfg, vague, "new-patient")[0])
    assert r.status_code == 422, r.text
    assert "birth date" in r.json()["issue"][0]["diagnostics"]
    assert patients_named(app_client, "Vague") == []


def test_hold_refuses_a_contained_patient(
    app_client: TestClient, db: Database, cfg: ClinicConfig
) -> None:
    proposal = find_for(app_client, {}, cfg, NEWCOMER, "new-patient")[0]
    body = {
        "resourceType": "Parameters",
        "parameter": [{"name": "appointment-resource", "resource": proposal}],
    }
    r = app_client.post("/fhir/Appointment/$hold", json=body, headers=FHIR_JSON)
    assert r.status_code == 422, r.text
    assert patients_named(app_client, "Newcomer") == []


def _waiting_on_locks(db: Database) -> int:
    with db.read() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        )


def test_concurrent_bookings_for_one_new_person_create_them_once(
    app_client: TestClient, db: Database, cfg: ClinicConfig
) -> None:
    """Two conversations book two different times for the same new person at once. On
    PostgreSQL the Slots of both times are held by another transaction until both bookings
    wait (each past its patient match, were the match not guarded), so they are in flight
    together; SQLite's writers take turns. Either way one Patient is created."""
    auth = agent(app_client, db)
    # a visit open to new and existing patients alike, so the second booking, which finds
    # the Patient the first created, is still allowed
    proposals = find_for(app_client, auth, cfg, NEWCOMER, "procedure", MONDAY + timedelta(days=1))
    pair = [proposals[0], proposals[-1]]
    answers: list[httpx.Response] = []
    barrier = threading.Barrier(len(pair))

    def call(proposal: dict[str, Any]) -> None:
        barrier.wait()
        answers.append(book(app_client, auth, proposal))

    slots = sorted(s["reference"].split("/")[1] for p in pair for s in p["slot"])
    blocker = db.engine.connect() if not db.is_sqlite else None
    if blocker is not None:
        blocker.begin()
        blocker.execute(
            text(
                "SELECT seq FROM resource WHERE res_type = 'Slot' AND res_id = ANY(:ids) "
                "ORDER BY res_id FOR UPDATE"
            ),
            {"ids": slots},
        )
    threads = [threading.Thread(target=call, args=(p,)) for p in pair]
    for t in threads:
        t.start()
    if blocker is not None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _waiting_on_locks(db) < len(pair):
            time.sleep(0.02)
        blocker.rollback()
        blocker.close()
    for t in threads:
        t.join(60)
    assert sorted(r.status_code for r in answers) == [201, 201], [r.text for r in answers]
    made = patients_named(app_client, "Newcomer")
    assert len(made) == 1
    assert {patient_of(r.json()) for r in answers} == {made[0]["id"]}


# -- cancel and reschedule by patient and start ----------------------------------------------


def _booked_for_known(c: TestClient, db: Database, cfg: ClinicConfig) -> tuple[str, Any]:
    pid = existing_patient(c)
    auth = agent(c, db)
    proposal = find_for(c, auth, cfg, make_patient("Known", mrn="K-1"), "follow-up")[0]
    r = book(c, auth, proposal)
    assert r.status_code == 201, r.text
    return pid, r.json()


def _named(start: str, patient: str | dict[str, Any]) -> dict[str, Any]:
    """An Appointment naming a booking by its patient and start."""
    out: dict[str, Any] = {"resourceType": "Appointment", "status": "cancelled", "start": start}
    if isinstance(patient, str):
        out["participant"] = [{"actor": {"reference": patient}, "status": "declined"}]
    else:
        out["contained"] = [{**patient, "id": "p"}]
        out["participant"] = [{"actor": {"reference": "#p"}, "status": "declined"}]
    return out


@pytest.mark.parametrize("by", ["reference", "contained"])
def test_cancel_by_patient_and_start(
    app_client: TestClient, db: Database, cfg: ClinicConfig, by: str
) -> None:
    pid, booked = _booked_for_known(app_client, db, cfg)
    who = f"Patient/{pid}" if by == "reference" else make_patient("Known", mrn="K-1")
    # the same instant written in UTC
    start = datetime.fromisoformat(booked["start"]).astimezone(UTC).isoformat()
    r = book(app_client, agent(app_client, db), _named(start, who))
    assert r.status_code == 200, r.text
    assert r.json()["id"] == booked["id"]
    assert r.json()["status"] == "cancelled"
    assert count_booked(app_client) == 0


def test_a_phone_number_that_is_not_on_file_names_nothing(
    app_client: TestClient, db: Database, cfg: ClinicConfig
) -> None:
    """A client that names the patient's phone (the agent, once the number is proven) reaches
    the booking only if that number is the patient's: name and birth date alone are not
    enough to cancel someone else's visit."""
    pid, booked = _booked_for_known(app_client, db, cfg)
    patient = app_client.get(f"/fhir/Patient/{pid}").json()
    patient["telecom"] = [{"system": "phone", "value": "+1 555 0199"}]
    assert app_client.put(f"/fhir/Patient/{pid}", json=patient).status_code == 200
    auth = agent(app_client, db)
    someone = make_patient("Known", birth="1980-05-02", phone="+1 555 0100")
    wrong = book(app_client, auth, _named(booked["start"], someone))
    assert wrong.status_code == 404, wrong.text
    assert count_booked(app_client) == 1
    theirs = make_patient("Known", birth="1980-05-02", phone="+1 555 0199")
    right = book(app_client, auth, _named(booked["start"], theirs))
    assert right.status_code == 200, right.text
    assert count_booked(app_client) == 0


def test_no_single_booking_at_that_time_is_one_answer(
    app_client: TestClient, db: Database, cfg: ClinicConfig
) -> None:
    pid, booked = _booked_for_known(app_client, db, cfg)
    auth = agent(app_client, db)
    later = (datetime.fromisoformat(booked["start"]) + timedelta(hours=1)).isoformat()
    none = book(app_client, auth, _named(later, f"Patient/{pid}"))
    nobody = book(app_client, auth, _named(booked["start"], make_patient("Nobody", mrn="X")))
    # a second booked Appointment at the same start (written directly, as an EMR might)
    twin = {**booked, "id": None}
    twin.pop("id")
    twin.pop("meta")
    create(app_client, twin)
    several = book(app_client, auth, _named(booked["start"], f"Patient/{pid}"))
    answers = [none, nobody, several]
    assert [r.status_code for r in answers] == [404, 404, 404]
    assert none.json() == nobody.json() == several.json()
    assert booked["id"] not in several.text
    assert count_booked(app_client) == 2


def test_reschedule_by_patient_and_start(
    app_client: TestClient, db: Database, cfg: ClinicConfig
) -> None:
    pid, booked = _booked_for_known(app_client, db, cfg)
    auth = agent(app_client, db)
    later = find_for(app_client, auth, cfg, make_patient("Known", mrn="K-1"), "follow-up")[-1]
    old = _named(booked["start"], f"Patient/{pid}")
    r = book(app_client, auth, later, cancelled_appointment=old)
    assert r.status_code == 201, r.text
    assert r.json()["start"] == later["start"]
    assert patient_of(r.json()) == pid
    old_now = app_client.get(f"/fhir/Appointment/{booked['id']}").json()
    assert old_now["status"] == "cancelled"
    # naming nothing booked changes nothing
    again = book(app_client, auth, later, cancelled_appointment=old)
    assert again.status_code == 404, again.text
    assert count_booked(app_client) == 1
