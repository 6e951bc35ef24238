"""The agent's doors over HTTP (in-process): the chat API, the SMS webhook, the staff queue;
the agent's own token; and an AuditEvent for every request, naming the conversation."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from twilio.request_validator import RequestValidator

from resources.sql.engine import Database
from resources.store import Store
from security.crypto import KeyRing
from security.smart.registry import add_user
from tests.agent.harness import World, agent_world, existing_patient, staff_book
from tests.smart import (
    authorize_params,
    exchange,
    pkce,
    redirect_query,
    register_app,
    sign_in_and_allow,
)

pytestmark = pytest.mark.parametrize("db", ["sqlite"], indirect=True)
TWILIO_TOKEN = "twilio-test-token"
SMS_URL = "http://testserver/agent/sms"


@pytest.fixture
def world(db: Database, keys: KeyRing, store: Store, tmp_path: Path) -> Iterator[World]:
    extra = {"twilio_auth_token": TWILIO_TOKEN}
    with agent_world(db, keys, store, tmp_path, settings_extra=extra) as w:
        yield w


def _audit(world: World, cid: str) -> list[dict[str, Any]]:
    token = _user_token(world, "compliance", "user/AuditEvent.rs")
    r = world.client.get(
        "/fhir/AuditEvent",
        params={"entity:identifier": f"urn:fhir-sched:conversation|{cid}", "_count": "200"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", [])]


def _subtypes(events: list[dict[str, Any]]) -> list[str]:
    return [s["code"] for e in events for s in e.get("subtype", []) if "code" in s]


def _user_token(world: World, role: str, scope: str) -> str:
    login = f"{role}-{time.monotonic_ns()}"
    with world.db.write() as conn:
        add_user(conn, world.keys, login=login, password="staff-password-1", role=role)
    app_id = f"app-{time.monotonic_ns()}"
    register_app(world.db, client_id=app_id, scope=f"openid {scope}")
    verifier, challenge = pkce()
    params = authorize_params(app_id, challenge, scope=f"openid {scope}")
    world.client.follow_redirects = False  # the last step redirects to the app
    try:
        final = sign_in_and_allow(world.client, params, login=login, password="staff-password-1")
    finally:
        world.client.follow_redirects = True
    token = exchange(world.client, app_id, redirect_query(final)["code"], verifier).json()
    return str(token["access_token"])


def test_the_agents_token_reaches_only_find_and_book(world: World) -> None:
    token = world.agent.fhir.token()
    auth = {"Authorization": f"Bearer {token}"}
    for rtype in ("Patient", "Appointment", "Slot", "AuditEvent"):
        assert world.client.get(f"/fhir/{rtype}", headers=auth).status_code == 403, rtype
    for ref in ("Patient/pat-1", "Slot/x", "Appointment/x", "AuditEvent/x"):
        assert world.client.get(f"/fhir/{ref}", headers=auth).status_code == 403, ref
    created = world.client.post(
        "/fhir/Patient",
        json={"resourceType": "Patient", "name": [{"family": "X"}]},
        headers={**auth, "Content-Type": "application/fhir+json"},
    )
    assert created.status_code == 403


def test_web_chat_books_and_every_request_is_audited(world: World) -> None:
    c = world.client
    page = c.get("/agent/chat")
    assert page.status_code == 200
    assert "offline rules" in page.text and "Main Street Family Practice" in page.text
    assert "{{MODEL}}" not in page.text and "{{CLINIC}}" not in page.text
    start = c.post("/agent/conversations", json={})
    assert start.status_code == 201, start.text
    cid = start.json()["id"]
    for text in (
        "I'd like a new patient visit with Dr. Evans next Tuesday morning",
        "Jane Webchat, born 02/03/1985",
        "A",
        "yes",
    ):
        r = c.post(f"/agent/conversations/{cid}/messages", json={"text": text})
        assert r.status_code == 200, r.text
    assert "Done" in r.json()["replies"][0]
    assert r.json() == {**r.json(), "state": "agent", "handed_over": False}
    booked = world.search("Appointment", {"status": "booked"})
    assert len(booked) == 1
    events = _audit(world, cid)
    kinds = _subtypes(events)
    assert kinds.count("web") >= 5  # the start and the four messages
    assert "ITI-117" in kinds and "ITI-115" in kinds  # $book and $find, by the agent
    agents = {
        a["who"]["identifier"]["value"]
        for e in events
        if any(s.get("code") == "ITI-117" for s in e["subtype"])
        for a in e["agent"]
        if "identifier" in a.get("who", {})
    }
    assert agents == {"booking-agent"}


def test_bad_requests_are_operation_outcomes(world: World) -> None:
    c = world.client
    r = c.post("/agent/conversations/nope/messages", json={"text": "hi"})
    assert r.status_code == 404
    assert r.json()["resourceType"] == "OperationOutcome"
    cid = c.post("/agent/conversations", json={}).json()["id"]
    for body in ({}, {"text": ""}, {"text": 3}, {"text": "x" * 2001}):
        r = c.post(f"/agent/conversations/{cid}/messages", json=body)
        assert r.status_code == 400, body
        assert r.json()["resourceType"] == "OperationOutcome"
    assert c.get("/agent/queue", headers={"Authorization": ""}).status_code == 401
    assert c.get("/agent/queue").status_code == 403  # staff only: this token has no user


def _sms(world: World, sender: str, body: str, *, sign: bool = True) -> Any:
    params = {"From": sender, "To": "+14135550100", "Body": body, "MessageSid": "SM1"}
    headers = {}
    if sign:
        headers["X-Twilio-Signature"] = RequestValidator(TWILIO_TOKEN).compute_signature(
            SMS_URL, params
        )
    return world.client.post("/agent/sms", data=params, headers=headers)


def _replies(world: World, to: str, count: int) -> list[str]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        texts = [line.body for line in world.agent.store.outbox(to)]
        if len(texts) >= count:
            return texts
        time.sleep(0.05)
    raise AssertionError(f"{count} texts to {to} expected")


def test_sms_cancels_a_booking_from_the_number_on_file(world: World) -> None:
    start = world.at(world.monday + timedelta(days=2), 10)
    existing_patient(world, "pat-1")
    staff_book(world, "pat-1", start, clinician="dr-smith")
    r = _sms(world, "555-0101", "hi")
    assert r.status_code == 200 and "<Response>" in r.text
    assert r.headers["content-type"].startswith("text/xml")
    _replies(world, "5550101", 2)  # greeting and answer
    day = f"{start:%m/%d}"
    _sms(
        world,
        "555-0101",
        f"Please cancel my appointment on {day} at 10am. Peter Chalmers, 12/25/1974",
    )
    texts = _replies(world, "5550101", 3)
    assert "cancelled" in texts[-1], texts
    assert world.search("Appointment", {"status": "booked"}) == []


def test_an_unsigned_or_forged_text_is_refused(world: World) -> None:
    assert _sms(world, "555-0101", "hi", sign=False).status_code == 403
    params = {"From": "555-0101", "To": "+1", "Body": "hi", "MessageSid": "SM1"}
    forged = RequestValidator("other").compute_signature(SMS_URL, params)
    r = world.client.post("/agent/sms", data=params, headers={"X-Twilio-Signature": forged})
    assert r.status_code == 403
    assert r.json()["resourceType"] == "OperationOutcome"
    assert world.agent.store.outbox() == []
    odd = {"From": "whatsapp:+15550101", "To": "+1", "Body": "hi", "MessageSid": "SM2"}
    signed = RequestValidator(TWILIO_TOKEN).compute_signature(SMS_URL, odd)
    r = world.client.post("/agent/sms", data=odd, headers={"X-Twilio-Signature": signed})
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"


def test_staff_take_answer_and_hand_back(world: World) -> None:
    c = world.client
    cid = c.post("/agent/conversations", json={}).json()["id"]
    r = c.post(f"/agent/conversations/{cid}/messages", json={"text": "Can I talk to a person?"})
    assert r.json()["handed_over"] is True
    staff = {"Authorization": f"Bearer {_user_token(world, 'front-desk', 'user/*.cruds')}"}
    listed = c.get("/agent/queue", headers=staff)
    assert listed.status_code == 200, listed.text
    queue = listed.json()
    assert [q["id"] for q in queue] == [cid]
    assert queue[0]["reason"] == "patient_request"
    assert c.post(f"/agent/conversations/{cid}/take", headers=staff).json()["state"] == "staff"
    quiet = c.post(f"/agent/conversations/{cid}/messages", json={"text": "hello?"})
    assert quiet.json()["replies"] == []  # a person holds it: the agent is silent
    said = c.post(
        f"/agent/conversations/{cid}/reply", json={"text": "Hi, this is Ann."}, headers=staff
    )
    assert said.status_code == 200, said.text
    replies = c.get(f"/agent/conversations/{cid}/replies", params={"after": 1}).json()
    assert replies["replies"][-1] == "Hi, this is Ann." and replies["handed_over"] is True
    transcript = c.get(f"/agent/conversations/{cid}", headers=staff).json()["transcript"]
    assert [t["sender"] for t in transcript][-2:] == ["patient", "staff"]
    back = c.post(f"/agent/conversations/{cid}/release", headers=staff)
    assert back.json()["state"] == "agent"
    again = c.post(f"/agent/conversations/{cid}/messages", json={"text": "hello"})
    assert again.json()["replies"]
    kinds = _subtypes(_audit(world, cid))
    for action in ("take", "reply", "read", "release"):
        assert action in kinds, action


def test_patients_and_apps_without_staff_scopes_get_no_queue(world: World) -> None:
    token = _user_token(world, "front-desk", "user/Appointment.rs")
    r = world.client.get("/agent/queue", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 403
    agent = {"Authorization": f"Bearer {world.agent.fhir.token()}"}
    assert world.client.get("/agent/queue", headers=agent).status_code == 403
