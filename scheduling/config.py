"""The clinic configuration file (YAML), validated by pydantic.

A clinic writes down how it really works; :func:`load_clinic_config` refuses a bad file with
the path of the offending field and a plain explanation.  See ``docs/clinic-config.md`` and the
demo clinic in ``fhir_server/demo_clinic.yaml``.
"""

from __future__ import annotations

from datetime import date, time
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "Buffer",
    "ClinicConfig",
    "ClinicConfigError",
    "DailyCap",
    "Exclusion",
    "ExistingPatient",
    "Hours",
    "Location",
    "NewPatientWindow",
    "Practitioner",
    "QuietHours",
    "Reminders",
    "Rules",
    "TimeOff",
    "VisitType",
    "WaitlistPolicy",
    "load_clinic_config",
    "parse_clinic_config",
]

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Id = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9\-.]{1,48}$")]


class ClinicConfigError(ValueError):
    """A clinic file that cannot be used; ``problems`` lists (field path, explanation)."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {path}: {why}" for path, why in problems)
        super().__init__(f"{source} is not a valid clinic file:\n{lines}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Coding(_Model):
    system: str
    code: str
    display: str | None = None


class Identifier(_Model):
    system: str
    value: str


class Location(_Model):
    id: Id
    name: str
    address: list[str] = Field(default_factory=list, description="address lines")
    city: str | None = None
    state: str | None = None
    postal_code: str | None = None
    phone: str | None = None


class Practitioner(_Model):
    id: Id
    family: str
    given: list[str] = Field(default_factory=list)
    prefix: list[str] = Field(default_factory=list)
    identifiers: list[Identifier] = Field(default_factory=list)
    specialties: list[Coding] = Field(default_factory=list)


class VisitType(_Model):
    code: Id
    display: str
    minutes: int = Field(gt=0, le=8 * 60)
    patients: Literal["new", "existing", "any"] = "any"
    practitioners: list[Id] | None = Field(
        default=None, description="who offers it; omitted means every practitioner"
    )
    specialty: Coding | None = None


def _parse_hhmm(value: Any) -> time:
    if isinstance(value, time):
        return value
    if isinstance(value, int):  # YAML reads 09:00 as sexagesimal 540 in YAML 1.1
        return time(value // 60, value % 60)
    try:
        hh, mm = str(value).split(":")
        return time(int(hh), int(mm))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a time of day like 09:00") from exc


TimeOfDay = Annotated[time, BeforeValidator(_parse_hhmm)]


class _Window(_Model):
    days: list[Weekday] = Field(min_length=1)
    start: TimeOfDay
    end: TimeOfDay

    @model_validator(mode="after")
    def _order(self) -> _Window:
        if self.end <= self.start:
            raise ValueError(f"end {self.end:%H:%M} must be after start {self.start:%H:%M}")
        return self


class Hours(_Window):
    """Weekly hours: one practitioner at one location on some weekdays."""

    practitioner: Id
    location: Id
    valid_from: date | None = None
    valid_until: date | None = None


class TimeOff(_Model):
    """A day or range of days off (holiday, leave), whole days or part of a day."""

    name: str
    start_date: date
    end_date: date | None = None
    practitioners: list[Id] | None = Field(default=None, description="omitted: everyone")
    start: TimeOfDay | None = None
    end: TimeOfDay | None = None

    @model_validator(mode="after")
    def _check(self) -> TimeOff:
        if self.end_date is not None and self.end_date < self.start_date:
            raise ValueError("end_date is before start_date")
        if (self.start is None) != (self.end is None):
            raise ValueError("give both start and end for a part-day exception, or neither")
        if self.start and self.end and self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class Buffer(_Model):
    """Keep free time after a visit type (e.g. 15 minutes after procedures)."""

    after: list[Id] = Field(min_length=1, description="visit type codes")
    minutes: int = Field(gt=0, le=240)
    practitioners: list[Id] | None = None


class NewPatientWindow(_Window):
    """New patients may be booked only inside these windows (per practitioner)."""

    practitioners: list[Id] | None = None


class Exclusion(_Model):
    """A practitioner does not offer some visit types (or new patients) on some days."""

    practitioner: Id
    visit_types: list[Id] | None = None
    patients: Literal["new", "existing", "any"] = "any"
    days: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS))


class DailyCap(_Model):
    visit_type: Id
    max: int = Field(ge=0)
    practitioners: list[Id] | None = None


class Rules(_Model):
    buffers: list[Buffer] = Field(default_factory=list)
    new_patient_windows: list[NewPatientWindow] = Field(default_factory=list)
    exclusions: list[Exclusion] = Field(default_factory=list)
    daily_caps: list[DailyCap] = Field(default_factory=list)
    min_notice_minutes: int = Field(default=120, ge=0)
    booking_horizon_days: int = Field(default=56, ge=1, le=730)
    cancellation_notice_hours: int = Field(default=24, ge=0)
    max_find_window_days: int = Field(default=31, ge=1, le=366)


VisitStatus = Literal["booked", "arrived", "checked-in", "fulfilled", "noshow"]


class ExistingPatient(_Model):
    """Who is an existing patient here, for the visit types and rules that tell new from
    existing: someone seen here before (an earlier visit), or marked so on their Patient.

    A visit counts when its Appointment names the patient, has one of ``visits``' statuses
    and began before the time of the request (a booked visit still to come does not make
    anyone an existing patient: they have not been seen yet); an Appointment with no start
    counts by its status alone. ``within_years`` keeps only visits that began so recently (3
    is the US CPT rule for new and established patients). With ``flag``, a Patient tagged
    ``urn:fhir-sched:patient-status|existing`` (by staff, or an interface that knows the
    patient's history) is an existing patient whatever their visits here.
    """

    visits: tuple[VisitStatus, ...] = ("booked", "arrived", "checked-in", "fulfilled")
    within_years: int | None = Field(default=None, ge=1, le=100)
    flag: bool = True


class WaitlistPolicy(_Model):
    """Freed time offered to waitlisted patients: ``offer_batch`` at a time, the time held
    for them for ``offer_minutes``; the first YES books it."""

    enabled: bool = False
    offer_batch: int = Field(default=3, ge=1, le=20)
    offer_minutes: int = Field(default=30, ge=1, le=24 * 60)


REMINDER_TEMPLATE = (
    "Reminder: {clinician}, {date}, {time} at {location}. Reply YES to confirm or CANCEL to cancel."
)
REMINDER_FIELDS = ("clinician", "date", "time", "location", "visit")


class QuietHours(_Model):
    """Local times between which no reminder is sent (``start`` after ``end``: overnight)."""

    start: TimeOfDay = time(21, 0)
    end: TimeOfDay = time(8, 0)


class Reminders(_Model):
    """Reminder texts before booked appointments (``outreach/reminders.py``)."""

    enabled: bool = False
    offsets_hours: list[int] = Field(
        default_factory=lambda: [48, 24, 2], min_length=1, max_length=8
    )
    quiet_hours: QuietHours | None = Field(default_factory=QuietHours)
    visit_types: list[Id] | None = Field(default=None, description="omitted: every visit type")
    unanswered_to_staff: int = Field(default=2, ge=0, le=8, description="0: never")
    unanswered_after_minutes: int = Field(default=60, ge=0, le=24 * 60)
    extra_when_risk_at_least: float | None = Field(default=0.5, ge=0, le=1)
    extra_offset_hours: int = Field(default=72, ge=1, le=24 * 30)
    template: str = Field(default=REMINDER_TEMPLATE, min_length=1, max_length=600)

    @field_validator("offsets_hours")
    @classmethod
    def _offsets(cls, value: list[int]) -> list[int]:
        if any(h < 1 or h > 24 * 30 for h in value):
            raise ValueError("each offset is a whole number of hours from 1 to 720")
        if len(set(value)) != len(value):
            raise ValueError("offsets must differ")
        return sorted(value, reverse=True)

    @field_validator("template")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            value.format(**dict.fromkeys(REMINDER_FIELDS, ""))
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"the template may name only {{{'}, {'.join(REMINDER_FIELDS)}}} ({exc!r})"
            ) from exc
        return value


class ClinicConfig(_Model):
    """The whole clinic file."""

    name: str
    timezone: str
    # the country of phone numbers filed without one: texts go to them in E.164
    phone_region: str | None = "US"
    slot_minutes: int = Field(default=15, gt=0, le=120)
    horizon_weeks: int = Field(default=8, ge=1, le=104)
    hold_seconds: int = Field(default=90, ge=10, le=3600)
    locations: list[Location] = Field(min_length=1)
    practitioners: list[Practitioner] = Field(min_length=1)
    visit_types: list[VisitType] = Field(min_length=1)
    hours: list[Hours] = Field(default_factory=list)
    exceptions: list[TimeOff] = Field(default_factory=list)
    rules: Rules = Field(default_factory=Rules)
    existing_patient: ExistingPatient = Field(default_factory=ExistingPatient)
    waitlist: WaitlistPolicy = Field(default_factory=WaitlistPolicy)
    reminders: Reminders = Field(default_factory=Reminders)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"{value!r} is not an IANA time zone name such as America/New_York"
            ) from exc
        return value

    @field_validator("phone_region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        if value is not None and value not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(
                f"{value!r} is not a region of phone numbers: an ISO 3166 country code in "
                "capitals, such as US, CA or GB (or null: numbers are texted as filed)"
            )
        return value

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @model_validator(mode="after")
    def _references(self) -> ClinicConfig:
        """Every id a section names must be defined, and ids must be unique."""
        for section, ids in (
            ("locations", [x.id for x in self.locations]),
            ("practitioners", [x.id for x in self.practitioners]),
            ("visit_types", [x.code for x in self.visit_types]),
        ):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                raise ValueError(f"{section}: duplicate id(s) {', '.join(dupes)}")
        locs = {x.id for x in self.locations}
        pracs = {x.id for x in self.practitioners}
        visits = {x.code for x in self.visit_types}

        def check(kind: str, known: set[str], used: list[str] | None, where: str) -> None:
            for item in used or []:
                if item not in known:
                    raise ValueError(f"{where} names unknown {kind} {item!r}")

        for i, h in enumerate(self.hours):
            check("practitioner", pracs, [h.practitioner], f"hours[{i}]")
            check("location", locs, [h.location], f"hours[{i}]")
        for i, v in enumerate(self.visit_types):
            check("practitioner", pracs, v.practitioners, f"visit_types[{i}]")
        for i, e in enumerate(self.exceptions):
            check("practitioner", pracs, e.practitioners, f"exceptions[{i}]")
        r = self.rules
        for i, b in enumerate(r.buffers):
            check("visit type", visits, b.after, f"rules.buffers[{i}]")
            check("practitioner", pracs, b.practitioners, f"rules.buffers[{i}]")
        for i, w in enumerate(r.new_patient_windows):
            check("practitioner", pracs, w.practitioners, f"rules.new_patient_windows[{i}]")
        for i, x in enumerate(r.exclusions):
            check("practitioner", pracs, [x.practitioner], f"rules.exclusions[{i}]")
            check("visit type", visits, x.visit_types, f"rules.exclusions[{i}]")
        for i, c in enumerate(r.daily_caps):
            check("visit type", visits, [c.visit_type], f"rules.daily_caps[{i}]")
            check("practitioner", pracs, c.practitioners, f"rules.daily_caps[{i}]")
        check("visit type", visits, self.reminders.visit_types, "reminders.visit_types")
        for v in self.visit_types:
            if v.minutes % self.slot_minutes:
                raise ValueError(
                    f"visit type {v.code} lasts {v.minutes} min, not a multiple of "
                    f"slot_minutes ({self.slot_minutes})"
                )
        return self

    def visit_type(self, code: str) -> VisitType | None:
        return next((v for v in self.visit_types if v.code == code), None)

    def offers(self, visit: VisitType, practitioner: str) -> bool:
        return visit.practitioners is None or practitioner in visit.practitioners

    # Derived once (the model is frozen), for the per-request paths of $find and $book.

    @cached_property
    def schedule_pairs(self) -> list[tuple[str, str]]:
        """Each (practitioner, location) that has hours, once, in the order of the file."""
        return list(dict.fromkeys((h.practitioner, h.location) for h in self.hours))

    @cached_property
    def specialty_codes(self) -> dict[str, frozenset[str]]:
        """Practitioner id -> the codes of their specialties."""
        return {p.id: frozenset(c.code for c in p.specialties) for p in self.practitioners}

    @cached_property
    def location_names(self) -> dict[str, str]:
        return {loc.id: loc.name for loc in self.locations}

    @cached_property
    def practitioner_names(self) -> dict[str, str]:
        """Practitioner id -> the name a patient knows them by ("Dr. Alice Smith")."""
        return {p.id: " ".join([*p.prefix, *p.given[:1], p.family]) for p in self.practitioners}

    @cached_property
    def buffer_seconds(self) -> dict[tuple[str, str | None], int]:
        """Filled by :func:`~scheduling.rules.buffer_after` as it is asked."""
        return {}


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(file)"


def parse_clinic_config(data: Any, *, source: str = "clinic file") -> ClinicConfig:
    try:
        return ClinicConfig.model_validate(data)
    except ValidationError as exc:
        problems = [
            (_path(tuple(e["loc"])), str(e["msg"]).removeprefix("Value error, "))
            for e in exc.errors()
        ]
        raise ClinicConfigError(source, problems) from exc


def load_clinic_config(path: Path) -> ClinicConfig:
    """Read and validate a clinic YAML file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ClinicConfigError(str(path), [("(file)", f"not valid YAML: {exc}")]) from exc
    if not isinstance(data, dict):
        raise ClinicConfigError(str(path), [("(file)", "the file must be a YAML mapping")])
    return parse_clinic_config(data, source=str(path))
