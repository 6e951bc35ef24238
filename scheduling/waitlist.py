"""Waitlist entries: an R4 ``Appointment`` with status ``waitlist`` that asks for a visit
sooner than the calendar gave.

An entry names the visit type (``serviceType``, coded as ``$find``'s proposals code it), the
patient (a Patient participant), optionally the clinician (and location) wanted, and one or
more ``requestedPeriod``\\ s: when the patient could come. It names no Slot and claims no time
(no ``busy_time``): it is a request, not a booking, so ``$find`` and ``$book`` never see it.
``outreach.waitlist`` offers freed time to the entries that fit.

An entry ends as ``cancelled``: when it was booked from the waitlist its ``cancelationReason``
says so (:data:`BOOKED_REASON`) and the booked Appointment names it in
``supportingInformation``. R4 has no status for a request that was met (``fulfilled`` means
the visit took place), and ``entered-in-error`` would say it never was a request.
See https://hl7.org/fhir/R4/appointment.html ("waitlist", ``requestedPeriod``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from base.errors import Unprocessable
from resources import service
from resources.fhirdate import parse_fhir_date
from resources.store import Store, StoredVersion
from scheduling.booking import participant_id
from scheduling.clinic import VISIT_TYPE_SYSTEM
from scheduling.config import ClinicConfig

__all__ = ["BOOKED_REASON", "Entry", "InvalidEntry", "check_entry", "join", "visit_code"]

REASON_SYSTEM = "urn:fhir-sched:cancelation-reason"
BOOKED_REASON = {
    "coding": [
        {"system": REASON_SYSTEM, "code": "waitlist-booked", "display": "Booked from the waitlist"}
    ],
    "text": "Booked from the waitlist",
}


class InvalidEntry(Unprocessable):
    """A waitlist entry that cannot be offered anything (what is missing is said)."""

    message_id = "FS-0607"


@dataclass(frozen=True, slots=True)
class Entry:
    """A waitlist entry as the waitlist job reads it."""

    id: str
    visit_type: str
    patient: str | None
    practitioner: str | None
    location: str | None
    periods: tuple[tuple[datetime, datetime], ...]

    def wants(self, start: datetime) -> bool:
        return any(low <= start < high for low, high in self.periods)


def visit_code(appt: dict[str, Any]) -> str | None:
    return next(
        (
            str(c["code"])
            for st in appt.get("serviceType", []) or []
            if isinstance(st, dict)
            for c in st.get("coding", []) or []
            if isinstance(c, dict) and c.get("system") == VISIT_TYPE_SYSTEM and c.get("code")
        ),
        None,
    )


def _periods(appt: dict[str, Any]) -> tuple[tuple[datetime, datetime], ...]:
    out = []
    for i, p in enumerate(appt.get("requestedPeriod", []) or []):
        where = [f"Appointment.requestedPeriod[{i}]"]
        try:
            low = parse_fhir_date(str(p["start"])).low
            high = parse_fhir_date(str(p["end"])).high
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidEntry(
                "each requestedPeriod of a waitlist entry needs a start and an end",
                expression=where,
            ) from exc
        if high <= low:
            raise InvalidEntry("a requestedPeriod must end after it starts", expression=where)
        out.append((low, high))
    if not out:
        raise InvalidEntry(
            "a waitlist entry needs requestedPeriod: when the patient could come",
            expression=["Appointment.requestedPeriod"],
        )
    return tuple(out)


def check_entry(config: ClinicConfig | None, appt: dict[str, Any], *, rid: str = "") -> Entry:
    """The entry ``appt`` is, or :class:`InvalidEntry` (422) saying what it lacks: a
    requestedPeriod, a visit type this clinic offers (and that the clinician named offers), a
    Patient participant; and no Slot or time of its own. Without a clinic (``config`` None)
    the visit type is not checked against one."""
    periods = _periods(appt)
    if appt.get("slot") or appt.get("start") or appt.get("end"):
        raise InvalidEntry(
            "a waitlist entry claims no time: give requestedPeriod, not slot, start or end",
            expression=["Appointment.slot"],
        )
    code = visit_code(appt)
    if code is None:
        raise InvalidEntry(
            f"a waitlist entry names its visit type in serviceType ({VISIT_TYPE_SYSTEM})",
            expression=["Appointment.serviceType"],
        )
    practitioner = participant_id(appt, "Practitioner")
    location = participant_id(appt, "Location")
    if config is not None:
        visit = config.visit_type(code)
        if visit is None:
            known = ", ".join(v.code for v in config.visit_types)
            raise InvalidEntry(
                f"unknown visit type {code!r}; known: {known}",
                expression=["Appointment.serviceType"],
            )
        if practitioner is not None and not (
            practitioner in config.practitioner_names and config.offers(visit, practitioner)
        ):
            raise InvalidEntry(
                f"Practitioner/{practitioner} does not offer {code} here",
                expression=["Appointment.participant"],
            )
        if location is not None and location not in config.location_names:
            raise InvalidEntry(
                f"Location/{location} is not one of this clinic's",
                expression=["Appointment.participant"],
            )
    patient = participant_id(appt, "Patient")
    if patient is None:
        raise InvalidEntry(
            "a waitlist entry is for a patient: add a participant whose actor is "
            '{"reference": "Patient/<id>"} ($book also matches a contained Patient)',
            expression=["Appointment.participant"],
        )
    return Entry(rid or str(appt.get("id") or ""), code, patient, practitioner, location, periods)


def join(
    conn: Any, *, store: Store, config: ClinicConfig, appointment: dict[str, Any], now: datetime
) -> StoredVersion:
    """Put a patient on the waitlist (``$book`` with status ``waitlist``; its contained
    Patient already resolved): the entry checked, stamped ``created`` if it is not, stored."""
    body = {k: v for k, v in appointment.items() if k not in ("id", "meta")}
    body.setdefault("created", now.astimezone(config.tz).isoformat(timespec="seconds"))
    body["participant"] = [
        {**p, "status": p.get("status") or "needs-action"} for p in body.get("participant", [])
    ]
    check_entry(config, body)
    outcome = service.create(conn, store=store, resource_type="Appointment", resource=body)
    assert outcome.stored is not None
    return outcome.stored
