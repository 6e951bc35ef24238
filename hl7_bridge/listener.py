"""Inbound: frame → store the raw message → map → apply → ACK, one message at a time per sender.

* **Original mode** (MSH-15/16 empty): the message, the FHIR change, its AuditEvent and the ACK
  are written in one transaction and the ACK leaves only after it committed: ``AA`` means the
  change is in the database. If applying fails, that transaction rolls back and a second one
  keeps the message as ``failed`` with the ``AE`` sent (``fhir-sched hl7 replay`` applies it
  again once the cause is fixed). Unsupported type, event, processing id or version: ``AR``.
* **Enhanced mode** (MSH-15 or MSH-16 present): the raw message is committed first and a
  ``CA`` goes back as MSH-15 asks (AL always, ER only on error, SU only on success, NE
  never); the application ACK follows on the same connection as MSH-16 asks.
* A resend (same sender MSH-3/4 and MSH-10) changes nothing and gets the ACK sent the first
  time.
* Every message leaves an AuditEvent (DICOM 110107 Import, subtype the trigger event) naming
  the sender and its network address, the Appointment and the Patient.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import Connection

from fhir_server.errors import FHIRError
from fhir_server.scheduling.config import ClinicConfig
from hl7_bridge.ack import Header, NotHL7, build_ack, read_header, refusal
from hl7_bridge.inbound import Applied, apply_change
from hl7_bridge.messages import MessageStore
from hl7_bridge.outbound import ORIGIN
from hl7_bridge.parse import ParseError, parse
from hl7_bridge.siu_to_fhir import read_siu
from resources.sql.engine import Database
from resources.store import Store
from security.balp import Actor
from security.crypto import KeyRing
from security.trail import Trail

__all__ = ["BridgeConfig", "Listener", "Reply"]

log = structlog.get_logger("hl7_bridge.listener")

Reply = Callable[[bytes], Awaitable[None]]


@dataclass(frozen=True)
class BridgeConfig:
    """How this server reads its senders (from Settings; see README "HL7 v2 bridge")."""

    sender_tz: tzinfo = UTC
    status_map: dict[str, str] = field(default_factory=dict)
    identifier_systems: dict[str, str] = field(default_factory=dict)
    server: str = "fhir-sched"  # this server, as AuditEvents name it
    audit: bool = True


@dataclass(frozen=True, slots=True)
class _Result:
    code: str  # AA | AE | AR
    status: str  # message status
    applied: Applied | None = None
    error: tuple[str, str] | None = None  # (HL7 table 0357 code, words)


def _control_id() -> str:
    return uuid.uuid4().hex[:20]


def _sender(header: Header) -> str:
    app = header.component(3, 1).decode("latin-1")
    facility = header.component(4, 1).decode("latin-1")
    raw = f"{app}.{facility}" if facility else app
    return "".join(c if c.isalnum() or c in ".-" else "-" for c in raw).strip("-") or "unknown"


def _enhanced(raw: bytes) -> bool:
    try:
        header = read_header(raw)
    except NotHL7:
        return False
    return bool(header.field(15) or header.field(16))


def _wanted(code: str, policy: bytes) -> bool:
    """Whether an ACK of ``code`` is sent under MSH-15/16 ``policy`` (HL7 table 0155)."""
    rule = policy.decode("latin-1").strip().upper() or "AL"
    ok = code in ("AA", "CA")
    return rule == "AL" or (rule == "ER" and not ok) or (rule == "SU" and ok)


class Listener:
    """The MLLP handler: ``await listener.handle(message, peer, reply)``."""

    def __init__(
        self,
        db: Database,
        keys: KeyRing,
        store: Store,
        *,
        clinic: ClinicConfig | None = None,
        config: BridgeConfig | None = None,
    ) -> None:
        self.db = db
        self.keys = keys
        self.store = store
        self.clinic = clinic
        self.config = config or BridgeConfig(
            sender_tz=ZoneInfo(clinic.timezone) if clinic is not None else UTC
        )
        self.messages = MessageStore(keys)
        self.known_patients: dict[str, str] = {}  # PID identifier → Patient id

    async def handle(self, raw: bytes, peer: str, reply: Reply) -> None:
        for ack in await asyncio.to_thread(self.accept, raw, peer):
            await reply(ack)
        if _enhanced(raw) and (more := await asyncio.to_thread(self.process_pending, raw, peer)):
            await reply(more)

    # -- the two steps, each in its own thread hop ----------------------------------------------
    def accept(self, raw: bytes, peer: str) -> list[bytes]:
        """Everything up to the first answer: a resend's original ACK, an AR, a CA (enhanced
        mode), or (original mode) the whole processing and its ACK."""
        now = datetime.now(UTC)
        try:
            header = read_header(raw)
        except NotHL7 as exc:
            return [self._unreadable(raw, peer, str(exc), now)]
        sender, control = _sender(header), header.field(10).decode("latin-1")
        event = header.field(9).decode("latin-1").replace(header.field(2)[:1].decode(), "^")
        enhanced = bool(header.field(15) or header.field(16))
        prior = None
        if enhanced:
            with self.db.read() as conn:
                prior = self.messages.find(conn, "in", sender, control)
            if prior is not None and prior.status != "received":
                return self._first_answer(prior)
        why = refusal(header)
        if why is not None:
            result = _Result("AR", "rejected", error=why)
            return [self._keep(raw, peer, header, sender, control, event, result, now)]
        if not enhanced:
            return [self._process(raw, peer, header, sender, control, event, now)]
        if prior is None:
            with self.db.write() as conn:
                self.messages.add(
                    conn,
                    direction="in",
                    peer=sender,
                    control_id=control,
                    event=event,
                    message=raw,
                    status="received",
                    now=now,
                    address=peer,
                )
        ca = build_ack(header, "CA", control_id=_control_id(), now=now)
        return [ca] if _wanted("CA", header.field(15)) else []

    def _first_answer(self, prior: Any) -> list[bytes]:
        """A resend: nothing changes, the sender gets the ACK it was sent the first time."""
        ack = self.messages.open(prior).ack
        log.info("hl7.resend", sender=prior.peer, control_id=prior.control_id, status=prior.status)
        return [ack] if ack else []

    def _prior(
        self, conn: Connection, sender: str, control: str, replay: bool
    ) -> tuple[Any, bytes | None]:
        """The stored row for this message, if any; a resend's first ACK if it is one."""
        prior = self.messages.find(conn, "in", sender, control)
        if prior is not None and prior.status != "received" and not replay:
            return prior, (self._first_answer(prior) or [b""])[0]
        return prior, None

    def process_pending(self, raw: bytes, peer: str) -> bytes | None:
        """Enhanced mode's second step: apply a message that was stored as ``received``."""
        try:
            header = read_header(raw)
        except NotHL7:
            return None
        if not (header.field(15) or header.field(16)) or refusal(header) is not None:
            return None
        sender, control = _sender(header), header.field(10).decode("latin-1")
        with self.db.read() as conn:
            prior = self.messages.find(conn, "in", sender, control)
        if prior is None or prior.status != "received":
            return None
        event = prior.event
        ack = self._process(raw, peer, header, sender, control, event, datetime.now(UTC))
        code = ack.split(b"MSA", 1)[1][1:3].decode("latin-1")
        return ack if _wanted(code, header.field(16)) else None

    def replay(self, message_id: str) -> str:
        """Apply a kept (failed or received) message again; returns its new status."""
        with self.db.read() as conn:
            row = self.messages.get(conn, message_id)
        if row is None:
            raise LookupError(f"no message {message_id}")
        if row.direction != "in" or row.status not in ("failed", "received"):
            raise ValueError(f"message {message_id} is {row.status}; only failed ones are replayed")
        opened = self.messages.open(row)
        header = read_header(opened.message)
        self._process(
            opened.message,
            opened.address or "replay",
            header,
            row.peer,
            row.control_id,
            row.event,
            datetime.now(UTC),
            replay=True,
        )
        with self.db.read() as conn:
            return str(self.messages.get(conn, message_id).status)

    # -- processing -----------------------------------------------------------------------------
    def _trail(self, sender: str, peer: str) -> Trail:
        host = peer.rsplit(":", 1)[0] if ":" in peer else peer
        return Trail(Actor(client_id=f"hl7:{sender}", address=host), self.config.server)

    def _process(
        self,
        raw: bytes,
        peer: str,
        header: Header,
        sender: str,
        control: str,
        event: str,
        now: datetime,
        *,
        replay: bool = False,
    ) -> bytes:
        hl7_event = header.component(9, 2).decode("latin-1")
        trail = self._trail(sender, peer)
        ack_id = _control_id()
        try:
            message = parse(raw)
            change = read_siu(
                message,
                sender_tz=self.config.sender_tz,
                status_map=self.config.status_map,
                identifier_systems=self.config.identifier_systems,
            )
            origin = ORIGIN.set(change.sender)  # the outbox does not echo it back to its EMR
            try:
                with self.db.write() as conn:
                    prior, first = self._prior(conn, sender, control, replay)
                    if first is not None:
                        return first
                    applied = apply_change(
                        conn,
                        store=self.store,
                        config=self.clinic,
                        change=change,
                        now=now,
                        known_patients=self.known_patients,
                    )
                    result = _Result("AA", applied.status, applied)
                    ack = build_ack(header, "AA", control_id=ack_id, now=now)
                    self._record(conn, prior, raw, peer, sender, control, event, result, ack, now)
                    trail.note(
                        f"hl7-in:{hl7_event}",
                        refs=[f"Appointment/{applied.appointment_id}"]
                        if applied.appointment_id
                        else [],
                        patients={applied.patient_id} if applied.patient_id else set(),
                    )
                    if self.config.audit:
                        trail.commit_in(conn, self.keys)
            finally:
                ORIGIN.reset(origin)
        except (ParseError, FHIRError) as exc:
            code = "101" if isinstance(exc, ParseError) else "207"
            result = _Result("AE", "failed", error=(code, _words(exc)))
        except Exception as exc:
            log.exception("hl7.failed", sender=sender, control_id=control, error=type(exc).__name__)
            result = _Result("AE", "failed", error=("207", "internal error; kept for review"))
        else:
            log.info(
                "hl7.applied",
                sender=sender,
                control_id=control,
                trigger=hl7_event,
                status=applied.status,
                appointment=applied.appointment_id,
            )
            return ack
        return self._keep(
            raw, peer, header, sender, control, event, result, now, trail=trail, replay=replay
        )

    def _keep(
        self,
        raw: bytes,
        peer: str,
        header: Header,
        sender: str,
        control: str,
        event: str,
        result: _Result,
        now: datetime,
        *,
        trail: Trail | None = None,
        replay: bool = False,
    ) -> bytes:
        """Store a message that was not applied (AR or AE) with its ACK and AuditEvent."""
        ack = build_ack(header, result.code, control_id=_control_id(), now=now, error=result.error)
        trail = trail or self._trail(sender, peer)
        trail.facts.clear()
        trail.staged = 0
        trail.note(
            f"hl7-in:{header.component(9, 2).decode('latin-1') or 'unknown'}",
            outcome="minor" if result.code == "AR" else "serious",
            description=result.error[1] if result.error else None,
        )
        with self.db.write() as conn:
            prior, first = self._prior(conn, sender, control, replay)
            if first is not None:
                return first
            self._record(conn, prior, raw, peer, sender, control, event, result, ack, now)
            if self.config.audit:
                trail.commit_in(conn, self.keys)
        log.warning(
            "hl7.not_applied",
            sender=sender,
            control_id=control,
            ack=result.code,
            error_code=result.error[0] if result.error else None,
        )
        return ack

    def _record(
        self,
        conn: Connection,
        prior: Any,
        raw: bytes,
        peer: str,
        sender: str,
        control: str,
        event: str,
        result: _Result,
        ack: bytes,
        now: datetime,
    ) -> None:
        appointment = result.applied.appointment_id if result.applied else None
        if prior is not None:
            self.messages.settle(
                conn,
                prior.id,
                message=raw,
                address=peer,
                status=result.status,
                ack=ack,
                ack_code=result.code,
                appointment_id=appointment,
                error=result.error,
            )
        else:
            self.messages.add(
                conn,
                direction="in",
                peer=sender,
                control_id=control,
                event=event,
                message=raw,
                status=result.status,
                now=now,
                address=peer,
                ack=ack,
                ack_code=result.code,
                appointment_id=appointment,
                error=result.error,
            )

    def _unreadable(self, raw: bytes, peer: str, why: str, now: datetime) -> bytes:
        """No MSH to answer: keep it, and answer AR with an ACK of our own."""
        control = f"unreadable-{uuid.uuid4().hex[:12]}"
        header = read_header(b"MSH|^~\\&|||||||ACK|||2.5.1")
        result = _Result("AR", "rejected", error=("100", why))
        return self._keep(raw, peer, header, "unknown", control, "unknown", result, now)


def _words(exc: Exception) -> str:
    text = exc.diagnostics if isinstance(exc, FHIRError) else str(exc)
    return text[:500]
