"""Freed time offered to the waitlist: the first YES books it.

1. **Freed.** :func:`waitlist_watcher` runs inside every transaction that writes an
   Appointment (``Store.watch``): one that goes from ``booked`` to ``cancelled`` with a start
   still to come, whatever cancelled it (``$book``, a PUT or PATCH, the agent, an HL7 S15,
   staff), queues a ``waitlist_freed`` row that commits with the cancellation. It also refuses
   a waitlist entry that could never be offered anything (:func:`scheduling.waitlist.check_entry`).
2. **Offered.** :meth:`Waitlist.run` (a job) takes each queued time and finds the entries that
   fit it by ``$find``'s own rules: the visit type offered by that clinician there, the visit
   inside the freed time from its start, that start inside one of the entry's
   ``requestedPeriod``\\ s, the clinician asked for (if any), and every clinic rule for that
   patient (``find_options`` over that one start, so new/existing-patient windows, caps,
   buffers and minimum notice all apply, and time taken since is not offered). The oldest
   requests come first; ``waitlist.offer_batch`` of them (one visit type per offer) are texted
   at once while ONE hold (a pending Appointment, :func:`scheduling.booking.hold`) keeps the
   time from ``$find`` and ``$book`` for ``waitlist.offer_minutes``. ``waitlist_offered`` is
   unique per (entry, time): nobody is offered the same time twice.
3. **Expired.** An offer nobody took is closed, its hold released and the next batch offered
   (a new hold), in one transaction, so the time is never held twice; when nobody fits any
   more, or the time is too close, the freed row is done.
4. **Answered.** :meth:`Waitlist.answer`: YES on an open offer turns the hold into a booking
   for that patient through ``$book``'s domain code (every rule checked again), closes the
   offer, ends the waitlist entry (``cancelled``, reason "booked from the waitlist") and
   audits, all in one transaction; the offer row is locked first, so of two YESes at once
   exactly one books. Later YESes are told, kindly, that the time is gone; NO keeps the
   patient on the list.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Table, insert, select, update

from base.errors import FHIRError
from base.logging import get_logger
from outreach.sending import Message, Outreach
from outreach.sending import T as MESSAGES
from resources import service
from resources.fhirdate import as_utc, parse_fhir_date
from resources.service import Paging
from resources.sql.engine import Database
from resources.sql.tables import WaitlistFreed, WaitlistOffer, WaitlistOffered
from resources.store import Store, StoredVersion, Watcher
from scheduling import booking
from scheduling.config import ClinicConfig, VisitType
from scheduling.find import Option, find_options, proposed_appointment
from scheduling.plan import FindRequest
from scheduling.waitlist import BOOKED_REASON, Entry, check_entry

__all__ = ["Report", "Waitlist", "waitlist_watcher"]

log = get_logger("outreach.waitlist")

F = cast(Table, WaitlistFreed.__table__)
O = cast(Table, WaitlistOffer.__table__)  # noqa: E741 - the offers table, as T is messages
OD = cast(Table, WaitlistOffered.__table__)

GONE = (
    "Sorry, that time has just been taken; you're still on the waitlist and we'll text you "
    "if another time frees up."
)
KEPT = "OK, you're still on the waitlist; we'll text you if another time frees up."
CLOSED = "That offer is no longer open. Call the clinic if you need help."


def _future_start(appt: dict[str, Any]) -> datetime | None:
    try:
        return as_utc(parse_fhir_date(str(appt["start"])).low) if appt.get("start") else None
    except ValueError:
        return None


def waitlist_watcher(
    store: Store,
    config: ClinicConfig | None,
    *,
    queue: bool,
    clock: Callable[[], datetime] | None = None,
) -> Watcher:
    """The ``Store.watch("Appointment", ...)`` hook: checks waitlist entries as they are
    written, and (``queue``) queues the time a booked Appointment held when it is cancelled."""
    now = clock or (lambda: datetime.now(UTC))

    def on_change(conn: Connection, stored: StoredVersion) -> None:
        if stored.deleted:
            return
        appt = stored.resource()
        status = appt.get("status")
        if status == "waitlist":
            check_entry(config, appt, rid=stored.res_id)
            return
        if not queue or status != "cancelled" or stored.version < 2:
            return
        start = _future_start(appt)
        at = now()
        if start is None or start <= at:
            return
        before = store.vread(conn, "Appointment", stored.res_id, stored.version - 1)
        if before is None or before.deleted or before.resource().get("status") != "booked":
            return
        conn.execute(
            insert(F).values(id=str(uuid.uuid4()), appointment_id=stored.res_id, created=at)
        )
        log.info("waitlist.freed", appointment=stored.res_id)

    return on_change


@dataclass
class Report:
    """What one :meth:`Waitlist.run` did."""

    freed: int = 0  # queued times looked at
    offers: int = 0  # new offers (each with its hold)
    sent: int = 0  # offer texts sent
    expired: int = 0  # offers closed unanswered
    done: int = 0  # queued times finished (nobody left who fits, or too late)


@dataclass(frozen=True, slots=True)
class _Freed:
    practitioner: str
    location: str
    start: datetime
    end: datetime

    @property
    def key(self) -> str:
        return f"{self.practitioner}|{self.location}|{self.start.astimezone(UTC).isoformat()}"


@dataclass(frozen=True, slots=True)
class _Fit:
    entry: Entry
    visit: VisitType
    phone: str


class Waitlist:
    """The waitlist job (:meth:`run`) and the answers to its offers (:meth:`answer`)."""

    def __init__(
        self,
        outreach: Outreach,
        db: Database,
        store: Store,
        config: ClinicConfig,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.outreach, self.db, self.store, self.config = outreach, db, store, config
        self.clock = clock or (lambda: datetime.now(UTC))
        self.policy = config.waitlist

    # -- the job ------------------------------------------------------------------------------

    def run(self, now: datetime | None = None) -> Report:
        """One pass: every queued time moves on (offered, expired and offered again, or done),
        and every offer text not yet sent is sent."""
        now = now or self.clock()
        report = Report()
        with self.db.read() as conn:
            queued = conn.execute(
                select(F.c.id).where(F.c.done.is_(None)).order_by(F.c.created, F.c.id)
            ).all()
        waiting: list[tuple[datetime, Entry]] | None = None  # read once a pass, when needed
        for row in queued:
            report.freed += 1
            if waiting is None:
                with self.db.read() as conn:
                    waiting = self.entries(conn)
            try:
                offer_id = self._advance(row.id, now, report, waiting)
            except FHIRError as exc:  # a hold refused (taken meanwhile): tried next pass
                log.info("waitlist.advance_refused", freed=row.id, message_id=exc.message_id)
                continue
            if offer_id is not None:
                report.sent += self._send(offer_id)
        if queued:
            report.sent += self._send_unsent()
        return report

    def _advance(
        self, freed_id: str, now: datetime, report: Report, waiting: list[tuple[datetime, Entry]]
    ) -> str | None:
        """One queued time, in one transaction: close its offer if it expired (releasing the
        hold), then offer it to the next batch under a new hold. The new offer's id, if any."""
        with self.db.write() as conn:
            row = conn.execute(
                select(F).where(F.c.id == freed_id, F.c.done.is_(None)).with_for_update()
            ).first()
            if row is None:  # another worker finished it
                return None
            offer = conn.execute(
                select(O).where(O.c.freed_id == freed_id, O.c.state == "open")
            ).first()
            if offer is not None:
                if as_utc(offer.expires) > now:
                    return None  # still standing
                self._expire(conn, offer, now)
                report.expired += 1
            freed = self._freed(conn, row.appointment_id)
            fits = []
            if freed is not None and freed.start > now:
                fits = self._fits(conn, freed, waiting, now)
            if freed is None or not fits:
                conn.execute(update(F).where(F.c.id == freed_id).values(done=now))
                report.done += 1
                return None
            offer_id = self._offer(conn, freed_id, freed, fits, now)
            report.offers += 1
            return offer_id

    def _expire(self, conn: Connection, offer: Any, now: datetime) -> None:
        closed = conn.execute(
            update(O).where(O.c.id == offer.id, O.c.state == "open").values(state="expired")
        )
        if closed.rowcount and offer.hold_id:
            booking.cancel(
                conn,
                store=self.store,
                config=self.config,
                appointment_id=offer.hold_id,
                now=now,
                enforce_notice=False,
            )
            log.info("waitlist.offer_expired", offer=offer.id, hold=offer.hold_id)

    def _freed(self, conn: Connection, appointment_id: str) -> _Freed | None:
        stored = self.store.read(conn, "Appointment", appointment_id)
        if stored is None or stored.deleted:
            return None
        appt = stored.resource()
        practitioner = booking.participant_id(appt, "Practitioner")
        location = booking.participant_id(appt, "Location")
        start, end = _future_start(appt), None
        if appt.get("end"):
            end = as_utc(parse_fhir_date(str(appt["end"])).low)
        if not (practitioner and location and start and end):
            return None
        return _Freed(practitioner, location, start, end)

    def entries(self, conn: Connection) -> list[tuple[datetime, Entry]]:
        """Every waitlist entry with its request time, oldest first."""
        params = [("status", "waitlist"), ("_count", "500")]
        found: list[StoredVersion] = []
        while True:
            _, result = service.search(
                conn,
                store=self.store,
                resource_type="Appointment",
                params=params,
                paging=Paging(500, 500),
            )
            found += result.matches
            if not result.next_cursor:
                break
            params = [("status", "waitlist"), ("_count", "500"), ("_cursor", result.next_cursor)]
        out = []
        for stored in found:
            appt = stored.resource()
            try:
                entry = check_entry(self.config, appt, rid=stored.res_id)
            except FHIRError:
                continue  # written before the clinic changed: nothing can be offered
            out.append((self._asked(conn, stored, appt), entry))
        out.sort(key=lambda pair: (pair[0], pair[1].id))
        return out

    def _asked(self, conn: Connection, stored: StoredVersion, appt: dict[str, Any]) -> datetime:
        """When the request was made: ``created``, else when its first version was stored."""
        if appt.get("created"):
            try:
                return as_utc(parse_fhir_date(str(appt["created"])).low)
            except ValueError:
                pass
        first = stored
        if stored.version > 1:
            first = self.store.vread(conn, "Appointment", stored.res_id, 1) or stored
        return as_utc(first.last_updated)

    def _fits(
        self,
        conn: Connection,
        freed: _Freed,
        waiting: list[tuple[datetime, Entry]],
        now: datetime,
    ) -> list[_Fit]:
        """The first ``offer_batch`` entries, oldest first, that ``$find`` would offer the
        freed start to, all for one visit type, and not offered this time before (an entry
        read at the start of the pass: one ended since is turned away when it answers)."""
        offered = set(
            conn.execute(select(OD.c.waitlist_id).where(OD.c.slot_key == freed.key)).scalars()
        )
        fits: list[_Fit] = []
        for _, entry in waiting:
            if entry.id in offered or entry.patient is None:
                continue
            if entry.practitioner not in (None, freed.practitioner):
                continue
            if entry.location not in (None, freed.location):
                continue
            if fits and entry.visit_type != fits[0].visit.code:
                continue
            visit = self.config.visit_type(entry.visit_type)
            if visit is None or not self.config.offers(visit, freed.practitioner):
                continue
            end = freed.start + timedelta(minutes=visit.minutes)
            if end > freed.end or not entry.wants(freed.start):
                continue
            if self._option(conn, freed, visit, entry.patient, now) is None:
                continue
            patient = self.store.read(conn, "Patient", entry.patient)
            phone = (
                self.outreach.phone_of(patient.resource())
                if patient and not patient.deleted
                else None
            )
            if phone is None:
                continue
            fits.append(_Fit(entry, visit, phone))
            if len(fits) >= self.policy.offer_batch:
                break
        return fits

    def _option(
        self,
        conn: Connection,
        freed: _Freed,
        visit: VisitType,
        patient: str,
        now: datetime,
        *,
        ignore_hold: str | None = None,
    ) -> Option | None:
        """``$find``'s option at the freed start for this patient, or None."""
        request = FindRequest(
            start=freed.start,
            end=freed.start + timedelta(minutes=visit.minutes),
            visit_type=visit.code,
            practitioners=[freed.practitioner],
            locations=[freed.location],
            patient_id=patient,
            count=1,
        )
        found = find_options(
            conn,
            store=self.store,
            config=self.config,
            request=request,
            now=now,
            ignore_hold=ignore_hold,
            limit=1,
        )
        return next((o for o in found.options if o.start == freed.start), None)

    def _offer(
        self, conn: Connection, freed_id: str, freed: _Freed, fits: list[_Fit], now: datetime
    ) -> str:
        """A new offer to ``fits`` under one hold (held for the oldest of them)."""
        first = fits[0]
        option = self._option(conn, freed, first.visit, cast(str, first.entry.patient), now)
        assert option is not None  # just found so, in this transaction
        proposal = proposed_appointment(self.config, option, patient_id=first.entry.patient)
        proposal["description"] = "Held for a waitlist offer"
        seconds = self.policy.offer_minutes * 60
        held, expires = booking.hold(
            conn,
            store=self.store,
            config=self.config,
            appointment=proposal,
            now=now,
            seconds=seconds,
        )
        offer_id = str(uuid.uuid4())
        conn.execute(
            insert(O).values(
                id=offer_id,
                freed_id=freed_id,
                hold_id=held.res_id,
                practitioner=freed.practitioner,
                location=freed.location,
                visit_type=first.visit.code,
                start=option.start,
                end=option.end,
                state="open",
                expires=expires,
                created=now,
            )
        )
        conn.execute(
            insert(OD),
            [
                {"offer_id": offer_id, "waitlist_id": f.entry.id, "slot_key": freed.key}
                for f in fits
            ],
        )
        log.info("waitlist.offered", offer=offer_id, hold=held.res_id, count=len(fits))
        return offer_id

    # -- texts --------------------------------------------------------------------------------

    def shown(self, practitioner: str, location: str, start: datetime) -> str:
        """ "Dr. Smith, Tue Dec 8, 2:30 pm at Main St" in the clinic's time zone."""
        local = start.astimezone(self.config.tz)
        hour = local.hour % 12 or 12
        clock = f"{hour}:{local.minute:02d} {'am' if local.hour < 12 else 'pm'}"
        who = self.config.practitioner_names.get(practitioner, "the clinician")
        where = self.config.location_names.get(location, self.config.name)
        return f"{who}, {local:%a %b} {local.day}, {clock} at {where}"

    def _send(self, offer_id: str) -> int:
        """Send the offer's texts not sent yet (each once: the dedupe key is the offer's)."""
        with self.db.read() as conn:
            offer = conn.execute(select(O).where(O.c.id == offer_id)).first()
            rows = conn.execute(
                select(OD.c.waitlist_id).where(OD.c.offer_id == offer_id, OD.c.message_id.is_(None))
            ).all()
            if offer is None or offer.state != "open" or not rows:
                return 0
            targets = []
            for row in rows:
                entry = self.store.read(conn, "Appointment", row.waitlist_id)
                patient_id = (
                    booking.participant_id(entry.resource(), "Patient")
                    if entry and not entry.deleted
                    else None
                )
                patient = self.store.read(conn, "Patient", patient_id) if patient_id else None
                phone = (
                    self.outreach.phone_of(patient.resource())
                    if patient and not patient.deleted
                    else None
                )
                targets.append((row.waitlist_id, patient_id, phone))
        body = (
            f"Good news: an earlier time is free: "
            f"{self.shown(offer.practitioner, offer.location, as_utc(offer.start))}. "
            "Reply YES to take it (first to reply gets it)."
        )
        sent = 0
        for waitlist_id, patient_id, phone in targets:
            if phone is None:
                continue
            dedupe = f"offer:{offer_id}:{waitlist_id}"
            result = self.outreach.send_once(
                kind="offer",
                dedupe=dedupe,
                appointment_id=offer.hold_id,
                patient_id=patient_id,
                to=phone,
                body=body,
            )
            mid = result.message_id
            with self.db.write() as conn:
                if mid is None:  # claimed by an earlier pass that stopped before this step
                    mid = conn.execute(
                        select(MESSAGES.c.id).where(MESSAGES.c.dedupe == dedupe)
                    ).scalar()
                conn.execute(
                    update(OD)
                    .where(OD.c.offer_id == offer_id, OD.c.waitlist_id == waitlist_id)
                    .values(message_id=mid)
                )
            sent += result.state == "sent"
        return sent

    def _send_unsent(self) -> int:
        with self.db.read() as conn:
            offers = (
                conn.execute(
                    select(O.c.id)
                    .distinct()
                    .join(OD, OD.c.offer_id == O.c.id)
                    .where(O.c.state == "open", OD.c.message_id.is_(None))
                )
                .scalars()
                .all()
            )
        return sum(self._send(offer_id) for offer_id in offers)

    # -- answers ------------------------------------------------------------------------------

    def answer(self, message: Message, yes: bool) -> str:
        """A reply to the offer ``message`` (kind "offer"): yes takes the time if it is still
        held for this offer (books it through the $book domain code, in one transaction) and
        returns the confirmation text; yes after it was taken/expired returns a kind "it is
        gone, you stay on the waitlist" text; no returns an acknowledgement. Never raises for
        an ordinary late or repeated answer."""
        with self.db.read() as conn:
            row = conn.execute(
                select(OD.c.offer_id, OD.c.waitlist_id).where(OD.c.message_id == message.id)
            ).first()
        if row is None:
            return CLOSED
        if not yes:
            with self.db.write() as conn:
                self._answered(conn, row.offer_id, row.waitlist_id, message, "no")
            return KEPT
        now = self.clock()
        try:
            return self._take(row.offer_id, row.waitlist_id, message, now)
        except FHIRError as exc:  # every rule is checked again; one may refuse now
            log.info("waitlist.take_refused", offer=row.offer_id, message_id=exc.message_id)
            with self.db.write() as conn:
                self._answered(conn, row.offer_id, row.waitlist_id, message, "late")
            return GONE

    def _answered(
        self, conn: Connection, offer_id: str, waitlist_id: str, message: Message, answer: str
    ) -> None:
        conn.execute(
            update(OD)
            .where(OD.c.offer_id == offer_id, OD.c.waitlist_id == waitlist_id)
            .values(answer=answer)
        )
        self.outreach.mark_answer(conn, message.id, "yes" if answer in ("yes", "late") else "no")

    def _take(self, offer_id: str, waitlist_id: str, message: Message, now: datetime) -> str:
        with self.db.write() as conn:
            # the offer row locked (PostgreSQL): a second YES waits here, then finds it taken
            offer = conn.execute(select(O).where(O.c.id == offer_id).with_for_update()).first()
            assert offer is not None
            shown = self.shown(offer.practitioner, offer.location, as_utc(offer.start))
            if offer.state == "taken" and offer.taken_by == waitlist_id:
                return f"You're booked: {shown}. See you then."
            if offer.state != "open" or as_utc(offer.expires) <= now:
                self._answered(conn, offer_id, waitlist_id, message, "late")
                return GONE
            entry = self.store.read(conn, "Appointment", waitlist_id)
            body = entry.resource() if entry is not None and not entry.deleted else {}
            if body.get("status") != "waitlist":
                self._answered(conn, offer_id, waitlist_id, message, "late")
                return CLOSED
            stored = self._book(conn, offer, waitlist_id, body, now)
            conn.execute(
                update(O)
                .where(O.c.id == offer_id, O.c.state == "open")
                .values(state="taken", taken_by=waitlist_id)
            )
            conn.execute(update(F).where(F.c.id == offer.freed_id).values(done=now))
            ended = {**body, "status": "cancelled", "cancelationReason": BOOKED_REASON}
            ended.pop("meta", None)
            service.update(
                conn,
                store=self.store,
                resource_type="Appointment",
                resource_id=waitlist_id,
                resource=ended,
            )
            self._answered(conn, offer_id, waitlist_id, message, "yes")
            patient = booking.participant_id(body, "Patient")
            self.outreach.audit_in(
                conn,
                "outreach-acted:waitlist-book",
                appointment_id=stored.res_id,
                patient_id=patient,
                refs=[f"Appointment/{waitlist_id}"],
            )
        log.info("waitlist.booked", offer=offer_id, appointment=stored.res_id, entry=waitlist_id)
        return f"You're booked: {shown}. See you then."

    def _book(
        self, conn: Connection, offer: Any, waitlist_id: str, entry: dict[str, Any], now: datetime
    ) -> StoredVersion:
        """The held Appointment booked for the entry's patient, as ``$book`` books a held one:
        every rule checked again for that patient and visit."""
        visit = self.config.visit_type(str(offer.visit_type))
        assert visit is not None
        start = as_utc(offer.start)
        option = Option(
            offer.practitioner,
            offer.location,
            visit,
            start,
            start + timedelta(minutes=visit.minutes),
            (),
        )
        patient = booking.participant_id(entry, "Patient")
        appt = proposed_appointment(self.config, option, patient_id=patient)
        appt["id"] = offer.hold_id
        appt["slot"] = []
        appt["supportingInformation"] = [
            {"reference": f"Appointment/{waitlist_id}", "display": "Waitlist request"}
        ]
        return booking.book_new(
            conn, store=self.store, config=self.config, appointment=appt, reference=None, now=now
        )
