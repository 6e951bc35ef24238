"""The clinic file format: validation with field paths, slot generation and time zones."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from scheduling.availability import slot_specs
from scheduling.config import (
    ClinicConfig,
    ClinicConfigError,
    load_clinic_config,
    parse_clinic_config,
)


def make_config(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "Test clinic",
        "timezone": "America/New_York",
        "slot_minutes": 15,
        "locations": [{"id": "main", "name": "Main"}],
        "practitioners": [{"id": "smith", "family": "Smith"}],
        "visit_types": [{"code": "follow-up", "display": "Follow-up", "minutes": 30}],
        "hours": [
            {
                "practitioner": "smith",
                "location": "main",
                "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                "start": "09:00",
                "end": "10:00",
            }
        ],
    }
    base.update(overrides)
    return base


def config(**overrides: Any) -> ClinicConfig:
    return parse_clinic_config(make_config(**overrides))


BAD = [
    ({"timezone": "Mars/Olympus"}, "timezone", "IANA"),
    (
        {
            "hours": [
                {
                    "practitioner": "nobody",
                    "location": "main",
                    "days": ["mon"],
                    "start": "09:00",
                    "end": "10:00",
                }
            ]
        },
        "(file)",
        "unknown practitioner 'nobody'",
    ),
    (
        {
            "hours": [
                {
                    "practitioner": "smith",
                    "location": "main",
                    "days": ["mon"],
                    "start": "10:00",
                    "end": "09:00",
                }
            ]
        },
        "hours[0]",
        "must be after start",
    ),
    (
        {"visit_types": [{"code": "x", "display": "X", "minutes": 20}]},
        "(file)",
        "not a multiple of slot_minutes",
    ),
    (
        {"visit_types": [{"code": "x", "display": "X", "minutes": "long"}]},
        "visit_types[0].minutes",
        "valid integer",
    ),
    ({"locations": []}, "locations", "at least 1"),
    ({"surprise": 1}, "surprise", "Extra inputs"),
    (
        {"existing_patient": {"visits": ["fulfilled", "cancelled"]}},
        "existing_patient.visits[1]",
        "'booked', 'arrived', 'checked-in', 'fulfilled' or 'noshow'",
    ),
    (
        {"existing_patient": {"within_years": 0}},
        "existing_patient.within_years",
        "greater than or equal to 1",
    ),
    ({"phone_region": "Usa"}, "phone_region", "ISO 3166 country code"),
]


@pytest.mark.parametrize(
    ("override", "path", "why"),
    BAD,
    ids=[
        "tz",
        "unknown-ref",
        "hours-order",
        "granularity",
        "type",
        "empty",
        "extra",
        "existing-status",
        "existing-years",
        "phone-region",
    ],
)
def test_bad_config_names_the_field(override: dict[str, Any], path: str, why: str) -> None:
    with pytest.raises(ClinicConfigError) as info:
        parse_clinic_config(make_config(**override))
    assert any(p == path and why in msg for p, msg in info.value.problems), info.value.problems


def test_bad_yaml_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "clinic.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ClinicConfigError, match="not valid YAML"):
        load_clinic_config(path)


def test_yaml_times_are_read_as_wall_clock(tmp_path: Path) -> None:
    path = tmp_path / "clinic.yaml"
    path.write_text(
        "name: T\ntimezone: Europe/Berlin\nlocations: [{id: a, name: A}]\n"
        "practitioners: [{id: p, family: P}]\n"
        "visit_types: [{code: v, display: V, minutes: 30}]\n"
        "hours: [{practitioner: p, location: a, days: [mon], start: 08:30, end: '12:00'}]\n"
    )
    cfg = load_clinic_config(path)
    assert cfg.hours[0].start.hour == 8
    assert cfg.hours[0].start.minute == 30


def _nine_am_utc(cfg: ClinicConfig, day: date) -> datetime:
    first = min(s for s in slot_specs(cfg, first_day=day, last_day=day))
    return first.start


@pytest.mark.parametrize(
    ("day", "utc_hour"),
    [
        (date(2026, 3, 7), 14),  # EST, Saturday before spring forward
        (date(2026, 3, 8), 13),  # EDT from 02:00 that Sunday
        (date(2026, 3, 9), 13),
        (date(2026, 10, 31), 13),  # EDT, Saturday before fall back
        (date(2026, 11, 1), 14),  # EST from 02:00 that Sunday
        (date(2026, 11, 2), 14),
    ],
    ids=["before-spring", "spring-day", "after-spring", "before-fall", "fall-day", "after-fall"],
)
def test_nine_local_stays_nine_local_across_dst(day: date, utc_hour: int) -> None:
    cfg = config()
    start = _nine_am_utc(cfg, day)
    assert start.tzinfo == UTC
    assert start == datetime(day.year, day.month, day.day, utc_hour, tzinfo=UTC)
    assert start.astimezone(cfg.tz).hour == 9


def test_exceptions_remove_whole_and_part_days() -> None:
    cfg = config(
        exceptions=[
            {"name": "Holiday", "start_date": "2026-11-26"},
            {
                "name": "Dentist",
                "start_date": "2026-11-27",
                "start": "09:30",
                "end": "10:00",
                "practitioners": ["smith"],
            },
        ]
    )
    specs = list(slot_specs(cfg, first_day=date(2026, 11, 25), last_day=date(2026, 11, 27)))
    by_day: dict[date, int] = {}
    for s in specs:
        local = s.start.astimezone(cfg.tz).date()
        by_day[local] = by_day.get(local, 0) + 1
    assert by_day == {date(2026, 11, 25): 4, date(2026, 11, 27): 2}
