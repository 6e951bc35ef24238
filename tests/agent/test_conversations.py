"""Conversations last: sealed at rest, resumed by a new agent process (a restart), and never
a message dropped, whatever fails in the turn."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from agent.fhir import FhirClient
from agent.model import ModelReply
from agent.text import shown_date, shown_time
from fhir_server.agent_runtime import agent_config, build_agent
from fhir_server.demo import DEMO_CLINIC
from fhir_server.settings import Settings
from resources.sql.engine import Database
from resources.store import Store
from scheduling.config import load_clinic_config
from security.crypto import KeyRing
from tests.agent.harness import agent_world, existing_patient, staff_book


def test_sealed_at_rest_and_resumed_after_a_restart(
    db: Database, keys: KeyRing, store: Store, tmp_path: Path
) -> None:
    with agent_world(db, keys, store, tmp_path) as w:
        existing_patient(w, "pat-2")
        row, _ = w.agent.start("sms", address="555-0102")
        w.agent.receive(row.id, "Follow-up with Dr. Evans next Tuesday morning please")
        offered = w.agent.receive(row.id, "Maria Rivera, born 03/14/1988")
        assert "Here is what I found" in offered.replies[0]
        with db.read() as conn:
            raw = b"".join(
                bytes(r[0])
                for table in ("agent_conversation", "agent_message", "agent_outbox")
                for r in conn.execute(text(f"SELECT ciphertext FROM {table}"))
            )
            plain = conn.execute(text("SELECT * FROM agent_conversation")).all()
        for secret in (b"Rivera", b"1988", b"555-0102", b"5550102", b"Evans", b"found"):
            assert secret not in raw and secret not in repr(plain).encode(), secret
        # a new agent on the same database and keys: the conversation goes on where it was
        again = build_agent(
            w.settings,
            db=db,
            keys=keys,
            clinic=w.cfg,
            http=w.agent.fhir._http,
            clock=w.clock,
        )
        assert again is not None and again is not w.agent
        again.receive(row.id, "B")
        done = again.receive(row.id, "yes")
        assert "Done" in done.replies[0], done.replies
        booked = w.search("Appointment", {"status": "booked", "patient": "Patient/pat-2"})
        assert len(booked) == 1


class _Broken:
    label = "broken"

    def reply(self, **_: Any) -> ModelReply:
        raise RuntimeError("the model adapter failed")


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
def test_a_failure_mid_turn_keeps_the_message_and_answers(
    db: Database, keys: KeyRing, store: Store, tmp_path: Path
) -> None:
    with agent_world(db, keys, store, tmp_path, model=lambda _: _Broken()) as w:  # type: ignore[arg-type,return-value]
        row, _ = w.agent.start("web")
        turn = w.agent.receive(row.id, "I need an appointment, my number is 555-0199")
        assert turn.handed_over and "staff" in turn.replies[0]
        lines = w.agent.transcript(row.id)
        assert [x.sender for x in lines] == ["agent", "patient", "agent"]
        assert lines[1].text == "I need an appointment, my number is 555-0199"
        assert w.agent.queue()[0]["reason"] == "error"
        # while staff have it, more messages are kept and not answered by the agent
        quiet = w.agent.receive(row.id, "hello?")
        assert quiet.replies == [] and w.agent.transcript(row.id)[-1].text == "hello?"


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
def test_the_server_down_twice_hands_over(
    db: Database, keys: KeyRing, store: Store, tmp_path: Path
) -> None:
    with agent_world(db, keys, store, tmp_path) as w:
        row, _ = w.agent.start("web")
        w.agent.receive(row.id, "new patient visit tomorrow please")
        down = replace(
            w.agent.config,
            fhir_base="http://127.0.0.1:9/fhir",
            token_url="http://127.0.0.1:9/auth/token",
        )
        w.agent.tools.fhir = FhirClient(down)  # nothing listens there
        first = w.agent.receive(row.id, "Ann Lost, born 01/02/1980")
        assert first.state == "agent"
        second = w.agent.receive(row.id, "tomorrow afternoon then")
        assert second.handed_over, second.replies
        assert w.agent.conversation(row.id).facts["handover"]["reason"] == "tool_failures"


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
def test_an_appointment_a_clinic_message_named_needs_no_proof(
    db: Database, keys: KeyRing, store: Store, tmp_path: Path
) -> None:
    with agent_world(db, keys, store, tmp_path) as w:
        existing_patient(w, "pat-1")
        start = w.at(w.monday + timedelta(days=2), 10)
        booked = staff_book(w, "pat-1", start, clinician="dr-smith")
        row, _ = w.agent.start("web")
        ref = w.agent.clinic_message(
            row.id,
            "Reminder: Dr. Alice Smith, Wednesday 10:00 AM at Main Street Clinic.",
            patient={
                "resourceType": "Patient",
                "name": [{"family": "Chalmers", "given": ["Peter"]}],
                "birthDate": "1974-12-25",
            },
            start=booked["start"],
            shown={
                "date": shown_date(start),
                "time": shown_time(start),
                "clinician": "Dr. Alice Smith",
                "location": "Main Street Clinic",
                "visit": "Follow-up visit",
            },
        )
        assert ref == "V1"
        turn = w.agent.receive(row.id, "I can't make it, please cancel")
        assert "cancelled" in turn.replies[0], turn.replies
        assert w.search("Appointment", {"status": "booked"}) == []
        senders = [x.sender for x in w.agent.transcript(row.id)]
        assert senders == ["agent", "clinic", "patient", "agent"]


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
def test_messages_stored_but_never_answered_are_answered_at_start(
    db: Database, keys: KeyRing, store: Store, tmp_path: Path
) -> None:
    with agent_world(db, keys, store, tmp_path) as w:
        row, _ = w.agent.start("web")
        w.agent.accept(row.id, "hello")  # stored; the process stops before answering
        w.agent.accept(row.id, "are you a bot?")
        other, _ = w.agent.start("web")
        w.agent.receive(other.id, "hello")  # answered: nothing waits
        assert w.agent.answer_waiting() == 1
        lines = w.agent.transcript(row.id)
        assert [x.sender for x in lines] == ["agent", "patient", "patient", "agent"]
        assert "automated assistant" in lines[-1].text
        assert w.agent.answer_waiting() == 0


def test_the_agent_asks_for_its_token_where_it_reaches_the_server(tmp_path: Path) -> None:
    """Behind a proxy the public URL may not be reachable from the server itself: the agent
    calls FHIRSCHED_AGENT_FHIR_URL, token endpoint included, and signs its assertion for the
    public token URL the server checks."""
    clinic = tmp_path / "clinic.yaml"
    clinic.write_text(DEMO_CLINIC.read_text())
    settings = Settings(
        key_file=tmp_path / "keys.json",
        base_url="https://clinic.example/fhir",
        agent_fhir_url="http://127.0.0.1:8080/fhir",
        clinic_file=clinic,
    )
    config = agent_config(settings, load_clinic_config(clinic))
    assert config.fhir_base == "http://127.0.0.1:8080/fhir"
    assert config.token_url == "http://127.0.0.1:8080/auth/token"
    assert config.token_audience == "https://clinic.example/auth/token"
