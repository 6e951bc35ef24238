"""Practice rules, one table row per rule and situation."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest

from scheduling.config import ClinicConfig, parse_clinic_config
from scheduling.rules import Booked, Candidate, check_rules, day_policy
from tests.scheduling.test_clinic_config import make_config

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)  # Friday


def rules_clinic() -> ClinicConfig:
    data: dict[str, Any] = make_config(
        practitioners=[{"id": "smith", "family": "Smith"}, {"id": "evans", "family": "Evans"}],
        visit_types=[
            {"code": "new", "display": "New patient", "minutes": 45, "patients": "new"},
            {"code": "follow-up", "display": "Follow-up", "minutes": 30, "patients": "existing"},
            {
                "code": "procedure",
                "display": "Procedure",
                "minutes": 30,
                "practitioners": ["smith"],
            },
            {"code": "pt-eval", "display": "PT evaluation", "minutes": 60},
        ],
        rules={
            "buffers": [{"after": ["procedure"], "minutes": 15, "practitioners": ["smith"]}],
            "new_patient_windows": [
                {"practitioners": ["smith"], "days": ["tue"], "start": "08:00", "end": "12:00"}
            ],
            "exclusions": [{"practitioner": "evans", "patients": "new", "days": ["fri"]}],
            "daily_caps": [{"visit_type": "procedure", "max": 2}],
            "min_notice_minutes": 120,
            "booking_horizon_days": 30,
        },
    )
    return parse_clinic_config(data)


def local(day: int, hour: int, minute: int = 0) -> datetime:
    """Wall-clock time in New York in November 2026 (EST, UTC-5)."""
    return datetime(2026, 11, day, hour + 5, minute, tzinfo=UTC)


def cand(cfg: ClinicConfig, who: str, code: str, start: datetime, new: bool) -> Candidate:
    visit = cfg.visit_type(code)
    assert visit is not None
    return Candidate(who, visit, start, new)


PROC = "procedure"
CASES: list[tuple[str, str, str, datetime, bool, list[Booked], str | None]] = [
    ("ok-follow-up", "evans", "follow-up", local(23, 9), False, [], None),
    ("not-offered", "evans", PROC, local(23, 9), False, [], "visit-type"),
    ("new-visit-existing-patient", "evans", "new", local(24, 9), False, [], "patients"),
    ("follow-up-new-patient", "evans", "follow-up", local(24, 9), True, [], "patients"),
    ("too-soon", "evans", "follow-up", NOW + timedelta(minutes=60), False, [], "min-notice"),
    ("too-far", "evans", "follow-up", local(23, 9) + timedelta(days=40), False, [], "horizon"),
    ("evans-no-new-fridays", "evans", "new", local(27, 9), True, [], "exclusion"),
    ("evans-new-thursday", "evans", "new", local(26, 9), True, [], None),
    ("smith-new-tuesday-morning", "smith", "new", local(24, 9), True, [], None),
    ("smith-new-tuesday-afternoon", "smith", "new", local(24, 13), True, [], "new-patient-window"),
    ("smith-new-monday", "smith", "new", local(23, 9), True, [], "new-patient-window"),
    (
        "smith-new-ends-past-window",
        "smith",
        "new",
        local(24, 11, 30),
        True,
        [],
        "new-patient-window",
    ),
    (
        "cap-reached",
        "smith",
        PROC,
        local(23, 15),
        False,
        [
            Booked(PROC, local(23, 9), local(23, 9, 30)),
            Booked(PROC, local(23, 11), local(23, 11, 30)),
        ],
        "daily-cap",
    ),
    (
        "cap-other-day",
        "smith",
        PROC,
        local(24, 15),
        False,
        [
            Booked(PROC, local(23, 9), local(23, 9, 30)),
            Booked(PROC, local(23, 11), local(23, 11, 30)),
        ],
        None,
    ),
    (
        "inside-buffer-after-procedure",
        "smith",
        "follow-up",
        local(23, 9, 30),
        False,
        [Booked(PROC, local(23, 9), local(23, 9, 30))],
        "buffer",
    ),
    (
        "after-buffer",
        "smith",
        "follow-up",
        local(23, 9, 45),
        False,
        [Booked(PROC, local(23, 9), local(23, 9, 30))],
        None,
    ),
    (
        "procedure-needs-buffer-before-next",
        "smith",
        PROC,
        local(23, 9),
        False,
        [Booked("follow-up", local(23, 9, 30), local(23, 10))],
        "buffer",
    ),
    (
        "no-buffer-for-evans",
        "evans",
        "follow-up",
        local(23, 9, 30),
        False,
        [Booked("follow-up", local(23, 9), local(23, 9, 30))],
        None,
    ),
]


EACH_CASE = pytest.mark.parametrize(
    ("who", "code", "start", "new", "booked", "refused_by"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)


@EACH_CASE
def test_rules(
    who: str, code: str, start: datetime, new: bool, booked: list[Booked], refused_by: str | None
) -> None:
    cfg = rules_clinic()
    refusal = check_rules(cfg, cand(cfg, who, code, start, new), now=NOW, booked_that_day=booked)
    assert (refusal.rule if refusal else None) == refused_by


@EACH_CASE
def test_admits_agrees_with_check_at_every_start_of_the_day(
    who: str, code: str, start: datetime, new: bool, booked: list[Booked], refused_by: str | None
) -> None:
    """``$find`` admits a day's candidates in bulk; the answer is what ``check`` says of each
    (every quarter hour of the case's day, so notice, horizon, windows and buffers all cut)."""
    cfg = rules_clinic()
    visit = cfg.visit_type(code)
    assert visit is not None
    day = start.astimezone(cfg.tz).date()
    policy = day_policy(cfg, who, visit, new, day, now=NOW, booked=booked)
    midnight = int(datetime.combine(day, time(0), tzinfo=cfg.tz).timestamp())
    starts = [midnight + 900 * k for k in range(96)]
    length = 60 * visit.minutes
    everyone = list(range(len(starts)))
    expected = [i for i in everyone if policy.check(starts[i], starts[i] + length) is None]
    assert policy.admits(starts, everyone, length) == expected
    assert policy.admits(starts, everyone[::3], length) == [i for i in expected if i % 3 == 0]
    if refused_by is None:  # the case's own start is among those admitted
        assert int(start.timestamp()) in [starts[i] for i in expected]
