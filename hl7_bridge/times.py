"""When an SIU appointment starts and ends, from wherever the sender put it.

Pure: no database, no clock. Sources, in this order (HL7 v2.5.1 chapter 10.6; SCH-11 is the
TQ of 2.3-2.4, kept for backward compatibility; TQ1 replaced it in 2.5):

1. SCH-11 (TQ) in any of its layouts: ``^^duration^start^end``, a bare timestamp in its first
   component, or a date alone; its duration is TQ.3 (``M30``, ``H1``, ``30``) or SCH-9/10;
2. TQ1: TQ1-7 start, TQ1-8 end, TQ1-6 duration (a CQ: quantity^units), or SCH-9/10;
3. the resource segments' start, duration and units: AIS-4/7/8, AIG-8/11/12, AIL-6/9/10,
   AIP-6/9/10.

The first *complete* source wins: a start with a time of day and either an end after it or a
duration in units we read. Nothing here refuses a message; what could not be used becomes a
warning instead:

* a duration in units we cannot read (``000000``) does not count: an explicit end does, else
  the next source, else the caller's fallback (the visit type's length), with a warning;
* a start that is only a date makes an all-day appointment (the day, in the sender's zone),
  with a warning;
* an end at or before the start, or a timestamp that is not one, is set aside with a warning;
* times without an offset are read in the sender's configured zone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo

from hl7_bridge.parse import Message, ParseError, Segment, parse_dtm

__all__ = ["Timing", "read_times"]

_UNITS = {
    "s": 1,
    "sec": 1,
    "secs": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "mi": 60,
    "min": 60,
    "mins": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hr": 3600,
    "hrs": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
    "w": 604800,
    "wk": 604800,
    "week": 604800,
    "weeks": 604800,
}
_TQ_DURATION = re.compile(r"^([SMHDW])?(\d+(?:\.\d+)?)$", re.IGNORECASE)
_DTM_LIKE = re.compile(r"^\d{8}")  # SCH-11.1 holding a timestamp, not a quantity
_DATE_ONLY = re.compile(r"^\d{4}(\d{2}(\d{2})?)?([+-]\d{4})?$")
_MAX = timedelta(days=7)  # a longer "duration" is a misread unit, not an appointment


@dataclass(frozen=True, slots=True)
class Timing:
    start: datetime | None
    end: datetime | None  # None with a start: the caller supplies a length
    all_day: bool = False  # the start was a date alone: the whole day, no time claimed
    warnings: list[tuple[str, str]] = field(default_factory=list)


@dataclass(slots=True)
class _Source:
    name: str  # e.g. "SCH-11", for the warnings' words
    start: str
    end: str
    duration: timedelta | None
    unit_problem: str | None = None  # words, when a duration's units could not be read


class _Reader:
    def __init__(self, tz: tzinfo) -> None:
        self.tz = tz
        self.warnings: list[tuple[str, str]] = []

    def when(self, raw: str, where: str) -> datetime | None:
        try:
            return parse_dtm(raw, self.tz)
        except ParseError:
            self.warnings.append(
                ("time-unreadable", f"{where} is not an HL7 date/time (YYYYMMDDHHMM[SS]); ignored")
            )
            return None


def _unit_seconds(units: Segment, n: int) -> int | None:
    """Seconds per unit of field ``n`` (a CE: code^text), by code, then text; '' is minutes
    (SCH-10's default); None when neither is a unit we know."""
    code, text = units.get(n, 1).lower(), units.get(n, 2).lower()
    if not code and not text:
        return 60
    for word in (code, text, units.get(n, 1, 2).lower()):
        if word in _UNITS:
            return _UNITS[word]
    return None


def _duration(seg: Segment, amount_at: int, units_at: int, where: str) -> _Source:
    """A duration from ``amount_at`` with units in ``units_at`` (the same field's second
    component when they are one field, as TQ1-6 is)."""
    if units_at == amount_at:
        amount, per = seg.get(amount_at, 1), _cq_seconds(seg, amount_at)
    else:
        amount, per = seg.get(amount_at), _unit_seconds(seg, units_at)
    source = _Source(where, "", "", None)
    if not amount:
        return source
    try:
        value = float(amount)
    except ValueError:
        source.unit_problem = f"{where} duration {amount!r} is not a number"
        return source
    if per is None or not 0 < value * per <= _MAX.total_seconds():
        units = seg.text(units_at) if units_at != amount_at else seg.get(amount_at, 2)
        source.unit_problem = f"{where} duration {amount!r} in units {units!r} cannot be read"
        return source
    source.duration = timedelta(seconds=value * per)
    return source


def _cq_seconds(seg: Segment, n: int) -> int | None:
    """TQ1-6 is a CQ (quantity^units), its units a CE in subcomponents (code&text&system)."""
    code, text = seg.get(n, 2, 1).lower(), seg.get(n, 2, 2).lower()
    if not code and not text:
        return 60
    return next((_UNITS[w] for w in (code, text) if w in _UNITS), None)


def _tq_duration(value: str) -> timedelta | None:
    """TQ.3: ``M30``, ``H1``, ``S900`` or a bare number (minutes)."""
    m = _TQ_DURATION.match(value.strip())
    if not m:
        return None
    unit = (m.group(1) or "M").upper()
    per = {"S": 1, "M": 60, "H": 3600, "D": 86400, "W": 604800}[unit]
    seconds = float(m.group(2)) * per
    return timedelta(seconds=seconds) if 0 < seconds <= _MAX.total_seconds() else None


def _sources(msg: Message) -> list[_Source]:
    sch, tq1 = msg.first("SCH"), msg.first("TQ1")
    sch_length = _duration(sch, 9, 10, "SCH-9/10") if sch is not None else None
    out: list[_Source] = []
    if sch is not None and sch.raw(11):
        first = sch.get(11, 1)
        bare = first if first and _DTM_LIKE.match(first) else ""
        tq_length = _tq_duration(sch.get(11, 3))
        source = _Source("SCH-11", sch.get(11, 4) or bare, sch.get(11, 5), tq_length)
        if tq_length is None and sch_length is not None:
            source.duration, source.unit_problem = sch_length.duration, sch_length.unit_problem
        out.append(source)
    if tq1 is not None:
        length = _duration(tq1, 6, 6, "TQ1-6")
        if length.duration is None and not length.unit_problem and sch_length is not None:
            length = sch_length
        out.append(_Source("TQ1", tq1.get(7), tq1.get(8), length.duration, length.unit_problem))
    for name, start_at, dur_at in (("AIS", 4, 7), ("AIG", 8, 11), ("AIL", 6, 9), ("AIP", 6, 9)):
        for seg in msg.all(name):
            length = _duration(seg, dur_at, dur_at + 1, f"{name}-{dur_at}/{dur_at + 1}")
            if length.duration is None and not length.unit_problem and sch_length is not None:
                length = sch_length
            where = f"{name}-{start_at}"
            out.append(_Source(where, seg.get(start_at), "", length.duration, length.unit_problem))
    return out


def read_times(msg: Message, tz: tzinfo) -> Timing:
    """Start and end of the appointment ``msg`` describes (see the module's docstring)."""
    reader = _Reader(tz)
    partial: tuple[_Source, datetime] | None = None  # the first start without a usable end
    dated: tuple[_Source, datetime, datetime | None] | None = None  # the first date-only one
    skipped: list[str] = []  # why sources with a start could not give an end
    for source in _sources(msg):
        start = reader.when(source.start, source.name)
        if start is None:
            continue
        end = reader.when(source.end, f"{source.name} end")
        if end is not None and end <= start:
            reader.warnings.append(
                ("end-before-start", f"{source.name} ends at or before it starts; end ignored")
            )
            end = None
        if _DATE_ONLY.match(source.start.strip()):
            dated = dated or (source, start, end)
            continue
        if end is None and source.duration is not None:
            end = start + source.duration
        if end is not None:
            return Timing(start, end, warnings=reader.warnings + _fallback(skipped, source))
        if source.unit_problem:
            skipped.append(source.unit_problem)
        partial = partial or (source, start)
    if partial is not None:
        if skipped:
            words = "; ".join(skipped)
            reader.warnings.append(
                (
                    "unit-unknown",
                    f"{words}; no end or readable duration elsewhere, so the length is the "
                    "visit type's (AIS-3), else the Appointment's current one",
                )
            )
        return Timing(partial[1], None, warnings=reader.warnings)
    if dated is not None:
        source, start, end = dated
        day_end = (end or start) + timedelta(days=1)
        reader.warnings.append(
            (
                "date-only",
                f"{source.name} gives a date without a time: recorded as an all-day "
                "appointment, which claims no time on the schedule",
            )
        )
        return Timing(start, day_end, all_day=True, warnings=reader.warnings)
    return Timing(None, None, warnings=reader.warnings)


def _fallback(skipped: list[str], used: _Source) -> list[tuple[str, str]]:
    if not skipped:
        return []
    return [("unit-unknown", f"{'; '.join(skipped)}; the time came from {used.name}")]
