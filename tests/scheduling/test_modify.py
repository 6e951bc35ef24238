"""$book modifying a booked Appointment, and the clinic's cancellation notice, on both databases."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import Connection, event, select, text

from base.errors import BadRequest, FHIRError
from fhir_server.app import create_app
from fhir_server.settings import Settings
from resources.sql.engine import Database
from resources.store import Store, StoredVersion
from scheduling import booking
from scheduling.clinic import load_clinic
from scheduling.config import ClinicConfig, parse_clinic_config
from security.crypto import KeyRing
from tests.builders import FHIR_JSON, create, make_patient
from tests.scheduling.test_booking import BT, count_appointments, first_option, op, params
from tests.scheduling.test_find import MONDAY, clinic_data, existing_patient, find
from tests.smart import backend_token

TUESDAY = MONDAY + timedelta(days=1)


def _options(client: TestClient, cfg: ClinicConfig, pid: str, n: int = 8) -> list[dict[str, Any]]:
    """Dr. Evans's follow-up times on Monday."""
    extra = {"patient-reference": pid, "_count": str(n), "practitioner": "Practitioner/evans"}
    b = find(client, cfg, MONDAY, "follow-up", **extra)
    return [e["resource"] for e in b.json()["entry"]]


def _moved(booked: dict[str, Any], option: dict[str, Any]) -> dict[str, Any]:
    """The booked Appointment as a client would edit it to move it to ``option``'s time."""
    return {**booked, "start": option["start"], "end": option["end"], "slot": option["slot"]}


def _who_when(appt: dict[str, Any]) -> tuple[str, str]:
    return appt["participant"][0]["actor"]["reference"], appt["start"]


def _slot_status(client: TestClient, appt: dict[str, Any]) -> set[str]:
    return {client.get(f"/fhir/{s['reference']}").json()["status"] for s in appt["slot"]}


def _busy_rows(db: Database, appointment_id: str) -> list[tuple[str, Any, Any]]:
    with db.read() as conn:
        rows = conn.execute(
            select(BT.c.kind, BT.c.start, BT.c.end).where(BT.c.appointment_id == appointment_id)
        ).all()
    return [tuple(r) for r in rows]


def test_details_change_in_place(app_client: TestClient, db: Database, cfg: ClinicConfig) -> None:
    pid = existing_patient(app_client)
    booked = op(app_client, "book", appointment_resource=first_option(app_client, cfg, pid)).json()
    before = _busy_rows(db, booked["id"])
    edited = {**booked, "comment": "bring the knee brace", "patientInstruction": "arrive early"}
    r = op(app_client, "book", appointment_resource=edited)
    assert r.status_code == 200, r.text
    after = r.json()
    assert after["id"] == booked["id"]
    assert after["meta"]["versionId"] == str(int(booked["meta"]["versionId"]) + 1)
    assert (after["status"], after["comment"]) == ("booked", "bring the knee brace")
    assert after["slot"] == booked["slot"]
    assert _slot_status(app_client, after) == {"busy"}
    assert _busy_rows(db, booked["id"]) == before
    assert count_appointments(app_client, "booked") == 1


def test_a_new_time_moves_the_booking(
    app_client: TestClient, db: Database, cfg: ClinicConfig
) -> None:
    pid = existing_patient(app_client)
    first, *_, last = _options(app_client, cfg, pid)
    booked = op(app_client, "book", appointment_resource=first).json()
    r = op(app_client, "book", appointment_resource=_moved(booked, last))
    assert r.status_code == 200, r.text
    moved = r.json()
    assert (moved["id"], moved["status"]) == (booked["id"], "booked")
    assert (moved["start"], moved["end"]) == (last["start"], last["end"])
    assert _slot_status(app_client, booked) == {"free"}
    assert _slot_status(app_client, moved) == {"busy"}
    assert [kind for kind, *_ in _busy_rows(db, booked["id"])] == ["booked"]
    # the old time is offered again, the new one is not
    offered = {_who_when(o) for o in _options(app_client, cfg, pid, 50)}
    assert _who_when(first) in offered and _who_when(last) not in offered
    assert count_appointments(app_client, "booked") == 1


def test_moving_onto_a_taken_time_changes_nothing(
    app_client: TestClient, db: Database, cfg: ClinicConfig
) -> None:
    pid = existing_patient(app_client)
    options = _options(app_client, cfg, pid)
    mine = op(app_client, "book", appointment_resource=options[0]).json()
    theirs = op(app_client, "book", appointment_resource=options[4]).json()
    before = _busy_rows(db, mine["id"])
    r = op(app_client, "book", appointment_resource=_moved(mine, theirs))
    assert r.status_code == 409, r.text
    assert r.json()["issue"][0]["code"] == "conflict"
    now = app_client.get(f"/fhir/Appointment/{mine['id']}").json()
    assert (now["start"], now["meta"]["versionId"]) == (mine["start"], mine["meta"]["versionId"])
    assert _slot_status(app_client, mine) == {"busy"}
    assert _busy_rows(db, mine["id"]) == before


def test_the_patient_cannot_change(app_client: TestClient, cfg: ClinicConfig) -> None:
    pid = existing_patient(app_client)
    booked = op(app_client, "book", appointment_resource=first_option(app_client, cfg, pid)).json()
    other = create(app_client, make_patient("Other", mrn="O-1"))
    swapped = {
        **booked,
        "participant": [
            p
            if not p["actor"]["reference"].startswith("Patient/")
            else {**p, "actor": {"reference": f"Patient/{other['id']}"}}
            for p in booked["participant"]
        ],
    }
    r = op(app_client, "book", appointment_resource=swapped)
    assert r.status_code == 400
    assert "cancel it and book again" in r.json()["issue"][0]["diagnostics"]


def test_a_move_is_checked_against_every_rule(app_client: TestClient, cfg: ClinicConfig) -> None:
    """A new patient's first visit can move to another new-patient window: the booking being
    moved does not make them an existing patient, and it cannot leave the windows either."""
    patient = create(app_client, make_patient("Newcomer", mrn="N-1"))
    pid = patient["id"]
    smith = {"patient-reference": pid, "practitioner": "Practitioner/smith"}
    tuesday = find(app_client, cfg, TUESDAY, "new-patient", **smith)
    first, *_, last = [e["resource"] for e in tuesday.json()["entry"]]
    booked = op(app_client, "book", appointment_resource=first).json()
    r = op(app_client, "book", appointment_resource=_moved(booked, last))
    assert r.status_code == 200, r.text
    # Monday is outside Dr. Smith's new-patient window: moving there is refused
    outside = {
        **last,
        "start": last["start"].replace(str(TUESDAY), str(MONDAY)),
        "end": last["end"].replace(str(TUESDAY), str(MONDAY)),
        "slot": [],
    }
    refused = op(app_client, "book", appointment_resource=_moved(r.json(), outside))
    assert refused.status_code == 409, refused.text
    kept = app_client.get(f"/fhir/Appointment/{booked['id']}").json()
    assert kept["start"] == last["start"]


def test_booking_a_held_appointment_by_its_resource(
    app_client: TestClient, cfg: ClinicConfig
) -> None:
    pid = existing_patient(app_client)
    held = op(app_client, "hold", appointment_resource=first_option(app_client, cfg, pid)).json()
    r = op(app_client, "book", appointment_resource={**held, "comment": "first visit"})
    assert r.status_code == 201, r.text
    assert (r.json()["id"], r.json()["status"]) == (held["id"], "booked")
    assert count_appointments(app_client, "pending") == 0


def test_cancelling_with_an_identifier_is_not_a_replay_of_the_booking(
    app_client: TestClient, cfg: ClinicConfig
) -> None:
    proposed = first_option(app_client, cfg, existing_patient(app_client))
    proposed["identifier"] = [{"system": "urn:client", "value": "req-88"}]
    booked = op(app_client, "book", appointment_resource=proposed).json()
    cancel = {**booked, "status": "cancelled"}
    first = op(app_client, "book", appointment_resource=cancel)
    again = op(app_client, "book", appointment_resource=cancel)  # a retried cancellation
    assert (first.status_code, again.status_code) == (200, 200), again.text
    assert first.json()["status"] == again.json()["status"] == "cancelled"
    assert first.json()["meta"]["versionId"] == again.json()["meta"]["versionId"]


# -- cancellation notice ------------------------------------------------------------------------


@pytest.fixture
def strict_client(
    db: Database, keys: KeyRing, store: Store, tmp_path: Path
) -> Iterator[tuple[TestClient, ClinicConfig]]:
    """A clinic asking for 60 days' notice, so every bookable time is inside it."""
    data = clinic_data()
    data["rules"]["cancellation_notice_hours"] = 24 * 60
    cfg = parse_clinic_config(data)
    path = tmp_path / "clinic.yaml"
    path.write_text(yaml.safe_dump(data))
    with db.write() as conn:
        load_clinic(conn, store=store, config=cfg, today=MONDAY, weeks=1)
    settings = Settings(
        database_url="sqlite://",
        key_file=tmp_path / "k.json",
        base_url="http://testserver/fhir",
        clinic_file=path,
    )
    with TestClient(create_app(settings, keys=keys, db=db), raise_server_exceptions=False) as c:
        c.headers["Authorization"] = f"Bearer {backend_token(c, db)}"
        yield c, cfg


def test_cancellation_notice_is_enforced(strict_client: tuple[TestClient, ClinicConfig]) -> None:
    client, cfg = strict_client
    pid = existing_patient(client)
    first, *_, last = _options(client, cfg, pid)
    booked = op(client, "book", appointment_resource=first).json()
    for attempt in (
        {**booked, "status": "cancelled"},  # cancel
        _moved(booked, last),  # move to another time
    ):
        r = op(client, "book", appointment_resource=attempt)
        assert r.status_code == 422, r.text
        issue = r.json()["issue"][0]
        assert issue["code"] == "business-rule"
        assert "1440 hours' notice" in issue["diagnostics"]
    # a reschedule cancels the old booking: refused too, and the new time is not booked
    body = params(appointment_resource=last)
    body["parameter"].append({"name": "cancelled-appointment-id", "valueId": booked["id"]})
    r = client.post("/fhir/Appointment/$book", json=body, headers=FHIR_JSON)
    assert r.status_code == 422
    assert client.get(f"/fhir/Appointment/{booked['id']}").json()["status"] == "booked"
    assert _slot_status(client, booked) == {"busy"}
    assert count_appointments(client, "booked") == 1
    # details may still change, and a hold may always be let go
    r = op(client, "book", appointment_resource={**booked, "comment": "running late"})
    assert r.status_code == 200
    held = op(client, "hold", appointment_resource=last).json()
    r = op(client, "book", appointment_resource={**held, "status": "cancelled"})
    assert r.status_code == 200, r.text


# -- a cancellation and two moves of one booking at once (PostgreSQL) ---------------------------


def _backend_pid(conn: Connection) -> int:
    return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _blocked_by(db: Database, pid: int) -> int:
    """How many PostgreSQL sessions wait on a lock the session ``pid`` holds (asked on a fresh
    connection: pg_stat_activity is a snapshot taken once per transaction)."""
    sql = "SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"
    with db.engine.connect() as probe:
        return int(probe.execute(text(sql), {"pid": pid}).scalar_one())


def _until(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not done():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.01)


def test_a_cancellation_that_waited_behind_a_move_cancels_the_booking_as_it_stands(
    app_client: TestClient, db: Database, cfg: ClinicConfig, keys: KeyRing, store: Store
) -> None:
    """A cancellation reads the booking, then waits for its Slots behind a move (A) of the same
    Appointment; once A commits, the booking names A's Slots. The cancellation is then held
    just before it gives up the booking's time (as a loaded machine may delay it), and a second
    move (B) is let in, held before it commits. Holding only the Slots it first read, the
    cancellation ran alongside B: its delete of the busy time found A's row gone (B had deleted
    it) and could not see B's, and it cancelled the Appointment while B's time stayed booked.
    Holding the Slots of the booking it acts on, it goes first and B finds it cancelled.
    (SQLite's one writer at a time leaves no move in between.)"""
    if db.is_sqlite:
        pytest.skip("SQLite runs one writer at a time: nothing can move a booking meanwhile")
    pid = existing_patient(app_client)
    options = _options(app_client, cfg, pid)
    first, to_a, to_b = options[0], options[2], options[4]
    assert len({s["reference"] for o in (first, to_a, to_b) for s in o["slot"]}) >= 6
    booked = op(app_client, "book", appointment_resource=first).json()
    aid, now = booked["id"], datetime.now(UTC)
    pids: dict[str, int] = {}
    outcome: dict[str, StoredVersion | FHIRError] = {}
    cancel_held, cancel_go, move_held, move_go = (threading.Event() for _ in range(4))

    def cancel() -> None:
        try:
            with db.write() as conn:
                pids["cancel"] = _backend_pid(conn)
                outcome["cancel"] = booking.cancel(
                    conn, store=store, config=cfg, appointment_id=aid, now=now
                )
        except FHIRError as exc:
            outcome["cancel"] = exc

    def hold_cancel_before_release(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        """SQLAlchemy's hook: the cancellation's first delete of busy time waits to be let go."""
        mine = threading.current_thread() is canceller
        if mine and statement.startswith("DELETE FROM busy_time") and not cancel_held.is_set():
            cancel_held.set()
            cancel_go.wait(30)

    mover = Store(keys, base_url=store.base_url)

    def hold_move_before_commit(_conn: Connection, _stored: StoredVersion) -> None:
        move_held.set()
        move_go.wait(30)

    mover.watch("Appointment", hold_move_before_commit)

    def move() -> None:
        try:
            with db.write() as conn:
                pids["move"] = _backend_pid(conn)
                outcome["move"] = booking.modify(
                    conn, store=mover, config=cfg, appointment=_moved(booked, to_b), now=now
                )
        except FHIRError as exc:
            outcome["move"] = exc

    canceller = threading.Thread(target=cancel)
    second_move = threading.Thread(target=move)
    event.listen(db.engine, "before_cursor_execute", hold_cancel_before_release)
    try:
        with db.write() as conn:  # A: the first move, not committed until the block ends
            a_pid = _backend_pid(conn)
            booking.modify(conn, store=store, config=cfg, appointment=_moved(booked, to_a), now=now)
            canceller.start()
            _until(lambda: _blocked_by(db, a_pid) == 1, "the cancellation waits for A's Slots")
        assert cancel_held.wait(30), "the cancellation never reached its delete"
        second_move.start()
        _until(
            lambda: move_held.is_set() or _blocked_by(db, pids["cancel"]) == 1,
            "B is held before its commit, or waits for the cancellation",
        )
        cancel_go.set()
        _until(
            lambda: not canceller.is_alive() or _blocked_by(db, pids["move"]) == 1,
            "the cancellation ends, or waits for B",
        )
        move_go.set()
        canceller.join(30)
        second_move.join(30)
    finally:
        cancel_go.set()
        move_go.set()
        event.remove(db.engine, "before_cursor_execute", hold_cancel_before_release)
    now_booked = app_client.get(f"/fhir/Appointment/{aid}").json()
    assert now_booked["status"] == "cancelled"
    assert _busy_rows(db, aid) == []
    for option in (first, to_a, to_b):
        assert _slot_status(app_client, option) == {"free"}
    assert isinstance(outcome["cancel"], StoredVersion)
    assert isinstance(outcome["move"], BadRequest)
    assert "is cancelled, not booked" in str(outcome["move"])
