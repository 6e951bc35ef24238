"""Replies end to end: a reminder sent and noted in the patient's SMS conversation, then the
patient's texts through the real, signed Twilio webhook of a real server with the real agent
(offline model): free text reaches the agent with the appointment in context, YES and CANCEL
are done without it, and after STOP neither outreach nor the agent texts the number."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from twilio.request_validator import RequestValidator

from fhir_server import replies_runtime
from outreach.replies import appointment_facts
from outreach.sending import Outreach
from resources.sql.engine import Database
from resources.store import Store
from security.crypto import KeyRing
from tests.agent.harness import World, agent_world, existing_patient, staff_book

pytestmark = pytest.mark.parametrize("db", ["sqlite"], indirect=True)
TWILIO_TOKEN = "twilio-test-token"
SMS_URL = "http://testserver/agent/sms"
NUMBER = "555-0101"  # pat-1's number as the demo files it
DIGITS = "5550101"


@pytest.fixture
def world(db: Database, keys: KeyRing, store: Store, tmp_path: Path) -> Iterator[World]:
    extra = {"twilio_auth_token": TWILIO_TOKEN}
    with agent_world(db, keys, store, tmp_path, settings_extra=extra) as w:
        existing_patient(w, "pat-1")
        yield w


def _outreach(world: World) -> Outreach:
    found = replies_runtime.outreach_of(world.client.app)  # type: ignore[arg-type]
    assert found is not None
    return found


def _remind(world: World, appt: dict[str, Any], n: int, state: str = "sent") -> None:
    """What the reminder job does for one reminder: send it, and note it for the agent."""
    outreach = _outreach(world)
    text = "Reminder: Dr. Alice Smith. Reply YES to confirm or CANCEL to cancel"
    done = outreach.send_once(
        kind="reminder",
        dedupe=f"reminder:{appt['id']}:{n}",
        to=NUMBER,
        body=text,
        appointment_id=appt["id"],
        patient_id="pat-1",
    )
    assert done.state == state
    if state != "sent":
        return
    with world.db.read() as conn:
        facts = appointment_facts(
            conn, store=world.store, config=world.cfg, appointment_id=appt["id"]
        )
    replies_runtime.conversations_of(world.client.app).note(NUMBER, text, facts)  # type: ignore[arg-type]


def _sms(world: World, body: str, sid: str, **more: str) -> None:
    params = {"From": NUMBER, "To": "+14135550100", "Body": body, "MessageSid": sid, **more}
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(SMS_URL, params)
    r = world.client.post("/agent/sms", data=params, headers={"X-Twilio-Signature": signature})
    assert r.status_code == 200 and "<Response>" in r.text, r.text


def _texts(world: World, count: int) -> list[str]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        texts = [line.body for line in world.agent.store.outbox(DIGITS)]
        if len(texts) >= count:
            return texts
        time.sleep(0.05)
    raise AssertionError(f"{count} texts expected, got {texts}")


def _status(world: World, appt: dict[str, Any]) -> str:
    r = world.client.get(f"/fhir/Appointment/{appt['id']}")
    return str(r.json()["status"])


def _conversation(world: World) -> Any:
    row = world.agent.store.by_address("sms", DIGITS)
    assert row is not None
    return row


def test_free_text_reaches_the_agent_with_the_appointment_and_it_moves_it(world: World) -> None:
    start = world.at(world.monday + timedelta(days=2), 10)
    appt = staff_book(world, "pat-1", start, clinician="dr-smith")
    _remind(world, appt, 1)
    assert _texts(world, 1)[0].startswith("Reminder")
    _sms(world, "can we make it later that day?", "SM1")
    texts = _texts(world, 2)
    senders = [x.sender for x in world.agent.transcript(_conversation(world).id)]
    assert senders[:2] == ["clinic", "patient"] and "agent" in senders  # no greeting first
    day = f"{start:%A}, {start:%B} {start.day}"
    assert f"A) {day}" in texts[-1], texts  # times on the reminded appointment's day
    _sms(world, "A", "SM2")
    _texts(world, len(texts) + 1)
    _sms(world, "yes", "SM3")  # confirms the agent's read-back, not the reminder
    texts = _texts(world, len(texts) + 2)
    assert "moved" in texts[-1].lower() or "done" in texts[-1].lower(), texts
    booked = world.search("Appointment", {"status": "booked"})
    assert len(booked) == 1 and booked[0]["start"] != appt["start"]


def test_yes_and_cancel_are_done_without_the_agent(world: World) -> None:
    first = staff_book(
        world, "pat-1", world.at(world.monday + timedelta(days=2), 10), clinician="dr-smith"
    )
    second = staff_book(
        world, "pat-1", world.at(world.monday + timedelta(days=3), 10), clinician="dr-smith"
    )
    _remind(world, first, 1)
    _sms(world, "YES", "SM10")
    texts = _texts(world, 2)
    assert texts[-1].startswith("Thank you, you're confirmed for Wed"), texts
    _remind(world, second, 1)
    _sms(world, "Can't come", "SM11")
    texts = _texts(world, 4)
    assert "is cancelled" in texts[-1], texts
    assert _status(world, first) == "booked" and _status(world, second) == "cancelled"
    senders = [x.sender for x in world.agent.transcript(_conversation(world).id)]
    assert senders == ["clinic", "clinic"]  # the agent said nothing


def test_after_stop_nothing_automated_reaches_the_number(world: World) -> None:
    appt = staff_book(
        world, "pat-1", world.at(world.monday + timedelta(days=2), 10), clinician="dr-smith"
    )
    _sms(world, "STOP", "SM20")
    texts = _texts(world, 1)
    assert "unsubscribed" in texts[-1]
    _remind(world, appt, 1, "skipped")
    _sms(world, "hello, can I book a checkup?", "SM21")
    deadline = time.monotonic() + 10
    cid = None
    while time.monotonic() < deadline:  # the agent answers, in the transcript only
        row = world.agent.store.by_address("sms", DIGITS)
        # a conversation is created, then greeted: its transcript may be empty for a moment
        lines = world.agent.transcript(row.id) if row is not None else []
        if row is not None and lines and lines[-1].sender == "agent":
            cid = row.id
            break
        time.sleep(0.05)
    assert cid is not None
    assert len(world.agent.store.outbox(DIGITS)) == 1
    _sms(world, "START", "SM22")
    assert "subscribed again" in _texts(world, 2)[-1]


def test_a_webhook_twilio_sends_again_is_answered_once(world: World) -> None:
    appt = staff_book(
        world, "pat-1", world.at(world.monday + timedelta(days=2), 10), clinician="dr-smith"
    )
    _remind(world, appt, 1)
    _sms(world, "YES", "SM30")
    _sms(world, "YES", "SM30")  # Twilio retried the webhook: the same MessageSid
    _texts(world, 2)
    time.sleep(0.5)
    assert len(world.agent.store.outbox(DIGITS)) == 2  # the reminder and one confirmation
    assert _outreach(world).waiting_inbound() == []


def test_a_text_kept_before_a_stop_is_handled_at_the_next_start(world: World) -> None:
    appt = staff_book(
        world, "pat-1", world.at(world.monday + timedelta(days=2), 10), clinician="dr-smith"
    )
    _remind(world, appt, 1)
    outreach = _outreach(world)
    # the webhook kept the text and answered Twilio; the process stopped before handling it
    kept = outreach.receive(NUMBER, "Can't come", sid="SM50")
    assert kept is not None and outreach.receive(NUMBER, "Can't come", sid="SM50") is None
    # a sender that reuses an id for another text: kept, never dropped as a retry
    other = outreach.receive(NUMBER, "And one more thing", sid="SM50")
    assert other is not None
    outreach.handled(other)
    assert [m.id for m in outreach.waiting_inbound()] == [kept]
    assert _status(world, appt) == "booked"
    assert replies_runtime.handle_waiting(world.client.app) == 1  # type: ignore[arg-type]
    assert _status(world, appt) == "cancelled"
    assert "is cancelled" in _texts(world, 2)[-1]
    assert outreach.waiting_inbound() == []
    assert replies_runtime.handle_waiting(world.client.app) == 0  # type: ignore[arg-type]
