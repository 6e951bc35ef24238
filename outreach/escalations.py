"""Late cancellations, from any source, for the staff queue.

A booked Appointment cancelled when its start is closer than the clinic's
``rules.cancellation_notice_hours`` (``$book`` refuses that, so it came from staff, a plain
update or an EMR over HL7) leaves a chair empty at short notice: the clinic wants to know, to
fill it or to call the patient. :class:`LateCancellations` watches Appointment writes
(``Store.watch``) and, inside the cancelling transaction, records an ``outreach_escalation``
row (unique ``late-cancel:<appointment>``): it commits with the cancellation or not at all.
:func:`escalate_late_cancellations`, a job pass, hands each row once to
``Conversations.escalate`` (reason ``late_cancellation``) and marks it done.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Table, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from base.logging import get_logger
from outreach.hooks import Conversations
from outreach.sending import Outreach, phone_of
from resources.fhirdate import parse_fhir_date
from resources.sql.engine import Database
from resources.sql.tables import OutreachEscalation
from resources.store import Store, StoredVersion
from scheduling.booking import participant_id
from scheduling.config import ClinicConfig

__all__ = ["LateCancellations", "escalate_late_cancellations"]

log = get_logger("outreach.escalations")

E: Table = OutreachEscalation.__table__  # type: ignore[assignment]
_QUEUE = {
    "postgresql": pg_insert(E).on_conflict_do_nothing(),
    "sqlite": sqlite_insert(E).on_conflict_do_nothing(),
}


class LateCancellations:
    """Register with ``store.watch("Appointment", late.on_change)``."""

    def __init__(
        self, store: Store, clinic: ClinicConfig, *, clock: Callable[[], datetime] | None = None
    ) -> None:
        self.store, self.clinic = store, clinic
        self.clock = clock or (lambda: datetime.now(UTC))

    def on_change(self, conn: Connection, stored: StoredVersion) -> None:
        if stored.deleted or stored.version < 2:
            return
        new = stored.resource()
        if new.get("status") != "cancelled" or not new.get("start"):
            return
        before = self.store.vread(conn, "Appointment", stored.res_id, stored.version - 1)
        if before is None or before.deleted or before.resource().get("status") != "booked":
            return
        start = parse_fhir_date(str(new["start"])).low
        now = self.clock()
        notice = timedelta(hours=self.clinic.rules.cancellation_notice_hours)
        if not now <= start < now + notice:
            return  # in good time, or a past appointment tidied up
        conn.execute(
            _QUEUE[conn.dialect.name].values(
                id=str(uuid.uuid4()),
                dedupe=f"late-cancel:{stored.res_id}",
                reason="late_cancellation",
                appointment_id=stored.res_id,
                created=now,
                done=None,
            )
        )
        log.info("outreach.late_cancellation", appointment=stored.res_id)


def escalate_late_cancellations(
    *,
    db: Database,
    store: Store,
    clinic: ClinicConfig,
    conversations: Conversations,
    outreach: Outreach | None = None,
    limit: int = 100,
) -> int:
    """One job pass: each queued late cancellation to the staff queue, once (several workers
    may run it: a row is claimed by marking it done before it is handed over, and unmarked if
    that fails, for the next pass). Returns how many were handed over."""
    with db.read() as conn:
        ids = list(
            conn.execute(
                select(E.c.id).where(E.c.done.is_(None)).order_by(E.c.created).limit(limit)
            ).scalars()
        )
    done = 0
    for eid in ids:
        claimed = _claim(db, eid)
        if claimed is None:
            continue  # another worker has it
        appointment_id, summary, number, patient_id = _describe(db, store, clinic, claimed)
        try:
            conversations.escalate(number, reason="late_cancellation", summary=summary)
        except Exception as exc:  # noqa: BLE001 - left for the next pass, never lost
            log.error("outreach.escalation_failed", error_type=type(exc).__name__, row=eid)
            with db.write() as conn:
                conn.execute(update(E).where(E.c.id == eid).values(done=None))
            continue
        if outreach is not None:
            with db.write() as conn:
                outreach.audit_in(
                    conn,
                    "outreach-acted:escalate",
                    appointment_id=appointment_id,
                    patient_id=patient_id,
                    description="late_cancellation",
                )
        log.info("outreach.escalated", reason="late_cancellation", appointment=appointment_id)
        done += 1
    return done


def _claim(db: Database, eid: str) -> str | None:
    with db.write() as conn:
        taken = conn.execute(
            update(E).where(E.c.id == eid, E.c.done.is_(None)).values(done=datetime.now(UTC))
        )
        if taken.rowcount != 1:
            return None
        found = conn.execute(select(E.c.appointment_id).where(E.c.id == eid)).scalar()
        return str(found)


def _describe(
    db: Database, store: Store, clinic: ClinicConfig, appointment_id: str
) -> tuple[str, str, str | None, str | None]:
    """(appointment id, the staff's summary (ids and the time only), the patient's number,
    the patient's id)."""
    with db.read() as conn:
        stored = store.read(conn, "Appointment", appointment_id)
        appt = stored.resource() if stored is not None and not stored.deleted else {}
        patient_id = participant_id(appt, "Patient") if appt else None
        patient = store.read(conn, "Patient", patient_id) if patient_id else None
        number = (
            phone_of(patient.resource(), clinic.phone_region)
            if patient is not None and not patient.deleted
            else None
        )
    when = ""
    if appt.get("start"):
        at = parse_fhir_date(str(appt["start"])).low.astimezone(clinic.tz)
        when = f" ({at:%Y-%m-%d %H:%M})"
    hours = clinic.rules.cancellation_notice_hours
    summary = (
        f"Appointment/{appointment_id}{when} was cancelled inside the {hours}-hour notice: "
        "the time is free at short notice."
    )
    return appointment_id, summary, number, patient_id
