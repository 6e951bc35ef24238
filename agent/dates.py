"""Dates and times as patients write them, resolved in the clinic's time zone.

The words of a date ("next Friday", "tomorrow", "Dec 8", "12/8", "in 3 days") are read by
``dateparser``; this module only finds the phrase in a message and widens the point it
names into the window a patient means: a whole day, a week for "next week", a part of the day
for "morning", an hour or so around "at 2pm". Everything is computed in the clinic's zone, so a
window across a daylight-saving change keeps its wall-clock hours.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import dateparser

__all__ = ["PARTS", "Window", "find_window", "local", "parse_birth_date", "parse_start"]

PARTS = {  # part of the day -> local hours [start, end)
    "morning": (time(7), time(12)),
    "afternoon": (time(12), time(17)),
    "evening": (time(17), time(21)),
}
_DAYS = r"(?:mon|tue|tues|wed|thu|thur|thurs|fri|sat|sun)(?:day|nesday|sday|urday)?"
_MONTHS = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
    r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_DATE_PHRASES = [
    r"\bday after tomorrow\b",
    r"\b(?:today|tonight|tomorrow|yesterday)\b",
    rf"\b(?:next|this|on|coming|last)?\s*{_DAYS}\b",
    rf"\b{_MONTHS}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{4}})?\b",
    rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTHS}(?:,?\s+\d{{4}})?\b",
    r"\b\d{4}-\d{2}-\d{2}\b",
    r"\b\d{1,2}/\d{1,2}(?:/\d{2,4})?\b",
    r"\bin\s+\d+\s+(?:days?|weeks?)\b",
]
_DAY_OF_MONTH = re.compile(r"\b(?:on\s+)?the\s+(\d{1,2})(?:st|nd|rd|th)\b")
_TIME = re.compile(r"\b(?:at\s+)?(\d{1,2})(?::(\d{2}))?\s*(am|pm|a\.m\.|p\.m\.)", re.IGNORECASE)
_TIME_24 = re.compile(r"\bat\s+(\d{1,2}):(\d{2})\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Window:
    """Where to look: [start, end) in the clinic's zone, what the patient said, and whether
    it lies wholly in the past. ``at``: a time of day the patient asked for."""

    start: datetime
    end: datetime
    phrase: str
    past: bool = False
    at: datetime | None = None
    part: tuple[time, time] | None = None  # "mornings": each day's hours to keep


def local(day: date, at: time, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, at, tzinfo=tz)


def _parse(phrase: str, tz: ZoneInfo, now: datetime) -> datetime | None:
    settings = {
        "TIMEZONE": tz.key,
        "RETURN_AS_TIMEZONE_AWARE": True,
        "PREFER_DATES_FROM": "future",
        "RELATIVE_BASE": now.astimezone(tz).replace(tzinfo=None),
        "DATE_ORDER": "MDY",
    }
    if phrase.strip().lower() in ("yesterday",):
        settings["PREFER_DATES_FROM"] = "past"
    found = dateparser.parse(phrase, languages=["en"], settings=settings)
    return found.astimezone(tz) if found is not None else None


def _day_of_month(text: str, now: datetime) -> tuple[datetime, str] | None:
    """The day a patient names by its number alone ("the 16th"): this month's if it has not
    passed, else the next month's that has one (dateparser reads this month's even when it
    has passed)."""
    m = _DAY_OF_MONTH.search(text)
    if not m:
        return None
    day, first = int(m.group(1)), now.date().replace(day=1)
    for months in range(13):
        year, month = divmod(first.month - 1 + months, 12)
        with contextlib.suppress(ValueError):
            found = date(first.year + year, month + 1, day)
            if found >= now.date():
                return datetime.combine(found, time(0), tzinfo=now.tzinfo), m.group(0)
    return None


def _time_of_day(text: str) -> time | None:
    m = _TIME.search(text)
    if m:
        hour, minute = int(m.group(1)), int(m.group(2) or 0)
        pm = m.group(3).lower().startswith("p")
        if 1 <= hour <= 12 and minute < 60:
            return time((hour % 12) + (12 if pm else 0), minute)
    m = _TIME_24.search(text)
    if m and int(m.group(1)) < 24 and int(m.group(2)) < 60:
        return time(int(m.group(1)), int(m.group(2)))
    return None


def _part(text: str) -> tuple[time, time] | None:
    for word, hours in PARTS.items():
        if word in text or (word == "morning" and "mornings" in text):
            return hours
    return None


def find_window(text: str, tz: ZoneInfo, now: datetime, *, default_days: int = 14) -> Window | None:
    """The window a message asks about, or None if it names no day, week or time.

    "next week" is Monday to Sunday of the coming week; a named day is that whole day
    (narrowed by "morning", "afternoon", "evening", or to a little before and after a time
    such as "2pm"); a time alone is that time on any of the next ``default_days`` days.
    """
    low = text.lower()
    now = now.astimezone(tz)
    today = now.date()
    part = _part(low)
    at = _time_of_day(low)
    phrase = None
    if re.search(r"\bnext week\b", low):
        monday = today + timedelta(days=7 - today.weekday())
        first, last, phrase = monday, monday + timedelta(days=7), "next week"
    elif re.search(r"\bthis week\b", low):
        first, last, phrase = today, today + timedelta(days=7 - today.weekday()), "this week"
    elif re.search(r"\b(?:soon|soonest|earliest|asap|as soon as|first available)\b", low):
        first, last, phrase = today, today + timedelta(days=default_days), "soon"
    else:
        found = None
        for pattern in _DATE_PHRASES:
            m = re.search(pattern, low, re.IGNORECASE)
            if m and m.group(0).strip():
                candidate = m.group(0).strip()
                found = _parse(candidate, tz, now)
                if found is not None:
                    phrase = candidate
                    break
        if found is None and (ordinal := _day_of_month(low, now)) is not None:
            found, phrase = ordinal
        if found is None:
            if at is None and part is None:
                return None
            first, last, phrase = today, today + timedelta(days=default_days), "any day"
        else:
            first = found.date()
            last = first + timedelta(days=1)
    start = local(first, time(0), tz)
    end = local(last, time(0), tz)
    wanted = None
    if at is not None and last - first == timedelta(days=1):
        wanted = local(first, at, tz)
        start, end = wanted - timedelta(hours=1), wanted + timedelta(hours=3)
    elif part is not None and last - first == timedelta(days=1):
        start, end = local(first, part[0], tz), local(first, part[1], tz)
    elif at is not None:  # "at 3pm" on any day of the window: that time each day
        part = (at, (datetime.combine(today, at) + timedelta(minutes=1)).time())
    past = end <= now or (last <= today)
    return Window(start=start, end=end, phrase=phrase or text, past=past, at=wanted, part=part)


def parse_start(text: str, tz: ZoneInfo, now: datetime) -> datetime | None:
    """The exact start of an appointment a patient names ("Dec 15 at 9am")."""
    window = find_window(text, tz, now)
    if window is None or window.at is None:
        return None
    return window.at


_BIRTH = [
    re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b"),
    re.compile(r"\b(\d{1,2})/(\d{1,2})/(\d{4})\b"),
    re.compile(rf"\b({_MONTHS})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?,?\s+(\d{{4}})\b", re.IGNORECASE),
    re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?({_MONTHS}),?\s+(\d{{4}})\b", re.I),
]


def parse_birth_date(text: str, today: date) -> date | None:
    """A full birth date in a message (with a four-digit year), or None."""
    for pattern in _BIRTH:
        m = pattern.search(text)
        if not m:
            continue
        found = dateparser.parse(
            m.group(0),
            languages=["en"],
            settings={"DATE_ORDER": "MDY", "PREFER_DATES_FROM": "past"},
        )
        born: date | None = found.date() if found is not None else None
        if born is not None and date(1900, 1, 1) <= born <= today:
            return born
    return None
