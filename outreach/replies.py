"""A patient's text that answers an automated message: YES, CANCEL, STOP, START, HELP.

:func:`classify` reads the text (pure: a table of the words patients use); :class:`Replies`
acts on it:

* **STOP** (and Twilio's other opt-out words): the number gets no automated text any more
  (reminders, offers, the booking agent's own answers). The confirmation is claimed in the same
  transaction as the opt-out, before it takes effect, and then delivered: it is the last text
  the number gets, exactly once. **START** (or UNSTOP) opts back in; **HELP** names the clinic
  and its phone. When Twilio's Advanced Opt-Out answered the keyword itself (the webhook's
  ``OptOutType``), the opt-out is recorded and nothing is sent: Twilio already did.
* **YES** to a reminder: the patient accepts the Appointment the reminder named (never their
  latest one), through ``$book``'s modify (:func:`scheduling.booking.modify`), in one
  transaction with the reply's ``Communication``, the answer and the AuditEvents.
* **CANCEL** (C, "can't come", "no"…) to a reminder: cancelled through ``$book``'s cancel,
  unless the clinic's cancellation notice has passed: then nothing is cancelled, the patient is
  told kindly to call, and the conversation goes to the staff queue (``late_cancellation``).
* YES or NO to a waitlist **offer**: the waitlist's (:class:`OfferAnswers`).
* A second answer to the same message changes nothing and gets a friendly word.
* **Anything else** (and YES or CANCEL with no reminder or offer in the last 14 days) goes to
  the booking agent, whose conversation with the number already holds the reminder
  (``Conversations.note``), so "can we make it later that day?" needs no more context. The
  message is then answered ``other``: from there on the conversation is the agent's, and a
  "yes" confirms what the agent read back, not the reminder. The next reminder is answered
  anew.

Every reply handled here is audited (``outreach-received:<class>``, no text); each answer is a
``notice`` sent once per inbound message (its Twilio ``MessageSid``), so a webhook delivered
twice answers once.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from sqlalchemy import Connection, Table, select

from base.errors import BadRequest, BusinessRule
from base.logging import get_logger
from outreach.hooks import AppointmentFacts, Conversations
from outreach.sending import Message, Outreach
from resources import service
from resources.fhirdate import parse_fhir_date
from resources.sql.engine import Database
from resources.sql.tables import OutreachMessage
from resources.store import Store
from scheduling import booking
from scheduling.clinic import VISIT_TYPE_SYSTEM
from scheduling.config import ClinicConfig

__all__ = [
    "Handled",
    "OfferAnswers",
    "Replies",
    "Word",
    "appointment_facts",
    "classify",
    "shown_when",
]

log = get_logger("outreach.replies")

Word = Literal["yes", "cancel", "stop", "start", "help"]
T: Table = OutreachMessage.__table__  # type: ignore[assignment]

# http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason
CANCELLED_BY_REMINDER = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason",
            "code": "pat-crs",
            "display": "Patient: Canceled via automated reminder system",
        }
    ]
}

_YES = {
    "yes", "y", "yes please", "yep", "yup", "yeah", "ya", "yea", "confirm", "confirmed",
    "i confirm", "yes confirm", "yes confirmed", "ok", "okay", "k", "kk", "sure", "👍",
    "yes i'll be there", "i'll be there", "i will be there", "see you then", "yes see you then",
}  # fmt: skip
_CANCEL = {
    "cancel", "c", "cancel it", "cancel please", "please cancel", "please cancel it",
    "cancel my appointment", "please cancel my appointment", "cancel appointment",
    "cancel the appointment", "cancelled", "can't come", "cannot come", "can not come",
    "can't make it", "cannot make it", "can not make it", "won't be able to come",
    "won't be able to make it", "will not be able to come", "won't make it", "not coming",
    "i can't come", "i cannot come", "i can't make it", "i cannot make it",
    "i won't be able to come", "i won't be able to make it", "i won't make it",
    "i'm not coming", "i am not coming", "i need to cancel", "i have to cancel",
    "i want to cancel", "i'd like to cancel", "i would like to cancel", "no", "n", "nope",
    "no thanks", "no thank you", "no sorry",
}  # fmt: skip
# Twilio's default opt-out, opt-in and help keywords, less CANCEL (the clinic's own word):
# https://help.twilio.com/articles/223134027
_STOP = {"stop", "stopall", "stop all", "unsubscribe", "end", "quit", "revoke", "optout",
         "opt out", "opt-out"}  # fmt: skip
_START = {"start", "unstop"}
_HELP = {"help", "info"}
_TAIL = re.compile(r"(?:\s+(?:please|pls|thanks|thank you|thx|ty|sorry))+$")
_PUNCT = re.compile(r"[^\w\s'👍-]")


def _normal(body: str) -> str:
    text = unicodedata.normalize("NFKC", body).lower()
    text = text.replace("\u2019", "'").replace("\u2018", "'")
    # emoji variation selectors and skin tones: 👍🏽 is 👍
    text = "".join(c for c in text if not ("\U0001f3fb" <= c <= "\U0001f3ff" or c == "\ufe0f"))
    text = _PUNCT.sub(" ", text)
    text = " ".join(text.split())
    return _TAIL.sub("", text).strip()


def classify(body: str) -> Word | None:
    """What an inbound text says, if it is one of the answers outreach understands; None for
    anything else (the agent's). Case, punctuation, spacing and a trailing "please" or
    "thanks" do not matter; a YES or CANCEL with more in it ("yes but can we make it later",
    "cancel and rebook for Friday") is not a plain answer.

    >>> classify(" Yes! "), classify("C"), classify("can't make it, sorry"), classify("STOP")
    ('yes', 'cancel', 'cancel', 'stop')
    >>> classify("yes but can we make it later") is None
    True
    """
    text = _normal(body)
    if text in _STOP:
        return "stop"
    if text in _START:
        return "start"
    if text in _HELP:
        return "help"
    if text in _YES or (text and set(text.replace(" ", "")) == {"👍"}):
        return "yes"
    if text in _CANCEL:
        return "cancel"
    return None


def _opt_out_type(value: str) -> Word | None:
    """Twilio's ``OptOutType`` webhook field (Advanced Opt-Out): STOP, START or HELP."""
    return {"STOP": "stop", "START": "start", "HELP": "help"}.get(value.strip().upper())  # type: ignore[return-value]


class OfferAnswers(Protocol):
    """What answers a waitlist offer (``outreach.waitlist.Waitlist``)."""

    def answer(self, message: Message, yes: bool) -> str:
        """A reply to the offer ``message``: yes takes the time if it is still held, no
        declines; returns the text to send back. Never raises for a late or repeated answer."""
        ...


@dataclass(frozen=True, slots=True)
class Handled:
    """What a text did. ``kind``: confirmed, cancelled, too_late, answered (a second answer
    to the same message), not_booked (the appointment was no longer booked), offer,
    opted_out, opted_in, help, or agent (handed to the booking agent). ``reply``: the text
    sent back, if any."""

    kind: str
    reply: str | None = None
    appointment_id: str | None = None
    message_id: str | None = None

    @property
    def by_agent(self) -> bool:
        return self.kind == "agent"


def _clock_time(at: datetime) -> str:
    return f"{at.hour % 12 or 12}:{at:%M} {'am' if at.hour < 12 else 'pm'}"


def shown_when(config: ClinicConfig, appt: dict[str, Any]) -> str:
    """ "Tue Dec 8 at 2:30 pm with Dr. Alice Smith": an appointment as a text names it."""
    at = parse_fhir_date(str(appt["start"])).low.astimezone(config.tz)
    who = config.practitioner_names.get(booking.participant_id(appt, "Practitioner") or "")
    return f"{at:%a %b} {at.day} at {_clock_time(at)}" + (f" with {who}" if who else "")


def _phone(config: ClinicConfig, appt: dict[str, Any] | None = None) -> str | None:
    """The clinic's phone: the appointment's location's, else the first location's that has
    one."""
    where = booking.participant_id(appt, "Location") if appt else None
    ordered = sorted(config.locations, key=lambda loc: loc.id != where)
    return next((loc.phone for loc in ordered if loc.phone), None)


def appointment_facts(
    conn: Connection, *, store: Store, config: ClinicConfig, appointment_id: str
) -> AppointmentFacts:
    """The booked Appointment as the agent may act on it (``Conversations.note``): its patient
    named as ``$book`` names them (name and birth date), its start, and what the patient reads
    (the agent's forms: "Wednesday, March 4, 2026", "10:00 AM")."""
    appt = booking.existing(conn, store, appointment_id)
    patient_id = booking.participant_id(appt, "Patient")
    patient: dict[str, Any] = {}
    if patient_id:
        stored = store.read(conn, "Patient", patient_id)
        if stored is not None and not stored.deleted:
            patient = stored.resource()
    name = (patient.get("name") or [{}])[0]
    at = parse_fhir_date(str(appt["start"])).low.astimezone(config.tz)
    location = booking.participant_id(appt, "Location")
    visit = next(
        (
            c.get("code")
            for st in appt.get("serviceType", [])
            for c in st.get("coding", [])
            if c.get("system") == VISIT_TYPE_SYSTEM
        ),
        None,
    )
    displays = {v.code: v.display for v in config.visit_types}
    return AppointmentFacts(
        appointment_id=appointment_id,
        patient={
            "resourceType": "Patient",
            "name": [{"family": name.get("family", ""), "given": name.get("given", [])[:1]}],
            "birthDate": str(patient.get("birthDate", "")),
        },
        start=str(appt["start"]),
        shown={
            "date": f"{at:%A}, {at:%B} {at.day}, {at.year}",
            "time": f"{at.hour % 12 or 12}:{at:%M} {'AM' if at.hour < 12 else 'PM'}",
            "clinician": config.practitioner_names.get(
                booking.participant_id(appt, "Practitioner") or "", "the clinician"
            ),
            "location": next((loc.name for loc in config.locations if loc.id == location), ""),
            "visit": displays.get(str(visit), "Appointment"),
        },
        visit_type=str(visit) if visit else None,
    )


class Replies:
    """Routes an inbound text: an answer outreach understands, or the agent's."""

    def __init__(
        self,
        *,
        outreach: Outreach,
        db: Database,
        store: Store,
        clinic: ClinicConfig,
        conversations: Conversations,
        waitlist: OfferAnswers | None = None,
    ) -> None:
        self.outreach, self.db, self.store, self.clinic = outreach, db, store, clinic
        self.conversations, self.waitlist = conversations, waitlist

    def handle(
        self, number: str, body: str, *, message_sid: str = "", opt_out_type: str = ""
    ) -> Handled:
        """Act on the text ``body`` from ``number`` (``message_sid``: the provider's id of the
        inbound message, which keys the one answer; ``opt_out_type``: Twilio's
        ``OptOutType``, when Twilio answered a keyword itself)."""
        number = self.outreach.normalize(number)
        sid = message_sid or str(uuid.uuid4())
        handled_by_twilio = _opt_out_type(opt_out_type)
        word = handled_by_twilio or classify(body)
        if word == "stop":
            return self._stop(number, sid, quiet=handled_by_twilio is not None)
        if word == "start":
            return self._start(number, sid, quiet=handled_by_twilio is not None)
        if word == "help":
            return self._help(number, sid, quiet=handled_by_twilio is not None)
        message = self.outreach.last_sent_to(number)
        if message is not None and message.answer != "other" and word in ("yes", "cancel"):
            if message.kind == "offer" and self.waitlist is not None:
                return self._offer(number, body, sid, message, word == "yes")
            if message.kind == "reminder" and message.appointment_id:
                return self._reminder(number, body, sid, message, word == "yes")
        if message is not None and message.answer is None:
            # the patient went on to talk with the agent: a later "yes" is the agent's
            # (confirming a time it read back), not an answer to this message
            with self.db.write() as conn:
                self._first_answer(conn, message.id, "other")
        self.conversations.hand_to_agent(number, body)
        log.info("outreach.reply_to_agent", word=word)
        return Handled("agent")

    # -- STOP, START, HELP ----------------------------------------------------------------------

    def _stop(self, number: str, sid: str, *, quiet: bool) -> Handled:
        text = (
            f"{self.clinic.name}: you're unsubscribed and will get no more automated texts "
            "from us. Reply START to subscribe again."
        )
        with self.db.write() as conn:
            # claimed before the opt-out, in its transaction: the confirmation is the last text
            claimed = None
            if not quiet:
                claimed = self.outreach.claim(
                    conn,
                    kind="notice",
                    dedupe=f"reply:{sid}",
                    to=number,
                    body=text,
                    appointment_id=None,
                )
            self.outreach.set_opt_out(number, True, conn)
            self.outreach.audit_in(conn, "outreach-received:stop")
        sent = None
        if claimed is not None and claimed[1] == "sending":
            self.outreach.deliver(
                claimed[0],
                kind="notice",
                to=number,
                body=text,
                appointment_id=None,
                patient_id=None,
            )
            sent = text
        log.info("outreach.opted_out", twilio=quiet)
        return Handled("opted_out", sent)

    def _start(self, number: str, sid: str, *, quiet: bool) -> Handled:
        with self.db.write() as conn:
            self.outreach.set_opt_out(number, False, conn)
            self.outreach.audit_in(conn, "outreach-received:start")
        text = None
        if not quiet:
            text = (
                f"{self.clinic.name}: you're subscribed again to appointment texts. "
                "Reply STOP to opt out, HELP for help."
            )
            self._send(number, text, sid)
        log.info("outreach.opted_in", twilio=quiet)
        return Handled("opted_in", text)

    def _help(self, number: str, sid: str, *, quiet: bool) -> Handled:
        with self.db.write() as conn:
            self.outreach.audit_in(conn, "outreach-received:help")
        if quiet:
            return Handled("help")
        phone = _phone(self.clinic)
        text = (
            f"{self.clinic.name}: appointment reminders and booking by text."
            + (f" For help call {phone}." if phone else "")
            + " Reply STOP to opt out."
        )
        self._send(number, text, sid)
        return Handled("help", text)

    # -- answers to a reminder or an offer ------------------------------------------------------

    def _first_answer(self, conn: Connection, mid: str, answer: str) -> str | None:
        """Record ``answer`` unless the message was answered before: None, or the earlier
        answer. The row is locked until commit, so of two answers at once one is second."""
        prior = conn.execute(select(T.c.answer).where(T.c.id == mid).with_for_update()).scalar()
        if prior is None:
            self.outreach.mark_answer(conn, mid, answer)
        return str(prior) if prior is not None else None

    def _received(
        self,
        conn: Connection,
        word: str,
        body: str,
        message: Message,
        patient_id: str | None,
    ) -> None:
        """The reply as a FHIR Communication answering the message's, and its AuditEvent."""
        comm = self.outreach.record_communication(
            conn,
            kind="reply",
            body=body,
            appointment_id=message.appointment_id,
            patient_id=patient_id,
            received=True,
            in_response_to=message.communication_id,
        )
        self.outreach.audit_in(
            conn,
            f"outreach-received:{word}",
            appointment_id=message.appointment_id,
            patient_id=patient_id,
            refs=[f"Communication/{comm}"],
        )

    def _reminder(self, number: str, body: str, sid: str, message: Message, yes: bool) -> Handled:
        assert message.appointment_id is not None
        aid = message.appointment_id
        now = self.outreach.clock()
        with self.db.write() as conn:
            appt = booking.existing(conn, self.store, aid)
            patient_id = booking.participant_id(appt, "Patient")
            self._received(conn, "yes" if yes else "cancel", body, message, patient_id)
            prior = self._first_answer(conn, message.id, "yes" if yes else "cancel")
            if prior is not None:
                kind = "answered"
            elif appt.get("status") != "booked":
                kind = "not_booked"
            elif yes:
                self._accept(conn, appt, now)
                kind = "confirmed"
            else:
                try:
                    booking.check_notice(self.clinic, appt, now, "cancelling")
                except BusinessRule:
                    self.outreach.mark_answer(conn, message.id, "late")
                    kind = "too_late"
                else:
                    booking.cancel(
                        conn,
                        store=self.store,
                        config=self.clinic,
                        appointment_id=aid,
                        now=now,
                        reason=CANCELLED_BY_REMINDER,
                    )
                    kind = "cancelled"
            if kind in ("confirmed", "cancelled"):
                what = "confirm" if kind == "confirmed" else "cancel"
                self.outreach.audit_in(
                    conn, f"outreach-acted:{what}", appointment_id=aid, patient_id=patient_id
                )
        text = self._reminder_text(kind, appt, yes, prior)
        self._send(number, text, sid, appointment_id=aid, patient_id=patient_id)
        if kind == "too_late":
            self.conversations.escalate(
                number, reason="late_cancellation", summary=self._late_summary(aid, appt)
            )
        log.info("outreach.reply", kind=kind, appointment=aid, message_id=message.id)
        return Handled(kind, text, aid, message.id)

    def _accept(self, conn: Connection, appt: dict[str, Any], now: datetime) -> None:
        """The patient's participation ``accepted``, through ``$book``'s modify (which accepts
        every participant, as a booking does); an Appointment ``$book`` cannot read (an EMR's,
        with no visit type) gets the patient's status alone."""
        body = {**appt, "participant": [{**p, "status": "accepted"} for p in appt["participant"]]}
        try:
            booking.modify(conn, store=self.store, config=self.clinic, appointment=body, now=now)
        except BadRequest:
            patient = booking.participant_id(appt, "Patient")
            body["participant"] = [
                {**p, "status": "accepted"}
                if (p.get("actor") or {}).get("reference") == f"Patient/{patient}"
                else p
                for p in appt["participant"]
            ]
            body.pop("meta", None)
            service.update(
                conn,
                store=self.store,
                resource_type="Appointment",
                resource_id=str(appt["id"]),
                resource=body,
            )

    def _reminder_text(self, kind: str, appt: dict[str, Any], yes: bool, prior: str | None) -> str:
        when = shown_when(self.clinic, appt)
        phone = _phone(self.clinic, appt)
        call = f" please call us at {phone}" if phone else " please call the clinic"
        if kind == "confirmed":
            return f"Thank you, you're confirmed for {when}."
        if kind == "cancelled":
            return (
                f"Your appointment on {when} is cancelled. If you'd like another time, reply "
                "here and we'll find one."
            )
        if kind == "too_late":
            hours = self.clinic.rules.cancellation_notice_hours
            return (
                f"Sorry, it's too late to cancel {when} by text: we need {hours} hours' "
                f"notice. If you can't come,{call}. We've let our staff know."
            )
        if kind == "not_booked":
            return f"Your appointment on {when} is no longer booked. Reply here to book a time."
        if prior == "yes":
            if yes:
                return f"You're already confirmed for {when}. See you then!"
            return (
                f"You confirmed {when} earlier. To cancel now, reply 'please cancel my "
                "appointment' and our assistant will help."
            )
        if prior == "late":
            return f"We've passed your message to our staff; if it's urgent,{call}."
        return f"Your appointment on {when} is already cancelled."

    def _late_summary(self, aid: str, appt: dict[str, Any]) -> str:
        at = parse_fhir_date(str(appt["start"])).low.astimezone(self.clinic.tz)
        hours = self.clinic.rules.cancellation_notice_hours
        return (
            f"Asked by text to cancel Appointment/{aid} ({at:%Y-%m-%d %H:%M}) inside the "
            f"{hours}-hour notice; not cancelled. Please call the patient."
        )

    def _offer(self, number: str, body: str, sid: str, message: Message, yes: bool) -> Handled:
        assert self.waitlist is not None
        patient_id = None
        with self.db.write() as conn:
            if message.appointment_id:
                held = self.store.read(conn, "Appointment", message.appointment_id)
                if held is not None and not held.deleted:
                    patient_id = booking.participant_id(held.resource(), "Patient")
            self._received(conn, "yes" if yes else "no", body, message, patient_id)
            self._first_answer(conn, message.id, "yes" if yes else "no")
        text = self.waitlist.answer(message, yes)  # it tells a repeated or late answer itself
        self._send(number, text, sid, appointment_id=message.appointment_id, patient_id=patient_id)
        log.info("outreach.reply", kind="offer", message_id=message.id)
        return Handled("offer", text, message.appointment_id, message.id)

    def _send(
        self,
        number: str,
        text: str,
        sid: str,
        *,
        appointment_id: str | None = None,
        patient_id: str | None = None,
    ) -> None:
        self.outreach.send_once(
            kind="notice",
            dedupe=f"reply:{sid}",
            to=number,
            body=text,
            appointment_id=appointment_id,
            patient_id=patient_id,
        )
