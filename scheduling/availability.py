"""Weekly hours and exceptions → free time, cut into Slots of the clinic's base granularity.

All arithmetic on wall-clock times happens in the clinic's IANA zone; what comes out is UTC.
Across a DST change 09:00 local stays 09:00 local, so the UTC instant moves by an hour.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from scheduling.config import WEEKDAYS, ClinicConfig, Hours, TimeOff

__all__ = [
    "SlotSpec",
    "hours_on",
    "local_instant",
    "off_hours",
    "schedule_id",
    "slot_id",
    "slot_specs",
    "time_off_on",
    "working_windows",
]


@dataclass(frozen=True, slots=True, order=True)
class SlotSpec:
    start: datetime  # UTC
    end: datetime  # UTC
    practitioner: str
    location: str

    @property
    def schedule_id(self) -> str:
        return schedule_id(self.practitioner, self.location)

    @property
    def id(self) -> str:
        return slot_id(self.practitioner, self.location, self.start)


def schedule_id(practitioner: str, location: str) -> str:
    return f"sched-{practitioner}-{location}"


def slot_id(practitioner: str, location: str, start: datetime) -> str:
    return f"slot-{practitioner}-{location}-{start.astimezone(UTC):%Y%m%d%H%M}"


def local_instant(config: ClinicConfig, day: date, at: time) -> datetime:
    """The UTC instant of a wall-clock time on a day in the clinic's zone."""
    return datetime.combine(day, at, tzinfo=config.tz).astimezone(UTC)


def _applies(hours: Hours, day: date) -> bool:
    if WEEKDAYS[day.weekday()] not in hours.days:
        return False
    if hours.valid_from is not None and day < hours.valid_from:
        return False
    return hours.valid_until is None or day <= hours.valid_until


def hours_on(config: ClinicConfig, practitioner: str, location: str, day: date) -> list[Hours]:
    """The weekly hours this practitioner keeps at this location on ``day``, before time off."""
    return [
        h
        for h in config.hours
        if h.practitioner == practitioner and h.location == location and _applies(h, day)
    ]


def time_off_on(config: ClinicConfig, practitioner: str, day: date) -> list[TimeOff]:
    """The exceptions (holidays, leave) that take this practitioner away on ``day``."""
    out = []
    for exc in config.exceptions:
        last = exc.end_date or exc.start_date
        if not exc.start_date <= day <= last:
            continue
        if exc.practitioners is not None and practitioner not in exc.practitioners:
            continue
        out.append(exc)
    return out


def off_hours(exc: TimeOff) -> tuple[time, time]:
    """An exception's wall-clock interval on each of its days (whole day: 00:00-24:00)."""
    if exc.start is None or exc.end is None:
        return time(0, 0), time.max
    return exc.start, exc.end


def _off(config: ClinicConfig, practitioner: str, day: date) -> list[tuple[time, time]]:
    """Wall-clock intervals this practitioner is away on ``day`` (whole day: 00:00-24:00)."""
    return [off_hours(exc) for exc in time_off_on(config, practitioner, day)]


def working_windows(
    config: ClinicConfig, day: date
) -> Iterator[tuple[str, str, datetime, datetime]]:
    """(practitioner, location, start local, end local) windows worked on ``day``."""
    for hours in config.hours:
        if not _applies(hours, day):
            continue
        pieces = [(hours.start, hours.end)]
        for off_start, off_end in _off(config, hours.practitioner, day):
            nxt = []
            for a, b in pieces:
                if off_end <= a or off_start >= b:
                    nxt.append((a, b))
                    continue
                if a < off_start:
                    nxt.append((a, off_start))
                if off_end < b:
                    nxt.append((off_end, b))
            pieces = nxt
        for a, b in pieces:
            yield (
                hours.practitioner,
                hours.location,
                datetime.combine(day, a, tzinfo=config.tz),
                datetime.combine(day, b, tzinfo=config.tz),
            )


def slot_specs(config: ClinicConfig, *, first_day: date, last_day: date) -> Iterator[SlotSpec]:
    """Every base-granularity Slot from ``first_day`` to ``last_day`` inclusive."""
    step = timedelta(minutes=config.slot_minutes)
    day = first_day
    while day <= last_day:
        for practitioner, location, start, end in working_windows(config, day):
            t = start
            while t + step <= end:
                # step on the wall clock, convert each boundary on its own
                u_start = t.astimezone(UTC)
                u_end = (t + step).astimezone(UTC)
                if u_end - u_start == step:  # skip a slot torn by a DST jump
                    yield SlotSpec(u_start, u_end, practitioner, location)
                t += step
        day += timedelta(days=1)
