"""One automated text to a patient, sent at most once, recorded and audited.

:meth:`Outreach.send_once` works in three steps:

1. **Claim** (a transaction of its own): a row in ``outreach_message`` with state ``sending``
   under a unique ``dedupe`` key (``reminder:<appointment>:<start>:<offset>``,
   ``offer:<offer>:<entry>``…). A second worker, or the same job after a restart, finds the key
   taken and sends nothing. A number that texted STOP is claimed as ``skipped`` and not sent.
2. **Send** through the provider (Twilio, or the local outbox), outside any transaction.
3. **Record** (one transaction): the row becomes ``sent`` with the provider's message id, a
   FHIR ``Communication`` about the Appointment is created, and the AuditEvent is appended;
   all three commit together or not at all.

A crash between 2 and 3 leaves the row ``sending``: :meth:`Outreach.settle` later marks it
``unknown`` (the patient may or may not have it) instead of sending again, and
``fhir-sched outbox`` lists it. A provider that refuses the text (a bad number) leaves
``failed``, recorded and audited, not retried: Twilio may have queued a text whose answer was
lost, and a resend would reach the patient twice.

Numbers and bodies are sealed in the row; the number is also kept as a keyed digest (the
agent's blind-index purpose, so both find a number the same way), which is how a reply is
matched to the newest message sent to it (:meth:`Outreach.last_sent_to`). Logs name ids and
states, never a number or a text.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, cast

from sqlalchemy import Connection, Table, and_, insert, select, update
from sqlalchemy.exc import IntegrityError

from base.logging import get_logger
from base.phones import normalize_phone
from resources import service
from resources.sql.engine import Database
from resources.sql.tables import OutreachMessage, OutreachOptOut
from resources.store import Store
from security.balp import Actor
from security.crypto import KeyRing, Sealed
from security.trail import Trail

__all__ = ["ADDRESS", "Message", "Outreach", "Sender", "Sent", "number_opted_out", "phone_of"]

log = get_logger("outreach.sending")

ADDRESS = "agent.address"  # the blind-index purpose for phone numbers (as agent/store.py)
CATEGORY = "urn:fhir-sched:communication-category"  # reminder | offer | notice | reply
MEDIUM = "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode"
PROVIDER_ID = "urn:fhir-sched:sms-provider-id"  # Communication.identifier: the provider's id
T = cast(Table, OutreachMessage.__table__)
OPT = cast(Table, OutreachOptOut.__table__)


class Sender(Protocol):
    """What texts go through: ``agent.sms.TwilioSms`` or ``agent.sms.OutboxSms``."""

    name: str

    def send(self, to: str, body: str) -> str:
        """Send ``body`` to ``to`` and return the provider's message id, or raise."""
        ...


@dataclass(frozen=True, slots=True)
class Sent:
    """What :meth:`Outreach.send_once` did: ``sent``, ``skipped`` (opted out), ``failed`` (the
    provider refused) or ``duplicate`` (the key was claimed before: nothing done)."""

    message_id: str | None
    state: str
    provider_id: str | None = None
    communication_id: str | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """A row of ``outreach_message``, opened."""

    id: str
    kind: str
    dedupe: str
    appointment_id: str | None
    state: str
    provider_id: str | None
    communication_id: str | None
    created: datetime
    sent: datetime | None
    answer: str | None
    to: str
    body: str
    opt_out_type: str = ""  # an inbound text: the provider's OptOutType, if it sent one


def number_opted_out(
    conn: Connection, keys: KeyRing, number: str, region: str | None = None
) -> bool:
    """Whether ``number`` texted STOP (and not START since): for senders outside outreach, such
    as the booking agent's SMS, which must not text it either. ``region`` as for
    :class:`Outreach`, so a number as filed and as the provider writes it are one."""
    digest = keys.blind(ADDRESS, normalize_phone(number, region))
    return bool(conn.execute(select(OPT.c.opted_out).where(OPT.c.to_digest == digest)).scalar())


def _aad(mid: str) -> bytes:
    return f"outreach_message|{mid}".encode()


def phone_of(patient: dict[str, Any], region: str | None = None) -> str | None:
    """The number texts to a Patient go to, as numbers are compared (:func:`normalize_phone`
    with the clinic's ``region``): an ``sms`` one first, then a mobile phone, then any phone;
    never one marked ``old``; None when none reads as a number."""
    phones = [
        t
        for t in patient.get("telecom") or []
        if isinstance(t, dict)
        and t.get("system") in ("sms", "phone")
        and isinstance(t.get("value"), str)
        and t["value"].strip()
        and t.get("use") != "old"
    ]
    phones.sort(key=lambda t: (t.get("system") != "sms", t.get("use") != "mobile"))
    for t in phones:
        try:
            return normalize_phone(t["value"], region)
        except ValueError:
            continue
    return None


class Outreach:
    """Automated texts: sending once, opt-outs, and the messages a reply may answer.

    ``region`` is the clinic file's ``phone_region``: a number filed nationally is texted,
    and matched to the replies from it, in E.164."""

    def __init__(
        self,
        *,
        db: Database,
        store: Store,
        keys: KeyRing,
        sender: Sender,
        server: str,
        clock: Callable[[], datetime] | None = None,
        audit: bool = True,
        region: str | None = None,
    ) -> None:
        self.db, self.store, self.keys, self.sender = db, store, keys, sender
        self.region = region
        self.server, self.audit = server, audit
        self.clock = clock or (lambda: datetime.now(UTC))
        self.actor = Actor(client_id="outreach")

    # -- numbers ------------------------------------------------------------------------------

    def normalize(self, number: str) -> str:
        """``number`` as texts go to it and replies come from it (E.164 where the region
        reads it)."""
        return normalize_phone(number, self.region)

    def phone_of(self, patient: dict[str, Any]) -> str | None:
        return phone_of(patient, self.region)

    def digest(self, number: str) -> bytes:
        return self.keys.blind(ADDRESS, self.normalize(number))

    def opted_out(self, number: str, conn: Connection | None = None) -> bool:
        if conn is None:
            with self.db.read() as c:
                return self.opted_out(number, c)
        return number_opted_out(conn, self.keys, number, self.region)

    def set_opt_out(self, number: str, out: bool, conn: Connection | None = None) -> None:
        """STOP (``out``) or START for ``number``."""
        if conn is None:
            with self.db.write() as c:
                return self.set_opt_out(number, out, c)
        digest = self.digest(number)
        now = self.clock()
        done = conn.execute(
            update(OPT).where(OPT.c.to_digest == digest).values(opted_out=out, changed=now)
        )
        if done.rowcount == 0:
            conn.execute(insert(OPT).values(to_digest=digest, opted_out=out, changed=now))
        return None

    # -- sending ------------------------------------------------------------------------------

    def _sealed(self, mid: str, to: str, body: str, **extra: str) -> dict[str, Any]:
        doc = json.dumps({"to": to, "body": body, **extra}, separators=(",", ":")).encode()
        s = self.keys.seal(doc, aad=_aad(mid))
        return {
            "kek_id": s.kek_id,
            "wrapped_key": s.wrapped_key,
            "nonce": s.nonce,
            "ciphertext": s.ciphertext,
        }

    def claim(
        self,
        conn: Connection,
        *,
        kind: str,
        dedupe: str,
        to: str,
        body: str,
        appointment_id: str | None,
    ) -> tuple[str, str] | None:
        """Claim ``dedupe`` in ``conn``'s transaction: (message id, ``sending`` or ``skipped``),
        or None if it was claimed before. On PostgreSQL a concurrent claim of the same key waits
        for this transaction and then finds it taken."""
        number = self.normalize(to)
        mid = str(uuid.uuid4())
        state = "skipped" if self.opted_out(number, conn) else "sending"
        try:
            with conn.begin_nested():
                conn.execute(
                    insert(T).values(
                        id=mid,
                        kind=kind,
                        dedupe=dedupe,
                        appointment_id=appointment_id,
                        to_digest=self.digest(number),
                        state=state,
                        provider=self.sender.name,
                        created=self.clock(),
                        **self._sealed(mid, number, body),
                    )
                )
        except IntegrityError:
            return None
        return mid, state

    def send_once(
        self,
        *,
        kind: str,
        dedupe: str,
        to: str,
        body: str,
        appointment_id: str | None,
        patient_id: str | None,
    ) -> Sent:
        """Send ``body`` to ``to`` unless ``dedupe`` was claimed before (see the module)."""
        with self.db.write() as conn:
            claimed = self.claim(
                conn, kind=kind, dedupe=dedupe, to=to, body=body, appointment_id=appointment_id
            )
        if claimed is None:
            return Sent(None, "duplicate")
        mid, state = claimed
        if state == "skipped":
            log.info("outreach.skipped", message_id=mid, kind=kind, reason="opted_out")
            return Sent(mid, "skipped")
        return self.deliver(
            mid, kind=kind, to=to, body=body, appointment_id=appointment_id, patient_id=patient_id
        )

    def deliver(
        self,
        mid: str,
        *,
        kind: str,
        to: str,
        body: str,
        appointment_id: str | None,
        patient_id: str | None,
    ) -> Sent:
        """Steps 2 and 3 for a claimed message."""
        try:
            provider_id = self.sender.send(self.normalize(to), body)
        except Exception as exc:  # noqa: BLE001 - any refusal is final and recorded
            log.warning("outreach.send_failed", message_id=mid, error_type=type(exc).__name__)
            with self.db.write() as conn:
                conn.execute(update(T).where(T.c.id == mid).values(state="failed"))
                self._audit(
                    conn,
                    f"outreach-failed:{kind}",
                    appointment_id,
                    patient_id,
                    [],
                    outcome="serious",
                    description=f"the SMS provider refused it ({type(exc).__name__})",
                )
            return Sent(mid, "failed")
        now = self.clock()
        with self.db.write() as conn:
            comm = self.record_communication(
                conn,
                kind=kind,
                body=body,
                appointment_id=appointment_id,
                patient_id=patient_id,
                provider_id=provider_id,
                when=now,
            )
            conn.execute(
                update(T)
                .where(T.c.id == mid)
                .values(
                    state="sent", provider_id=provider_id[:200], communication_id=comm, sent=now
                )
            )
            self._audit(
                conn, f"outreach-sent:{kind}", appointment_id, patient_id, [f"Communication/{comm}"]
            )
        log.info("outreach.sent", message_id=mid, kind=kind, communication=comm)
        return Sent(mid, "sent", provider_id, comm)

    def record_communication(
        self,
        conn: Connection,
        *,
        kind: str,
        body: str,
        appointment_id: str | None,
        patient_id: str | None,
        provider_id: str | None = None,
        when: datetime | None = None,
        received: bool = False,
        in_response_to: str | None = None,
    ) -> str:
        """A FHIR ``Communication`` for a text sent (or, ``received``, a patient's reply)."""
        at = (when or self.clock()).isoformat()
        patient = {"reference": f"Patient/{patient_id}"} if patient_id else None
        resource: dict[str, Any] = {
            "resourceType": "Communication",
            "status": "completed",
            "category": [{"coding": [{"system": CATEGORY, "code": kind}]}],
            "medium": [{"coding": [{"system": MEDIUM, "code": "SMSWRIT", "display": "SMS"}]}],
            "payload": [{"contentString": body}],
        }
        if provider_id:
            resource["identifier"] = [{"system": PROVIDER_ID, "value": provider_id[:200]}]
        if patient:
            resource["subject"] = patient
            resource["sender" if received else "recipient"] = patient if received else [patient]
        if appointment_id:
            resource["about"] = [{"reference": f"Appointment/{appointment_id}"}]
        if in_response_to:
            resource["inResponseTo"] = [{"reference": f"Communication/{in_response_to}"}]
        resource["received" if received else "sent"] = at
        outcome = service.create(
            conn, store=self.store, resource_type="Communication", resource=resource
        )
        assert outcome.stored is not None
        return outcome.stored.res_id

    def _audit(
        self,
        conn: Connection,
        kind: str,
        appointment_id: str | None,
        patient_id: str | None,
        refs: list[str],
        *,
        outcome: str = "success",
        description: str | None = None,
    ) -> None:
        if not self.audit:
            return
        trail = Trail(self.actor, self.server)
        trail.note(
            kind,
            refs=[*refs, *([f"Appointment/{appointment_id}"] if appointment_id else [])],
            patients={patient_id} if patient_id else set(),
            outcome=outcome,
            description=description,
        )
        trail.commit_in(conn, self.keys)

    def audit_in(
        self,
        conn: Connection,
        kind: str,
        *,
        appointment_id: str | None = None,
        patient_id: str | None = None,
        refs: list[str] | None = None,
        outcome: str = "success",
        description: str | None = None,
    ) -> None:
        """An AuditEvent of the outreach actor, committed with ``conn``'s transaction."""
        self._audit(
            conn,
            kind,
            appointment_id,
            patient_id,
            refs or [],
            outcome=outcome,
            description=description,
        )

    def settle(self, *, after: timedelta = timedelta(minutes=10)) -> int:
        """Mark messages left ``sending`` for longer than ``after`` (a crash between sending and
        recording) as ``unknown``: never sent again. Returns how many."""
        with self.db.write() as conn:
            done = conn.execute(
                update(T)
                .where(and_(T.c.state == "sending", T.c.created < self.clock() - after))
                .values(state="unknown")
            )
        if done.rowcount:
            log.warning("outreach.unknown", count=done.rowcount)
        return int(done.rowcount or 0)

    # -- the inbox ----------------------------------------------------------------------------

    def receive(
        self, number: str, body: str, *, sid: str = "", opt_out_type: str = ""
    ) -> str | None:
        """Keep an inbound text (kind ``inbound``, state ``received``) before anything answers
        it, so a process that stops before handling it handles it at its next start
        (:meth:`waiting_inbound`). Keyed by the provider's message id and the text: a webhook
        the provider retries is kept once (None for the retry)."""
        mid = str(uuid.uuid4())
        number = self.normalize(number)
        try:
            with self.db.write() as conn:
                conn.execute(
                    insert(T).values(
                        id=mid,
                        kind="inbound",
                        dedupe=f"inbound:{self._inbound_key(sid or mid, number, body)}",
                        appointment_id=None,
                        to_digest=self.digest(number),
                        state="received",
                        provider=self.sender.name,
                        provider_id=sid[:200] or None,
                        created=self.clock(),
                        **self._sealed(mid, number, body, opt_out_type=opt_out_type),
                    )
                )
        except IntegrityError:
            return None
        return mid

    def _inbound_key(self, sid: str, number: str, body: str) -> str:
        """The provider's message id with a keyed digest of the sender and text: a webhook
        retried is the same message and is kept once, but a different text that comes with an
        id seen before (a sender that reuses ids) is kept too, never dropped as a retry."""
        content = self.keys.blind("outreach.inbound", f"{number}|{body}").hex()
        return f"{sid[:120]}:{content}"

    def handled(self, mid: str) -> None:
        """An inbound text was answered (by outreach or handed to the agent)."""
        with self.db.write() as conn:
            conn.execute(
                update(T).where(T.c.id == mid, T.c.state == "received").values(state="handled")
            )

    def waiting_inbound(self, *, within: timedelta = timedelta(hours=24)) -> list[Message]:
        """Inbound texts kept but never handled (a stop between the two), oldest first."""
        with self.db.read() as conn:
            rows = conn.execute(
                select(T)
                .where(
                    T.c.kind == "inbound",
                    T.c.state == "received",
                    T.c.created >= self.clock() - within,
                )
                .order_by(T.c.created, T.c.id)
            ).all()
        return [self._open(r) for r in rows]

    # -- reading ------------------------------------------------------------------------------

    def _open(self, row: Any) -> Message:
        sealed = Sealed(row.kek_id, row.wrapped_key, row.nonce, row.ciphertext)
        doc = json.loads(self.keys.open(sealed, aad=_aad(row.id)))
        return Message(
            row.id,
            row.kind,
            row.dedupe,
            row.appointment_id,
            row.state,
            row.provider_id,
            row.communication_id,
            row.created,
            row.sent,
            row.answer,
            doc["to"],
            doc["body"],
            doc.get("opt_out_type", ""),
        )

    def last_sent_to(
        self,
        number: str,
        *,
        kinds: tuple[str, ...] = ("reminder", "offer"),
        within: timedelta = timedelta(days=14),
        conn: Connection | None = None,
    ) -> Message | None:
        """The newest message of ``kinds`` sent to ``number`` within ``within``: what a reply
        from that number answers."""
        if conn is None:
            with self.db.read() as c:
                return self.last_sent_to(number, kinds=kinds, within=within, conn=c)
        row = conn.execute(
            select(T)
            .where(
                T.c.to_digest == self.digest(number),
                T.c.state == "sent",
                T.c.kind.in_(kinds),
                T.c.sent >= self.clock() - within,
            )
            .order_by(T.c.sent.desc(), T.c.id.desc())
            .limit(1)
        ).first()
        return self._open(row) if row is not None else None

    def get(self, mid: str, conn: Connection | None = None) -> Message | None:
        if conn is None:
            with self.db.read() as c:
                return self.get(mid, c)
        row = conn.execute(select(T).where(T.c.id == mid)).first()
        return self._open(row) if row is not None else None

    def mark_answer(self, conn: Connection, mid: str, answer: str) -> None:
        conn.execute(update(T).where(T.c.id == mid).values(answer=answer, answered=self.clock()))

    def messages(
        self, *, to: str | None = None, kinds: tuple[str, ...] | None = None
    ) -> list[Message]:
        """Every message sent or claimed (not the inbox), oldest first (``fhir-sched outbox``),
        optionally to one number."""
        query = select(T).where(T.c.kind != "inbound").order_by(T.c.created, T.c.id)
        if to is not None:
            query = query.where(T.c.to_digest == self.digest(to))
        if kinds:
            query = query.where(T.c.kind.in_(kinds))
        with self.db.read() as conn:
            return [self._open(r) for r in conn.execute(query).all()]
