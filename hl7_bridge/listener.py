"""Inbound: frame → store the raw message → map → apply → ACK, one message at a time per sender.

* **Original mode** (MSH-15/16 empty): the message, the FHIR change, its AuditEvent and the ACK
  are written in one transaction and the ACK leaves only after it committed: ``AA`` means the
  change is in the database. If applying fails, that transaction rolls back and a second one
  keeps the message as ``failed`` with the ``AE`` sent (``fhir-sched hl7 replay`` applies it
  again once the cause is fixed). Unsupported type, event, processing id or version: ``AR``.
  Messages that arrive on several connections while a transaction is being written are
  applied together in the next one (a group commit, :meth:`Listener.process_many`); if one of
  them fails, that transaction rolls back and each is applied on its own. A group is written
  in a worker thread, or, where nothing else shares the event loop (``fhir-sched hl7 listen``)
  and the database is SQLite, on the loop itself (``inline_writes``): SQLite writes one group
  at a time anyway, and the hop to a thread and back cost 0.35 ms of CPU a message, a tenth.
* **Enhanced mode** (MSH-15 or MSH-16 present): the raw message is committed first and a
  ``CA`` goes back as MSH-15 asks (AL always, ER only on error, SU only on success, NE
  never); the application ACK follows on the same connection as MSH-16 asks.
* A resend (same sender MSH-3/4, MSH-10 and content, MSH-7 and trailing separators aside)
  changes nothing and gets the ACK sent the first time; a different message under a control id
  used before is applied as new, with the warning ``control-id-reused``.
* Every message leaves an AuditEvent (DICOM 110107 Import, subtype the trigger event) naming
  the sender and its network address, the Appointment and the Patient.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, tzinfo
from typing import Any

import structlog
from sqlalchemy import Connection

from base.errors import Conflict, FHIRError
from base.logging import exception_frames
from hl7_bridge.ack import Header, NotHL7, build_ack, read_ack, read_header, refusal
from hl7_bridge.inbound import Applied, Batch, apply_change
from hl7_bridge.messages import MessageStore
from hl7_bridge.mllp import Reply
from hl7_bridge.outbound import ORIGIN
from hl7_bridge.parse import ParseError, parse
from hl7_bridge.siu_to_fhir import SIUChange, read_siu, sender_key
from resources.sql.direct import deferring, pipelined
from resources.sql.engine import Database
from resources.sql.group_commit import GroupCommit
from resources.store import Store
from scheduling.config import ClinicConfig
from security.audit import send_head
from security.balp import Actor
from security.crypto import KeyRing
from security.trail import Trail, commit_together

__all__ = ["BridgeConfig", "Listener", "Reply"]

log = structlog.get_logger("hl7_bridge.listener")


@dataclass(frozen=True)
class BridgeConfig:
    """How this server reads its senders (from Settings; see README "HL7 v2 bridge")."""

    sender_tz: tzinfo = UTC
    status_map: dict[str, Any] = field(default_factory=dict)  # see status.check_status_map
    identifier_systems: dict[str, str] = field(default_factory=dict)
    server: str = "fhir-sched"  # this server, as AuditEvents name it
    audit: bool = True


@dataclass(frozen=True, slots=True)
class _Result:
    code: str | None  # AA | AE | AR; None while only received (enhanced mode)
    status: str  # message status
    applied: Applied | None = None
    error: tuple[str, str] | None = None  # (HL7 table 0357 code, words)
    extra: tuple[tuple[str, str], ...] = ()  # warnings found before applying (code, words)
    location: str = ""  # the field the error is about (SCH-2), for ERR

    @property
    def warnings(self) -> tuple[tuple[str, str], ...]:
        return self.extra + (self.applied.warnings if self.applied else ())


@dataclass(frozen=True, slots=True)
class _Inbound:
    """One received message and what its header says, carried through the steps."""

    raw: bytes
    peer: str  # network address of the sender
    header: Header
    now: datetime

    @property
    def sender(self) -> str:
        return sender_key(
            self.header.component(3, 1).decode("latin-1"),
            self.header.component(4, 1).decode("latin-1"),
        )

    # header values as logs, columns and AuditEvents hold them: no control characters (the
    # ACK echoes the raw bytes)
    @property
    def control(self) -> str:
        return _printable(self.header.field(10))

    @property
    def event(self) -> str:
        return "^".join(_printable(self.header.component(9, k)) for k in (1, 2, 3)).rstrip("^")

    @property
    def trigger(self) -> str:
        return _printable(self.header.component(9, 2)) or "unknown"

    @property
    def enhanced(self) -> bool:
        """MSH-15 or MSH-16 valued (``""``, an explicit null, is not a value)."""
        return any(self.header.field(n) not in (b"", b'""') for n in (15, 16))


Warnings = tuple[tuple[str, str], ...]  # (code, words)
CONFLICT_TRIES = 3  # a message that lost to a concurrent writer this often is answered AE


def _control_id() -> str:
    return uuid.uuid4().hex[:20]


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
        inline_writes: bool = False,
    ) -> None:
        self.db = db
        self.inline_writes = inline_writes
        self.keys = keys
        self.store = store
        self.clinic = clinic
        self.config = config or BridgeConfig(sender_tz=clinic.tz if clinic is not None else UTC)
        self.messages = MessageStore(keys)
        self.known_patients: dict[str, str] = {}  # PID identifier → Patient id
        # one group at a time, on PostgreSQL too: what arrives while a group is written waits
        # for the next one, so groups stay large (two at once over 8 MLLP connections made
        # groups of about half the size, whose threads contended for the GIL: 2.9-3.0 ms of the
        # listener's CPU a message against 2.3, and 286-299 msg/s against 318)
        self._group: GroupCommit[_Inbound, bytes] = GroupCommit(self._apply_group, limit=64)

    async def handle(self, raw: bytes, peer: str, reply: Reply) -> None:
        try:
            msg = _Inbound(raw, peer, read_header(raw), datetime.now(UTC))
        except NotHL7 as exc:
            await reply(await asyncio.to_thread(self._unreadable, raw, peer, str(exc)))
            return
        why = refusal(msg.header)
        if why is not None:
            result = _Result("AR", "rejected", error=why)
            await reply(await asyncio.to_thread(self._keep, msg, result))
            return
        if not msg.enhanced:
            # original mode, the usual case: applied with whatever other connections sent
            # meanwhile, in one transaction
            await reply(await self._group.submit(msg))
            return
        acks, pending = await asyncio.to_thread(self._receive, msg)
        for ack in acks:
            await reply(ack)
        if pending:  # the application ACK, as MSH-16 asks
            ack = await asyncio.to_thread(self._process, msg)
            if _wanted(read_ack(ack)[0], msg.header.field(16)):
                await reply(ack)

    async def _apply_group(self, msgs: list[_Inbound]) -> list[bytes]:
        if self.inline_writes:  # the loop waits: nothing else runs on it (see the module doc)
            return self.process_many(msgs)
        return await asyncio.to_thread(self.process_many, msgs)

    def _receive(self, msg: _Inbound) -> tuple[list[bytes], bool]:
        """Enhanced mode's first step: store the message and answer CA as MSH-15 asks, or a
        resend's original ACK. Returns the answers and whether the message is still to apply."""
        with self.db.write() as conn:
            prior, first, reuse = self._prior(conn, msg, replay=False)
            if first is not None:
                return [first], False
            if prior is None:
                self._record(conn, None, msg, _Result(None, "received", extra=reuse), None)
        ca = build_ack(msg.header, "CA", control_id=_control_id(), now=msg.now)
        return ([ca] if _wanted("CA", msg.header.field(15)) else []), True

    def _prior(
        self,
        conn: Connection,
        msg: _Inbound,
        *,
        replay: bool,
        found: Callable[[], list[Any]] | None = None,
    ) -> tuple[Any, bytes | None, Warnings]:
        """The stored row of this message, if any (``found``: its query, sent already); for
        a resend (same sender, control id and content), the ACK sent the first time (nothing
        changes); and the warning that the control id was used before for other content (the
        message is then new work, not a resend)."""
        if found is None:
            found = self.messages.send_find(conn, "in", msg.sender, msg.control)
        rows = found()
        prior = self.messages.same(rows, msg.raw) if rows else None
        others = [r for r in rows if r is not prior]
        reuse: Warnings = ()
        if others:
            log.info("hl7.control_id_reused", sender=msg.sender, control_id=msg.control)
            reuse = (
                (
                    "control-id-reused",
                    f"MSH-10 {msg.control!r} was used before by a different message from this "
                    f"sender (stored as {others[0].id}); this one was processed as new. A "
                    "sender should give every message its own control id.",
                ),
            )
        if prior is None or prior.status == "received" or replay:
            return prior, None, reuse
        log.info("hl7.resend", sender=prior.peer, control_id=prior.control_id, status=prior.status)
        return prior, self.messages.open(prior).ack or b"", reuse

    def replay(self, message_id: str) -> str:
        """Apply a kept (failed or received) message again; returns its new status."""
        with self.db.read() as conn:
            row = self.messages.get(conn, message_id)
        if row is None:
            raise LookupError(f"no message {message_id}")
        if row.direction != "in" or row.status not in ("failed", "received"):
            raise ValueError(f"message {message_id} is {row.status}; only failed ones are replayed")
        opened = self.messages.open(row)
        msg = _Inbound(
            opened.message,
            opened.address or "replay",
            read_header(opened.message),
            datetime.now(UTC),
        )
        self._process(msg, replay=True)
        with self.db.read() as conn:
            return str(self.messages.get(conn, message_id).status)

    # -- processing -----------------------------------------------------------------------------
    def _trail(self, msg: _Inbound) -> Trail:
        host = msg.peer.rsplit(":", 1)[0]
        return Trail(Actor(client_id=f"hl7:{msg.sender}", address=host), self.config.server)

    def _process(self, msg: _Inbound, *, replay: bool = False) -> bytes:
        """Apply the message; the ACK says how it went (AA after commit, else AE).

        A transaction that lost to a concurrent writer (``Conflict``: on PostgreSQL a deadlock
        with a ``$book``, which locks its Slots before it claims the time where the bridge
        claims first, or a serialization failure) rolled back whole and is tried again, up to
        ``CONFLICT_TRIES`` times: an EMR does not resend a message answered AE."""
        for attempt in range(1, CONFLICT_TRIES):
            try:
                return self._process_once(msg, replay=replay)
            except Conflict as exc:
                log.info(
                    "hl7.retried",
                    sender=msg.sender,
                    control_id=msg.control,
                    attempt=attempt,
                    error=type(exc.__cause__ or exc).__name__,
                )
        try:
            return self._process_once(msg, replay=replay)
        except Conflict as exc:
            return self._keep(msg, _Result("AE", "failed", error=("207", _words(exc))), replay)

    def _process_once(self, msg: _Inbound, *, replay: bool) -> bytes:
        """One try of :meth:`_process`; a ``Conflict`` is raised for the caller to try again."""
        try:
            [ack] = self._apply_all([msg], replay=replay)
        except Conflict:
            raise
        except (ParseError, FHIRError) as exc:
            code = "101" if isinstance(exc, ParseError) else "207"
            where = exc.location if isinstance(exc, ParseError) else ""
            result = _Result("AE", "failed", error=(code, _words(exc)), location=where)
            return self._keep(msg, result, replay)
        except Exception as exc:  # noqa: BLE001 - the one boundary: kept, and answered AE
            log.error(
                "hl7.failed",
                sender=msg.sender,
                control_id=msg.control,
                error=type(exc).__name__,
                where=exception_frames(exc.__traceback__),  # frames only: no message text
            )
            result = _Result("AE", "failed", error=("207", "internal error; kept for review"))
            return self._keep(msg, result, replay)
        return ack

    def process_many(self, msgs: list[_Inbound]) -> list[bytes]:
        """Original-mode messages from several connections, applied in one transaction (a
        group commit): each ACK is AA only once that transaction committed. If any message in
        it fails, the whole transaction rolls back and each is applied on its own, so a bad
        message costs its neighbours a second try, never their result."""
        if len(msgs) > 1:
            try:
                return self._apply_all(msgs)
            except Exception as exc:  # noqa: BLE001 - each is tried, and answered, on its own
                log.info("hl7.group_retried_alone", messages=len(msgs), error=type(exc).__name__)
        return [self._process(m) for m in msgs]

    def _apply_all(self, msgs: list[_Inbound], *, replay: bool = False) -> list[bytes]:
        """Map, apply and record ``msgs`` in one transaction, with one audit append for all;
        raises if any of them fails (nothing of the transaction stays)."""
        changes = [
            read_siu(
                parse(msg.raw),
                sender_tz=self.config.sender_tz,
                status_map=self.config.status_map,
                identifier_systems=self.config.identifier_systems,
            )
            for msg in msgs
        ]
        acks: list[bytes] = []
        done: list[tuple[_Inbound, Applied]] = []
        trails: list[Trail] = []
        batch = Batch(self.store, self.known_patients)
        with self.db.write() as conn, deferring(conn), self.store.reserving(conn) as reserve:
            # what every message reads first, in one round trip: its stored row, its link and
            # its patient; and the seqs of the Appointments and Patients they may create
            # (and on PostgreSQL the audit chain's head, so that the group's records go with
            # its last writes; see security.audit.append)
            with pipelined(conn):
                stored = [self.messages.send_find(conn, "in", m.sender, m.control) for m in msgs]
                batch.prefetch(conn, changes)
                reserve(2 * len(msgs))
                head = send_head(conn) if self.config.audit and not self.db.is_sqlite else None
            seen: set[tuple[str, str]] = set()
            for msg, change, read in zip(msgs, changes, stored, strict=True):
                key = (msg.sender, msg.control)
                # a copy of a message applied earlier in this batch finds the row it wrote
                found = None if key in seen else read
                seen.add(key)
                ack, applied = self._apply_in(conn, msg, change, batch, found, replay=replay)
                acks.append(ack)
                if applied is not None:
                    done.append((msg, applied))
                    trails.append(self._applied_trail(msg, applied))
            batch.finish(conn)
            if self.config.audit:
                commit_together(conn, self.keys, trails, head=head() if head else None)
        for msg, applied in done:
            log.info(
                "hl7.applied",
                sender=msg.sender,
                control_id=msg.control,
                trigger=msg.trigger,
                status=applied.status,
                appointment=applied.appointment_id,
            )
        return acks

    def _apply_in(
        self,
        conn: Connection,
        msg: _Inbound,
        change: SIUChange,
        batch: Batch,
        found: Callable[[], list[Any]] | None,
        *,
        replay: bool,
    ) -> tuple[bytes, Applied | None]:
        """One message of ``batch`` inside the caller's transaction (``found``: the query for
        its stored row, sent already): its ACK, and what it changed (None for a resend, which
        gets its first answer and changes nothing)."""
        prior, first, reuse = self._prior(conn, msg, replay=replay, found=found)
        if first is not None:
            return first, None
        origin = ORIGIN.set(change.sender)  # the outbox does not echo it back to its EMR
        try:
            applied = apply_change(
                conn,
                store=self.store,
                config=self.clinic,
                change=change,
                now=msg.now,
                batch=batch,
            )
        finally:
            ORIGIN.reset(origin)
        ack = build_ack(msg.header, "AA", control_id=_control_id(), now=msg.now)
        self._record(conn, prior, msg, _Result("AA", applied.status, applied, extra=reuse), ack)
        return ack, applied

    def _applied_trail(self, msg: _Inbound, applied: Applied) -> Trail:
        trail = self._trail(msg)
        trail.note(
            f"hl7-in:{msg.trigger}",
            refs=[f"Appointment/{applied.appointment_id}"] if applied.appointment_id else [],
            patients={applied.patient_id} if applied.patient_id else set(),
        )
        return trail

    def _keep(self, msg: _Inbound, result: _Result, replay: bool = False) -> bytes:
        """Store a message that was not applied (AR or AE) with its ACK and AuditEvent, in a
        transaction of its own (whatever the failed attempt wrote has rolled back)."""
        assert result.code is not None
        ack = build_ack(
            msg.header,
            result.code,
            control_id=_control_id(),
            now=msg.now,
            error=result.error,
            location=result.location,
        )
        trail = self._trail(msg)
        trail.note(
            f"hl7-in:{msg.trigger}",
            outcome="minor" if result.code == "AR" else "serious",
            description=result.error[1] if result.error else None,
        )
        with self.db.write() as conn:
            prior, first, reuse = self._prior(conn, msg, replay=replay)
            if first is not None:
                return first
            self._record(conn, prior, msg, replace(result, extra=result.extra + reuse), ack)
            if self.config.audit:
                trail.commit_in(conn, self.keys)
        log.warning(
            "hl7.not_applied",
            sender=msg.sender,
            control_id=msg.control,
            ack=result.code,
            error_code=result.error[0] if result.error else None,
        )
        return ack

    def _record(
        self, conn: Connection, prior: Any, msg: _Inbound, result: _Result, ack: bytes | None
    ) -> None:
        """The message row: a new one, or the stored one (received, or being replayed)."""
        appointment = result.applied.appointment_id if result.applied else None
        if prior is not None:
            self.messages.settle(
                conn,
                prior.id,
                message=msg.raw,
                address=msg.peer,
                status=result.status,
                ack=ack,
                ack_code=result.code,
                appointment_id=appointment,
                error=result.error,
                warnings=result.warnings,
            )
            return
        self.messages.add(
            conn,
            direction="in",
            peer=msg.sender,
            control_id=msg.control,
            event=msg.event,
            message=msg.raw,
            status=result.status,
            now=msg.now,
            address=msg.peer,
            ack=ack,
            ack_code=result.code,
            appointment_id=appointment,
            error=result.error,
            warnings=result.warnings,
        )

    def _unreadable(self, raw: bytes, peer: str, why: str) -> bytes:
        """No MSH to answer: keep it, and answer AR with an ACK of our own."""
        control = f"unreadable-{uuid.uuid4().hex[:12]}"
        fields = ["MSH", "^~\\&", *[""] * 7, control, "P", "2.5.1"]  # MSH, then MSH-2 to MSH-12
        header = read_header("|".join(fields).encode())
        msg = _Inbound(raw, peer, header, datetime.now(UTC))
        return self._keep(msg, _Result("AR", "rejected", error=("100", why)))


def _printable(raw: bytes) -> str:
    return "".join(c for c in raw.decode("latin-1") if c.isprintable())


def _words(exc: Exception) -> str:
    text = exc.diagnostics if isinstance(exc, FHIRError) else str(exc)
    return text[:500]
