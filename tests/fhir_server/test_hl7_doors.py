"""The HL7 message store over HTTP (``/hl7/messages``): the EMR team lists, opens and replays
messages, the front desk only lists them, everyone else is refused with a 403
OperationOutcome; every request, refusals included, leaves an AuditEvent, and opening a
message is recorded with the Patient it is about before it is shown."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from fhir_server.demo import DEMO_CLINIC
from hl7_bridge.messages import HL7_MESSAGE, MessageStore
from resources.sql.engine import Database
from resources.sql.tables import AuditLog
from resources.store import Store
from scheduling.clinic import load_clinic
from scheduling.config import load_clinic_config
from security.audit import open_event
from security.crypto import KeyRing
from security.smart.registry import add_user
from tests.builders import make_patient
from tests.fhir_server.test_authz import _patient_token, bearer
from tests.hl7_bridge.test_listener import MONDAY, at, no_time, siu
from tests.smart import (
    authorize_params,
    backend_token,
    exchange,
    pkce,
    redirect_query,
    register_app,
    sign_in_and_allow,
)


def signed_in(anonymous: TestClient, db: Database, keys: KeyRing, role: str) -> dict[str, str]:
    """A user token of ``role`` through the real sign-in (the role's scopes, narrowed)."""
    login = f"{role}-{uuid.uuid4().hex[:6]}"
    with db.write() as conn:
        add_user(conn, keys, login=login, password="staff-password-1", role=role)
    scope = "openid fhirUser user/*.rs user/AuditEvent.rs"  # the log is granted only by name
    register_app(db, client_id=f"app-{login}", scope=scope)
    verifier, challenge = pkce()
    params = authorize_params(f"app-{login}", challenge, scope=scope)
    final = sign_in_and_allow(anonymous, params, login=login, password="staff-password-1")
    token = exchange(anonymous, f"app-{login}", redirect_query(final)["code"], verifier).json()
    return bearer(token["access_token"])


def store_message(
    db: Database, keys: KeyRing, raw: bytes, control: str, status: str, **extra: Any
) -> str:
    """Kept as the listener keeps a message (its sender key and MSH-10: a replay finds the
    row by them)."""
    with db.write() as conn:
        return MessageStore(keys).add(
            conn,
            direction="in",
            peer="EMR.MSFP",
            control_id=control,
            event="S12",
            message=raw,
            status=status,
            now=datetime.now(UTC),
            address="10.0.0.9",
            ack_code="AE" if status == "failed" else "AA",
            **extra,
        )


@pytest.fixture
def feed(db: Database, keys: KeyRing, store: Store) -> dict[str, str]:
    """The demo clinic, and three inbound messages: one that failed for a cause since fixed
    (it applies now), one that fails again (no time in it) and one applied with a warning."""
    with db.write() as conn:
        load_clinic(
            conn, store=store, config=load_clinic_config(DEMO_CLINIC), today=MONDAY, weeks=1
        )
    return {
        "fixed": store_message(
            db,
            keys,
            siu("S12", "C1", at(10)),
            "C1",
            "failed",
            error=("207", "Practitioner unknown"),
        ),
        "broken": store_message(
            db, keys, no_time("C2", "F-2"), "C2", "failed", error=("101", "no time in the message")
        ),
        "applied": store_message(
            db,
            keys,
            siu("S12", "C3", at(11), key="F-3"),
            "C3",
            "applied",
            warnings=(("status-unknown", "SCH-25 'Maybe' is no status"),),
        ),
    }


def audit(db: Database, keys: KeyRing, subtype: str) -> list[dict[str, Any]]:
    with db.read() as conn:
        rows = conn.execute(
            select(AuditLog).where(AuditLog.subtype_code == subtype).order_by(AuditLog.seq)
        ).all()
    return [open_event(keys, r) for r in rows]


def test_the_emr_team_lists_newest_first_without_content(
    anonymous: TestClient, db: Database, keys: KeyRing, feed: dict[str, str]
) -> None:
    team = signed_in(anonymous, db, keys, "interface")
    listed = anonymous.get("/hl7/messages", headers=team)
    assert listed.status_code == 200
    body = listed.json()
    assert [m["id"] for m in body["messages"]] == [feed["applied"], feed["broken"], feed["fixed"]]
    assert body["next_before"] is None
    first = body["messages"][0]
    assert set(first) == {
        "id", "seq", "created", "direction", "peer", "control_id", "event", "status",
        "ack_code", "error", "warnings", "appointment_id", "attempts", "next_attempt",
    }  # fmt: skip
    assert first["warnings"] == ["status-unknown"]
    assert datetime.fromisoformat(first["created"]).utcoffset() is not None  # on both databases
    assert "RIVERA" not in listed.text and "10.0.0.9" not in listed.text  # no content

    failed = anonymous.get("/hl7/messages?status=failed&_count=1", headers=team).json()
    assert [m["id"] for m in failed["messages"]] == [feed["broken"]]
    after = anonymous.get(
        f"/hl7/messages?status=failed&_count=1&before={failed['next_before']}", headers=team
    ).json()
    assert [m["id"] for m in after["messages"]] == [feed["fixed"]]
    warned = anonymous.get("/hl7/messages?warnings=true", headers=team).json()
    assert [m["id"] for m in warned["messages"]] == [feed["applied"]]
    [*_, event] = audit(db, keys, "hl7 messages")
    assert event["outcome"] == "0"
    assert event["type"]["code"] == "110112"


@pytest.mark.parametrize(
    "query",
    ["status=lost", "direction=sideways", "warnings=yes", "_count=0", "before=x", "patient=1"],
    ids=["status", "direction", "warnings", "count", "before", "unknown"],
)
def test_a_bad_listing_query_is_a_400_outcome(
    anonymous: TestClient, db: Database, keys: KeyRing, query: str
) -> None:
    team = signed_in(anonymous, db, keys, "interface")
    resp = anonymous.get(f"/hl7/messages?{query}", headers=team)
    assert resp.status_code == 400
    assert resp.json()["resourceType"] == "OperationOutcome"
    assert audit(db, keys, "hl7 messages")[-1]["outcome"] == "4"


def test_showing_a_message_is_recorded_with_its_patient_before_it_is_shown(
    anonymous: TestClient, db: Database, keys: KeyRing, feed: dict[str, str]
) -> None:
    team = signed_in(anonymous, db, keys, "interface")
    replayed = anonymous.post(f"/hl7/messages/{feed['fixed']}/replay", headers=team)
    shown = anonymous.get(f"/hl7/messages/{feed['fixed']}", headers=team)
    assert shown.status_code == 200
    body = shown.json()
    assert body["status"] == "applied" == replayed.json()["status"]
    assert body["address"] == "10.0.0.9"
    assert "PID|1||MRN42^^^MSFP^MR||RIVERA^ANA" in body["message"]
    assert body["ack"].startswith("MSH|")
    [event] = audit(db, keys, "hl7 show")
    assert event["type"]["code"] == "110106" and event["outcome"] == "0"
    idents = [e["what"].get("identifier") for e in event["entity"]]
    assert {"system": HL7_MESSAGE, "value": feed["fixed"]} in idents
    patient = (
        body["appointment_id"]
        and anonymous.get(
            f"/fhir/Appointment/{body['appointment_id']}",
            headers=bearer(backend_token(anonymous, db)),
        ).json()
    )
    patient_ref = next(
        p["actor"]["reference"]
        for p in patient["participant"]
        if p["actor"]["reference"].startswith("Patient/")
    )
    assert {"reference": patient_ref} in [e["what"] for e in event["entity"]]
    assert "RIVERA" not in str(event)

    unknown = anonymous.get(f"/hl7/messages/{uuid.uuid4()}", headers=team)
    assert unknown.status_code == 404
    assert unknown.json()["resourceType"] == "OperationOutcome"
    assert audit(db, keys, "hl7 show")[-1]["outcome"] == "4"


def test_replay_applies_a_fixed_message_and_says_why_one_still_fails(
    anonymous: TestClient, db: Database, keys: KeyRing, feed: dict[str, str]
) -> None:
    team = signed_in(anonymous, db, keys, "interface")
    fixed = anonymous.post(f"/hl7/messages/{feed['fixed']}/replay", headers=team)
    assert fixed.status_code == 200, fixed.text
    assert fixed.json()["status"] == "applied"
    assert fixed.json()["ack_code"] == "AA"
    assert fixed.json()["appointment_id"]

    broken = anonymous.post(f"/hl7/messages/{feed['broken']}/replay", headers=team)
    assert broken.status_code == 200
    assert broken.json()["status"] == "failed"
    assert broken.json()["ack_code"] == "AE"
    assert broken.json()["reason"]

    again = anonymous.post(f"/hl7/messages/{feed['applied']}/replay", headers=team)
    assert again.status_code == 409
    assert again.json()["resourceType"] == "OperationOutcome"
    outcomes = [e["outcome"] for e in audit(db, keys, "hl7 replay")]
    assert outcomes == ["0", "0", "4"]
    assert all(e["type"]["code"] == "110107" for e in audit(db, keys, "hl7 replay"))


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        ("interface", {"list", "show", "replay"}),
        ("front-desk", {"list"}),
        ("clinician", set()),
        ("compliance", set()),
        ("patient", set()),
        ("backend", set()),
        (None, set()),
    ],
    ids=["interface", "front-desk", "clinician", "compliance", "patient", "backend", "no-token"],
)
def test_each_role_reaches_only_its_doors(
    anonymous: TestClient,
    db: Database,
    keys: KeyRing,
    feed: dict[str, str],
    role: str | None,
    allowed: set[str],
) -> None:
    if role == "patient":
        admin = bearer(backend_token(anonymous, db))
        pid = anonymous.post("/fhir/Patient", json=make_patient("Doe"), headers=admin).json()["id"]
        headers = bearer(_patient_token(anonymous, db, keys, pid, "openid patient/*.rs"))
    elif role == "backend":
        headers = bearer(backend_token(anonymous, db))  # system/*.cruds, no user, no role
    elif role is None:
        headers = {}
    else:
        headers = signed_in(anonymous, db, keys, role)
    message = feed["broken"]
    calls = {
        "list": ("GET", "/hl7/messages", "hl7 messages"),
        "show": ("GET", f"/hl7/messages/{message}", "hl7 show"),
        "replay": ("POST", f"/hl7/messages/{message}/replay", "hl7 replay"),
    }
    for door, (method, path, subtype) in calls.items():
        resp = anonymous.request(method, path, headers=headers)
        expected = 200 if door in allowed else (401 if role is None else 403)
        assert resp.status_code == expected, (door, resp.text)
        if expected != 200:
            assert resp.json()["resourceType"] == "OperationOutcome"
            assert "RIVERA" not in resp.text
        [*_, event] = audit(db, keys, subtype)
        assert event["outcome"] == ("0" if expected == 200 else "4")
