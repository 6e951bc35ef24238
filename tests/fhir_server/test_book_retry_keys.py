"""``$book`` retry keys (the ``Idempotency-Key`` header, or an Appointment identifier) belong to
whoever sent them: a retry gets the first result back only if the same client, user and
patient send the same request, and only if they may still see it. Driven over HTTP with
patient tokens from the real sign-in pages, on both databases."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert

from resources.sql.engine import Database
from resources.sql.tables import IdempotencyKey
from scheduling.config import ClinicConfig
from security.crypto import KeyRing
from security.smart.registry import add_user
from tests.builders import FHIR_JSON, create, make_patient
from tests.scheduling.test_find import MONDAY, app_client, cfg, local  # noqa: F401 - fixtures
from tests.smart import (
    authorize_params,
    backend_token,
    exchange,
    pkce,
    redirect_query,
    register_app,
    sign_in_and_allow,
)

PASSWORD = "patient-password-1"


@dataclass
class Portal:
    """One patient app ("portal") that patients A and B both sign in to."""

    c: TestClient
    cfg: ClinicConfig
    admin: dict[str, str]
    ids: dict[str, str]
    auth: dict[str, dict[str, str]]


def _existing_patient(c: TestClient, admin: dict[str, str], family: str) -> str:
    """A Patient with a past visit, so follow-up times are offered to them."""
    pid = str(create(c, make_patient(family), **admin)["id"])
    past = {
        "resourceType": "Appointment",
        "status": "fulfilled",
        "participant": [{"actor": {"reference": f"Patient/{pid}"}, "status": "accepted"}],
    }
    create(c, past, **admin)
    return pid


def _patient_token(c: TestClient, db: Database, keys: KeyRing, pid: str, login: str) -> str:
    with db.write() as conn:
        add_user(
            conn, keys, login=login, password=PASSWORD, role="patient", fhir_user=f"Patient/{pid}"
        )
    verifier, challenge = pkce()
    final = sign_in_and_allow(
        c, authorize_params("portal", challenge), login=login, password=PASSWORD
    )
    token = exchange(c, "portal", redirect_query(final)["code"], verifier).json()
    assert token["patient"] == pid
    return str(token["access_token"])


@pytest.fixture
def portal(app_client: TestClient, db: Database, keys: KeyRing, cfg: ClinicConfig) -> Portal:  # noqa: F811
    c = app_client
    admin = {"Authorization": c.headers.pop("Authorization")}
    c.follow_redirects = False  # the sign-in ends in a redirect to the app
    register_app(db, client_id="portal")
    ids = {name: _existing_patient(c, admin, f"Fam{name}") for name in ("A", "B")}
    auth = {
        name: {"Authorization": f"Bearer {_patient_token(c, db, keys, pid, f'p-{name}')}"}
        for name, pid in ids.items()
    }
    return Portal(c, cfg, admin, ids, auth)


def _proposal(p: Portal, who: str, **extra: Any) -> dict[str, Any]:
    """The first follow-up time offered to patient ``who``, as their own token finds it."""
    params = {
        "start": local(p.cfg, MONDAY, 0).isoformat(),
        "end": local(p.cfg, MONDAY + timedelta(days=1), 0).isoformat(),
        "visit-type": "follow-up",
        "patient-reference": p.ids[who],
        "_count": "1",
    }
    found = p.c.get("/fhir/Appointment/$find", params=params, headers=p.auth[who])
    assert found.status_code == 200, found.text
    return {**found.json()["entry"][0]["resource"], **extra}


def _book(p: Portal, auth: dict[str, str], appointment: dict[str, Any], **headers: str) -> Any:
    body = {
        "resourceType": "Parameters",
        "parameter": [{"name": "appointment-resource", "resource": appointment}],
    }
    return p.c.post("/fhir/Appointment/$book", json=body, headers={**auth, **FHIR_JSON, **headers})


def _patients(appt: dict[str, Any]) -> set[str]:
    refs = [x["actor"]["reference"] for x in appt["participant"]]
    return {r.split("/")[1] for r in refs if r.startswith("Patient/")}


def _booked(p: Portal) -> int:
    r = p.c.get(
        "/fhir/Appointment", params={"status": "booked", "_summary": "count"}, headers=p.admin
    )
    return int(r.json()["total"])


def _message_id(resp: httpx.Response) -> str:
    return str(resp.json()["issue"][0]["details"]["coding"][0]["code"])


def test_another_patients_idempotency_key_books_for_the_sender(portal: Portal) -> None:
    """The attack: A sends B's Idempotency-Key with A's own proposal. A must get A's own new
    booking, never B's appointment; B's retry still gets B's."""
    p = portal
    b_body = _proposal(p, "B", description="B's private note")
    first = _book(p, p.auth["B"], b_body, **{"Idempotency-Key": "shared-1"})
    assert first.status_code == 201, first.text
    b_appt = first.json()
    assert p.c.get(f"/fhir/Appointment/{b_appt['id']}", headers=p.auth["A"]).status_code == 403

    attempt = _book(p, p.auth["A"], _proposal(p, "A"), **{"Idempotency-Key": "shared-1"})
    assert attempt.status_code == 201, attempt.text
    a_appt = attempt.json()
    assert a_appt["id"] != b_appt["id"]
    assert _patients(a_appt) == {p.ids["A"]}
    assert "B's private note" not in attempt.text and p.ids["B"] not in attempt.text
    assert _booked(p) == 2  # A's booking was made, B's is untouched

    again = _book(p, p.auth["B"], b_body, **{"Idempotency-Key": "shared-1"})
    assert again.status_code == 201, again.text
    assert again.json()["id"] == b_appt["id"]
    assert _booked(p) == 2


def test_a_shared_appointment_identifier_does_not_replay_across_patients(portal: Portal) -> None:
    """The identifier form, the other way round: B's booking with the identifier A used first
    is B's own booking, not a silent "success" that returns A's appointment."""
    p = portal
    ident = [{"system": "urn:portal:request", "value": "visit-1"}]
    a = _book(p, p.auth["A"], _proposal(p, "A", identifier=ident, description="A's note"))
    assert a.status_code == 201, a.text
    b = _book(p, p.auth["B"], _proposal(p, "B", identifier=ident))
    assert b.status_code == 201, b.text
    assert b.json()["id"] != a.json()["id"]
    assert _patients(b.json()) == {p.ids["B"]}
    assert "A's note" not in b.text and p.ids["A"] not in b.text
    assert _booked(p) == 2


def test_a_key_reused_with_another_request_is_422(portal: Portal) -> None:
    p = portal
    body = _proposal(p, "A")
    key = {"Idempotency-Key": "a-1"}
    first = _book(p, p.auth["A"], body, **key)
    assert first.status_code == 201, first.text
    changed = _book(p, p.auth["A"], {**body, "comment": "another request"}, **key)
    assert changed.status_code == 422, changed.text
    assert _message_id(changed) == "FS-0602"
    same = _book(p, p.auth["A"], body, **key)
    assert same.status_code == 201 and same.json()["id"] == first.json()["id"]
    assert _booked(p) == 1


def test_keys_belong_to_their_client(portal: Portal, db: Database) -> None:
    """Two backend clients that happen to pick the same key each get their own booking."""
    p = portal
    other = {"Authorization": f"Bearer {backend_token(p.c, db)}"}
    first = _book(p, p.admin, _proposal(p, "A"), **{"Idempotency-Key": "k"})
    second = _book(p, other, _proposal(p, "A"), **{"Idempotency-Key": "k"})
    assert (first.status_code, second.status_code) == (201, 201), second.text
    assert first.json()["id"] != second.json()["id"]
    assert _booked(p) == 2


def test_a_replay_is_checked_like_a_read(portal: Portal) -> None:
    """A's retry after the appointment was moved to another patient is refused, as reading it
    would be."""
    p = portal
    body = _proposal(p, "A")
    first = _book(p, p.auth["A"], body, **{"Idempotency-Key": "a-2"})
    assert first.status_code == 201, first.text
    moved = first.json()
    for x in moved["participant"]:
        if x["actor"]["reference"].startswith("Patient/"):
            x["actor"]["reference"] = f"Patient/{p.ids['B']}"
    put = p.c.put(f"/fhir/Appointment/{moved['id']}", json=moved, headers={**p.admin, **FHIR_JSON})
    assert put.status_code == 200, put.text
    retry = _book(p, p.auth["A"], body, **{"Idempotency-Key": "a-2"})
    assert retry.status_code == 403, retry.text
    assert p.ids["B"] not in retry.text


def test_a_key_stored_before_keys_had_owners_replays_to_no_one(
    portal: Portal, db: Database
) -> None:
    """Rows from before migration 0011 have no owner ('' client): they never replay, so the
    request is handled as a new one."""
    p = portal
    b = _book(p, p.auth["B"], _proposal(p, "B"))
    assert b.status_code == 201, b.text
    with db.write() as conn:
        conn.execute(
            insert(IdempotencyKey).values(
                client_id="",
                user_id="",
                patient="",
                key="header:old-1",
                request_hash=None,
                operation="book",
                status=201,
                res_type="Appointment",
                res_id=b.json()["id"],
                version=1,
                created=local(p.cfg, MONDAY, 0),
            )
        )
    a = _book(p, p.auth["A"], _proposal(p, "A"), **{"Idempotency-Key": "old-1"})
    assert a.status_code == 201, a.text
    assert a.json()["id"] != b.json()["id"]
    assert _patients(a.json()) == {p.ids["A"]}
