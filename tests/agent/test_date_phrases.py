"""agent/dates.py: the phrases patients write that the window must read, in the clinic's zone."""

from __future__ import annotations

from datetime import date, datetime, time
from zoneinfo import ZoneInfo

import pytest

from agent.dates import find_window

TZ = ZoneInfo("America/New_York")
MONDAY = datetime(2026, 12, 14, 9, tzinfo=TZ)

# (what the patient wrote, when, the day looked at, whether it is past)
DAYS = [
    ("the 16th", MONDAY, date(2026, 12, 16), False),
    ("Could I come on the 16th?", datetime(2026, 12, 20, 9, tzinfo=TZ), date(2027, 1, 16), False),
    ("on the 31st", datetime(2027, 2, 1, 9, tzinfo=TZ), date(2027, 3, 31), False),
    ("last Monday", datetime(2026, 12, 16, 9, tzinfo=TZ), date(2026, 12, 14), True),
    ("Can I have a follow-up last Monday?", MONDAY, date(2026, 12, 7), True),
    ("Friday the 18th", MONDAY, date(2026, 12, 18), False),
]


@pytest.mark.parametrize(
    ("text", "now", "day", "past"),
    DAYS,
    ids=[
        "ordinal",
        "ordinal-next-month",
        "ordinal-skips-short-month",
        "last-weekday",
        "last-weekday-today",
        "weekday-and-ordinal",
    ],
)
def test_the_day_a_patient_names(text: str, now: datetime, day: date, past: bool) -> None:
    window = find_window(text, TZ, now)

    assert window is not None
    assert window.start.date() == day
    assert window.past is past


def test_a_time_without_a_day_is_that_time_on_each_day() -> None:
    window = find_window("Do you have a follow-up at 3pm any day this week?", TZ, MONDAY)

    assert window is not None
    assert (window.start.date(), window.end.date()) == (date(2026, 12, 14), date(2026, 12, 21))
    assert window.at is None
    assert window.part == (time(15), time(15, 1))


def test_a_birth_order_is_not_a_day() -> None:
    assert find_window("it is my 2nd visit", TZ, MONDAY) is None
