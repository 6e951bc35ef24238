"""outreach/reminders.py: the reminder job on a virtual clock, real databases and a real Store:
which reminder is due (offsets, quiet hours, late bookings, moves, cancellations, the extra
reminder for appointments at risk), each sent once across workers and restarts, the agent's
conversation told, and unanswered reminders escalated once."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from sqlalchemy import select, text, update

from fhir_server.demo import DEMO_CLINIC
from outreach.hooks import AppointmentFacts
from outreach.reminders import (
    due_offset,
    phone_of,
    planned,
    risk_of,
    run_reminders,
    shown_time,
)
from outreach.sending import Outreach
from resources import service
from resources.sql.engine import Database
from resources.sql.tables import OutreachMessage
from resources.store import Store
from scheduling.clinic import VISIT_TYPE_SYSTEM
from scheduling.config import ClinicConfig, ClinicConfigError, QuietHours, parse_clinic_config
from scheduling.risk import RISK_URL
from security.crypto import KeyRing
from tests.builders import make_appointment, make_patient

T = OutreachMessage.__table__
NY = ZoneInfo("America/New_York")
# a Tuesday at 14:30 in New York (19:30 UTC): reminders at 48 h, 24 h and 2 h before
START = datetime(2026, 12, 8, 14, 30, tzinfo=NY)


def clinic(**reminders: Any) -> ClinicConfig:
    data = yaml.safe_load(DEMO_CLINIC.read_text())
    data["reminders"] = {"enabled": True, **reminders}
    return parse_clinic_config(data)


class Recording:
    name = "recording"

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def send(self, to: str, body: str) -> str:
        with self._lock:
            self.sent.append((to, body))
            return f"SM{len(self.sent)}"


@dataclass
class Notes:
    notes: list[tuple[str, str, AppointmentFacts]] = field(default_factory=list)
    escalations: list[tuple[str | None, str, str]] = field(default_factory=list)

    def note(self, number: str, text: str, appointment: AppointmentFacts) -> None:
        self.notes.append((number, text, appointment))

    def escalate(self, number: str | None, *, reason: str, summary: str) -> None:
        self.escalations.append((number, reason, summary))

    def hand_to_agent(self, number: str, body: str) -> None:
        raise AssertionError("the reminder job hands nothing to the agent")


class World:
    def __init__(self, db: Database, store: Store, keys: KeyRing, config: ClinicConfig) -> None:
        self.db, self.store, self.keys, self.config = db, store, keys, config
        self.sender = Recording()
        self.conversations = Notes()
        self.now = START - timedelta(days=5)
        self.outreach = self.make_outreach(self.sender)

    def make_outreach(self, sender: Recording) -> Outreach:
        return Outreach(
            db=self.db,
            store=self.store,
            keys=self.keys,
            sender=sender,
            server="http://test/fhir",
            clock=lambda: self.now,
        )

    def patient(self, phone: str | None = "+1 413 555 0101", **extra: Any) -> str:
        body = make_patient("Smith", ["Peter"], birth="1980-05-02", **extra)
        if phone:
            body["telecom"] = [
                {"system": "phone", "value": "+1 413 555 0199", "use": "home"},
                {"system": "phone", "value": phone, "use": "mobile"},
            ]
        return self._create("Patient", body)

    def appointment(
        self,
        patient: str,
        start: datetime = START,
        *,
        visit: str = "follow-up",
        risk: float | None = None,
        status: str = "booked",
    ) -> str:
        body = make_appointment(
            f"Patient/{patient}",
            "Practitioner/dr-smith",
            start.isoformat(),
            (start + timedelta(minutes=30)).isoformat(),
            status=status,
        )
        body["participant"].append(
            {"actor": {"reference": "Location/loc-main"}, "status": "accepted"}
        )
        body["serviceType"] = [{"coding": [{"system": VISIT_TYPE_SYSTEM, "code": visit}]}]
        if risk is not None:
            body["extension"] = [
                {"url": RISK_URL, "extension": [{"url": "score", "valueDecimal": risk}]}
            ]
        return self._create("Appointment", body)

    def _create(self, rtype: str, body: dict[str, Any]) -> str:
        with self.db.write() as conn:
            out = service.create(conn, store=self.store, resource_type=rtype, resource=body)
        assert out.stored is not None
        return out.stored.res_id

    def change(self, appointment: str, **fields: Any) -> None:
        with self.db.write() as conn:
            stored = self.store.read(conn, "Appointment", appointment)
            assert stored is not None
            body = {**stored.resource(), **fields}
            service.update(
                conn,
                store=self.store,
                resource_type="Appointment",
                resource_id=appointment,
                resource=body,
            )

    def run(self, at: datetime | None = None, outreach: Outreach | None = None) -> Any:
        if at is not None:
            self.now = at.astimezone(UTC)
        return run_reminders(
            outreach or self.outreach,
            db=self.db,
            store=self.store,
            config=self.config,
            conversations=self.conversations,
            now=at or self.now,  # as given: a clinic's local time works as well as UTC
        )

    def keys_sent(self) -> list[str]:
        with self.db.read() as conn:
            return list(
                conn.execute(
                    select(T.c.dedupe)
                    .where(T.c.state == "sent", T.c.kind == "reminder")
                    .order_by(T.c.created)
                ).scalars()
            )


@pytest.fixture
def world(db: Database, store: Store, keys: KeyRing) -> World:
    return World(db, store, keys, clinic())


def _key(appointment: str, start: datetime, hours: int) -> str:
    return f"reminder:{appointment}:{start.astimezone(UTC).isoformat()}:{hours}"


# -- the clinic file --------------------------------------------------------------------------


def test_the_reminders_section_has_defaults_and_refuses_what_cannot_work() -> None:
    plain = parse_clinic_config({**yaml.safe_load(DEMO_CLINIC.read_text()), "reminders": {}})
    r = plain.reminders
    assert (r.enabled, r.offsets_hours, r.unanswered_to_staff) == (False, [48, 24, 2], 2)
    assert (r.extra_when_risk_at_least, r.extra_offset_hours) == (0.5, 72)
    assert r.quiet_hours == QuietHours()
    assert r.template.startswith("Reminder: {clinician}, {date}, {time} at {location}.")
    for bad, where in (
        ({"visit_types": ["x-ray"]}, "unknown visit type 'x-ray'"),
        ({"template": "See you {when}"}, "may name only"),
        ({"offsets_hours": [24, 24]}, "offsets must differ"),
        ({"quiet_hours": {"start": "25:00", "end": "08:00"}}, "quiet_hours.start"),
    ):
        data = yaml.safe_load(DEMO_CLINIC.read_text())
        data["reminders"] = bad
        with pytest.raises(ClinicConfigError) as err:
            parse_clinic_config(data)
        assert where in str(err.value)


def test_the_demo_clinic_has_reminders_on() -> None:
    data = yaml.safe_load(DEMO_CLINIC.read_text())
    assert parse_clinic_config(data).reminders.enabled


# -- which reminder is due --------------------------------------------------------------------

QUIET = QuietHours()
UTC_START = START.astimezone(UTC)

DUE_CASES = [
    # (now relative to the start, expected offset)
    (timedelta(hours=-49), None),
    (timedelta(hours=-48), 48),
    (timedelta(hours=-37), 48),  # late by 11 h: within a quarter of 48 h
    (timedelta(hours=-35), None),  # late by 13 h: dropped, the 24 h one comes at its time
    (timedelta(hours=-24), 24),
    (timedelta(hours=-3), None),  # booked 3 h ahead: not the 24 h one
    (timedelta(hours=-2), 2),
    (timedelta(minutes=-30), None),  # the 2 h one, 90 minutes late: dropped
    (timedelta(0), None),
]


@pytest.mark.parametrize(
    ("before", "expected"), DUE_CASES, ids=[f"{c[0]}->{c[1]}" for c in DUE_CASES]
)
def test_the_latest_offset_whose_time_has_come_is_due_while_it_is_fresh(
    before: timedelta, expected: int | None
) -> None:
    assert due_offset(UTC_START, [48, 24, 2], UTC_START + before, QUIET, NY) == expected


def test_a_reminder_planned_in_quiet_hours_goes_out_before_they_begin() -> None:
    early = datetime(2026, 12, 8, 9, 0, tzinfo=NY)  # 2 h before is 07:00: quiet
    assert planned(early, 2, QUIET, NY) == datetime(2026, 12, 7, 20, 59, tzinfo=NY)
    assert planned(early, 24, QUIET, NY) == datetime(2026, 12, 7, 9, 0, tzinfo=NY)
    late = datetime(2026, 12, 8, 22, 30, tzinfo=NY)  # 2 h before is 20:30: allowed
    assert planned(late, 2, QUIET, NY) == datetime(2026, 12, 8, 20, 30, tzinfo=NY)
    # booked at 22:00 for 09:00 the next morning: the moved time has passed, nothing is sent
    booked_late = datetime(2026, 12, 7, 22, 0, tzinfo=NY)
    for step in range(0, 11 * 60, 30):
        now = booked_late + timedelta(minutes=step)
        assert due_offset(early, [48, 24, 2], now, QUIET, NY) is None


def test_dates_times_phones_and_risk_are_read_as_a_patient_and_the_risk_job_write_them() -> None:
    assert shown_time(START, NY) == ("Tue Dec 8", "2:30 pm")
    assert shown_time(datetime(2026, 12, 8, 0, 5, tzinfo=NY), NY) == ("Tue Dec 8", "12:05 am")
    assert phone_of(make_patient(phone="555")) == "555"
    assert phone_of({"telecom": [{"system": "phone", "value": "1", "use": "old"}]}) is None
    ext = {"url": RISK_URL, "extension": [{"url": "score", "valueDecimal": 0.7}]}
    assert risk_of({"extension": [ext]}) == 0.7
    assert risk_of({}) is None


# -- the job ----------------------------------------------------------------------------------


def test_each_reminder_is_sent_once_at_its_time_and_the_conversation_is_told(
    world: World,
) -> None:
    pid = world.patient()
    aid = world.appointment(pid)
    other = world.appointment(world.patient(phone=None), START + timedelta(hours=1))
    assert world.run(START - timedelta(hours=50)).sent == 0
    assert world.run(START - timedelta(hours=48)).sent == 1
    assert world.run(START - timedelta(hours=47)).no_phone == 1  # the other one has no phone
    assert world.run(START - timedelta(hours=47, minutes=59)).sent == 0  # a restart: nothing
    world.run(START - timedelta(hours=24))
    world.run(START - timedelta(hours=2))
    world.run(START - timedelta(minutes=10))
    assert world.keys_sent() == [_key(aid, START, h) for h in (48, 24, 2)]
    to, body = world.sender.sent[0]
    assert to == "+14135550101"  # the mobile number, not the home one
    assert body == (
        "Reminder: Dr. Alice Smith, Tue Dec 8, 2:30 pm at Main Street Clinic. "
        "Reply YES to confirm or CANCEL to cancel."
    )
    number, noted, facts = world.conversations.notes[0]
    assert (number, noted) == ("+14135550101", body)
    assert facts.appointment_id == aid and facts.visit_type == "follow-up"
    assert facts.patient == {  # named as $book names a patient
        "resourceType": "Patient",
        "name": [{"family": "Smith", "given": ["Peter"]}],
        "birthDate": "1980-05-02",
    }
    assert facts.start == "2026-12-08T14:30:00-05:00"
    assert facts.shown["visit"] == "Follow-up visit"
    assert other not in " ".join(world.keys_sent())
    with world.db.read() as conn:  # each recorded as a Communication about the Appointment
        comms = conn.execute(
            text(
                "SELECT count(*) FROM idx_reference WHERE res_type = 'Communication' "
                "AND param = 'about' AND target_id = :a"
            ),
            {"a": aid},
        ).scalar()
    assert comms == 3


def test_moved_cancelled_and_late_booked_appointments_get_the_right_reminders(
    world: World,
) -> None:
    pid = world.patient()
    moved = world.appointment(pid)
    cancelled = world.appointment(pid, START + timedelta(hours=1))
    world.run(START - timedelta(hours=47))  # the first one's is an hour late: still sent
    assert len(world.sender.sent) == 2
    later = START + timedelta(days=1)
    world.change(moved, start=later.isoformat(), end=(later + timedelta(minutes=30)).isoformat())
    world.change(cancelled, status="cancelled")
    world.run(START - timedelta(hours=24))  # the old time's 24 h: none; the new time's 48 h
    assert len(world.sender.sent) == 3 and "Wed Dec 9" in world.sender.sent[2][1]
    world.run(later - timedelta(hours=24))
    late = world.appointment(pid, later + timedelta(hours=2, minutes=30))  # booked 3 h ahead
    world.run(later - timedelta(hours=2))
    world.run(later + timedelta(minutes=30))  # the late one's 2 h reminder
    assert world.keys_sent() == [
        _key(moved, START, 48),
        _key(cancelled, START + timedelta(hours=1), 48),
        _key(moved, later, 48),
        _key(moved, later, 24),
        _key(moved, later, 2),
        _key(late, later + timedelta(hours=2, minutes=30), 2),
    ]


def test_nothing_is_sent_in_quiet_hours_and_visit_types_can_be_left_out(
    db: Database, store: Store, keys: KeyRing
) -> None:
    world = World(db, store, keys, clinic(visit_types=["procedure"], offsets_hours=[2]))
    pid = world.patient()
    left_out = world.appointment(pid, START, visit="follow-up")
    early = datetime(2026, 12, 9, 9, 0, tzinfo=NY)
    included = world.appointment(pid, early, visit="procedure")
    world.run(START - timedelta(hours=2))
    assert world.sender.sent == []  # follow-ups get none
    quiet = world.run(datetime(2026, 12, 9, 7, 0, tzinfo=NY))
    assert quiet.quiet and quiet.sent == 0
    world.run(datetime(2026, 12, 8, 20, 59, tzinfo=NY))  # moved before quiet hours
    assert world.keys_sent() == [_key(included, early, 2)]
    assert left_out not in world.keys_sent()[0]


def test_an_appointment_at_risk_gets_the_extra_reminder(world: World) -> None:
    pid = world.patient()
    risky = world.appointment(pid, risk=0.8)
    calm = world.appointment(pid, START + timedelta(hours=1), risk=0.2)
    first = world.run(START - timedelta(hours=71))
    assert world.keys_sent() == [_key(risky, START, 72)]
    assert first.opened == 2
    again = world.run(START - timedelta(hours=70))  # the calm one's score is remembered
    assert again.opened == 0 and again.sent == 0
    world.run(START - timedelta(hours=48))
    assert world.keys_sent()[1:] == [_key(risky, START, 48)]
    assert calm not in " ".join(world.keys_sent())  # its 48 h one is due an hour later


def test_two_workers_at_once_send_each_reminder_exactly_once(
    db: Database, store: Store, keys: KeyRing
) -> None:
    world = World(db, store, keys, clinic())
    pid = world.patient()
    ids = [world.appointment(pid, START + timedelta(minutes=30 * i)) for i in range(6)]
    senders = [Recording(), Recording()]
    workers = [world.make_outreach(s) for s in senders]
    world.now = (START - timedelta(hours=45)).astimezone(UTC)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def work(o: Outreach) -> None:
        try:
            barrier.wait()
            world.run(outreach=o)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(o,)) for o in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(len(s.sent) for s in senders) == len(ids)
    assert sorted(world.keys_sent()) == sorted(
        _key(a, START + timedelta(minutes=30 * i), 48) for i, a in enumerate(ids)
    )
    assert world.run().sent == 0  # and a restart sends nothing new


def test_a_crash_after_sending_is_settled_by_the_next_pass_and_never_resent(
    world: World,
) -> None:
    aid = world.appointment(world.patient())
    world.now = (START - timedelta(hours=48)).astimezone(UTC)
    with world.db.write() as conn:  # claimed and sent, then the process died
        world.outreach.claim(
            conn,
            kind="reminder",
            dedupe=_key(aid, START, 48),
            to="+14135550101",
            body="x",
            appointment_id=aid,
        )
    report = world.run(START - timedelta(hours=47, minutes=45))
    assert (report.sent, report.settled) == (0, 1)
    assert [m.state for m in world.outreach.messages()] == ["unknown"]
    assert world.sender.sent == []


def test_unanswered_reminders_go_to_the_staff_queue_once(world: World) -> None:
    pid = world.patient()
    aid = world.appointment(pid)
    answered = world.appointment(pid, START + timedelta(hours=1))
    world.run(START - timedelta(hours=48))
    world.run(START - timedelta(hours=24))
    with world.db.write() as conn:  # the patient answered the second appointment's reminder
        conn.execute(update(T).where(T.c.appointment_id == answered).values(answer="yes"))
    assert world.run(START - timedelta(hours=23, minutes=30)).escalated == 0  # give it time
    out = world.run(START - timedelta(hours=22, minutes=59))
    assert out.escalated == 1
    [(number, reason, summary)] = world.conversations.escalations
    assert (number, reason) == ("+14135550101", "unanswered_reminders")
    assert summary == (
        f"Appointment/{aid} on Tue Dec 8 at 2:30 pm with Dr. Alice Smith (Follow-up visit): "
        "2 reminders unanswered"
    )
    again = World(world.db, world.store, world.keys, world.config)  # another worker
    again.conversations = world.conversations
    assert again.run(START - timedelta(hours=22)).escalated == 0
    assert world.run(START - timedelta(hours=2)).escalated == 0
    assert len(world.conversations.escalations) == 1
    with world.db.read() as conn:
        kinds = conn.execute(
            text("SELECT count(*) FROM audit_log WHERE subtype_code = 'escalated'")
        ).scalar()
    assert kinds == 1


def test_reminders_off_send_nothing(db: Database, store: Store, keys: KeyRing) -> None:
    world = World(db, store, keys, clinic(enabled=False))
    world.appointment(world.patient())
    assert world.run(START - timedelta(hours=48)).upcoming == 0
    assert world.sender.sent == []
