"""``$hold`` (ITI-116) and ``$book`` (ITI-117) for new bookings, in one write transaction.

Every rule is checked again; the time is claimed in ``busy_time``, whose database guard refuses
any overlap, so two concurrent bookings of the same time cannot both commit: the loser gets a
409 naming the time that was taken.  Holds are ``busy_time`` rows with an expiry: an expired
hold is ignored by ``$find`` and removed by the next claim on its time, so no sweeper is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Table, and_, delete, insert, or_, select, update
from sqlalchemy.exc import DBAPIError

from fhir_server.errors import BadRequest, Conflict, FHIRError, NotFound
from fhir_server.scheduling.availability import schedule_id
from fhir_server.scheduling.clinic import VISIT_TYPE_SYSTEM
from fhir_server.scheduling.config import ClinicConfig
from fhir_server.scheduling.find import FindRequest, find_options
from resources import service
from resources.fhirdate import parse_fhir_date
from resources.sql.tables import BusyTime, IdempotencyKey
from resources.store import R, Store, StoredVersion

__all__ = [
    "HoldFailed",
    "KeyInFlight",
    "book_new",
    "cancel",
    "claim_key",
    "hold",
    "remember",
    "replay",
]

BT = cast(Table, BusyTime.__table__)
IK = cast(Table, IdempotencyKey.__table__)


class HoldFailed(FHIRError):
    """IHE ITI-116: a hold that cannot be granted is an OperationOutcome, fatal, not-found."""

    status = 404
    code = "not-found"
    severity = "fatal"
    message_id = "FS-0601"


@dataclass(frozen=True)
class Wanted:
    practitioner: str
    location: str
    visit_type: str
    start: datetime
    end: datetime
    patient: str | None


def _ref(appt: dict[str, Any], rtype: str) -> str | None:
    for p in appt.get("participant", []):
        ref = (p.get("actor") or {}).get("reference", "")
        if ref.startswith(f"{rtype}/"):
            return str(ref.split("/", 1)[1])
    return None


def _wanted(appt: Any) -> Wanted:
    if not isinstance(appt, dict) or appt.get("resourceType") != "Appointment":
        raise BadRequest("the operation needs an Appointment (appointment-resource)")
    visit = next(
        (
            c["code"]
            for st in appt.get("serviceType", [])
            for c in st.get("coding", [])
            if c.get("system") == VISIT_TYPE_SYSTEM and c.get("code")
        ),
        None,
    )
    practitioner, location = _ref(appt, "Practitioner"), _ref(appt, "Location")
    if not (visit and practitioner and location and appt.get("start") and appt.get("end")):
        raise BadRequest(
            "the Appointment must name its visit type (serviceType), Practitioner, Location, "
            "start and end, as $find returns them"
        )
    try:
        start, end = parse_fhir_date(appt["start"]), parse_fhir_date(appt["end"])
    except ValueError as exc:
        raise BadRequest(str(exc), expression=["Appointment.start"]) from exc
    return Wanted(practitioner, location, visit, start.low, end.low, _ref(appt, "Patient"))


def _still_offered(
    conn: Connection,
    store: Store,
    config: ClinicConfig,
    w: Wanted,
    now: datetime,
    *,
    ignore_hold: str | None = None,
) -> Any:
    request = FindRequest(
        start=w.start,
        end=w.end,
        visit_type=w.visit_type,
        practitioners=[w.practitioner],
        locations=[w.location],
        patient_id=w.patient,
    )
    for option in find_options(
        conn, store=store, config=config, request=request, now=now, ignore_hold=ignore_hold
    ):
        if option.start == w.start and option.end == w.end:
            return option
    return None


def _lock_slots(conn: Connection, appt: dict[str, Any]) -> None:
    """Lock the Slots an Appointment names (in id order) for the rest of the transaction.

    Bookings and cancellations touching the same Slots then run one after the other, and the
    availability check that follows sees what the other committed (PostgreSQL runs READ
    COMMITTED; SQLite writers are already serialised).
    """
    if conn.dialect.name != "postgresql":
        return
    ids = sorted({s["reference"].split("/")[-1] for s in appt.get("slot", [])})
    if ids:
        conn.execute(
            select(R.c.seq)
            .where(R.c.res_type == "Slot", R.c.res_id.in_(ids))
            .order_by(R.c.res_id)
            .with_for_update()
        ).all()


def _set_slots(conn: Connection, store: Store, appt: dict[str, Any], status: str) -> None:
    """Mark the Slots an Appointment takes busy (booked) or free (cancelled)."""
    for slot in appt.get("slot", []):
        sid = slot["reference"].split("/")[-1]
        current = store.read(conn, "Slot", sid)
        if current is not None and not current.deleted:
            body = {**current.resource(), "status": status}
            body.pop("meta", None)
            service.update(conn, store=store, resource_type="Slot", resource_id=sid, resource=body)


def _claim(
    conn: Connection,
    config: ClinicConfig,
    w: Wanted,
    appointment_id: str,
    kind: str,
    expires: datetime | None,
    now: datetime,
) -> None:
    sched = schedule_id(w.practitioner, w.location)
    # expired holds on this time free themselves here, in the claiming transaction
    conn.execute(
        delete(BT).where(
            BT.c.schedule_id == sched,
            BT.c.start < w.end,
            BT.c.end > w.start,
            or_(
                and_(BT.c.kind == "held", BT.c.expires_at <= now),
                and_(BT.c.kind == "held", BT.c.appointment_id == appointment_id),
            ),
        )
    )
    from fhir_server.scheduling.rules import buffer_after

    rows = [
        {
            "schedule_id": sched,
            "start": w.start,
            "end": w.end,
            "appointment_id": appointment_id,
            "kind": kind,
            "visit_type": w.visit_type,
            "expires_at": expires,
        }
    ]
    buffer = buffer_after(config, w.practitioner, w.visit_type)
    if buffer and kind == "booked":
        rows.append({**rows[0], "start": w.end, "end": w.end + buffer, "kind": "buffer"})
    try:
        with conn.begin_nested():
            conn.execute(insert(BT), rows)
    except DBAPIError as exc:
        local = w.start.astimezone(config.tz).isoformat()
        raise Conflict(f"the time at {local} with {w.practitioner} was just taken") from exc


def hold(
    conn: Connection, *, store: Store, config: ClinicConfig, appointment: Any, now: datetime
) -> tuple[StoredVersion, datetime]:
    """Hold a proposed Appointment: a pending Appointment plus a held claim that expires."""
    w = _wanted(appointment)
    option = _still_offered(conn, store, config, w, now)
    if option is None:
        raise HoldFailed("that time is no longer available; run $find again")
    expires = now + timedelta(seconds=config.hold_seconds)
    held = {**appointment, "status": "pending"}
    held.pop("id", None)
    held.pop("meta", None)
    outcome = service.create(conn, store=store, resource_type="Appointment", resource=held)
    assert outcome.stored is not None
    _claim(conn, config, w, outcome.stored.res_id, "held", expires, now)
    return outcome.stored, expires


def book_new(
    conn: Connection,
    *,
    store: Store,
    config: ClinicConfig,
    appointment: Any | None,
    reference: str | None,
    now: datetime,
) -> StoredVersion:
    """Book a proposed or held Appointment (by resource or by reference)."""
    existing_id: str | None = None
    if reference:
        existing_id = reference.split("/")[-1]
        stored = store.read(conn, "Appointment", existing_id)
        if stored is None or stored.deleted:
            raise NotFound(f"Appointment/{existing_id} does not exist")
        appointment = stored.resource()
        if appointment.get("status") != "pending":
            raise BadRequest(
                f"Appointment/{existing_id} is {appointment.get('status')}, not pending"
            )
    w = _wanted(appointment)  # refuses anything but an Appointment dict
    appt: dict[str, Any] = cast(dict[str, Any], appointment)
    _lock_slots(conn, appt)
    if _still_offered(conn, store, config, w, now, ignore_hold=existing_id) is None:
        raise Conflict(
            f"the time at {w.start.astimezone(config.tz).isoformat()} with {w.practitioner} "
            "is no longer available; run $find again"
        )
    booked = {
        **appt,
        "status": "booked",
        "participant": [{**p, "status": "accepted"} for p in appt["participant"]],
    }
    booked.pop("meta", None)
    if existing_id:
        outcome = service.update(
            conn,
            store=store,
            resource_type="Appointment",
            resource_id=existing_id,
            resource={**booked, "id": existing_id},
        )
    else:
        booked.pop("id", None)
        outcome = service.create(conn, store=store, resource_type="Appointment", resource=booked)
    assert outcome.stored is not None
    _claim(conn, config, w, outcome.stored.res_id, "booked", None, now)
    _set_slots(conn, store, appt, "busy")
    return outcome.stored


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def cancel(
    conn: Connection, *, store: Store, appointment_id: str, reason: Any = None
) -> StoredVersion:
    """Cancel a booked Appointment: its busy time and buffer are released, its Slots freed."""
    stored = store.read(conn, "Appointment", appointment_id)
    if stored is None or stored.deleted:
        raise NotFound(f"Appointment/{appointment_id} does not exist")
    _lock_slots(conn, stored.resource())
    stored = store.read(conn, "Appointment", appointment_id) or stored  # after the lock
    appt = stored.resource()
    if appt.get("status") not in ("booked", "pending"):
        raise BadRequest(
            f"Appointment/{appointment_id} is {appt.get('status')}; "
            "only booked or pending appointments can be cancelled"
        )
    conn.execute(delete(BT).where(BT.c.appointment_id == appointment_id))
    _set_slots(conn, store, appt, "free")
    cancelled = {**appt, "status": "cancelled"}
    cancelled.pop("meta", None)
    if reason is not None:
        cancelled["cancelationReason"] = reason
    outcome = service.update(
        conn,
        store=store,
        resource_type="Appointment",
        resource_id=appointment_id,
        resource=cancelled,
    )
    assert outcome.stored is not None
    return outcome.stored


class KeyInFlight(Exception):
    """Another request with the same idempotency key committed first: replay its result."""


def claim_key(conn: Connection, key: str, now: datetime) -> Any:
    """The first result recorded under ``key``, or None after reserving it for this request.

    The reservation is a row insert: a concurrent request with the same key waits on it and
    then fails with :class:`KeyInFlight`, so a retried ``$book`` never books twice.
    """
    prior = conn.execute(select(IK).where(IK.c.key == key, IK.c.status > 0)).first()
    if prior is not None:
        return prior
    try:
        with conn.begin_nested():
            conn.execute(
                insert(IK).values(
                    key=key,
                    operation="book",
                    status=0,
                    res_type="",
                    res_id="",
                    version=0,
                    created=now,
                )
            )
    except DBAPIError as exc:
        raise KeyInFlight(key) from exc
    return None


def remember(conn: Connection, key: str, status: int, stored: StoredVersion) -> None:
    conn.execute(
        update(IK)
        .where(IK.c.key == key)
        .values(
            status=status, res_type=stored.res_type, res_id=stored.res_id, version=stored.version
        )
    )


def replay(conn: Connection, store: Store, key: str) -> tuple[int, StoredVersion] | None:
    prior = conn.execute(select(IK).where(IK.c.key == key, IK.c.status > 0)).first()
    if prior is None:
        return None
    stored = store.vread(conn, prior.res_type, prior.res_id, prior.version)
    return (int(prior.status), stored) if stored is not None else None
