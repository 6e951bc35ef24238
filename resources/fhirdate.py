"""FHIR date, dateTime and instant values as UTC ranges ``[low, high)``.

A value is an implicit range at its precision (https://hl7.org/fhir/R4/search.html#date):
``2024`` covers the whole year, ``2024-03-05T10:00`` the whole minute.  Values without an offset
are read in the zone given by the caller (UTC unless configured).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from functools import lru_cache

__all__ = ["MAX_INSTANT", "MIN_INSTANT", "DateRange", "as_utc", "parse_fhir_date"]

MIN_INSTANT = datetime(1, 1, 2, tzinfo=UTC)
MAX_INSTANT = datetime(9999, 12, 30, tzinfo=UTC)

_RE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?P<f>\.\d+)?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


@dataclass(frozen=True, slots=True)
class DateRange:
    low: datetime
    high: datetime
    precision: str  # year, month, day, minute, second, fraction
    has_offset: bool = True


def as_utc(value: datetime) -> datetime:
    """A datetime read back from the database: SQLite hands back naive datetimes, which were
    written in UTC; PostgreSQL's already carry their offset."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _add_months(value: datetime, months: int) -> datetime:
    month = value.month - 1 + months
    return value.replace(year=value.year + month // 12, month=month % 12 + 1)


def parse_fhir_date(text: str, *, default_tz: tzinfo = UTC) -> DateRange:
    """Parse a FHIR date/dateTime/instant into its UTC range.

    >>> r = parse_fhir_date("2024-02")
    >>> (r.low.isoformat(), r.high.isoformat())
    ('2024-02-01T00:00:00+00:00', '2024-03-01T00:00:00+00:00')

    Raises ``ValueError`` with a plain message when the text is not a FHIR date.
    """
    return _parse(text, default_tz)


# The same few values come back again and again: a Slot's times every time it is marked busy
# or free, an Appointment's when it is indexed and when its Slots are found. A DateRange is
# immutable, so one may be shared (about 4 % of an inbound HL7 message's CPU on SQLite went on
# parsing the same texts again).
@lru_cache(maxsize=4096)
def _parse(text: str, default_tz: tzinfo) -> DateRange:
    m = _RE.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a FHIR date, dateTime or instant (YYYY-MM-DDThh:mm:ssZ)")
    tz_text = m.group("tz")
    if tz_text is None:
        tz: tzinfo = default_tz
    elif tz_text == "Z":
        tz = UTC
    else:
        sign = 1 if tz_text[0] == "+" else -1
        hours, minutes = int(tz_text[1:3]), int(tz_text[4:6])
        tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
    year = int(m.group("y"))
    month = int(m.group("m") or 1)
    day = int(m.group("d") or 1)
    hour = int(m.group("H") or 0)
    minute = int(m.group("M") or 0)
    second = int(m.group("S") or 0)
    frac = m.group("f")
    micro = int((frac[1:] + "000000")[:6]) if frac else 0
    try:
        low = datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a real calendar date: {exc}") from exc
    try:
        return _range(m, low, has_offset=tz_text is not None)
    except (OverflowError, ValueError) as exc:  # past year 9999 or before year 1, in UTC
        raise ValueError(f"{text!r} lies outside the years 0001 to 9999 (UTC)") from exc


def _range(m: re.Match[str], low: datetime, *, has_offset: bool) -> DateRange:
    if m.group("m") is None:
        year = low.year
        precision, high = "year", low.replace(year=year + 1) if year < 9999 else MAX_INSTANT
    elif m.group("d") is None:
        precision, high = "month", _add_months(low, 1)
    elif m.group("H") is None:
        precision, high = "day", low + timedelta(days=1)
    elif m.group("S") is None:
        precision, high = "minute", low + timedelta(minutes=1)
    elif m.group("f") is None:
        precision, high = "second", low + timedelta(seconds=1)
    else:
        precision, high = "fraction", low + timedelta(microseconds=1)
    return DateRange(low.astimezone(UTC), high.astimezone(UTC), precision, has_offset=has_offset)
