"""Outbound: changes made here become SIU messages to each configured EMR, through an outbox.

* :class:`Outbox` watches Appointment writes (``Store.watch``) and, inside the writing
  transaction, decides the trigger event from the previous and new version (new booking S12,
  new time or resources S13, other details S14, cancelled S15, deleted or entered-in-error S17,
  no-show S26; holds and proposals send nothing), builds the message and stores it as
  ``pending`` for every endpoint: the message commits with the change or not at all. Changes
  that came from an EMR (the listener sets :data:`ORIGIN`) are not echoed back to that EMR.
* :class:`Sender` (one per endpoint, on the event loop) delivers pending messages in order,
  one in flight per connection; only the ACK whose MSA-2 is the message's MSH-10 counts (any
  other frame is logged and ignored). No connection, a dropped connection or no ACK in time:
  the same message is sent again with exponential backoff (tenacity), as often as it takes;
  the EMR recognises the resend by MSH-10. AA/CA marks it ``sent``; AE/AR sets it aside as
  ``rejected`` for staff (``fhir-sched hl7 messages --direction out --status rejected``) and
  the next message goes. Each delivery or rejection is audited (DICOM 110106 Export).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import structlog
from sqlalchemy import Connection, select, update
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from hl7_bridge.ack import read_ack
from hl7_bridge.endpoint import HL7Endpoint
from hl7_bridge.fhir_to_siu import Envelope, build_siu
from hl7_bridge.messages import HM, MessageStore
from hl7_bridge.mllp import FrameReader, frame
from hl7_bridge.siu_to_fhir import key_system
from resources.sql.engine import Database
from resources.store import Store, StoredVersion
from scheduling.booking import participant_id
from scheduling.risk import RISK_URL
from security.balp import Actor
from security.trail import Trail

__all__ = ["ORIGIN", "Outbox", "Sender", "trigger"]

log = structlog.get_logger("hl7_bridge.outbound")

# the sender key (MSH-3.MSH-4) of the inbound message being applied, if any
ORIGIN: ContextVar[str | None] = ContextVar("hl7_origin", default=None)

SENT_STATUSES = {"booked", "arrived", "checked-in", "fulfilled", "noshow"}
_MOVES = ("start", "end", "participant", "serviceType")


def trigger(old: dict[str, Any] | None, new: dict[str, Any] | None) -> str | None:
    """The SIU event a change from ``old`` to ``new`` is (None: nothing to tell the EMR)."""
    was = str((old or {}).get("status", ""))
    known = was in SENT_STATUSES  # the EMR has heard of it
    if new is None:
        return "S17" if known else None
    now = str(new.get("status", ""))
    if now == "booked" and was != "booked":
        return "S12"
    if not known:
        return None
    if now == "cancelled":
        return "S15"
    if now == "entered-in-error":
        return "S17"
    if now == "noshow":
        return "S26" if was != "noshow" else None
    if now in SENT_STATUSES:
        assert old is not None
        if any(old.get(k) != new.get(k) for k in _MOVES):
            return "S13"
        return "S14" if _content(old) != _content(new) else None
    return None


def _content(resource: dict[str, Any]) -> dict[str, Any]:
    """What the EMR is told of: not the version, the Slots or the no-show risk the server
    writes on its own (``scheduling/risk.py``), which no SIU field carries."""
    out = {k: v for k, v in resource.items() if k not in ("meta", "slot", "extension")}
    kept = [e for e in resource.get("extension", []) if e.get("url") != RISK_URL]
    if kept:
        out["extension"] = kept
    return out


class Outbox:
    """Queues the SIU message for each endpoint inside the transaction that changed an
    Appointment. Register with ``store.watch("Appointment", outbox.on_change)``."""

    def __init__(
        self,
        store: Store,
        endpoints: list[HL7Endpoint],
        *,
        application: str = "FHIRSCHED",
        facility: str = "",
    ) -> None:
        self.store = store
        self.application = application
        self.facility = facility
        self.messages = MessageStore(store.keys)
        # each endpoint with the identifier systems of its own filler ids (SCH-2)
        self._targets = [
            (e, frozenset(key_system(s, "filler") for s in e.senders)) for e in endpoints
        ]

    def _read(self, conn: Connection, rtype: str, rid: str | None) -> dict[str, Any] | None:
        if rid is None:
            return None
        stored = self.store.read(conn, rtype, rid)
        return stored.resource() if stored is not None and not stored.deleted else None

    def on_change(self, conn: Connection, stored: StoredVersion) -> None:
        origin = ORIGIN.get()  # the EMR that told us this change is not told it back
        targets = [(e, f) for e, f in self._targets if origin is None or origin not in e.senders]
        if not targets:
            return  # nothing configured, or only the EMR this change came from: read nothing
        before = (
            self.store.vread(conn, "Appointment", stored.res_id, stored.version - 1)
            if stored.version > 1
            else None
        )
        old = before.resource() if before is not None and not before.deleted else None
        new = None if stored.deleted else stored.resource()
        event = trigger(old, new)
        if event is None:
            return
        appt = cast(dict[str, Any], new or old)
        patient = self._read(conn, "Patient", participant_id(appt, "Patient"))
        practitioner = self._read(conn, "Practitioner", participant_id(appt, "Practitioner"))
        location = self._read(conn, "Location", participant_id(appt, "Location"))
        now = datetime.now(UTC)
        for endpoint, fillers in targets:
            filler = next(
                (i.get("value") for i in appt.get("identifier", []) if i.get("system") in fillers),
                None,
            )
            control = uuid.uuid4().hex[:20]
            envelope = Envelope(
                control_id=control,
                sent=now,
                application=self.application,
                facility=self.facility,
                receiving_application=endpoint.application,
                receiving_facility=endpoint.facility,
                version=endpoint.version,
            )
            message = build_siu(
                event,
                {**appt, "id": stored.res_id},
                envelope,
                patient=patient,
                practitioner=practitioner,
                location=location,
                filler_id=filler,
            )
            self.messages.add(
                conn,
                direction="out",
                peer=endpoint.name,
                control_id=control,
                event=f"SIU^{event}",
                message=message,
                status="pending",
                now=now,
                appointment_id=stored.res_id,
                next_attempt=now,
            )


class _Undelivered(Exception):
    """The EMR did not take the message this time (no connection, closed, no ACK in time)."""


class Sender:
    """Delivers one endpoint's pending messages, oldest first, one in flight."""

    def __init__(
        self,
        db: Database,
        store: Store,
        endpoint: HL7Endpoint,
        *,
        server: str = "fhir-sched",
        ack_timeout: float = 10.0,
        poll_seconds: float = 0.2,
        first_retry: float = 0.5,
        max_retry: float = 30.0,
        audit: bool = True,
    ) -> None:
        self.db = db
        self.store = store
        self.keys = store.keys
        self.endpoint = endpoint
        self.server = server
        self.ack_timeout = ack_timeout
        self.poll_seconds = poll_seconds
        self.first_retry = first_retry
        self.max_retry = max_retry
        self.audit = audit
        self.messages = MessageStore(store.keys)
        self._stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._frames = FrameReader()

    async def run(self) -> None:
        """Deliver until cancelled."""
        try:
            while True:
                row = await asyncio.to_thread(self._head)
                if row is None:
                    await asyncio.sleep(self.poll_seconds)
                    continue
                await self._deliver(row)
        finally:
            await self._close()

    def _head(self) -> Any:
        with self.db.read() as conn:
            return conn.execute(
                select(HM)
                .where(
                    HM.c.direction == "out",
                    HM.c.peer == self.endpoint.name,
                    HM.c.status == "pending",
                )
                .order_by(HM.c.seq)
                .limit(1)
            ).first()

    async def _deliver(self, row: Any) -> None:
        opened = self.messages.open(row)

        async def failed(state: RetryCallState) -> None:
            wait = state.upcoming_sleep
            error = state.outcome.exception() if state.outcome else None
            log.warning(
                "hl7.send_retry",
                endpoint=self.endpoint.name,
                control_id=row.control_id,
                attempt=state.attempt_number,
                retry_in=round(wait, 2),
                error=str(error),
            )
            await asyncio.to_thread(self._attempted, row.id, state.attempt_number, wait)

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_Undelivered),
            wait=wait_exponential(multiplier=self.first_retry, max=self.max_retry),
            before_sleep=failed,
            reraise=True,
        )
        code, ack = "", b""
        async for attempt in retrying:
            with attempt:
                code, ack = await self._exchange(opened.message, row.control_id)
        await asyncio.to_thread(self._settle, row, opened.message, ack, code)

    async def _exchange(self, message: bytes, control_id: str) -> tuple[str, bytes]:
        """Send one message and wait for its ACK: (MSA-1 code, the ACK)."""
        try:
            if self._stream is None:
                self._stream = await asyncio.wait_for(
                    asyncio.open_connection(self.endpoint.host, self.endpoint.port),
                    self.ack_timeout,
                )
                self._frames = FrameReader()
            reader, writer = self._stream
            writer.write(frame(message))
            await writer.drain()
            async with asyncio.timeout(self.ack_timeout):
                while True:
                    data = await reader.read(65536)
                    if not data:
                        raise ConnectionError("the EMR closed the connection")
                    for answer in self._frames.feed(data):
                        code, acked = read_ack(answer)
                        if acked == control_id and code:
                            return code, answer
                        log.warning("hl7.unexpected_ack", endpoint=self.endpoint.name, acked=acked)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            await self._close()
            raise _Undelivered(f"{type(exc).__name__}: {exc}") from exc

    async def _close(self) -> None:
        if self._stream is not None:
            _, writer = self._stream
            self._stream = None
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _attempted(self, message_id: str, attempts: int, wait: float) -> None:
        """For staff: how often it was tried and when the next try is."""
        retry_at = datetime.now(UTC) + timedelta(seconds=wait)
        with self.db.write() as conn:
            conn.execute(
                update(HM)
                .where(HM.c.id == message_id)
                .values(attempts=attempts, next_attempt=retry_at)
            )

    def _settle(self, row: Any, message: bytes, ack: bytes, code: str) -> None:
        delivered = code in ("AA", "CA")
        status = "sent" if delivered else "rejected"
        error = None if delivered else ("207", f"the EMR answered {code}")
        trail = Trail(
            Actor(client_id=f"hl7:{self.endpoint.name}", address=self.endpoint.host), self.server
        )
        with self.db.write() as conn:
            appt = (
                self.store.read(conn, "Appointment", row.appointment_id)
                if row.appointment_id
                else None
            )
            patient = (
                participant_id(appt.resource(), "Patient") if appt and not appt.deleted else None
            )
            trail.note(
                f"hl7-out:{row.event.split('^')[-1]}",
                refs=[f"Appointment/{row.appointment_id}"] if row.appointment_id else [],
                patients={patient} if patient else set(),
                outcome="success" if delivered else "minor",
                description=None if delivered else f"{self.endpoint.name} answered {code}",
            )
            self.messages.settle(
                conn,
                row.id,
                message=message,
                address=f"{self.endpoint.host}:{self.endpoint.port}",
                status=status,
                ack=ack,
                ack_code=code,
                appointment_id=row.appointment_id,
                error=error,
            )
            if self.audit:
                trail.commit_in(conn, self.keys)
        log_event = log.info if delivered else log.warning
        log_event(
            "hl7.sent" if delivered else "hl7.rejected_by_peer",
            endpoint=self.endpoint.name,
            control_id=row.control_id,
            ack=code,
        )
