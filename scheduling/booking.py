"""``$hold`` (ITI-116) and ``$book`` (ITI-117) for new bookings, in one write transaction.

Every rule is checked again; the time is claimed in ``busy_time``, whose database guard refuses
any overlap, so two concurrent bookings of the same time cannot both commit: the loser gets a
409 naming the time that was taken.  Holds are ``busy_time`` rows with an expiry: an expired
hold is ignored by ``$find`` and removed by the next claim on its time, so no sweeper is needed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Delete,
    Table,
    and_,
    bindparam,
    delete,
    insert,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from base.errors import BadRequest, BusinessRule, Conflict, FHIRError, NotFound, Unprocessable
from resources import service
from resources.fhirdate import parse_fhir_date
from resources.sql.direct import Direct, pipelined
from resources.sql.tables import BUSY_IS_LONG, BusyTime, IdempotencyKey
from resources.store import R, Store, StoredVersion, VersionConflict
from scheduling.availability import schedule_id
from scheduling.clinic import VISIT_TYPE_SYSTEM
from scheduling.config import ClinicConfig
from scheduling.find import Option, find_options
from scheduling.plan import FindRequest
from scheduling.rules import buffer_after
from scheduling.spans import busy_overlapping, lower

__all__ = [
    "INSERT_BUSY",
    "HoldFailed",
    "KeyInFlight",
    "KeyReused",
    "RetryKey",
    "book_new",
    "cancel",
    "check_notice",
    "claim_key",
    "existing",
    "free_holds",
    "hold",
    "modify",
    "participant_id",
    "remember",
    "replay",
    "request_digest",
    "set_slots",
    "slot_ids",
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


def participant_id(appt: dict[str, Any], rtype: str) -> str | None:
    """The id of the Appointment's first participant of type ``rtype`` (e.g. Patient)."""
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
    practitioner, location = participant_id(appt, "Practitioner"), participant_id(appt, "Location")
    if not (visit and practitioner and location and appt.get("start") and appt.get("end")):
        raise BadRequest(
            "the Appointment must name its visit type (serviceType), Practitioner, Location, "
            "start and end, as $find returns them"
        )
    try:
        start, end = parse_fhir_date(appt["start"]), parse_fhir_date(appt["end"])
    except ValueError as exc:
        raise BadRequest(str(exc), expression=["Appointment.start"]) from exc
    return Wanted(
        practitioner, location, visit, start.low, end.low, participant_id(appt, "Patient")
    )


def _still_offered(
    conn: Connection,
    store: Store,
    config: ClinicConfig,
    w: Wanted,
    now: datetime,
    *,
    ignore_hold: str | None = None,
    moving: str | None = None,
) -> Option | None:
    request = FindRequest(
        start=w.start,
        end=w.end,
        visit_type=w.visit_type,
        practitioners=[w.practitioner],
        locations=[w.location],
        patient_id=w.patient,
        moving=moving,
    )
    found = find_options(
        conn, store=store, config=config, request=request, now=now, ignore_hold=ignore_hold
    )
    for option in found.options:
        if option.start == w.start and option.end == w.end:
            return option
    return None


def slot_ids(appt: dict[str, Any]) -> list[str]:
    """The ids of the Slots an Appointment names."""
    return [
        str(s["reference"]).split("/")[-1]
        for s in appt.get("slot", [])
        if isinstance(s, dict) and s.get("reference")
    ]


@lru_cache(maxsize=64)
def _slot_lock(count: int) -> Direct:
    return Direct(
        select(R.c.seq)
        .where(R.c.res_type == "Slot", R.c.res_id.in_([bindparam(f"s{i}") for i in range(count)]))
        .order_by(R.c.res_id)
        .with_for_update()
    )


def _lock_slots(conn: Connection, ids: Iterable[str]) -> None:
    """Lock these Slots (in id order) for the rest of the transaction.

    Bookings and cancellations touching the same Slots then run one after the other, and the
    availability check that follows sees what the other committed (PostgreSQL runs READ
    COMMITTED, a snapshot per statement, and a statement that comes after the lock in a
    pipeline starts after it was granted; SQLite writers are already serialised). The
    statement is sent, not read: in the caller's pipeline it goes with the check's reads.
    """
    wanted = sorted(set(ids))
    if conn.dialect.name != "postgresql" or not wanted:
        return
    _slot_lock(len(wanted)).run(conn, {f"s{i}": rid for i, rid in enumerate(wanted)})


def _offered_locked(
    conn: Connection,
    store: Store,
    config: ClinicConfig,
    w: Wanted,
    appt: dict[str, Any],
    now: datetime,
    *,
    ignore_hold: str | None = None,
    moving: str | None = None,
) -> Option:
    """The option still offered for ``w``, with its Slots locked; 409 if it is gone."""
    named = set(slot_ids(appt))

    def locked_then_offered(ids: Iterable[str]) -> Option | None:
        with pipelined(conn):  # PostgreSQL: the locks and the check's reads in one round trip
            _lock_slots(conn, ids)
            return _still_offered(
                conn, store, config, w, now, ignore_hold=ignore_hold, moving=moving
            )

    option = locked_then_offered(named)
    if option is not None and conn.dialect.name == "postgresql" and set(option.slots) - named:
        # the client named other Slots (or none): lock the real ones and look again
        option = locked_then_offered(option.slots)
    if option is None:
        raise Conflict(
            f"the time at {w.start.astimezone(config.tz).isoformat()} with {w.practitioner} "
            "is no longer available; run $find again"
        )
    return option


def set_slots(conn: Connection, store: Store, ids: Iterable[str], status: str) -> None:
    """Mark Slots busy (booked) or free (cancelled), all in one write per table."""

    def edit(body: dict[str, Any]) -> dict[str, Any] | None:
        return None if body.get("status") == status else {**body, "status": status}

    try:
        store.update_many(conn, "Slot", ids, edit, changed=frozenset({"status"}))
    except VersionConflict as exc:
        raise Conflict(f"{exc}; try again") from exc


def _free_holds(dialect: str) -> Delete:
    expired = busy_overlapping(
        dialect,
        [BT.c.pk],
        BT.c.schedule_id == bindparam("schedule"),
        BT.c.kind == "held",
        BT.c.expires_at <= bindparam("now"),
    )
    own = select(BT.c.pk).where(
        BT.c.kind == "held", BT.c.appointment_id == bindparam("appointment_id")
    )
    return delete(BT).where(BT.c.pk.in_(union_all(*expired, own)))


_FREE_HOLDS = {dialect: Direct(_free_holds(dialect)) for dialect in BUSY_IS_LONG}
# the busy-time rows of a claim (no RETURNING: nothing reads their keys)
INSERT_BUSY = Direct(insert(BT).inline())


def free_holds(
    conn: Connection,
    *,
    schedule: str,
    start: datetime,
    end: datetime,
    now: datetime,
    appointment_id: str,
) -> None:
    """Before claiming time: expired holds on it, and this Appointment's own hold, go."""
    _FREE_HOLDS[conn.dialect.name].run(
        conn,
        {
            "schedule": schedule,
            "start": start,
            "end": end,
            "lower": lower(start),
            "now": now,
            "appointment_id": appointment_id,
        },
    )


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
    # no savepoint: a refused claim fails the whole request, which rolls back. On PostgreSQL
    # both statements go in one round trip; the guard's refusal is raised as the block ends.
    try:
        with pipelined(conn):
            free_holds(
                conn,
                schedule=sched,
                start=w.start,
                end=w.end,
                now=now,
                appointment_id=appointment_id,
            )
            INSERT_BUSY.run(conn, rows)
    except IntegrityError as exc:
        local = w.start.astimezone(config.tz).isoformat()
        raise Conflict(f"the time at {local} with {w.practitioner} was just taken") from exc


def hold(
    conn: Connection,
    *,
    store: Store,
    config: ClinicConfig,
    appointment: Any,
    now: datetime,
    seconds: int | None = None,
) -> tuple[StoredVersion, datetime]:
    """Hold a proposed Appointment: a pending Appointment plus a held claim that expires
    after ``seconds`` (the clinic's ``hold_seconds`` unless given: the waitlist holds freed
    time for as long as its offer stands)."""
    w = _wanted(appointment)
    option = _still_offered(conn, store, config, w, now)
    if option is None:
        raise HoldFailed("that time is no longer available; run $find again")
    expires = now + timedelta(seconds=config.hold_seconds if seconds is None else seconds)
    held = {**appointment, "status": "pending", "slot": _slot_refs(option)}
    held.pop("id", None)
    held.pop("meta", None)
    outcome = service.create(conn, store=store, resource_type="Appointment", resource=held)
    assert outcome.stored is not None
    _claim(conn, config, w, outcome.stored.res_id, "held", expires, now)
    return outcome.stored, expires


def _slot_refs(option: Option) -> list[dict[str, str]]:
    return [{"reference": f"Slot/{s}"} for s in option.slots]


def _as_booked(appt: dict[str, Any], option: Option) -> dict[str, Any]:
    booked = {
        **appt,
        "status": "booked",
        "slot": _slot_refs(option),
        "participant": [{**p, "status": "accepted"} for p in appt["participant"]],
    }
    booked.pop("meta", None)
    return booked


def existing(conn: Connection, store: Store, appointment_id: str) -> dict[str, Any]:
    stored = store.read(conn, "Appointment", appointment_id)
    if stored is None or stored.deleted:
        raise NotFound(f"Appointment/{appointment_id} does not exist")
    return stored.resource()


def _existing_locked(conn: Connection, store: Store, appointment_id: str) -> dict[str, Any]:
    """The Appointment as it stands once the Slots it names are locked (PostgreSQL).

    Its Slots are known only from a read, and a move of the same Appointment can commit between
    that read and the lock: the version read after the lock then names Slots nothing holds, and
    a second move can run alongside it. A cancellation that did so deleted no busy time (the move
    had deleted the old row and its new one was not yet visible), so the move's time stayed
    booked for a cancelled Appointment. So the Appointment is read again after each lock until
    every Slot it names is locked; whoever moves it holds those. Each round locks its new Slots
    in id order; a later round comes only after a move committed meanwhile, and a deadlock it
    could make is ended by PostgreSQL (409). SQLite's writers are already serialised.
    """
    appt = existing(conn, store, appointment_id)
    if conn.dialect.name != "postgresql":
        return appt
    locked: set[str] = set()
    while not (named := set(slot_ids(appt))) <= locked:
        _lock_slots(conn, named - locked)
        locked |= named
        appt = existing(conn, store, appointment_id)
    return appt


def book_new(
    conn: Connection,
    *,
    store: Store,
    config: ClinicConfig,
    appointment: Any | None,
    reference: str | None,
    now: datetime,
) -> StoredVersion:
    """Book a proposed or held Appointment (by resource, or a held one by reference or id)."""
    held_id: str | None = None
    if reference:
        held_id = reference.split("/")[-1]
        appointment = existing(conn, store, held_id)
    elif isinstance(appointment, dict) and appointment.get("id"):
        stored = store.read(conn, "Appointment", str(appointment["id"]))
        if stored is not None and not stored.deleted:
            held_id = stored.res_id  # a held Appointment, as the client holds it
            appointment = {**appointment, "status": stored.resource().get("status")}
    w = _wanted(appointment)  # refuses anything but an Appointment dict
    appt: dict[str, Any] = cast(dict[str, Any], appointment)
    if held_id is not None and appt.get("status") != "pending":
        raise BadRequest(f"Appointment/{held_id} is {appt.get('status')}, not pending (held)")
    option = _offered_locked(conn, store, config, w, appt, now, ignore_hold=held_id)
    booked = _as_booked(appt, option)
    if held_id:
        outcome = service.update(
            conn,
            store=store,
            resource_type="Appointment",
            resource_id=held_id,
            resource={**booked, "id": held_id},
        )
    else:
        booked.pop("id", None)
        outcome = service.create(conn, store=store, resource_type="Appointment", resource=booked)
    assert outcome.stored is not None
    _claim(conn, config, w, outcome.stored.res_id, "booked", None, now)
    set_slots(conn, store, option.slots, "busy")
    return outcome.stored


def check_notice(config: ClinicConfig, appt: dict[str, Any], now: datetime, what: str) -> None:
    """Cancelling or moving a booked Appointment needs the clinic's cancellation notice."""
    hours = config.rules.cancellation_notice_hours
    start = parse_fhir_date(str(appt["start"])).low
    if start - now < timedelta(hours=hours):
        local = start.astimezone(config.tz).strftime("%A %d %B %Y at %H:%M")
        raise BusinessRule(
            f"{what} needs {hours} hours' notice and the appointment is on {local}; "
            "please call the clinic"
        )


def _release(conn: Connection, store: Store, appointment_id: str, appt: dict[str, Any]) -> None:
    """Give up an Appointment's time: its busy time and buffer, and its Slots."""
    conn.execute(delete(BT).where(BT.c.appointment_id == appointment_id))
    set_slots(conn, store, slot_ids(appt), "free")


def cancel(
    conn: Connection,
    *,
    store: Store,
    config: ClinicConfig,
    appointment_id: str,
    now: datetime,
    reason: Any = None,
    enforce_notice: bool = True,
) -> StoredVersion:
    """Cancel a booked (or held) Appointment: its busy time and buffer go, its Slots are freed.

    A booked one needs the clinic's cancellation notice (``enforce_notice``); a hold can always
    be let go.
    """
    appt = _existing_locked(conn, store, appointment_id)
    if appt.get("status") not in ("booked", "pending"):
        raise BadRequest(
            f"Appointment/{appointment_id} is {appt.get('status')}; "
            "only booked or pending appointments can be cancelled"
        )
    if enforce_notice and appt["status"] == "booked":
        check_notice(config, appt, now, "cancelling")
    _release(conn, store, appointment_id, appt)
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


def modify(
    conn: Connection,
    *,
    store: Store,
    config: ClinicConfig,
    appointment: dict[str, Any],
    now: datetime,
    enforce_notice: bool = True,
) -> StoredVersion:
    """Change a booked Appointment in place (ITI-117 modify), keeping its id.

    Details (comment, description, reason, instructions) change freely.  A new time,
    practitioner, location or visit type is checked against every rule as a new booking would
    be, its old time not counting against it, under the cancellation notice for the old time;
    if the new time is refused nothing changes.  The patient cannot change.
    """
    appointment_id = str(appointment["id"])
    old = _existing_locked(conn, store, appointment_id)
    if old.get("status") != "booked":
        raise BadRequest(f"Appointment/{appointment_id} is {old.get('status')}, not booked")
    was, w = _wanted(old), _wanted(appointment)
    if w.patient != was.patient:
        raise BadRequest(
            "a booked appointment's patient cannot change; cancel it and book again",
            expression=["Appointment.participant"],
        )
    if w == was:
        body = {**appointment, "status": "booked", "slot": old.get("slot", [])}
        body["participant"] = [{**p, "status": "accepted"} for p in appointment["participant"]]
        body.pop("meta", None)
        outcome = service.update(
            conn,
            store=store,
            resource_type="Appointment",
            resource_id=appointment_id,
            resource=body,
        )
        assert outcome.stored is not None
        return outcome.stored
    if enforce_notice:
        check_notice(config, old, now, "moving an appointment")
    _release(conn, store, appointment_id, old)
    option = _offered_locked(conn, store, config, w, appointment, now, moving=appointment_id)
    outcome = service.update(
        conn,
        store=store,
        resource_type="Appointment",
        resource_id=appointment_id,
        resource=_as_booked(appointment, option),
    )
    assert outcome.stored is not None
    _claim(conn, config, w, appointment_id, "booked", None, now)
    set_slots(conn, store, option.slots, "busy")
    return outcome.stored


@dataclass(frozen=True, slots=True)
class RetryKey:
    """A ``$book`` retry key as one principal sent it, with the request it came with.

    The key (an ``Idempotency-Key`` header, or an Appointment identifier) is chosen by the
    client, so on its own it names nothing: two clients, two users of one app or two patients
    may pick the same one. It names a request only together with its owner: the client, the
    signed-in user and the patient of a patient-context token ('' where there is none).
    ``request`` is the SHA-256 of the request (:func:`request_digest`): the same key sent with
    another request is refused, never answered with the first one's result.
    """

    key: str
    client_id: str
    user_id: str
    patient: str
    request: bytes

    def owned(self) -> dict[str, str]:
        return {
            "client_id": self.client_id,
            "user_id": self.user_id,
            "patient": self.patient,
            "key": self.key,
        }


class KeyReused(Unprocessable):
    """The IETF Idempotency-Key draft's 422: a key sent again with a different request."""

    message_id = "FS-0602"


class KeyInFlight(Exception):
    """Another request with the same idempotency key committed first: replay its result."""

    def __init__(self, key: RetryKey) -> None:
        super().__init__(key.key)
        self.key = key


def request_digest(*, parameters: Any) -> bytes:
    """SHA-256 over the canonical JSON (sorted keys, no spaces) of an operation's parameters."""
    canonical = json.dumps(parameters, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).digest()


# a key's reservation, or nothing if the key is taken (no error, so no savepoint is needed)
_RESERVE_KEY = {
    "postgresql": Direct(pg_insert(IK).on_conflict_do_nothing().returning(IK.c.key)),
    "sqlite": Direct(sqlite_insert(IK).on_conflict_do_nothing().returning(IK.c.key)),
}


def _owned(key: RetryKey) -> Any:
    return and_(*(IK.c[name] == value for name, value in key.owned().items()))


def _first_result(conn: Connection, key: RetryKey) -> Any:
    """The result first recorded under ``key`` by its owner, or None while it is in flight;
    422 if that was another request."""
    prior = conn.execute(select(IK).where(_owned(key), IK.c.status > 0)).first()
    if prior is not None and bytes(prior.request_hash or b"") != key.request:
        raise KeyReused(
            "this idempotency key was used with a different request; "
            "send a new key for a new request"
        )
    return prior


def claim_key(conn: Connection, *, key: RetryKey, now: datetime) -> Any:
    """The first result its owner recorded under ``key``, or None after reserving the key for
    this request; 422 (:class:`KeyReused`) if the key came with another request.

    The reservation is a row insert, one statement when the key is new: a concurrent request
    with the same key and owner waits on it, then finds the first one's result (or, if that
    is not there, fails with :class:`KeyInFlight`), so a retried ``$book`` never books twice.
    """
    row = {
        **key.owned(),
        "request_hash": key.request,
        "operation": "book",
        "status": 0,
        "res_type": "",
        "res_id": "",
        "version": 0,
        "created": now,
    }
    if _RESERVE_KEY[conn.dialect.name].run(conn, row).fetchone() is not None:
        return None
    prior = _first_result(conn, key)
    if prior is None:
        raise KeyInFlight(key)
    return prior


def remember(conn: Connection, *, key: RetryKey, status: int, stored: StoredVersion) -> None:
    conn.execute(
        update(IK)
        .where(_owned(key))
        .values(
            status=status, res_type=stored.res_type, res_id=stored.res_id, version=stored.version
        )
    )


def replay(conn: Connection, *, store: Store, key: RetryKey) -> tuple[int, StoredVersion] | None:
    """After losing the race for ``key``: the winner's result (None if it did not commit one)."""
    prior = _first_result(conn, key)
    if prior is None:
        return None
    stored = store.vread(conn, prior.res_type, prior.res_id, prior.version)
    return (int(prior.status), stored) if stored is not None else None
