"""The clinic's texts as FHIR Communications through the API: staff find a reminder by its
Appointment, a patient's token sees that patient's texts and no one else's, and each read is
audited with the patient it is about."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from outreach.sending import Outreach
from resources.sql.engine import Database
from resources.store import Store
from security.crypto import KeyRing
from security.smart.registry import add_user
from tests.builders import make_patient
from tests.fhir_server.test_authz import _appointment, _patient_token, bearer
from tests.smart import (
    authorize_params,
    backend_token,
    exchange,
    pkce,
    redirect_query,
    register_app,
    sign_in_and_allow,
)


class Outbox:
    name = "outbox"

    def send(self, to: str, body: str) -> str:
        return f"local-{len(body)}"


@pytest.fixture
def texts(anonymous: TestClient, db: Database, keys: KeyRing, store: Store) -> dict[str, Any]:
    """Patients A and B with an appointment each and a reminder sent about each."""
    admin = bearer(backend_token(anonymous, db))
    out: dict[str, Any] = {}
    sender = Outreach(db=db, store=store, keys=keys, sender=Outbox(), server="http://t/fhir")
    for name, number in (("A", "+14135550101"), ("B", "+14135550102")):
        pid = anonymous.post("/fhir/Patient", json=make_patient(name), headers=admin).json()["id"]
        aid = anonymous.post("/fhir/Appointment", json=_appointment(pid), headers=admin).json()[
            "id"
        ]
        sent = sender.send_once(
            kind="reminder",
            dedupe=f"reminder:{aid}:t:24",
            to=number,
            body=f"Reminder for {name}",
            appointment_id=aid,
            patient_id=pid,
        )
        assert sent.state == "sent"
        out[name] = {"patient": pid, "appointment": aid, "communication": sent.communication_id}
    return out


def _staff(anonymous: TestClient, db: Database, keys: KeyRing, role: str) -> dict[str, str]:
    login = f"{role}-reader"
    with db.write() as conn:
        add_user(conn, keys, login=login, password="staff-password-1", role=role)
    register_app(db, client_id=f"app-{role}", scope="openid user/*.cruds")
    verifier, challenge = pkce()
    params = authorize_params(f"app-{role}", challenge, scope="openid user/*.cruds")
    final = sign_in_and_allow(anonymous, params, login=login, password="staff-password-1")
    token = exchange(anonymous, f"app-{role}", redirect_query(final)["code"], verifier).json()
    assert "user/Communication.rs" in token["scope"] or "Communication.cruds" in token["scope"]
    return bearer(token["access_token"])


def _audit(anonymous: TestClient, db: Database, patient: str) -> list[dict[str, Any]]:
    token = backend_token(anonymous, db, "system/AuditEvent.rs", registered=True)
    found = anonymous.get(
        "/fhir/AuditEvent",
        params={"patient": f"Patient/{patient}", "_count": "100"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert found.status_code == 200, found.text
    return [e["resource"] for e in found.json().get("entry", [])]


@pytest.mark.parametrize("role", ["front-desk", "compliance"])
def test_staff_find_a_reminder_by_its_appointment_and_the_read_is_audited(
    anonymous: TestClient, db: Database, keys: KeyRing, texts: dict[str, Any], role: str
) -> None:
    auth = _staff(anonymous, db, keys, role)
    a = texts["A"]
    found = anonymous.get(
        "/fhir/Communication", params={"about": f"Appointment/{a['appointment']}"}, headers=auth
    )
    assert found.status_code == 200, found.text
    [entry] = found.json()["entry"]
    assert entry["resource"]["id"] == a["communication"]
    read = anonymous.get(f"/fhir/Communication/{a['communication']}", headers=auth)
    assert read.status_code == 200
    assert read.json()["payload"] == [{"contentString": "Reminder for A"}]
    events = _audit(anonymous, db, a["patient"])
    reads = [
        e
        for e in events
        if any(
            ent.get("what", {}).get("reference") == f"Communication/{a['communication']}"
            for ent in e.get("entity", [])
        )
        and e.get("action") == "R"
    ]
    assert reads, "the read of the reminder names its patient in the audit log"
    assert all("Reminder for A" not in str(e) for e in events)


def test_a_patient_token_sees_only_its_own_texts(
    anonymous: TestClient, db: Database, keys: KeyRing, texts: dict[str, Any]
) -> None:
    a, b = texts["A"], texts["B"]
    mine = bearer(_patient_token(anonymous, db, keys, a["patient"], "launch/patient patient/*.rs"))
    listed = anonymous.get("/fhir/Communication", headers=mine)
    assert listed.status_code == 200, listed.text
    assert [e["resource"]["id"] for e in listed.json()["entry"]] == [a["communication"]]
    other = anonymous.get(
        "/fhir/Communication", params={"about": f"Appointment/{b['appointment']}"}, headers=mine
    )
    assert other.status_code == 200 and other.json().get("entry", []) == []
    assert (
        anonymous.get(f"/fhir/Communication/{a['communication']}", headers=mine).status_code == 200
    )
    theirs = anonymous.get(f"/fhir/Communication/{b['communication']}", headers=mine)
    assert theirs.status_code == 403
    assert theirs.json()["resourceType"] == "OperationOutcome"
    forged = {
        "resourceType": "Communication",
        "status": "completed",
        "subject": {"reference": f"Patient/{b['patient']}"},
    }
    write = bearer(
        _patient_token(anonymous, db, keys, a["patient"], "launch/patient patient/*.cruds")
    )
    assert anonymous.post("/fhir/Communication", json=forged, headers=write).status_code == 403
