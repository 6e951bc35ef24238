"""Apply an inbound SIU change to the server's records, inside the caller's transaction.

The EMR is the system of record for its own calendar, so clinic rules (notice, caps, new-patient
windows) are not applied to what it reports; the double-booking guard is. Its bookings claim
their time in ``busy_time`` like any other: if the time is already booked or held here, the
Appointment is still recorded (nothing the EMR said is dropped) but claims no time and frees
no one's Slots, is tagged ``hl7-conflict`` (``Appointment?_tag=…``) and the message is marked
``conflict`` for staff; bookings made through FHIR stay exactly as guarded as before.

* The Appointment is found by the sender's keys (SCH-2 filler id, then SCH-1 placer id, in
  ``hl7_link``), never created twice for a known key; an unknown key creates it, whatever the
  event (a cancellation that arrives before its booking is kept, so the late booking, being
  older, cannot revive it).
* A message older (MSH-7) than the newest one applied to that Appointment changes nothing.
* PID resolves the Patient by identifier, then by family name and birth date; otherwise a
  Patient is created from PID.
* AIP/AIL resolve against the clinic's practitioners and locations (id, identifier or name);
  unknown ones stay on the Appointment by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, delete, insert, select, union_all, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError

from hl7_bridge.parse import ParseError
from hl7_bridge.siu_to_fhir import Person, SIUChange
from hl7_bridge.status import FILLER_STATUS_EXTENSION
from resources import service
from resources.fhirdate import as_utc, parse_fhir_date
from resources.sql.direct import Direct, pipelined
from resources.sql.tables import BusyTime, HL7Link, SlotTime
from resources.store import Store
from scheduling.availability import schedule_id
from scheduling.booking import (
    INSERT_BUSY,
    free_holds,
    participant_id,
    set_slots,
    slot_ids,
)
from scheduling.calendar_reads import match_patient, send_match_patient
from scheduling.clinic import VISIT_TYPE_SYSTEM
from scheduling.config import ClinicConfig, VisitType
from scheduling.spans import busy_overlapping, lower, slots_overlapping

__all__ = ["CONFLICT_TAG", "Applied", "Batch", "apply_change"]

BT = cast(Table, BusyTime.__table__)
LINK = cast(Table, HL7Link.__table__)
ST = cast(Table, SlotTime.__table__)

CONFLICT_TAG = {
    "system": "urn:fhir-sched:tags",
    "code": "hl7-conflict",
    "display": "Booked in the EMR over time already taken here: staff to resolve",
}
HOLDS_TIME = {"booked", "pending", "arrived", "checked-in", "fulfilled"}

# Built once: every inbound message runs these (no statement construction per message).
# A key the message does not carry is bound as NULL, which matches nothing. Two whole-key
# lookups, not one OR: PostgreSQL planned the OR as a scan of all the sender's links, a cost
# that grew with every appointment the sender ever sent (0.4 ms at 1,200 links).
# Planned on every run: hl7_link and hl7_message start empty, and a plan psycopg prepared while
# they were (a scan of the whole table, the best plan for a few rows) stayed until autovacuum
# next analysed them, each lookup reading every row stored so far (800 rows a message after
# 800 messages; 2.9 ms of PostgreSQL's CPU a message, of which scans were half).
_LINKED = Direct(
    union_all(
        *(
            select(LINK).where(
                LINK.c.sender == bindparam("sender"),
                LINK.c.kind == kind,
                LINK.c.value == bindparam(kind),
            )
            for kind in ("filler", "placer")
        )
    ),
    plan_per_run=True,
)
_INSERT_LINK = Direct(insert(LINK).inline(), deferrable=True)
_UPDATE_LINK = Direct(
    update(LINK)
    .where(
        LINK.c.sender == bindparam("b_sender"),
        LINK.c.kind == bindparam("b_kind"),
        LINK.c.value == bindparam("b_value"),
    )
    .values(appointment_id=bindparam("appointment_id"), last_sent_at=bindparam("last_sent_at"))
)
_COVERED = Direct(slots_overlapping(ST.c.schedule_id == bindparam("sched")))
_INSERT_BUSY_UNLESS_TAKEN = Direct(pg_insert(BT).on_conflict_do_nothing().returning(BT.c.pk))
_RELEASE = delete(BT).where(BT.c.appointment_id == bindparam("appointment_id"))


@dataclass(frozen=True, slots=True)
class Applied:
    appointment_id: str | None
    status: str  # applied | conflict | superseded
    patient_id: str | None = None
    note: str | None = None
    warnings: tuple[tuple[str, str], ...] = ()  # (code, words): applied, with a caveat


def _link_keys(change: SIUChange) -> list[tuple[str, str, str]]:
    return [
        (change.sender, kind, value)
        for kind, value in (("filler", change.filler), ("placer", change.placer))
        if value
    ]


def _send_linked(conn: Connection, change: SIUChange) -> Callable[[], Any]:
    """Send the query for the link of the message's filler id, else its placer id; the
    returned function reads it."""
    keys = {
        "sender": change.sender,
        "filler": change.filler or None,
        "placer": change.placer or None,
    }
    read = _LINKED.send(conn, keys)
    return lambda: min(read(), key=lambda r: r.kind != "filler", default=None)


class Batch:
    """Messages applied one after another in one transaction (a group commit, or one message).

    :meth:`prefetch` sends every message's link and patient queries together, one round trip
    for the group. A message whose keys an earlier one in the batch has linked since, or any
    message after one that created a Patient, reads again (the rows written meanwhile are sent
    first: ``Direct``'s deferral). The Slots the messages mark busy or free are written once,
    by :meth:`finish`, each with the status the last message gave it.
    """

    def __init__(self, store: Store, known_patients: dict[str, str]) -> None:
        self.store = store
        self.known = known_patients  # identifier → Patient id, kept across batches
        self.marks: dict[str, str] = {}  # Slot id → busy | free
        self._links: dict[int, Callable[[], Any]] = {}  # id(change) → its link, sent
        self._patients: dict[int, Callable[[], str | None]] = {}  # id(change) → its Patient
        self._linked: set[tuple[str, str, str]] = set()  # link keys written in this batch
        self._created = False  # a Patient was created in this batch

    def prefetch(self, conn: Connection, changes: list[SIUChange]) -> None:
        """Send the link and patient queries of ``changes`` (call inside ``pipelined``)."""
        for change in changes:
            self._links[id(change)] = _send_linked(conn, change)
            self._patients[id(change)] = _send_patient(conn, self.store, change.patient, self.known)

    def link(self, conn: Connection, change: SIUChange) -> Any:
        sent = self._links.pop(id(change), None)
        if sent is None or not self._linked.isdisjoint(_link_keys(change)):
            return _send_linked(conn, change)()
        return sent()

    def patient(self, conn: Connection, change: SIUChange) -> str | None:
        sent = self._patients.pop(id(change), None)
        if sent is None or self._created:
            sent = _send_patient(conn, self.store, change.patient, self.known)
        found = sent()
        if found is None and change.patient:
            self._created = True
        return _patient(conn, self.store, change.patient, self.known, found)

    def linking(self, change: SIUChange) -> None:
        """``change``'s keys are being linked: later messages read their links again."""
        self._linked.update(_link_keys(change))

    def mark(self, ids: list[str], status: str) -> None:
        self.marks.update(dict.fromkeys(ids, status))

    def finish(self, conn: Connection) -> None:
        """Write the Slots' statuses (call once every message is applied). A Slot given up
        stays busy while another booking still covers part of it: an EMR's visits need not
        keep to the Slots' grid, so two of them (09:00-09:20 and 09:20-09:40) can share one."""
        freed = [s for s, want in self.marks.items() if want == "free"]
        covered = _still_booked(conn, freed)
        set_slots(conn, self.store, [s for s in freed if s not in covered], "free")
        set_slots(conn, self.store, [s for s, want in self.marks.items() if want == "busy"], "busy")
        self.marks.clear()


def _still_booked(conn: Connection, slot_ids: list[str]) -> set[str]:
    """Of these Slots, those that booked time in ``busy_time`` overlaps (one query per
    schedule, over the span of its Slots; only when Slots are given up)."""
    if not slot_ids:
        return set()
    rows = conn.execute(
        select(ST.c.slot_id, ST.c.schedule_id, ST.c.start_s, ST.c.end_s).where(
            ST.c.slot_id.in_(slot_ids)
        )
    ).all()
    by_schedule: dict[str, list[tuple[str, int, int]]] = {}
    for slot_id, sched, start_s, end_s in rows:
        by_schedule.setdefault(sched, []).append((slot_id, start_s, end_s))
    covered: set[str] = set()
    for sched, slots in by_schedule.items():
        start = datetime.fromtimestamp(min(s[1] for s in slots), UTC)
        end = datetime.fromtimestamp(max(s[2] for s in slots), UTC)
        query = busy_overlapping(
            conn.dialect.name,
            [BT.c.start, BT.c.end],
            BT.c.schedule_id == sched,
            BT.c.kind == "booked",
        )
        booked = conn.execute(
            union_all(*query), {"start": start, "end": end, "lower": lower(start)}
        ).all()
        spans = [(as_utc(b[0]).timestamp(), as_utc(b[1]).timestamp()) for b in booked]
        covered.update(
            slot_id
            for slot_id, start_s, end_s in slots
            if any(b_start < end_s and start_s < b_end for b_start, b_end in spans)
        )
    return covered


def _link(
    conn: Connection, batch: Batch, change: SIUChange, appointment_id: str, *, new: bool
) -> None:
    sent = change.sent_at.astimezone(UTC) if change.sent_at else None  # SQLite keeps no offset
    batch.linking(change)
    rows = [
        {
            "sender": sender,
            "kind": kind,
            "value": value,
            "appointment_id": appointment_id,
            "last_sent_at": sent,
        }
        for sender, kind, value in _link_keys(change)
    ]
    if new:
        _INSERT_LINK.run(conn, rows)
        return
    for row in rows:
        key = {"b_sender": row["sender"], "b_kind": row["kind"], "b_value": row["value"]}
        done = _UPDATE_LINK.run(
            conn, {**key, "appointment_id": appointment_id, "last_sent_at": sent}
        )
        if not done.rowcount:
            _INSERT_LINK.run(conn, row)


def _patient_keys(patient: dict[str, Any]) -> list[str]:
    return [
        f"{i.get('system', '')}|{i['value']}"
        for i in patient.get("identifier", [])
        if i.get("value")
    ]


def _send_patient(
    conn: Connection, store: Store, patient: dict[str, Any] | None, known: dict[str, str]
) -> Callable[[], str | None]:
    """Send the queries that find the Patient PID names: a Patient remembered for one of its
    identifiers, if it is still there, else a match (identifier, then name and birth date);
    the returned function reads which Patient that is (None: none, it is to be created)."""
    if not patient:
        return lambda: None
    remembered = next((known[k] for k in _patient_keys(patient) if k in known), None)
    if remembered is None:
        return send_match_patient(conn, store, patient)
    read = store.send_current(conn, "Patient", remembered)

    def found() -> str | None:
        current = read()
        if current is not None and not current.deleted:
            return remembered
        return match_patient(conn, store, patient)  # gone, or its creation rolled back

    return found


def _patient(
    conn: Connection,
    store: Store,
    patient: dict[str, Any] | None,
    known: dict[str, str],
    found: str | None,
) -> str | None:
    """The Patient PID names: ``found`` (by :func:`_send_patient`), or created.

    ``known`` remembers identifier → Patient id across messages (senders repeat the same
    patients all day); a remembered Patient that is gone, or a transaction that rolled back
    its creation, is simply looked up again.
    """
    if not patient:
        return None
    if found is None:
        outcome = service.create(conn, store=store, resource_type="Patient", resource=dict(patient))
        assert outcome.stored is not None
        found = outcome.stored.res_id
    if len(known) > 50_000:
        known.clear()
    known.update(dict.fromkeys(_patient_keys(patient), found))
    return found


def _practitioner(config: ClinicConfig | None, who: Person) -> str | None:
    """The clinic's practitioner ``who`` names: by id (any case, so a user name such as
    ``DR-SMITH`` matches), by any identifier (the NPI), else by given and family name."""
    wanted = who.id.lower()
    for p in config.practitioners if config else []:
        if wanted and (wanted == p.id.lower() or any(i.value == who.id for i in p.identifiers)):
            return p.id
    for p in config.practitioners if config else []:
        names = {f"{g} {p.family}".lower() for g in p.given} | {p.family.lower()}
        if who.name and who.name.lower() in names and not wanted:
            return p.id
    return None


def _location(config: ClinicConfig | None, where: Person) -> str | None:
    for loc in config.locations if config else []:
        names = {loc.id.lower(), loc.name.lower()}
        if where.id.lower() in names or (where.name and where.name.lower() in names):
            return loc.id
    return None


@dataclass(frozen=True, slots=True)
class _Resources:
    """Who and where, as resolved: the practitioners and locations to list (first ones
    resolved to the clinic's ids when they can be)."""

    practitioners: list[Person]
    locations: list[Person]
    practitioner: str | None
    location: str | None


def _resources(config: ClinicConfig | None, change: SIUChange) -> _Resources:
    """AIP first; else an AIG or an AIL that names one of the clinic's practitioners (senders
    put the provider there). The location: the first AIL that is one, else the only location
    where the clinic's hours put the practitioner."""
    people = change.practitioners
    if not any(_practitioner(config, p) for p in people):
        named = [p for p in change.resources + change.locations if _practitioner(config, p)]
        people = people + named if named else people
    places = [p for p in change.locations if p not in people]
    practitioner = next((r for r in (_practitioner(config, p) for p in people) if r), None)
    location = next((r for r in (_location(config, p) for p in places) if r), None)
    if location is None and practitioner and config is not None:
        where = {h.location for h in config.hours if h.practitioner == practitioner}
        location = where.pop() if len(where) == 1 else None
    first_known = sorted(people, key=lambda p: _practitioner(config, p) is None)
    return _Resources(first_known, places, practitioner, location)


def _visit_type(config: ClinicConfig | None, change: SIUChange) -> VisitType | None:
    codes = {c["code"].lower() for c in change.services}
    return (
        next((v for v in config.visit_types if v.code.lower() in codes), None) if config else None
    )


def _participants(
    found: _Resources,
    status: str,
    patient_id: str | None,
    practitioner: str | None,
    location: str | None,
    old: dict[str, Any] | None,
) -> list[dict[str, Any]]:
    """Patient, then practitioners (AIP), then locations (AIL); what the message leaves out is
    kept from the Appointment as it was."""
    before = (old or {}).get("participant", [])

    def kept(rtype: str) -> list[dict[str, Any]]:
        return [
            p for p in before if str((p.get("actor") or {}).get("reference", "")).startswith(rtype)
        ]

    out = [{"actor": {"reference": f"Patient/{patient_id}"}}] if patient_id else kept("Patient/")
    # the first AIP and AIL are the ones resolved; others stay as the sender named them
    for rtype, resolved, people in (
        ("Practitioner", practitioner, found.practitioners),
        ("Location", location, found.locations),
    ):
        if not people:
            # a location found from the clinic's hours is named; else kept as it was
            mine = [{"actor": {"reference": f"{rtype}/{resolved}"}}] if resolved else []
            out += kept(f"{rtype}/") or mine
        for i, person in enumerate(people):
            actor = (
                {"reference": f"{rtype}/{resolved}"}
                if i == 0 and resolved
                else {"display": person.name or person.id}
            )
            out.append({"actor": actor})
    state = "declined" if status == "cancelled" else "accepted"
    return [{**p, "status": state} for p in out]


def _covered_slots(
    conn: Connection, sched: str, start: datetime, end: datetime
) -> Callable[[], list[str]]:
    """The Slots the time covers, from the returned function (the query is sent now)."""
    span = {
        "sched": sched,
        "start_s": int(start.timestamp()),
        "end_s": int(end.timestamp()),
        "lower_s": int(lower(start).timestamp()),
    }
    read = _COVERED.send(conn, span)
    return lambda: sorted(row[0] for row in read())


def _claim(
    conn: Connection,
    sched: str,
    appointment_id: str,
    start: datetime,
    end: datetime,
    visit_type: str | None,
    now: datetime,
) -> list[str] | None:
    """Claim the time and return the Slots it covers; None if it is already booked or held
    here (the guard refused, and only the claim's own statement failed: the message's
    transaction goes on). On PostgreSQL the claim and the Slots' query go in one round trip.
    Expired holds on the time are cleared only when the guard refuses, then the claim is
    tried once more (this Appointment's own busy rows, holds included, were released by the
    caller)."""
    row: dict[str, Any] = {
        "schedule_id": sched,
        "start": start,
        "end": end,
        "appointment_id": appointment_id,
        "kind": "booked",
        "visit_type": visit_type,
        "expires_at": None,
    }
    if end <= start:
        return None  # no time to claim (the table's check would refuse it)
    with pipelined(conn):
        claimed = _insert_claim(conn, row)
        covered = _covered_slots(conn, sched, start, end)
    if claimed():
        return covered()
    free_holds(conn, schedule=sched, start=start, end=end, now=now, appointment_id=appointment_id)
    return covered() if _insert_claim(conn, row)() else None


def _insert_claim(conn: Connection, row: dict[str, Any]) -> Callable[[], bool]:
    """Send the claim; the returned function says whether the guard let it in."""
    if conn.dialect.name == "postgresql":  # the exclusion constraint's refusal, in one statement
        cursor = _INSERT_BUSY_UNLESS_TAKEN.run(conn, row)
        return lambda: cursor.fetchone() is not None
    try:  # SQLite's guard is a trigger, RAISE(ABORT): the statement fails, the transaction stays
        INSERT_BUSY.run(conn, row)
    except IntegrityError:
        return lambda: False
    return lambda: True


def _span(
    change: SIUChange, old: dict[str, Any] | None, visit: VisitType | None
) -> tuple[datetime, datetime]:
    """Start and end in UTC (SQLite compares instants as text): the message's, else those the
    Appointment had. A start the message gives without an end lasts the clinic's visit type,
    else as long as the Appointment did."""
    before = (old or {}).get("start"), (old or {}).get("end")
    old_start = parse_fhir_date(before[0]).low if before[0] else None
    old_end = parse_fhir_date(before[1]).low if before[1] else None
    start, end = change.start or old_start, change.end
    if change.start is None:
        end = old_end
    elif end is None and visit is not None:
        end = start + timedelta(minutes=visit.minutes) if start else None
    elif end is None and old_start is not None and old_end is not None and start is not None:
        end = start + (old_end - old_start)
    if start is None:
        raise ParseError(
            "no appointment start: SCH-11.4, TQ1-7 and the AIS-4, AIG-8, AIL-6 and AIP-6 "
            "start times are all empty or unreadable; send the start in TQ1-7 (v2.5 and "
            "later) or SCH-11.4, with the end in TQ1-8 or SCH-11.5",
            location="SCH-11",
        )
    if end is None:
        codes = ", ".join(repr(c["code"]) for c in change.services) or "(empty)"
        raise ParseError(
            "the appointment has a start but no end: TQ1-8, SCH-11.5 and every duration "
            "(TQ1-6, SCH-11.3, SCH-9/10, AIS-7/8) are empty or unreadable, and AIS-3 "
            f"{codes} is no visit type of the clinic file; send the end or a duration, or "
            "add the visit type to the clinic file",
            location="TQ1-8",
        )
    return start.astimezone(UTC), end.astimezone(UTC)


def _body(
    change: SIUChange,
    status: str,
    old: dict[str, Any] | None,
    span: tuple[datetime, datetime],
    shown: tzinfo,
    visit_type: str | None,
    participants: list[dict[str, Any]],
) -> dict[str, Any]:
    """The Appointment the message describes; what it leaves out is kept from ``old``."""
    start, end = span
    resource: dict[str, Any] = {
        "resourceType": "Appointment",
        "identifier": _merge_identifiers(old, change.identifiers()),
        "status": status,
        "start": start.astimezone(shown).isoformat(),
        "end": end.astimezone(shown).isoformat(),
        "minutesDuration": max(1, round((end - start).total_seconds() / 60)),
        "participant": participants,
    }
    services = [dict(c) for c in change.services]
    if visit_type:
        services.insert(0, {"system": VISIT_TYPE_SYSTEM, "code": visit_type})
    if services:
        resource["serviceType"] = [{"coding": services}]
    elif old and old.get("serviceType"):
        resource["serviceType"] = old["serviceType"]
    if change.reason:
        resource["reasonCode"] = [{"text": change.reason}]
    comment = change.comment or (old or {}).get("comment")
    if comment:
        resource["comment"] = comment
    extensions = _extensions(change, old)
    if extensions:
        resource["extension"] = extensions
    if status == "cancelled":
        resource["cancelationReason"] = {"text": f"cancelled in the EMR ({change.event})"}
    return resource


def _extensions(change: SIUChange, old: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The Appointment's extensions: SCH-25 as this message sent it (else as an earlier one
    did), beside any others it had."""
    before = list((old or {}).get("extension", []))
    sent = change.filler_status.extension() if change.filler_status else None
    if sent is None:
        return before
    return [e for e in before if e.get("url") != FILLER_STATUS_EXTENSION] + [sent]


def apply_change(
    conn: Connection,
    *,
    store: Store,
    config: ClinicConfig | None,
    change: SIUChange,
    now: datetime,
    batch: Batch,
) -> Applied:
    """Apply ``change`` as one of ``batch``'s messages (its Slots are written by
    ``batch.finish``)."""
    link = batch.link(conn, change)
    old: dict[str, Any] | None = None
    if link is not None:
        if change.sent_at and link.last_sent_at and change.sent_at < as_utc(link.last_sent_at):
            return Applied(
                link.appointment_id,
                "superseded",
                note="older than what was applied",
                warnings=tuple(change.warnings),
            )
        stored = store.read(conn, "Appointment", link.appointment_id)
        old = stored.resource() if stored is not None and not stored.deleted else None
    visit = _visit_type(config, change)
    visit_type = visit.code if visit else None
    start, end = _span(change, old, visit)
    patient_id = batch.patient(conn, change)
    found = _resources(config, change)
    practitioner, location = found.practitioner, found.location
    if old is not None and not found.practitioners:
        practitioner = participant_id(old, "Practitioner")
    if old is not None and not found.locations and location is None:
        location = participant_id(old, "Location")
    # an S14 without a usable SCH-25 keeps the status the Appointment has
    wanted = change.status or str((old or {}).get("status") or "booked")
    participants = _participants(found, wanted, patient_id, practitioner, location, old)
    resource = _body(
        change, wanted, old, (start, end), config.tz if config else UTC, visit_type, participants
    )

    # give up the old time, then claim the new one (the guard decides)
    if link is not None:
        appointment_id = str(link.appointment_id)
        conn.execute(_RELEASE, {"appointment_id": appointment_id})
    else:
        appointment_id = service.new_id()
    status = "applied"
    slots: list[str] = []
    if wanted in HOLDS_TIME and practitioner and location and not change.all_day:
        sched = schedule_id(practitioner, location)
        covered = _claim(conn, sched, appointment_id, start, end, visit_type, now)
        if covered is None:
            status = "conflict"
        else:
            slots = covered
    freed = [s for s in slot_ids(old or {}) if s not in slots]
    if slots:
        resource["slot"] = [{"reference": f"Slot/{s}"} for s in slots]
    tags = [t for t in ((old or {}).get("meta") or {}).get("tag", []) if t != CONFLICT_TAG]
    if status == "conflict":
        tags.append(CONFLICT_TAG)
    resource["meta"] = {"tag": tags} if tags else {}
    if link is None:  # a new Appointment, under the id minted above
        service.create(
            conn,
            store=store,
            resource_type="Appointment",
            resource=resource,
            assigned_id=appointment_id,
        )
    else:
        resource["id"] = appointment_id
        service.update(
            conn,
            store=store,
            resource_type="Appointment",
            resource_id=appointment_id,
            resource=resource,
        )
    batch.mark(freed, "free")
    batch.mark(slots, "busy")
    _link(conn, batch, change, appointment_id, new=link is None)
    note = "overlaps a booking made here" if status == "conflict" else None
    return Applied(appointment_id, status, patient_id, note, tuple(change.warnings))


def _merge_identifiers(
    old: dict[str, Any] | None, new: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    out = list(new)
    for ident in (old or {}).get("identifier", []):
        if not any(i.get("system") == ident.get("system") for i in out):
            out.append(ident)
    return out
