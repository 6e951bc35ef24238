"""outreach/replies.py and outreach/escalations.py: answers to real reminders (sent by
``Outreach.send_once``) about real appointments (booked by the ``$book`` domain code), on both
databases; the words patients use; late cancellations from any source to the staff queue."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from fhir_server.agent_conversations import OptOutAware, opted_out_check
from fhir_server.demo import demo_patients
from outreach.escalations import LateCancellations, escalate_late_cancellations
from outreach.hooks import AppointmentFacts
from outreach.replies import Replies, appointment_facts, classify
from outreach.sending import Message, Outreach
from resources import service
from resources.sql.engine import Database
from resources.sql.tables import AuditLog, OutreachEscalation
from resources.store import Store
from scheduling import booking
from scheduling.clinic import load_clinic
from scheduling.config import ClinicConfig
from scheduling.find import find_options, proposed_appointment
from scheduling.plan import FindRequest
from security.audit import open_event
from security.crypto import KeyRing
from tests.agent.harness import Clock, clinic_config, virtual_monday

NUMBER = "+15550101"  # pat-1's mobile, as the demo files it (555-0101) with the country code

CLASSIFY = [
    ("YES", "yes"),
    ("y", "yes"),
    (" Yes! ", "yes"),
    ("yes please", "yes"),
    ("Yes, thanks", "yes"),
    ("Confirmed.", "yes"),
    ("confirm", "yes"),
    ("OK", "yes"),
    ("okay", "yes"),
    ("sure", "yes"),
    ("👍", "yes"),
    ("👍🏽", "yes"),
    ("yes but can we make it later", None),
    ("Yes, can I bring my son?", None),
    ("CANCEL", "cancel"),
    ("C", "cancel"),
    ("cancel it", "cancel"),
    ("Can't come", "cancel"),
    ("can\u2019t make it, sorry", "cancel"),
    ("cannot come", "cancel"),
    ("I won't be able to come", "cancel"),
    ("I need to cancel.", "cancel"),
    ("no", "cancel"),
    ("cancel and rebook for Friday", None),
    ("can I move it", None),
    ("can we make it later that day?", None),
    ("STOP", "stop"),
    ("stopall", "stop"),
    ("Unsubscribe", "stop"),
    ("end", "stop"),
    ("QUIT", "stop"),
    ("revoke", "stop"),
    ("optout", "stop"),
    ("START", "start"),
    ("unstop", "start"),
    ("HELP", "help"),
    ("info", "help"),
    ("", None),
]


@pytest.mark.parametrize(("body", "word"), CLASSIFY, ids=[repr(b) for b, _ in CLASSIFY])
def test_classify(body: str, word: str | None) -> None:
    assert classify(body) == word


class Recording:
    name = "recording"

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def send(self, to: str, body: str) -> str:
        self.sent.append((to, body))
        return f"SM{len(self.sent)}"


@dataclass
class Talk:
    """The agent's conversations as outreach calls them, recorded."""

    notes: list[tuple[str, str, AppointmentFacts]] = field(default_factory=list)
    escalations: list[tuple[str | None, str, str]] = field(default_factory=list)
    handed: list[tuple[str, str]] = field(default_factory=list)

    def note(self, number: str, text: str, appointment: AppointmentFacts) -> None:
        self.notes.append((number, text, appointment))

    def escalate(self, number: str | None, *, reason: str, summary: str) -> None:
        self.escalations.append((number, reason, summary))

    def hand_to_agent(self, number: str, body: str) -> None:
        self.handed.append((number, body))


class Waitlist:
    """Answers offers as the waitlist does (its protocol), recording each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []

    def answer(self, message: Message, yes: bool) -> str:
        self.calls.append((message.id, yes))
        return "It's yours: booked." if yes else "No problem, you stay on the waitlist."


@dataclass
class World:
    db: Database
    store: Store
    keys: KeyRing
    cfg: ClinicConfig
    clock: Clock
    monday: date
    sender: Recording
    outreach: Outreach
    talk: Talk
    waitlist: Waitlist
    replies: Replies
    sent: int = 0

    def at(self, day: int, hh: int) -> datetime:
        return datetime.combine(self.monday + timedelta(days=day), time(hh), tzinfo=self.cfg.tz)

    def book(self, day: int, hh: int, patient: str = "pat-1") -> dict[str, Any]:
        """The first follow-up with Dr. Smith from ``hh`` on the virtual week's ``day``."""
        start = self.at(day, hh)
        request = FindRequest(
            start=start,
            end=start + timedelta(hours=4),
            visit_type="follow-up",
            practitioners=["dr-smith"],
            patient_id=patient,
        )
        with self.db.write() as conn:
            found = find_options(
                conn, store=self.store, config=self.cfg, request=request, now=self.clock()
            )
            assert found.options, found.reasons
            proposal = proposed_appointment(self.cfg, found.options[0], patient_id=patient)
            stored = booking.book_new(
                conn,
                store=self.store,
                config=self.cfg,
                appointment=proposal,
                reference=None,
                now=self.clock(),
            )
        return stored.resource()

    def remind(self, appt: dict[str, Any], to: str = NUMBER) -> str:
        self.sent += 1
        self.clock.now += timedelta(minutes=1)  # the newest is the latest sent
        done = self.outreach.send_once(
            kind="reminder",
            dedupe=f"reminder:{appt['id']}:{self.sent}",
            to=to,
            body="Reminder: Dr. Alice Smith. Reply YES to confirm or CANCEL to cancel",
            appointment_id=appt["id"],
            patient_id="pat-1",
        )
        assert done.state == "sent" and done.message_id
        return done.message_id

    def read(self, appointment_id: str) -> tuple[dict[str, Any], int]:
        with self.db.read() as conn:
            stored = self.store.read(conn, "Appointment", appointment_id)
        assert stored is not None
        return stored.resource(), stored.version

    def events(self) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            rows = conn.execute(select(AuditLog.__table__)).all()
        return [open_event(self.keys, r) for r in rows]

    def kinds(self) -> list[str]:
        return [
            s["code"]
            for e in self.events()
            for s in e.get("subtype", [])
            if s.get("system") == "urn:fhir-sched:outreach"
        ]


@pytest.fixture
def w(db: Database, store: Store, keys: KeyRing) -> World:
    cfg = clinic_config()
    monday = virtual_monday(cfg.tz)
    clock = Clock(datetime.combine(monday, time(7), tzinfo=cfg.tz))
    with db.write() as conn:
        load_clinic(conn, store=store, config=cfg, today=monday, weeks=1)
        for patient in demo_patients():
            service.update(
                conn,
                store=store,
                resource_type=patient["resourceType"],
                resource_id=patient["id"],
                resource=patient,
            )
        last_year = clock() - timedelta(days=365)  # pat-1 and pat-2 are existing patients
        for pid in ("pat-1", "pat-2"):
            service.create(
                conn,
                store=store,
                resource_type="Appointment",
                resource={
                    "resourceType": "Appointment",
                    "status": "fulfilled",
                    "start": last_year.isoformat(),
                    "end": (last_year + timedelta(minutes=30)).isoformat(),
                    "participant": [
                        {"actor": {"reference": f"Patient/{pid}"}, "status": "accepted"}
                    ],
                },
            )
    sender = Recording()
    outreach = Outreach(
        db=db, store=store, keys=keys, sender=sender, server="http://test/fhir", clock=clock
    )
    talk, waitlist = Talk(), Waitlist()
    replies = Replies(
        outreach=outreach, db=db, store=store, clinic=cfg, conversations=talk, waitlist=waitlist
    )
    return World(db, store, keys, cfg, clock, monday, sender, outreach, talk, waitlist, replies)


def _patient_status(appt: dict[str, Any]) -> str:
    return next(
        p["status"] for p in appt["participant"] if p["actor"]["reference"].startswith("Patient/")
    )


def _needs_action(w: World, appt: dict[str, Any]) -> None:
    """The patient's participation not yet accepted, as an EMR books it."""
    body = {
        **appt,
        "participant": [
            {**p, "status": "needs-action"} if p["actor"]["reference"].startswith("Patient/") else p
            for p in appt["participant"]
        ],
    }
    body.pop("meta", None)
    with w.db.write() as conn:
        service.update(
            conn, store=w.store, resource_type="Appointment", resource_id=appt["id"], resource=body
        )


def test_yes_accepts_the_appointment_the_reminder_named_not_the_latest(w: World) -> None:
    named = w.book(2, 9)  # Wednesday: reminded
    latest = w.book(3, 9)  # Thursday: booked after it, later in the week, not reminded
    _needs_action(w, named)
    reminder = w.remind(named)
    _, latest_version = w.read(latest["id"])
    done = w.replies.handle("+1 555 0101", "Yes!", message_sid="SMin1")
    assert done.kind == "confirmed" and done.appointment_id == named["id"]
    assert done.reply is not None and "you're confirmed for Wed" in done.reply
    assert "with Dr. Alice Smith" in done.reply
    assert _patient_status(w.read(named["id"])[0]) == "accepted"
    assert w.read(named["id"])[0]["status"] == "booked"
    assert w.read(latest["id"])[1] == latest_version  # untouched
    assert w.sender.sent[-1] == (NUMBER, done.reply)
    message = w.outreach.get(reminder)
    assert message is not None and message.answer == "yes"
    kinds = w.kinds()
    assert "yes" in kinds and "confirm" in kinds and "reminder" in kinds and "notice" in kinds
    assert "Yes!" not in str(w.events())  # no message text in the audit log
    assert w.talk.handed == []


def test_a_reply_is_recorded_as_a_communication_answering_the_reminder(w: World) -> None:
    appt = w.book(2, 9)
    reminder = w.outreach.get(w.remind(appt))
    assert reminder is not None
    w.replies.handle(NUMBER, "C", message_sid="SMin2")
    refs = [  # the AuditEvent of the reply names its Communication
        x["what"]["reference"]
        for e in w.events()
        if any(s.get("code") == "cancel" for s in e.get("subtype", []))
        for x in e.get("entity", [])
        if x["what"].get("reference", "").startswith("Communication/")
    ]
    assert len(refs) == 1, refs
    with w.db.read() as conn:
        comm = w.store.read(conn, "Communication", refs[0].split("/")[1])
    assert comm is not None
    body = comm.resource()
    assert body["inResponseTo"] == [{"reference": f"Communication/{reminder.communication_id}"}]
    assert body["about"] == [{"reference": f"Appointment/{appt['id']}"}]
    assert body["sender"] == {"reference": "Patient/pat-1"} and "received" in body
    assert body["payload"] == [{"contentString": "C"}]


def test_cancel_to_an_old_reminder_cancels_what_it_named(w: World) -> None:
    named = w.book(3, 9)
    w.remind(named)
    w.clock.now += timedelta(days=1)  # an old reminder; meanwhile a later booking
    latest = w.book(4, 9)
    done = w.replies.handle(NUMBER, "can't make it", message_sid="SMin3")
    assert done.kind == "cancelled" and done.appointment_id == named["id"]
    cancelled = w.read(named["id"])[0]
    assert cancelled["status"] == "cancelled"
    assert cancelled["cancelationReason"]["coding"][0]["code"] == "pat-crs"
    assert w.read(latest["id"])[0]["status"] == "booked"
    assert done.reply is not None and "is cancelled" in done.reply
    assert "cancel" in w.kinds()


def test_a_second_answer_does_nothing_more(w: World) -> None:
    appt = w.book(2, 9)
    w.remind(appt)
    first = w.replies.handle(NUMBER, "yes", message_sid="SMa")
    _, version = w.read(appt["id"])
    again = w.replies.handle(NUMBER, "YES", message_sid="SMb")
    assert (first.kind, again.kind) == ("confirmed", "answered")
    assert again.reply is not None and "already confirmed" in again.reply
    assert w.read(appt["id"])[1] == version
    cancel = w.replies.handle(NUMBER, "cancel", message_sid="SMc")
    assert cancel.kind == "answered" and w.read(appt["id"])[0]["status"] == "booked"
    # the same inbound message delivered twice is answered once
    sent = len(w.sender.sent)
    w.replies.handle(NUMBER, "cancel", message_sid="SMc")
    assert len(w.sender.sent) == sent


def test_cancel_inside_the_notice_is_not_done_and_goes_to_staff(w: World) -> None:
    today = w.book(0, 13)  # Monday afternoon; it is Monday 07:00: inside the 24 hours
    w.remind(today)
    done = w.replies.handle(NUMBER, "CANCEL", message_sid="SMlate")
    assert done.kind == "too_late"
    assert w.read(today["id"])[0]["status"] == "booked"
    assert done.reply is not None and "too late" in done.reply and "413-555-0100" in done.reply
    assert [(n, r) for n, r, _ in w.talk.escalations] == [(NUMBER, "late_cancellation")]
    assert today["id"] in w.talk.escalations[0][2]
    again = w.replies.handle(NUMBER, "cancel", message_sid="SMlate2")
    assert again.kind == "answered" and len(w.talk.escalations) == 1


def test_late_cancellations_from_any_source_reach_the_staff_queue_once(w: World) -> None:
    late = LateCancellations(w.store, w.cfg, clock=w.clock)
    w.store.watch("Appointment", late.on_change)
    soon, later = w.book(0, 13), w.book(3, 9)
    with w.db.write() as conn:  # staff (or an EMR) cancel both, past the notice rule
        for appt in (soon, later):
            booking.cancel(
                conn,
                store=w.store,
                config=w.cfg,
                appointment_id=appt["id"],
                now=w.clock(),
                enforce_notice=False,
            )
    with w.db.read() as conn:
        queued = conn.execute(select(OutreachEscalation.__table__.c.appointment_id)).scalars()
        assert list(queued) == [soon["id"]]
    args = {"db": w.db, "store": w.store, "clinic": w.cfg, "outreach": w.outreach}
    assert escalate_late_cancellations(conversations=w.talk, **args) == 1
    assert escalate_late_cancellations(conversations=w.talk, **args) == 0
    [(number, reason, summary)] = w.talk.escalations
    assert (number, reason) == ("5550101", "late_cancellation")
    assert soon["id"] in summary and "Chalmers" not in summary
    assert "escalate" in w.kinds()


def test_a_failed_handover_is_tried_again(w: World) -> None:
    class Down(Talk):
        def escalate(self, number: str | None, *, reason: str, summary: str) -> None:
            raise OSError("down")

    w.store.watch("Appointment", LateCancellations(w.store, w.cfg, clock=w.clock).on_change)
    soon = w.book(0, 13)
    with w.db.write() as conn:
        booking.cancel(
            conn,
            store=w.store,
            config=w.cfg,
            appointment_id=soon["id"],
            now=w.clock(),
            enforce_notice=False,
        )
    args = {"db": w.db, "store": w.store, "clinic": w.cfg}
    assert escalate_late_cancellations(conversations=Down(), **args) == 0
    assert escalate_late_cancellations(conversations=w.talk, **args) == 1


def test_stop_silences_every_automated_text_and_start_lets_them_through(w: World) -> None:
    appt = w.book(2, 9)
    w.remind(appt)
    stop = w.replies.handle(NUMBER, "STOP", message_sid="SMstop")
    assert stop.kind == "opted_out" and stop.reply is not None and "START" in stop.reply
    assert w.sender.sent[-1] == (NUMBER, stop.reply)  # answered once, before it took effect
    count = len(w.sender.sent)
    skipped = w.outreach.send_once(
        kind="reminder", dedupe="after-stop", to=NUMBER, body="x", appointment_id=appt["id"],
        patient_id="pat-1",
    )  # fmt: skip
    assert skipped.state == "skipped"
    agent_sms = OptOutAware(w.sender, opted_out_check(w.db, w.keys))
    assert agent_sms.send(NUMBER, "the agent's answer") == ""
    assert len(w.sender.sent) == count
    again = w.replies.handle(NUMBER, "stop", message_sid="SMstop2")
    assert again.reply is None and len(w.sender.sent) == count  # the last text was the first
    start = w.replies.handle(NUMBER, "START", message_sid="SMstart")
    assert start.kind == "opted_in" and w.sender.sent[-1] == (NUMBER, start.reply)
    assert agent_sms.send(NUMBER, "hello again") == f"SM{len(w.sender.sent)}"
    assert {"stop", "start"} <= set(w.kinds())


def test_twilio_answered_the_keyword_itself(w: World) -> None:
    done = w.replies.handle(NUMBER, "Stop", message_sid="SMt", opt_out_type="STOP")
    assert done.kind == "opted_out" and done.reply is None and w.sender.sent == []
    assert w.outreach.opted_out(NUMBER)
    back = w.replies.handle(NUMBER, "start", message_sid="SMt2", opt_out_type="START")
    assert back.kind == "opted_in" and w.sender.sent == []
    assert not w.outreach.opted_out(NUMBER)


def test_help_names_the_clinic_and_its_phone(w: World) -> None:
    done = w.replies.handle(NUMBER, "help", message_sid="SMh")
    assert done.reply is not None
    assert "Main Street Family Practice" in done.reply and "413-555-0100" in done.reply
    assert "STOP" in done.reply


def test_answers_to_an_offer_are_the_waitlists(w: World) -> None:
    appt = w.book(2, 9)
    offer = w.outreach.send_once(
        kind="offer", dedupe="offer:o1:e1", to=NUMBER, body="A time opened up. Reply YES",
        appointment_id=appt["id"], patient_id="pat-1",
    )  # fmt: skip
    done = w.replies.handle(NUMBER, "yes please", message_sid="SMo")
    assert done.kind == "offer" and done.reply == "It's yours: booked."
    assert w.waitlist.calls == [(offer.message_id, True)]
    assert w.sender.sent[-1] == (NUMBER, "It's yours: booked.")
    w.replies.handle(NUMBER, "no", message_sid="SMo2")
    assert w.waitlist.calls[-1] == (offer.message_id, False)  # the waitlist tells repeats


def test_anything_else_is_the_agents_and_then_so_is_yes(w: World) -> None:
    appt = w.book(2, 9)
    w.replies.handle(NUMBER, "yes", message_sid="SMn")  # nothing to answer yet
    assert w.talk.handed == [(NUMBER, "yes")]
    w.remind(appt)
    done = w.replies.handle(NUMBER, "can we make it later that day?", message_sid="SMx")
    assert done.kind == "agent" and w.talk.handed[-1][1] == "can we make it later that day?"
    # the conversation is the agent's now: "yes" confirms what it read back, not the reminder
    assert w.replies.handle(NUMBER, "yes", message_sid="SMy").kind == "agent"
    assert _patient_status(w.read(appt["id"])[0]) == "accepted"  # as booked, unchanged
    w.remind(appt)  # the next reminder is answered anew
    assert w.replies.handle(NUMBER, "yes", message_sid="SMz").kind == "confirmed"


def test_appointment_facts_name_it_as_the_agent_does(w: World) -> None:
    appt = w.book(2, 9)
    with w.db.read() as conn:
        facts = appointment_facts(conn, store=w.store, config=w.cfg, appointment_id=appt["id"])
    assert facts.patient["birthDate"] == "1974-12-25"
    assert facts.patient["name"][0]["family"] == "Chalmers"
    assert facts.shown["clinician"] == "Dr. Alice Smith"
    assert facts.shown["location"] == "Main Street Clinic"
    assert facts.shown["time"].endswith(("AM", "PM")) and facts.visit_type == "follow-up"


def test_a_number_filed_nationally_is_texted_in_e164_and_its_reply_matched(
    db: Database, store: Store, keys: KeyRing, w: World
) -> None:
    """The clinic files "(413) 555-0101"; Twilio needs, and sends back, "+14135550101". With
    the clinic's phone_region the reminder goes to the E.164 form, and the patient's YES from
    it answers that reminder; without a region the two would never meet."""
    assert w.cfg.phone_region == "US"  # the default
    regional = Outreach(
        db=db,
        store=store,
        keys=keys,
        sender=w.sender,
        server="http://test/fhir",
        clock=w.clock,
        region=w.cfg.phone_region,
    )
    replies = Replies(outreach=regional, db=db, store=store, clinic=w.cfg, conversations=w.talk)
    appt = w.book(2, 9)
    _needs_action(w, appt)
    patient = {"telecom": [{"system": "phone", "value": "(413) 555-0101", "use": "mobile"}]}
    filed = regional.phone_of(patient)
    assert filed == "+14135550101"
    sent = regional.send_once(
        kind="reminder",
        dedupe=f"reminder:{appt['id']}:national",
        to="(413) 555-0101",
        body="Reminder: Dr. Alice Smith. Reply YES to confirm or CANCEL to cancel",
        appointment_id=appt["id"],
        patient_id="pat-1",
    )
    assert sent.state == "sent" and w.sender.sent[-1][0] == "+14135550101"
    done = replies.handle("+14135550101", "yes", message_sid="SMe164")  # Twilio's From
    assert done.kind == "confirmed" and done.appointment_id == appt["id"]
    assert _patient_status(w.read(appt["id"])[0]) == "accepted"
    # the same number as filed and as Twilio writes it is one number to opt out
    regional.set_opt_out("+14135550101", True)
    assert regional.opted_out("413-555-0101")
