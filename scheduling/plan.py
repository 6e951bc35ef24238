"""What a ``$find`` asks and what it will look at: the request parsed from the operation's
parameters (:class:`FindRequest`), checked and turned into the schedules to offer
(:func:`plan_find`). Both :mod:`.find` and :mod:`.calendar_reads` build on it.
See https://profiles.ihe.net/ITI/Scheduling/ITI-115.html.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from base.errors import BadRequest
from scheduling.availability import schedule_id
from scheduling.config import ClinicConfig, ExistingPatient, VisitType

__all__ = ["FindPlan", "FindRequest", "plan_find", "schedule_days"]


@dataclass
class FindRequest:
    start: datetime
    end: datetime
    visit_type: str
    practitioners: list[str] = field(default_factory=list)  # Practitioner ids
    specialties: list[str] = field(default_factory=list)  # codes or system|code
    locations: list[str] = field(default_factory=list)  # Location ids
    location_text: str | None = None
    patient_id: str | None = None
    patient_resource: dict[str, Any] | None = None
    count: int = 50
    # the Appointment being moved: it does not make its patient an existing one
    moving: str | None = None
    # a page's place: the options after this (start epoch, practitioner, location)
    after: tuple[int, str, str] | None = None


def _check_window(config: ClinicConfig, req: FindRequest) -> None:
    if req.end <= req.start:
        raise BadRequest("end must be after start", expression=["end"])
    widest = timedelta(days=config.rules.max_find_window_days)
    if req.end - req.start > widest:
        raise BadRequest(
            f"the window is wider than {widest.days} days; ask for a shorter window",
            expression=["end"],
        )


def _schedules(config: ClinicConfig, req: FindRequest, visit: VisitType) -> list[tuple[str, str]]:
    """(practitioner, location) pairs that offer this visit and fit the filters."""
    codes = {s.split("|")[-1] for s in req.specialties}
    text = req.location_text.lower() if req.location_text else None
    out = []
    for practitioner, location in config.schedule_pairs:
        if not config.offers(visit, practitioner):
            continue
        if req.practitioners and practitioner not in req.practitioners:
            continue
        if req.locations and location not in req.locations:
            continue
        if text and text not in config.location_names[location].lower():
            continue
        if codes and codes.isdisjoint(config.specialty_codes[practitioner]):
            continue
        out.append((practitioner, location))
    return out


def schedule_days(config: ClinicConfig, request: FindRequest) -> float:
    """How much calendar a ``$find`` will scan: schedules times days (0 if it is invalid)."""
    visit = config.visit_type(request.visit_type)
    if visit is None or request.end <= request.start:
        return 0.0
    return len(_schedules(config, request, visit)) * _days_asked(request)


def _days_asked(request: FindRequest) -> float:
    return max((request.end - request.start).total_seconds() / 86400, 1.0)


@dataclass(frozen=True)
class FindPlan:
    """What a ``$find`` will look at: the visit, the schedules to offer, and the schedules
    whose busy time counts (every location of the practitioners asked about, since caps and
    buffers count their visits anywhere)."""

    visit: VisitType
    pairs: list[tuple[str, str]]  # (practitioner, location) to offer
    owner: dict[str, str]  # schedule id -> practitioner, for busy time
    existing: ExistingPatient  # who counts as an existing patient

    @property
    def schedules(self) -> list[str]:
        return [schedule_id(p, loc) for p, loc in self.pairs]

    def schedule_days(self, request: FindRequest) -> float:
        """:func:`schedule_days` of a planned (so valid) request, without choosing again."""
        return len(self.pairs) * _days_asked(request)


def plan_find(config: ClinicConfig, request: FindRequest) -> FindPlan:
    """Check the request (400s that say what to fix) and choose the schedules."""
    _check_window(config, request)
    visit = config.visit_type(request.visit_type)
    if visit is None:
        known = ", ".join(v.code for v in config.visit_types)
        raise BadRequest(
            f"unknown visit-type {request.visit_type!r}; known: {known}", expression=["visit-type"]
        )
    pairs = _schedules(config, request, visit)
    asked = {p for p, _ in pairs}
    owner = {
        schedule_id(h.practitioner, h.location): h.practitioner
        for h in config.hours
        if h.practitioner in asked
    }
    return FindPlan(visit, pairs, owner, config.existing_patient)
