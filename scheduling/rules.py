"""Practice rules as data: may this visit start at this time with this practitioner?

Pure functions over the clinic configuration and the practitioner's booked visits that day;
``$find`` uses them to offer only bookable options and ``$book`` checks them again.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache

from scheduling.config import WEEKDAYS, ClinicConfig, DailyCap, Exclusion, VisitType

__all__ = [
    "Booked",
    "Candidate",
    "DayPolicy",
    "Refusal",
    "buffer_after",
    "check_rules",
    "day_policy",
]


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
    cause: Exclusion | DailyCap | None = None  # the clinic file's entry that refused, if one


def _applies(practitioners: list[str] | None, practitioner: str) -> bool:
    return practitioners is None or practitioner in practitioners


def buffer_after(config: ClinicConfig, practitioner: str, visit_type: str | None) -> timedelta:
    """Free time to keep after a visit of this type with this practitioner."""
    return timedelta(seconds=_buffer_seconds(config, practitioner, visit_type))


def _buffer_seconds(config: ClinicConfig, practitioner: str, visit_type: str | None) -> int:
    known = config.buffer_seconds
    seconds = known.get((practitioner, visit_type))
    if seconds is None:
        seconds = 60 * max(
            (
                b.minutes
                for b in config.rules.buffers
                if visit_type in b.after and _applies(b.practitioners, practitioner)
            ),
            default=0,
        )
        known[(practitioner, visit_type)] = seconds
    return seconds


@lru_cache(maxsize=16)
def _notice_bounds(now: datetime, notice_minutes: int, horizon_days: int) -> tuple[int, int]:
    """The earliest and latest start (epoch seconds) bookable at ``now``."""
    now_utc = now.astimezone(UTC)
    return (
        _epoch(now_utc + timedelta(minutes=notice_minutes)),
        _epoch(now_utc + timedelta(days=horizon_days)),
    )


def _epoch(when: datetime) -> int:
    return int(when.timestamp())


@dataclass(slots=True)
class DayPolicy:
    """Every rule for one practitioner, visit type and patient on one local day, compiled so
    that each candidate start costs a few integer comparisons (times are epoch seconds).

    ``$find`` builds one per practitioner and day; :func:`check_rules` builds one per call.
    """

    before: Refusal | None  # visit type not offered, wrong kind of patient
    earliest: int  # minimum notice
    latest: int  # booking horizon
    exclusion: Refusal | None
    windows: list[tuple[int, int]] | None  # new-patient windows; None: no restriction
    cap: Refusal | None
    guarded: list[tuple[int, int]]  # booked visits and the buffers after them
    own_buffer: int
    notice_minutes: int
    horizon_days: int

    def check(self, start: int, end: int) -> Refusal | None:
        """The first rule that forbids a visit from ``start`` to ``end``, or None."""
        if self.before is not None:
            return self.before
        if start < self.earliest:
            return Refusal("min-notice", f"needs {self.notice_minutes} minutes' notice")
        if start > self.latest:
            return Refusal("horizon", f"beyond the {self.horizon_days}-day booking horizon")
        if self.exclusion is not None:
            return self.exclusion
        if self.windows is not None and not any(
            ws <= start and end <= we for ws, we in self.windows
        ):
            return Refusal("new-patient-window", "new patients only inside their set windows")
        if self.cap is not None:
            return self.cap
        # an earlier visit's buffer may not overlap us; our buffer may not overlap a later one
        padded = end + self.own_buffer
        for b_start, b_end in self.guarded:
            if b_start < padded and start < b_end:
                return Refusal("buffer", "too close to another visit that needs a buffer")
        return None

    def admits(self, starts: list[int], candidates: list[int], length: int) -> list[int]:
        """The candidates (indices into ``starts``, each a visit of ``length`` seconds) that
        :meth:`check` passes, with the common cases decided in bulk."""
        if self.before is not None or self.exclusion is not None or self.cap is not None:
            return []
        if self.windows is None and not self.guarded:  # candidates are in start order
            lo = bisect_left(candidates, self.earliest, key=starts.__getitem__)
            return candidates[
                lo : bisect_right(candidates, self.latest, lo, key=starts.__getitem__)
            ]
        return [i for i in candidates if self.check(starts[i], starts[i] + length) is None]


def day_policy(
    config: ClinicConfig,
    practitioner: str,
    visit: VisitType,
    new_patient: bool,
    day: date,
    *,
    now: datetime,
    booked: Iterable[Booked] = (),
) -> DayPolicy:
    """The rules for ``practitioner`` seeing ``visit`` on local ``day``, given what is booked."""
    rules = config.rules
    tz = config.tz
    weekday = WEEKDAYS[day.weekday()]
    before: Refusal | None = None
    if not config.offers(visit, practitioner):
        before = Refusal("visit-type", f"{practitioner} does not offer {visit.code}")
    elif visit.patients == "new" and not new_patient:
        before = Refusal("patients", f"{visit.code} is for new patients only")
    elif visit.patients == "existing" and new_patient:
        before = Refusal("patients", f"{visit.code} is for existing patients only")
    exclusion = None
    for x in rules.exclusions:
        if x.practitioner != practitioner or weekday not in x.days:
            continue
        if x.visit_types is not None and visit.code not in x.visit_types:
            continue
        if x.patients == "new" and not new_patient:
            continue
        if x.patients == "existing" and new_patient:
            continue
        exclusion = Refusal(
            "exclusion", f"{practitioner} does not see these visits on {weekday}", x
        )
        break
    windows: list[tuple[int, int]] | None = None
    if new_patient:
        applicable = [
            w for w in rules.new_patient_windows if _applies(w.practitioners, practitioner)
        ]
        if applicable:
            windows = [
                (
                    _epoch(datetime.combine(day, w.start, tzinfo=tz)),
                    _epoch(datetime.combine(day, w.end, tzinfo=tz)),
                )
                for w in applicable
                if weekday in w.days
            ]
    booked = list(booked)
    cap = None
    for c in rules.daily_caps:
        if c.visit_type != visit.code or not _applies(c.practitioners, practitioner):
            continue
        same_day = [
            b
            for b in booked
            if b.visit_type == c.visit_type and b.start.astimezone(tz).date() == day
        ]
        if len(same_day) >= c.max:
            cap = Refusal("daily-cap", f"at most {c.max} {c.visit_type} visits a day", c)
            break
    guarded = [
        (_epoch(b.start), _epoch(b.end) + _buffer_seconds(config, practitioner, b.visit_type))
        for b in booked
    ]
    earliest, latest = _notice_bounds(now, rules.min_notice_minutes, rules.booking_horizon_days)
    return DayPolicy(
        before=before,
        earliest=earliest,
        latest=latest,
        exclusion=exclusion,
        windows=windows,
        cap=cap,
        guarded=guarded,
        own_buffer=_buffer_seconds(config, practitioner, visit.code),
        notice_minutes=rules.min_notice_minutes,
        horizon_days=rules.booking_horizon_days,
    )


def check_rules(
    config: ClinicConfig,
    candidate: Candidate,
    *,
    now: datetime,
    booked_that_day: Iterable[Booked] = (),
) -> Refusal | None:
    """The first rule that forbids ``candidate``, or None when it may be booked."""
    c = candidate
    policy = day_policy(
        config,
        c.practitioner,
        c.visit,
        c.new_patient,
        c.start.astimezone(config.tz).date(),
        now=now,
        booked=booked_that_day,
    )
    return policy.check(_epoch(c.start), _epoch(c.end))
