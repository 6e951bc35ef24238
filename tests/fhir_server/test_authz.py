"""Scope enforcement on every interaction, bundle entry and operation: 401 without a usable
token, 403 without the scope, patient tokens confined to their compartment, granular scopes
filtering search and refusing reads outside them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from resources.sql.engine import Database
from resources.sql.tables import AuthToken
from security.crypto import KeyRing
from security.smart.registry import add_user
from tests.builders import make_patient
from tests.smart import (
    authorize_params,
    backend_token,
    exchange,
    pkce,
    redirect_query,
    register_app,
    sign_in_and_allow,
)

FHIR = {"content-type": "application/fhir+json"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **FHIR}


def _appointment(patient: str, status: str = "booked") -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "status": status,
        "start": "2030-01-07T09:00:00Z",
        "end": "2030-01-07T09:30:00Z",
        "participant": [{"actor": {"reference": f"Patient/{patient}"}, "status": "accepted"}],
    }


@pytest.fixture
def world(anonymous: TestClient, db: Database, keys: KeyRing) -> dict[str, Any]:
    """Patients A and B with an appointment each (and a cancelled one for A)."""
    admin = bearer(backend_token(anonymous, db))
    ids: dict[str, Any] = {"admin": admin}
    for name in ("A", "B"):
        r = anonymous.post("/fhir/Patient", json=make_patient(f"Fam{name}"), headers=admin)
        ids[name] = r.json()["id"]
        appt = anonymous.post("/fhir/Appointment", json=_appointment(ids[name]), headers=admin)
        ids[f"appt{name}"] = appt.json()["id"]
    cancelled = _appointment(ids["A"], "cancelled")
    ids["cancelledA"] = anonymous.post("/fhir/Appointment", json=cancelled, headers=admin).json()[
        "id"
    ]
    return ids


def _patient_token(
    anonymous: TestClient, db: Database, keys: KeyRing, patient: str, scope: str
) -> str:
    login = f"p-{uuid.uuid4().hex[:6]}"
    with db.write() as conn:
        add_user(
            conn,
            keys,
            login=login,
            password="patient-pass-1",
            role="patient",
            fhir_user=f"Patient/{patient}",
        )
    register_app(db, client_id=f"app-{login}")
    verifier, challenge = pkce()
    params = authorize_params(f"app-{login}", challenge, scope=scope)
    final = sign_in_and_allow(anonymous, params, login=login, password="patient-pass-1")
    token = exchange(anonymous, f"app-{login}", redirect_query(final)["code"], verifier).json()
    assert token["patient"] == patient
    return str(token["access_token"])


@pytest.mark.parametrize(
    "header",
    [None, "Bearer", "Basic abc", "Bearer two words", "Bearer not-a-token-we-issued"],
    ids=["missing", "empty", "wrong scheme", "malformed", "unknown"],
)
def test_no_usable_token_is_401(anonymous: TestClient, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    for method, path in [
        ("GET", "/fhir/Patient"),
        ("GET", "/fhir/Patient/x"),
        ("POST", "/fhir/Appointment/$book"),
        ("POST", "/fhir"),
    ]:
        r = anonymous.request(method, path, headers=headers)
        assert r.status_code == 401, (method, path, r.text)
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["resourceType"] == "OperationOutcome"


def test_open_endpoints(anonymous: TestClient) -> None:
    assert anonymous.get("/fhir/metadata").status_code == 200
    assert anonymous.get("/fhir/.well-known/smart-configuration").status_code == 200
    assert anonymous.get("/healthz").status_code == 200


def test_expired_token_is_401(anonymous: TestClient, db: Database) -> None:
    token = backend_token(anonymous, db)
    assert anonymous.get("/fhir/Patient", headers=bearer(token)).status_code == 200
    with db.write() as conn:
        conn.execute(update(AuthToken).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert anonymous.get("/fhir/Patient", headers=bearer(token)).status_code == 401


def test_insufficient_scope_is_403_everywhere(
    anonymous: TestClient, db: Database, world: dict[str, Any]
) -> None:
    token = bearer(backend_token(anonymous, db, scope="system/Slot.rs system/Patient.read"))
    assert anonymous.get(f"/fhir/Patient/{world['A']}", headers=token).status_code == 200  # v1
    refused = [
        anonymous.get("/fhir/Appointment", headers=token),
        anonymous.get(f"/fhir/Appointment/{world['apptA']}", headers=token),
        anonymous.get(f"/fhir/Appointment/{world['apptA']}/_history", headers=token),
        anonymous.post("/fhir/Patient", json=make_patient("New"), headers=token),
        anonymous.delete(f"/fhir/Patient/{world['A']}", headers=token),
        anonymous.get("/fhir/Appointment/$find", params={"visit-type": "x"}, headers=token),
        anonymous.post(
            "/fhir/Appointment/$book", json={"resourceType": "Parameters"}, headers=token
        ),
    ]
    for r in refused:
        assert r.status_code == 403, r.text
        assert r.json()["issue"][0]["code"] == "forbidden"


def test_bundle_entries_are_checked_one_by_one(
    anonymous: TestClient, db: Database, world: dict[str, Any]
) -> None:
    token = bearer(backend_token(anonymous, db, scope="system/Patient.rs"))
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"Patient/{world['A']}"}},
            {"request": {"method": "GET", "url": f"Appointment/{world['apptA']}"}},
            {"request": {"method": "POST", "url": "Patient"}, "resource": make_patient("X")},
        ],
    }
    r = anonymous.post("/fhir", json=bundle, headers=token)
    assert [e["response"]["status"][:3] for e in r.json()["entry"]] == ["200", "403", "403"]
    transaction = {**bundle, "type": "transaction"}
    assert anonymous.post("/fhir", json=transaction, headers=token).status_code == 403


def test_patient_token_sees_only_its_compartment(
    anonymous: TestClient, db: Database, keys: KeyRing, world: dict[str, Any]
) -> None:
    token = bearer(_patient_token(anonymous, db, keys, world["A"], "launch/patient patient/*.rs"))
    mine = anonymous.get("/fhir/Appointment", headers=token).json()
    assert {e["resource"]["id"] for e in mine["entry"]} == {world["apptA"], world["cancelledA"]}
    theirs = anonymous.get("/fhir/Appointment", params={"patient": world["B"]}, headers=token)
    assert theirs.status_code == 200 and theirs.json()["total"] == 0
    assert anonymous.get(f"/fhir/Appointment/{world['apptB']}", headers=token).status_code == 403
    assert anonymous.get(f"/fhir/Patient/{world['B']}", headers=token).status_code == 403
    patients = anonymous.get("/fhir/Patient", headers=token).json()
    assert [e["resource"]["id"] for e in patients["entry"]] == [world["A"]]
    included = anonymous.get(
        "/fhir/Appointment", params={"_include": "Appointment:patient"}, headers=token
    ).json()
    assert {e["resource"]["id"] for e in included["entry"] if e["search"]["mode"] == "include"} == {
        world["A"]
    }


def test_patient_token_writes_only_for_itself(
    anonymous: TestClient, db: Database, keys: KeyRing, world: dict[str, Any]
) -> None:
    scope = "launch/patient patient/Appointment.cruds patient/Patient.rs"
    token = bearer(_patient_token(anonymous, db, keys, world["A"], scope))
    # the patient role allows only read/search of Appointments: create is not granted
    assert (
        anonymous.post(
            "/fhir/Appointment", json=_appointment(world["A"]), headers=token
        ).status_code
        == 403
    )
    backend = bearer(backend_token(anonymous, db, scope="system/Appointment.rs"))
    assert (
        anonymous.post(
            "/fhir/Appointment", json=_appointment(world["A"]), headers=backend
        ).status_code
        == 403
    )


def test_granular_scope_filters_search_and_refuses_reads(
    anonymous: TestClient, db: Database, world: dict[str, Any]
) -> None:
    token = bearer(backend_token(anonymous, db, scope="system/Appointment.rs?status=booked"))
    found = anonymous.get("/fhir/Appointment", headers=token).json()
    assert {e["resource"]["status"] for e in found["entry"]} == {"booked"}
    assert found["total"] == 2
    assert anonymous.get(f"/fhir/Appointment/{world['apptA']}", headers=token).status_code == 200
    assert (
        anonymous.get(f"/fhir/Appointment/{world['cancelledA']}", headers=token).status_code == 403
    )


def test_patient_token_books_only_for_itself(
    anonymous: TestClient, db: Database, keys: KeyRing, world: dict[str, Any]
) -> None:
    scope = "launch/patient patient/Appointment.$book"
    token = bearer(_patient_token(anonymous, db, keys, world["A"], scope))

    def book(resource: dict[str, Any]) -> Any:
        body = {
            "resourceType": "Parameters",
            "parameter": [{"name": "appointment-resource", "resource": resource}],
        }
        return anonymous.post("/fhir/Appointment/$book", json=body, headers=token)

    for_b = book({**_appointment(world["B"]), "status": "proposed"})
    assert for_b.status_code == 403
    cancel_b = book({"resourceType": "Appointment", "id": world["apptB"], "status": "cancelled"})
    assert cancel_b.status_code == 403
    # for A the compartment check passes; this server has no clinic, so the rules refuse it
    for_a = book({**_appointment(world["A"]), "status": "proposed"})
    assert for_a.status_code == 422 and "clinic" in for_a.text


@pytest.mark.parametrize(
    ("role", "patient_read", "appointment_create"),
    [("front-desk", 200, 201), ("clinician", 200, 403), ("compliance", 403, 403)],
)
def test_user_tokens_act_within_the_role(
    anonymous: TestClient,
    db: Database,
    keys: KeyRing,
    world: dict[str, Any],
    role: str,
    patient_read: int,
    appointment_create: int,
) -> None:
    login = f"{role}-user"
    with db.write() as conn:
        add_user(conn, keys, login=login, password="staff-password-1", role=role)
    register_app(db, client_id="staff-app", scope="openid user/*.cruds")
    verifier, challenge = pkce()
    params = authorize_params("staff-app", challenge, scope="openid user/*.cruds")
    final = sign_in_and_allow(anonymous, params, login=login, password="staff-password-1")
    token = exchange(anonymous, "staff-app", redirect_query(final)["code"], verifier).json()
    if role == "compliance":  # user/* reaches the agent's transcripts, never the audit log
        assert sorted(token["scope"].split()) == ["openid", "user/Communication.rs"]
    auth = bearer(token["access_token"])
    assert anonymous.get(f"/fhir/Patient/{world['A']}", headers=auth).status_code == patient_read
    created = anonymous.post("/fhir/Appointment", json=_appointment(world["B"]), headers=auth)
    assert created.status_code == appointment_create
