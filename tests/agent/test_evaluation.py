"""The booking agent's evaluation (``tests/agent/evaluation.py``): every conversation of
``tests/agent/conversations/`` passes on both model paths, and the grading fails agents that
do nothing or book without a confirmed read-back.

SQLite only: the storage tests cover PostgreSQL, and this suite is about the agent. Run with
``-s`` to see the figures, or ``.venv/bin/python -m bench.agent_eval``.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from resources.sql.engine import Database
from resources.store import Store
from security.crypto import KeyRing
from tests.agent.controls import Idle, eager, unconfirmed
from tests.agent.evaluation import PATHS, evaluate, failures, table
from tests.agent.grading import Run, grade, read_back, said_yes
from tests.agent.harness import clinic_config
from tests.agent.scenarios import load

SQLITE = pytest.mark.parametrize("db", ["sqlite"], indirect=True)

THEMES = {
    "happy", "dates", "dst", "availability", "races", "cancel", "reschedule", "refusals",
    "escalation", "decline", "waitlist",
}  # fmt: skip


@SQLITE
@pytest.mark.parametrize("path", PATHS)
def test_every_conversation_passes(
    db: Database, keys: KeyRing, store: Store, tmp_path: Path, path: str
) -> None:
    results, figures = evaluate(db, keys, store, tmp_path, path=path)

    print(f"\n{table([figures])}")
    assert len(results) >= 50
    assert figures.completion == 1.0, failures(results)
    assert figures.slot_accuracy == 1.0
    assert figures.escalation_precision == figures.escalation_recall == 1.0


@SQLITE
def test_an_agent_that_does_nothing_fails(
    db: Database, keys: KeyRing, store: Store, tmp_path: Path
) -> None:
    results, figures = evaluate(
        db, keys, store, tmp_path, model=lambda _offline: Idle(), label="control: idle"
    )

    print(f"\n{table([figures])}")
    assert figures.completion < 0.35, "most conversations expect something done"
    for r in results:
        expect = r.conversation.expect
        if expect.booked or expect.cancelled or expect.cancelled_own or expect.handover:
            assert not r.passed, r.conversation.id
        if expect.reply_contains or expect.reply_matches:
            assert r.failed("replies"), r.conversation.id
    assert figures.slot_accuracy == 0.0
    assert figures.escalation_recall == 0.0


@SQLITE
def test_an_agent_that_books_without_confirmation_fails(
    db: Database, keys: KeyRing, store: Store, tmp_path: Path
) -> None:
    results, figures = evaluate(
        db, keys, store, tmp_path, model=eager, prepare=unconfirmed, label="control: eager"
    )

    print(f"\n{table([figures])}")
    booked = [r for r in results if r.run.own]
    assert len(booked) >= 30
    assert all(r.failed("confirmation") for r in booked), [
        r.conversation.id for r in booked if not r.failed("confirmation")
    ]
    wrong_slot = {  # booked, but not what the patient settled on
        "decline-exact-time-pick-another",  # the time the patient then declines
        "decline-then-another-day",  # Wednesday, when the patient wanted Friday
        "decline-and-stop",  # a booking the patient said no to
        "choose-by-time",  # option A at 8:00, the patient chose 8:30
        "emergency-in-the-middle-of-booking",  # booked while the patient had an emergency
        "taken-after-read-back",  # booked before anyone could say yes
        "move-own-to-thursday-afternoon",  # booked Thursday, the Friday one still stands
        "move-own-declined-then-other",  # the move declined booked anyway
    }
    by_id = {r.conversation.id: r for r in results}
    assert all(by_id[c].failed("bookings") for c in wrong_slot), [
        c for c in wrong_slot if not by_id[c].failed("bookings")
    ]
    assert figures.completion < 0.5


def test_the_conversations_cover_the_issue() -> None:
    conversations = load()
    themes = Counter(c.theme for c in conversations)
    assert len(conversations) >= 50
    assert set(themes) == THEMES
    new = [
        (c.patient["family"], c.patient["birth"]) for c in conversations if c.patient is not None
    ]
    assert len(new) == len(set(new)), "each new patient has a name of their own"
    assert any(c.channel == "sms" for c in conversations)
    assert any(c.now[0].base == "dst" for c in conversations)
    assert any(step.after == "take" for c in conversations for step in c.turns)
    assert any(step.advance >= 60 for c in conversations for step in c.turns)


def test_read_back_is_read_from_the_clinic_file() -> None:
    cfg = clinic_config()
    appointment = {
        "start": "2026-12-18T14:30:00-05:00",
        "participant": [
            {"actor": {"reference": "Practitioner/dr-smith"}},
            {"actor": {"reference": "Location/loc-main"}},
        ],
    }
    said = "Friday, December 18, 2026 at 2:30 PM with Dr. Alice Smith at Main Street Clinic?"
    assert read_back(said, appointment, cfg) == []
    assert read_back(said.replace("2:30", "2:00"), appointment, cfg) == ["time"]
    assert read_back("December 18 at 2:30pm, Dr. Alice Smith", appointment, cfg) == ["location"]
    assert read_back("December 1 at 2:30 PM", appointment, cfg) == [
        "date",
        "clinician",
        "location",
    ]
    assert said_yes("Yes please") and said_yes("ok")
    assert not said_yes("no, not that one") and not said_yes("B")


@SQLITE
def test_the_grading_reads_the_records_not_the_agent(
    db: Database, keys: KeyRing, store: Store, tmp_path: Path
) -> None:
    """Two passing conversations, then what they left altered one way at a time: each
    alteration fails its check."""
    wanted = {"existing-follow-up-specific-time", "cancel-by-sms-from-number-on-file"}
    picked = [c for c in load() if c.id in wanted]
    results, _ = evaluate(db, keys, store, tmp_path, conversations=picked)
    assert all(r.passed for r in results), failures(results)
    by_id = {r.conversation.id: r for r in results}
    booking, cancelling = (
        by_id["existing-follow-up-specific-time"],
        by_id["cancel-by-sms-from-number-on-file"],
    )
    cfg = clinic_config()

    def failed(run: Run) -> set[str]:
        return {c.name for c in grade(run, cfg) if not c.ok}

    assert failed(replace(booking.run, audit=[])) == {"audit"}
    assert failed(replace(cancelling.run, audit=[])) == {"audit"}
    stranger = copy.deepcopy(booking.run.audit)
    stranger[0]["agent"][0]["who"]["identifier"]["value"] = "someone-else"
    assert failed(replace(booking.run, audit=stranger)) == {"audit"}
    unread = [
        replace(line, text=line.text.replace("Dr. Alice Smith", "the doctor"))
        for line in booking.run.transcript
    ]
    assert failed(replace(booking.run, transcript=unread)) == {"confirmation"}
    [own] = booking.run.own
    someone_else = copy.deepcopy(booking.run.appointments)
    for p in someone_else[own]["participant"]:
        if p["actor"]["reference"].startswith("Patient/"):
            p["actor"]["reference"] = "Patient/pat-4"
    assert failed(replace(booking.run, appointments=someone_else)) == {"bookings"}
    kept = copy.deepcopy(cancelling.run.appointments)
    for appointment in kept.values():
        appointment["status"] = "booked"
    assert failed(replace(cancelling.run, appointments=kept)) == {"setup"}
    assert failed(replace(booking.run, state="queued")) == {"handover"}
