"""The patient a scheduling request describes: matched, created, or named with a start time.

A client without access to Patient (a booking agent allowed only ``$find`` and ``$book``)
describes the patient as a resource. ``$find`` matches it (:func:`match_patients`) to apply the
new- or existing-patient rules, and answers proposals that carry it *contained*, as it was sent
(:func:`contained_proposal`). ``$book`` of such a proposal matches it again in its own
transaction (:func:`booking_patient`): one match books for that Patient, none creates the
Patient there, several are refused for staff to resolve. Concurrent bookings for the same new
person take turns on PostgreSQL (:func:`lock_patient`), so only the first creates them.

``$book`` can also cancel or move the one booked Appointment a patient has at a given start
(:func:`booked_at`) without the client reading Appointments: zero or several get one and the
same answer, which reveals neither ids nor counts.
See https://profiles.ihe.net/ITI/Scheduling/ITI-117.html.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, text

from base.errors import BadRequest, NotFound, Unprocessable
from resources import service
from resources.fhirdate import as_utc, parse_fhir_date
from resources.search.lookup import send_blind_match
from resources.sql.direct import pipelined
from resources.store import Store, StoredVersion

__all__ = [
    "EXISTING_TAG",
    "NoSingleAppointment",
    "PatientAmbiguous",
    "PatientMatch",
    "booked_at",
    "booking_patient",
    "contained_patient",
    "contained_proposal",
    "lock_patient",
    "match_patients",
    "named_patient",
    "send_match_patients",
]

LOCAL_ID = "patient"  # the contained Patient's id in a proposal ("#patient")
# Patient.meta.tag marking an existing patient (clinic file: existing_patient.flag)
EXISTING_TAG = ("urn:fhir-sched:patient-status", "existing")


class PatientAmbiguous(Unprocessable):
    """Several Patients match the one described: nobody guesses which; staff decide."""

    code = "multiple-matches"
    message_id = "FS-0603"


class NoSingleAppointment(NotFound):
    """The one answer for no or several booked Appointments of a patient at a time."""

    message_id = "FS-0604"


NO_SINGLE = "no single booked appointment of this patient starts at that time"


@dataclass(frozen=True, slots=True)
class PatientMatch:
    """Who a described patient is here: ``id`` when exactly one Patient matches;
    ``ambiguous`` when several do and nothing told them apart."""

    id: str | None = None
    ambiguous: bool = False


def _phone(patient: dict[str, Any]) -> str | None:
    """The first phone number a described patient carries."""
    return next(
        (
            t["value"]
            for t in patient.get("telecom", []) or []
            if isinstance(t, dict)
            and t.get("system") == "phone"
            and isinstance(t.get("value"), str)
            and t["value"].strip()
        ),
        None,
    )


def _tries(patient: dict[str, Any]) -> tuple[list[list[tuple[str, str]]], int]:
    """The searches, in order: each identifier; family name and birth date; those and a
    phone number (the tie-breaker). Also how many are identifier searches."""
    tries: list[list[tuple[str, str]]] = [
        [("identifier", f"{i.get('system', '')}|{i['value']}")]
        for i in patient.get("identifier", [])
        if isinstance(i, dict) and isinstance(i.get("value"), str) and i["value"]
    ]
    identifiers = len(tries)
    names = [n.get("family") for n in patient.get("name", []) if isinstance(n, dict)]
    family = names[0] if names and isinstance(names[0], str) and names[0] else None
    birth = patient.get("birthDate")
    if family and isinstance(birth, str) and birth:
        tries.append([("family:exact", family), ("birthdate", birth)])
        phone = _phone(patient)
        if phone:
            tries.append([*tries[-1], ("phone", phone)])
    return tries, identifiers


def send_match_patients(
    conn: Connection, store: Store, patient: dict[str, Any] | None
) -> Callable[[], PatientMatch]:
    """Match a described Patient (queries sent now, inside the caller's ``pipelined``; the
    returned function reads the answer).

    The first identifier that names exactly one Patient decides; else family name and birth
    date if they name exactly one; else, when they name several, the same with the phone
    number. Anything that named several and was not told apart is ambiguous."""
    if not isinstance(patient, dict):
        return PatientMatch
    tries, identifiers = _tries(patient)
    read = send_blind_match(conn, store.keys, "Patient", tries)

    def match() -> PatientMatch:
        found = read()
        for ids in found[:identifiers]:
            if len(ids) == 1:
                return PatientMatch(ids[0])
        rest = found[identifiers:]
        if rest and len(rest[0]) == 1:
            return PatientMatch(rest[0][0])
        if rest and len(rest[0]) > 1 and len(rest) > 1 and len(rest[1]) == 1:
            return PatientMatch(rest[1][0])
        return PatientMatch(ambiguous=any(len(ids) > 1 for ids in found))

    return match


def match_patients(conn: Connection, store: Store, patient: dict[str, Any] | None) -> PatientMatch:
    """:func:`send_match_patients`, sent and read."""
    with pipelined(conn):
        read = send_match_patients(conn, store, patient)
    return read()


def lock_patient(conn: Connection, store: Store, patient: dict[str, Any]) -> None:
    """PostgreSQL: wait for any other transaction matching (and perhaps creating) a patient
    described with the same identifier or the same family name and birth date, until it ends.

    Transaction-scoped advisory locks, one per match key, taken in key order (no deadlock).
    The keys are keyed digests (the index secret's), so ``pg_locks`` shows nothing one could
    test a guessed name against. SQLite needs none: its writers already take turns.
    """
    if conn.dialect.name != "postgresql":
        return
    tries, _ = _tries(patient)
    keys = sorted(
        {
            struct.unpack(">q", store.keys.blind("Patient.match-lock", repr(sorted(t)))[:8])[0]
            for t in tries
            if not any(name == "phone" for name, _ in t)
        }
    )
    for key in keys:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


def contained_proposal(appointment: dict[str, Any], patient: dict[str, Any]) -> dict[str, Any]:
    """A proposed Appointment whose patient participant is ``patient``, contained as the client
    sent it (its id replaced by a local one)."""
    contained = {**patient, "id": LOCAL_ID}
    contained.pop("meta", None)
    return {
        **appointment,
        "contained": [contained],
        "participant": [
            *appointment["participant"],
            {
                "actor": {"reference": f"#{LOCAL_ID}"},
                "required": "required",
                "status": "needs-action",
            },
        ],
    }


def contained_patient(appointment: Any) -> dict[str, Any] | None:
    """The contained Patient an Appointment's participant points at (``#id``), if any; 400
    if it points at one that is not there."""
    if not isinstance(appointment, dict):
        return None
    for p in appointment.get("participant", []) or []:
        ref = ((p or {}).get("actor") or {}).get("reference") if isinstance(p, dict) else None
        if not (isinstance(ref, str) and ref.startswith("#")):
            continue
        for c in appointment.get("contained", []) or []:
            if (
                isinstance(c, dict)
                and c.get("resourceType") == "Patient"
                and c.get("id") == ref[1:]
            ):
                return c
        raise BadRequest(
            f"the participant {ref} names no contained Patient",
            expression=["Appointment.participant"],
        )
    return None


def _with_patient(appointment: dict[str, Any], patient_id: str) -> dict[str, Any]:
    """The Appointment naming ``Patient/<id>`` where it pointed at its contained Patient, which
    it no longer carries."""
    participants = []
    for p in appointment["participant"]:
        ref = (p.get("actor") or {}).get("reference", "")
        if isinstance(ref, str) and ref.startswith("#"):
            p = {**p, "actor": {**p["actor"], "reference": f"Patient/{patient_id}"}}
        participants.append(p)
    contained = [c for c in appointment.get("contained", []) if c.get("resourceType") != "Patient"]
    out = {**appointment, "participant": participants, "contained": contained}
    if not contained:
        out.pop("contained")
    return out


def _matched(conn: Connection, store: Store, patient: dict[str, Any]) -> str | None:
    found = match_patients(conn, store, patient)
    if found.ambiguous:
        raise PatientAmbiguous(
            "more than one patient here matches the patient described; the clinic's staff "
            "must resolve this (merge the records or book by the Patient's id)"
        )
    return found.id


def booking_patient(
    conn: Connection, *, store: Store, appointment: Any
) -> tuple[Any, StoredVersion | None]:
    """A ``$book``'s Appointment with its contained Patient resolved, in the booking's
    transaction: matched to one Patient (named instead), or none, then created here (returned
    too, so its creation can be audited); several: 422, and so is a patient described too
    little to be matched (no identifier, nor family name and birth date). Anything else is
    returned as it is."""
    patient = contained_patient(appointment)
    if patient is None:
        return appointment, None
    if not _tries(patient)[0]:  # a Patient created so could never be found again
        raise Unprocessable(
            "describe the patient by an identifier, or by family name and birth date",
            expression=["Appointment.contained"],
        )
    lock_patient(conn, store, patient)
    patient_id = _matched(conn, store, patient)
    created = None
    if patient_id is None:
        body = {k: v for k, v in patient.items() if k not in ("id", "meta")}
        outcome = service.create(conn, store=store, resource_type="Patient", resource=body)
        assert outcome.stored is not None
        created = outcome.stored
        patient_id = created.res_id
    return _with_patient(appointment, patient_id), created


def named_patient(conn: Connection, store: Store, appointment: dict[str, Any]) -> str | None:
    """The Patient an Appointment names, by reference or as a contained Patient matched (422
    when several match; None when nobody does)."""
    patient = contained_patient(appointment)
    if patient is not None:
        return _matched(conn, store, patient)
    for p in appointment.get("participant", []) or []:
        ref = ((p or {}).get("actor") or {}).get("reference") if isinstance(p, dict) else None
        if isinstance(ref, str) and ref.startswith("Patient/"):
            return ref.split("/", 1)[1]
    return None


def _start(appointment: dict[str, Any]) -> datetime:
    raw = appointment.get("start")
    try:
        value = parse_fhir_date(str(raw)) if raw else None
    except ValueError:
        value = None
    if value is None or value.precision in ("year", "month", "day") or not value.has_offset:
        raise BadRequest(
            "name the appointment by its start, a dateTime with a time zone offset, and its "
            "patient",
            expression=["Appointment.start"],
        )
    return as_utc(value.low)


def _phone_on_file(
    conn: Connection, store: Store, appointment: dict[str, Any], patient_id: str
) -> bool:
    """Whether the phone number a contained Patient carries is on file for ``patient_id``
    (true when it carries none). A client that proved the number (an SMS from it, a code
    sent to it) names it, so a name and birth date alone never reach someone else's visit."""
    patient = contained_patient(appointment)
    phone = _phone(patient) if patient is not None else None
    if phone is None:
        return True
    _, result = service.search(
        conn,
        store=store,
        resource_type="Patient",
        params=[("_id", patient_id), ("phone", phone), ("_count", "1")],
    )
    return len(result.matches) == 1


def booked_at(conn: Connection, *, store: Store, appointment: dict[str, Any]) -> str:
    """The id of the one booked Appointment of the patient ``appointment`` names that starts
    at its ``start``. No such patient, a phone number given that is not theirs, no such
    Appointment and several of them are the same 404, so the answer tells nothing of what
    else exists."""
    start = _start(appointment)
    patient_id = named_patient(conn, store, appointment)
    if patient_id is None or not _phone_on_file(conn, store, appointment, patient_id):
        raise NoSingleAppointment(NO_SINGLE)
    second = timedelta(seconds=1)
    _, result = service.search(
        conn,
        store=store,
        resource_type="Appointment",
        params=[
            ("patient", f"Patient/{patient_id}"),
            ("status", "booked"),
            ("date", f"ge{start.isoformat()}"),
            ("date", f"lt{(start + second).isoformat()}"),
            ("_count", "2"),
        ],
    )
    exact = [
        m
        for m in result.matches
        if m.body is not None and as_utc(parse_fhir_date(str(m.resource()["start"])).low) == start
    ]
    if len(exact) != 1 or len(result.matches) > 1:
        raise NoSingleAppointment(NO_SINGLE)
    return exact[0].res_id
