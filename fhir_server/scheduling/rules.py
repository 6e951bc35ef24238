"""Practice rules as data: may this visit start at this time with this practitioner?

Pure functions over the clinic configuration and the practitioner's booked visits that day;
``$find`` uses them to offer only bookable options and ``$book`` checks them again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from fhir_server.scheduling.config import WEEKDAYS, ClinicConfig, VisitType

__all__ = ["Booked", "Candidate", "Refusal", "buffer_after", "check_rules"]


@dataclass(frozen=True, slots=True)
class Booked:
    """A visit already on the practitioner's calendar."""

    visit_type: str | None
    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class Candidate:
    practitioner: str
    visit: VisitType
    start: datetime  # UTC
    new_patient: bool

    @property
    def end(self) -> datetime:
        return self.start + timedelta(minutes=self.visit.minutes)


@dataclass(frozen=True, slots=True)
class Refusal:
    rule: str
    reason: str


def _applies(practitioners: list[str] | None, practitioner: str) -> bool:
    return practitioners is None or practitioner in practitioners


def buffer_after(config: ClinicConfig, practitioner: str, visit_type: str | None) -> timedelta:
    """Free time to keep after a visit of this type with this practitioner."""
    minutes = max(
        (
            b.minutes
            for b in config.rules.buffers
            if visit_type in b.after and _applies(b.practitioners, practitioner)
        ),
        default=0,
    )
    return timedelta(minutes=minutes)


def check_rules(
    config: ClinicConfig,
    candidate: Candidate,
    *,
    now: datetime,
    booked_that_day: Iterable[Booked] = (),
) -> Refusal | None:
    """The first rule that forbids ``candidate``, or None when it may be booked."""
    rules = config.rules
    c = candidate
    tz = config.tz
    local_start = c.start.astimezone(tz)
    local_end = c.end.astimezone(tz)
    weekday = WEEKDAYS[local_start.weekday()]
    if not config.offers(c.visit, c.practitioner):
        return Refusal("visit-type", f"{c.practitioner} does not offer {c.visit.code}")
    if c.visit.patients == "new" and not c.new_patient:
        return Refusal("patients", f"{c.visit.code} is for new patients only")
    if c.visit.patients == "existing" and c.new_patient:
        return Refusal("patients", f"{c.visit.code} is for existing patients only")
    if c.start < now.astimezone(UTC) + timedelta(minutes=rules.min_notice_minutes):
        return Refusal("min-notice", f"needs {rules.min_notice_minutes} minutes' notice")
    if c.start > now.astimezone(UTC) + timedelta(days=rules.booking_horizon_days):
        return Refusal("horizon", f"beyond the {rules.booking_horizon_days}-day booking horizon")
    for x in rules.exclusions:
        if x.practitioner != c.practitioner or weekday not in x.days:
            continue
        if x.visit_types is not None and c.visit.code not in x.visit_types:
            continue
        if x.patients == "new" and not c.new_patient:
            continue
        if x.patients == "existing" and c.new_patient:
            continue
        return Refusal("exclusion", f"{c.practitioner} does not see these visits on {weekday}")
    if c.new_patient:
        windows = [
            w for w in rules.new_patient_windows if _applies(w.practitioners, c.practitioner)
        ]
        if windows and not any(
            weekday in w.days
            and w.start <= local_start.time()
            and local_end.time() <= w.end
            and local_end.date() == local_start.date()
            for w in windows
        ):
            return Refusal("new-patient-window", "new patients only inside their set windows")
    booked = list(booked_that_day)
    for cap in rules.daily_caps:
        if cap.visit_type != c.visit.code or not _applies(cap.practitioners, c.practitioner):
            continue
        same_day = [
            b
            for b in booked
            if b.visit_type == cap.visit_type
            and b.start.astimezone(tz).date() == local_start.date()
        ]
        if len(same_day) >= cap.max:
            return Refusal("daily-cap", f"at most {cap.max} {cap.visit_type} visits a day")
    own_buffer = buffer_after(config, c.practitioner, c.visit.code)
    for b in booked:
        # an earlier visit's buffer may not overlap us; our buffer may not overlap a later one
        b_buffer = buffer_after(config, c.practitioner, b.visit_type)
        if b.start < c.end + own_buffer and c.start < b.end + b_buffer:
            return Refusal("buffer", "too close to another visit that needs a buffer")
    return None
