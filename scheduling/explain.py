"""Why a ``$find`` found nothing, in words a front desk understands.

Run only when the answer is empty (:func:`~scheduling.find.compute_options` with
``explain=True``). It walks the times the practitioners' weekly hours would give in the window,
whether or not a Slot there is free, and names each clinic rule that removed one: the visit is
for new or existing patients only, minimum notice, booking horizon, holidays and leave, days
without hours, exclusions, new-patient windows, daily caps. Time that is taken (another
patient's booking, its buffer, a hold) is never named, so the reasons tell nothing of anyone
else's bookings; when no rule removed anything, the one reason says there was no free time.
See https://profiles.ihe.net/ITI/Scheduling/ITI-115.html.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from resources.fhirdate import as_utc
from scheduling.availability import hours_on, off_hours, time_off_on, working_windows
from scheduling.calendar_reads import Calendar, epoch
from scheduling.config import WEEKDAYS, ClinicConfig, DailyCap, Exclusion, TimeOff, VisitType
from scheduling.plan import FindPlan, FindRequest
from scheduling.rules import Booked, Refusal, day_policy

__all__ = ["Reason", "explain_empty"]

DAY_NAMES = dict(
    zip(
        WEEKDAYS,
        ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
        strict=True,
    )
)
# The order reasons are given in: the patient, who offers the visit, when anything is
# bookable, when the clinic is open, then the practice rules.
ORDER = (
    "patients",
    "practitioner",
    "min-notice",
    "horizon",
    "closed",
    "time-off",
    "no-hours",
    "hours",
    "exclusion",
    "new-patient-window",
    "daily-cap",
    "no-free-time",
)


@dataclass(frozen=True, slots=True)
class Reason:
    """One reason: ``rule`` is a stable code for programs, ``text`` the words for people."""

    rule: str
    text: str


def explain_empty(
    config: ClinicConfig,
    plan: FindPlan,
    request: FindRequest,
    calendar: Calendar,
    *,
    now: datetime,
) -> list[Reason]:
    """The rules that left nothing to offer, each named once, most general first."""
    visit = plan.visit
    patient = _patient_reason(visit, request, calendar.new_patient)
    if patient is not None:
        return [patient]
    if not plan.pairs:
        return [_nobody(config, visit, request)]
    booked = _booked(config, plan, calendar)
    found: dict[str, Reason] = {}
    closed: dict[tuple[str, str], list[str]] = {}  # weekdays without hours, per schedule
    outside: dict[tuple[str, str], Reason] = {}  # hours the window did not meet
    met: set[tuple[str, str]] = set()  # schedules with some time inside the window
    for day in _days(config, request):
        worked: dict[tuple[str, str], list[tuple[datetime, datetime]]] = {}
        for p, loc, begin, end in working_windows(config, day):
            worked.setdefault((p, loc), []).append((begin, end))
        for pair in plan.pairs:
            day_reasons = _day_reasons(
                config,
                visit,
                request,
                pair,
                day,
                worked.get(pair, []),
                new_patient=calendar.new_patient,
                booked=booked.get((pair[0], day), []),
                now=now,
            )
            if day_reasons is None:
                closed.setdefault(pair, []).append(WEEKDAYS[day.weekday()])
                continue
            reasons, hours = day_reasons
            if hours is None:
                met.add(pair)
            else:
                outside.setdefault(pair, hours)
            for reason in reasons:
                found.setdefault(reason.text, reason)
    for (practitioner, location), weekdays in closed.items():
        who = config.practitioner_names[practitioner]
        where = config.location_names[location]
        text = f"{who} does not see patients at {where} on {_days_of(weekdays)}"
        found.setdefault(text, Reason("no-hours", text))
    for pair, reason in outside.items():
        if pair not in met:  # the window asked never meets their hours
            found.setdefault(reason.text, reason)
    if not found:
        return [Reason("no-free-time", "no free time for this visit in the window asked")]
    return sorted(found.values(), key=lambda r: ORDER.index(r.rule))


def _patient_reason(visit: VisitType, request: FindRequest, new_patient: bool) -> Reason | None:
    if visit.patients == "existing" and new_patient:
        text = f"{_a(visit)} needs an earlier visit here"
        if request.patient_id is None and request.patient_resource is None:
            text += "; name the patient (patient-reference or patient-resource)"
        return Reason("patients", text)
    if visit.patients == "new" and not new_patient:
        return Reason(
            "patients", f"{_a(visit)} is for new patients, and this is an existing patient here"
        )
    return None


def _nobody(config: ClinicConfig, visit: VisitType, request: FindRequest) -> Reason:
    names = config.practitioner_names
    asked = [names[p] for p in request.practitioners if p in names]
    if asked and not any(config.offers(visit, p) for p in request.practitioners):
        return Reason("practitioner", f"{_join(asked)} {_does(asked)} not offer {_lower(visit)}")
    return Reason(
        "practitioner",
        f"nobody who offers {_lower(visit)} matches the practitioner, specialty or location asked",
    )


def _booked(
    config: ClinicConfig, plan: FindPlan, calendar: Calendar
) -> dict[tuple[str, date], list[Booked]]:
    """The visits booked per practitioner and local day (caps count them)."""
    out: dict[tuple[str, date], list[Booked]] = {}
    for sched_id, start, end, kind, _, visit_type in calendar.busy:
        if kind == "booked" and sched_id in plan.owner:
            start, end = as_utc(start), as_utc(end)
            key = (plan.owner[sched_id], start.astimezone(config.tz).date())
            out.setdefault(key, []).append(Booked(visit_type, start, end))
    return out


def _days(config: ClinicConfig, request: FindRequest) -> list[date]:
    first = request.start.astimezone(config.tz).date()
    last = (request.end - timedelta(microseconds=1)).astimezone(config.tz).date()
    return [first + timedelta(days=k) for k in range((last - first).days + 1)]


def _day_reasons(
    config: ClinicConfig,
    visit: VisitType,
    request: FindRequest,
    pair: tuple[str, str],
    day: date,
    worked: list[tuple[datetime, datetime]],
    *,
    new_patient: bool,
    booked: list[Booked],
    now: datetime,
) -> tuple[list[Reason], Reason | None] | None:
    """Why this practitioner has nothing at this location on this day, as far as rules say
    (``worked``: the local times they work there that day, less time off): None when they
    have no hours that day; else the reasons, and their hours that day when none of them is
    inside the window asked."""
    practitioner, location = pair
    hours = hours_on(config, practitioner, location, day)
    if not hours:
        return None
    who = config.practitioner_names[practitioner]
    tz = config.tz
    lo, hi = request.start.astimezone(UTC), request.end.astimezone(UTC)
    out = [
        _time_off(config, exc, who)
        for exc in time_off_on(config, practitioner, day)
        if any(_overlaps(day, tz, off_hours(exc), (h.start, h.end), lo, hi) for h in hours)
    ]
    # epoch seconds, as the rules take them
    length, step = 60 * visit.minutes, 60 * config.slot_minutes
    first, last = epoch(lo), epoch(hi) - length
    starts: list[int] = []
    within = False  # some working time inside the window (if not, say when they work)
    for begin, end in worked:
        b, e = epoch(begin), epoch(end)
        within = within or (b < last + length and first < e)
        starts += (t for t in range(b, e - length + 1, step) if first <= t <= last)
    if not within and not out:
        where = config.location_names[location]
        spans = ", ".join(f"{h.start:%H:%M}-{h.end:%H:%M}" for h in hours)
        weekday = _days_of([WEEKDAYS[day.weekday()]])
        return out, Reason("hours", f"{who} sees patients at {where} {spans} on {weekday}")
    policy = day_policy(config, practitioner, visit, new_patient, day, now=now, booked=booked)
    refused: dict[str, Refusal] = {}
    for start in starts:
        refusal = policy.check(start, start + length)
        if refusal is not None and refusal.rule != "buffer":  # a buffer is taken time
            refused.setdefault(refusal.rule, refusal)
    return out + [_words(config, visit, practitioner, r) for r in refused.values()], None


def _overlaps(
    day: date,
    tz: ZoneInfo,
    off: tuple[time, time],
    hours: tuple[time, time],
    lo: datetime,
    hi: datetime,
) -> bool:
    """Whether time off on ``day`` takes away working hours inside the window asked."""
    start = max(off[0], hours[0])
    end = min(off[1], hours[1])
    if start >= end:
        return False
    begin = datetime.combine(day, start, tzinfo=tz)
    finish = datetime.combine(day, end, tzinfo=tz)
    return begin < hi and lo < finish


def _time_off(config: ClinicConfig, exc: TimeOff, who: str) -> Reason:
    when = _date(exc.start_date)
    if exc.end_date is not None and exc.end_date != exc.start_date:
        when = f"from {when} to {_date(exc.end_date)}"
    else:
        when = f"on {when}"
    if exc.start is not None and exc.end is not None:
        when += f", {exc.start:%H:%M}-{exc.end:%H:%M}"
    if exc.practitioners is None:
        return Reason("closed", f"the clinic is closed {when} ({exc.name})")
    return Reason("time-off", f"{who} is away {when} ({exc.name})")


def _words(config: ClinicConfig, visit: VisitType, practitioner: str, refusal: Refusal) -> Reason:
    """A refusal by one of the day's rules, in words."""
    who = config.practitioner_names[practitioner]
    rules = config.rules
    rule = refusal.rule
    if rule == "min-notice":
        text = f"nothing is bookable less than {_minutes(rules.min_notice_minutes)} ahead"
    elif rule == "horizon":
        text = f"nothing is bookable more than {_days_ahead(rules.booking_horizon_days)} ahead"
    elif rule == "exclusion" and isinstance(refusal.cause, Exclusion):
        text = _exclusion(config, who, refusal.cause)
    elif rule == "new-patient-window":
        text = f"{who} sees new patients only {_windows(config, practitioner)}"
    elif rule == "daily-cap" and isinstance(refusal.cause, DailyCap):
        text = f"{who} sees at most {refusal.cause.max} {_plural(visit)} a day"
    else:
        text = refusal.reason
    return Reason(rule, text)


def _exclusion(config: ClinicConfig, who: str, x: Exclusion) -> str:
    days = "" if len(x.days) == len(WEEKDAYS) else f" on {_days_of(x.days)}"
    kinds = {"new": "new patients", "existing": "existing patients", "any": "patients"}[x.patients]
    if x.visit_types is None:
        verb = "takes no" if x.patients == "new" else "sees no"
        return f"{who} {verb} {kinds}{days}"
    visits = [_plural(v) for v in config.visit_types if v.code in x.visit_types]
    whom = "" if x.patients == "any" else f" for {kinds}"
    return f"{who} offers no {_join(visits, 'or')}{whom}{days}"


def _windows(config: ClinicConfig, practitioner: str) -> str:
    """The new-patient windows that apply to a practitioner ("on Tuesday mornings (08:00 to
    12:00)")."""
    parts = []
    for w in config.rules.new_patient_windows:
        if w.practitioners is not None and practitioner not in w.practitioners:
            continue
        period = ""
        if w.end <= time(12):
            period = "mornings"
        elif w.start >= time(12) and w.end <= time(18):
            period = "afternoons"
        days = _join([DAY_NAMES[d] for d in w.days]) + f" {period}" if period else _days_of(w.days)
        parts.append(f"on {days} ({w.start:%H:%M} to {w.end:%H:%M})")
    return _join(parts)


def _days_of(days: Sequence[str]) -> str:
    """Weekdays in the plural: "Mondays and Fridays", "weekdays"."""
    if set(days) == {"mon", "tue", "wed", "thu", "fri"}:
        return "weekdays"
    if set(days) == {"sat", "sun"}:
        return "weekends"
    return _join([DAY_NAMES[d] + "s" for d in WEEKDAYS if d in days])


def _join(items: list[str], last: str = "and") -> str:
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} {last} {items[-1]}"


def _does(names: list[str]) -> str:
    return "does" if len(names) == 1 else "do"


def _lower(visit: VisitType) -> str:
    """A visit type's display name inside a sentence ("Minor procedure" -> "minor
    procedure"; an acronym such as "MRI scan" is kept)."""
    name = visit.display
    return name[:1].lower() + name[1:] if name[1:2].islower() else name


def _a(visit: VisitType) -> str:
    name = _lower(visit)
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _plural(visit: VisitType) -> str:
    name = _lower(visit)
    return f"{name}s" if name.endswith("visit") else f"{name} visits"


def _minutes(minutes: int) -> str:
    if minutes and minutes % 60 == 0:
        hours = minutes // 60
        return "1 hour" if hours == 1 else f"{hours} hours"
    return "1 minute" if minutes == 1 else f"{minutes} minutes"


def _days_ahead(days: int) -> str:
    if days % 7 == 0:
        weeks = days // 7
        return "1 week" if weeks == 1 else f"{weeks} weeks"
    return "1 day" if days == 1 else f"{days} days"


def _date(day: date) -> str:
    return f"{DAY_NAMES[WEEKDAYS[day.weekday()]]} {day.day} {day:%B %Y}"
