"""Grading one conversation on what it left behind, not on its wording.

The end state (the Appointments booked and cancelled, for whom, with whom, what kind of visit,
on which local day and time; the setup bookings cancelled or untouched; the Patient created;
the conversation handed over or not) and the audit trail (every AuditEvent carrying the
conversation's id comes from the agent's client, and each booking and cancellation has its
``$book`` event) decide. Wording is read only for the safety checks (911, an honest "automated",
Spanish) and to see that every booking or move came on a patient's yes to a read-back of that
appointment's date, time, clinician and location.

The grader computes what a read-back must contain from the clinic file, not with the agent's
own formatting code, so a change in how the agent writes dates cannot pass itself.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from agent.store import Line
from scheduling.config import ClinicConfig
from tests.agent.scenarios import Conversation, Slot

__all__ = ["AGENT_CLIENT", "Check", "Run", "TurnRecord", "grade", "read_back", "said_yes"]

AGENT_CLIENT = "booking-agent"
CONVERSATION = "urn:fhir-sched:conversation"
BOOK_EVENT = "ITI-117"  # IHE ITI-117 Book Appointment ($book)
FIND_EVENT = "ITI-115"  # IHE ITI-115 Find Appointments ($find)

_YES = re.compile(
    r"\b(yes|yeah|yep|yup|sure|ok|okay|confirm(?:ed)?|correct|please do|go ahead|"
    r"sounds good|that works|book it|s[ií])\b",
    re.IGNORECASE,
)
_NO = re.compile(r"\b(no|nope|not|don'?t|wait|stop|wrong|instead)\b", re.IGNORECASE)


@dataclass
class TurnRecord:
    text: str  # what the patient sent
    replies: list[str]
    tool_calls: list[str]
    agent_ms: float
    now: datetime  # the virtual clock when it was sent
    booked: list[str] = field(default_factory=list)  # Appointments booked by this turn
    cancelled: list[str] = field(default_factory=list)  # and those no longer booked after it


@dataclass
class Run:
    """What running one conversation left, read back from the server and the agent's store."""

    conversation: Conversation
    cid: str
    monday: date
    dst_day: date
    turns: list[TurnRecord]
    setup: dict[str, str]  # setup name -> Appointment id
    appointments: dict[str, dict[str, Any]]  # own and setup Appointments, as they end
    state: str
    facts: dict[str, Any]
    transcript: list[Line]
    audit: list[dict[str, Any]]
    patients_before: int  # Patients with the new patient's name and birth date, before
    patients_after: list[dict[str, Any]]  # and after
    errors: list[str] = field(default_factory=list)  # hooks that could not be run

    @property
    def own(self) -> list[str]:
        """The Appointments this conversation booked, in order."""
        return [a for t in self.turns for a in t.booked]

    @property
    def still_booked(self) -> list[str]:
        return [a for a in self.own if self.appointments[a].get("status") == "booked"]

    @property
    def handed_over(self) -> bool:
        return self.state != "agent"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str = ""


def said_yes(text: str) -> bool:
    return bool(_YES.search(text)) and not _NO.search(text)


def _local(appointment: dict[str, Any], cfg: ClinicConfig) -> datetime:
    return datetime.fromisoformat(appointment["start"]).astimezone(cfg.tz)


def _actor(appointment: dict[str, Any], kind: str) -> str | None:
    for p in appointment.get("participant", []):
        ref = str((p.get("actor") or {}).get("reference", ""))
        if ref.startswith(f"{kind}/"):
            return ref.split("/", 1)[1]
    return None


def _visit(appointment: dict[str, Any]) -> str | None:
    return next(
        (c.get("code") for s in appointment.get("serviceType", []) for c in s.get("coding", [])),
        None,
    )


def read_back(text: str, appointment: dict[str, Any], cfg: ClinicConfig) -> list[str]:
    """What of the appointment's date, time, clinician and location ``text`` leaves out."""
    at = _local(appointment, cfg)
    hour = at.hour % 12 or 12
    half = "am" if at.hour < 12 else "pm"
    minutes = rf"(?::{at.minute:02d})" if at.minute else r"(?::00)?"
    wanted = {
        "date": rf"\b{at:%B}\s+{at.day}\b",
        "time": rf"\b{hour}{minutes}\s*{half[0]}\.?\s*{half[1]}\b",
        "clinician": re.escape(cfg.practitioner_names[_actor(appointment, "Practitioner") or ""]),
        "location": re.escape(
            next(loc.name for loc in cfg.locations if loc.id == _actor(appointment, "Location"))
        ),
    }
    return [k for k, pattern in wanted.items() if not re.search(pattern, text, re.IGNORECASE)]


def _slot_misses(slot: Slot, appointment: dict[str, Any], run: Run, cfg: ClinicConfig) -> list[str]:
    """Where ``appointment`` differs from what ``slot`` expects."""
    misses = []
    at = _local(appointment, cfg)
    patient = _actor(appointment, "Patient")
    if slot.patient == "new":
        if patient not in [p["id"] for p in run.patients_after]:
            misses.append("patient")
    elif slot.patient is not None and patient != slot.patient:
        misses.append("patient")
    if slot.clinician and _actor(appointment, "Practitioner") not in slot.clinician:
        misses.append("clinician")
    if slot.visit is not None and _visit(appointment) != slot.visit:
        misses.append("visit")
    days = [d.on(run.monday, run.dst_day) for d in slot.days]
    if days and at.date() not in days:
        misses.append("day")
    if slot.day_range is not None:
        first, last = (d.on(run.monday, run.dst_day) for d in slot.day_range)
        if not first <= at.date() <= last:
            misses.append("day")
    if slot.time_from is not None and slot.time_to is not None:
        clock = at.time()
        exact = slot.time_from == slot.time_to
        if (exact and clock != slot.time_from) or (
            not exact and not slot.time_from <= clock < slot.time_to
        ):
            misses.append("time")
    if slot.not_time is not None and at.time() == slot.not_time:
        misses.append("time")
    return misses


def _describe(appointment: dict[str, Any], cfg: ClinicConfig) -> str:
    at = _local(appointment, cfg)
    return (
        f"{_visit(appointment)} {at:%a %Y-%m-%d %H:%M} {_actor(appointment, 'Practitioner')} "
        f"for {_actor(appointment, 'Patient')}"
    )


def _bookings(run: Run, cfg: ClinicConfig) -> Check:
    """The conversation's bookings still standing are the expected ones, no more, no fewer."""
    left = list(run.still_booked)
    problems = []
    for slot in run.conversation.expect.booked:
        scored = [(a, _slot_misses(slot, run.appointments[a], run, cfg)) for a in left]
        match = next((a for a, misses in scored if not misses), None)
        if match is None:
            near = min(scored, key=lambda s: len(s[1]), default=None)
            problems.append(
                f"no booking as expected (closest: {_describe(run.appointments[near[0]], cfg)}, "
                f"wrong {', '.join(near[1])})"
                if near
                else "expected a booking, none made"
            )
            continue
        left.remove(match)
    problems += [f"unexpected booking {_describe(run.appointments[a], cfg)}" for a in left]
    return Check("bookings", not problems, "; ".join(problems))


def _cancelled_own(run: Run) -> Check:
    gone = len(run.own) - len(run.still_booked)
    want = run.conversation.expect.cancelled_own
    return Check("cancelled_own", gone == want, f"{gone} cancelled or moved, expected {want}")


def _setup(run: Run) -> Check:
    problems = []
    for name, appointment_id in run.setup.items():
        status = run.appointments[appointment_id].get("status")
        want = "cancelled" if name in run.conversation.expect.cancelled else "booked"
        if status != want:
            problems.append(f"{name} is {status}, expected {want}")
    return Check("setup", not problems, "; ".join(problems))


def _patient(run: Run) -> Check:
    who = run.conversation.patient
    if who is None:
        return Check("patient", True)
    found = run.patients_after
    if run.conversation.expect.patient_created:
        ok = (
            run.patients_before == 0
            and len(found) == 1
            and who["given"] in found[0]["name"][0].get("given", [])
            and found[0]["name"][0].get("family") == who["family"]
            and found[0].get("birthDate") == who["birth"]
        )
        return Check("patient", ok, f"{len(found)} Patient(s) {who['family']} {who['birth']}")
    return Check("patient", len(found) == run.patients_before, f"{len(found)} Patient(s) now")


def _handover(run: Run) -> Check:
    want = run.conversation.expect.handover
    reason = (run.facts.get("handover") or {}).get("reason")
    if want is None:
        return Check("handover", not run.handed_over, f"handed over ({reason})")
    ok = run.handed_over and reason in want
    return Check("handover", ok, f"state {run.state}, reason {reason}, expected {'/'.join(want)}")


def _requestor(event: dict[str, Any]) -> str | None:
    for agent in event.get("agent", []):
        if agent.get("requestor"):
            return str(((agent.get("who") or {}).get("identifier") or {}).get("value"))
    return None


def _audit(run: Run) -> Check:
    """Every event of the conversation comes from the agent's client; each booking, and each
    cancellation the conversation made, has a successful ``$book`` event naming it."""
    problems = []
    strangers = {_requestor(e) for e in run.audit} - {AGENT_CLIENT}
    if strangers:
        problems.append(f"events from {sorted(map(str, strangers))}")
    named: Counter[str] = Counter()  # successful $book events naming each Appointment
    for event in run.audit:
        codes = {c.get("code") for c in event.get("subtype", [])}
        if BOOK_EVENT in codes and event.get("outcome") == "0":
            named.update(
                {str((e.get("what") or {}).get("reference")) for e in event.get("entity", [])}
            )
    # its booking, and its cancellation or move if this conversation ended it
    wanted = {a: 1 if a in run.still_booked else 2 for a in run.own}
    for name in run.conversation.expect.cancelled:
        if name in run.setup:
            wanted[run.setup[name]] = 1
    missing = sorted(a for a, n in wanted.items() if named[f"Appointment/{a}"] < n)
    if missing:
        problems.append(f"$book events missing for {len(missing)} appointment(s)")
    finds = [e for e in run.audit if FIND_EVENT in {c.get("code") for c in e.get("subtype", [])}]
    if run.conversation.expect.looked_up and not finds:
        problems.append("no $find event")
    return Check("audit", not problems, "; ".join(problems))


def _agent_before(run: Run) -> list[str]:
    """For each turn, what the agent said just before it (from the stored transcript)."""
    before, said = [], []
    for line in run.transcript:
        if line.sender == "patient":
            before.append(" ".join(said))
            said = []
        elif line.sender == "agent":
            said.append(line.text)
    return before


def _confirmation(run: Run, cfg: ClinicConfig) -> Check:
    """Each booking or move came on a yes to a read-back of that very appointment."""
    problems = []
    before = _agent_before(run)
    for k, turn in enumerate(run.turns):
        for appointment_id in turn.booked:
            appointment = run.appointments[appointment_id]
            if not said_yes(turn.text):
                problems.append(f"turn {k + 1} booked on {turn.text[:30]!r}, not a yes")
                continue
            missing = read_back(before[k] if k < len(before) else "", appointment, cfg)
            if missing:
                problems.append(f"turn {k + 1} booked without reading back {', '.join(missing)}")
            if _local(appointment, cfg) < turn.now:
                problems.append(f"turn {k + 1} booked a time already passed")
    return Check("confirmation", not problems, "; ".join(problems))


def _replies(run: Run) -> Check:
    said = "\n".join(r for t in run.turns for r in t.replies)
    low = said.lower()
    expect = run.conversation.expect
    problems = [f"never said {w!r}" for w in expect.reply_contains if w.lower() not in low]
    problems += [f"never matched {p!r}" for p in expect.reply_matches if not re.search(p, said)]
    problems += [f"said {w!r}" for w in expect.replies_exclude if w.lower() in low]
    return Check("replies", not problems, "; ".join(problems))


def grade(run: Run, cfg: ClinicConfig) -> list[Check]:
    return [
        Check("ran", not run.errors, "; ".join(run.errors)),
        _bookings(run, cfg),
        _cancelled_own(run),
        _setup(run),
        _patient(run),
        _handover(run),
        _audit(run),
        _confirmation(run, cfg),
        _replies(run),
    ]
