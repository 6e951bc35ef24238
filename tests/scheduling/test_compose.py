"""Composing free Slots into ``$find`` options, without a database (``compute_options``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from scheduling.availability import schedule_id
from scheduling.calendar_reads import Calendar, _free_by_schedule
from scheduling.config import ClinicConfig, parse_clinic_config
from scheduling.find import compute_options
from scheduling.plan import FindRequest, plan_find
from tests.scheduling.test_find import MONDAY, clinic_data, local

SMITH = schedule_id("smith", "main")
NOW = datetime.combine(MONDAY - timedelta(days=7), datetime.min.time(), tzinfo=UTC)


@pytest.fixture
def cfg() -> ClinicConfig:
    return parse_clinic_config(clinic_data())


def slots(cfg: ClinicConfig, *spans: tuple[str, str]) -> list[tuple[int, int, str]]:
    """(start, end, id) of Slots on MONDAY from local "HH:MM" pairs."""
    out = []
    for a, b in spans:
        start, end = (local(cfg, MONDAY, int(t[:2]), int(t[3:])) for t in (a, b))
        out.append((int(start.timestamp()), int(end.timestamp()), f"s{a[:2]}{a[3:]}"))
    return out


def sqlite_row(sched: str, rows: list[tuple[int, int, str]]) -> tuple[str, str, str, str]:
    """One schedule's Slots as SQLite's group_concat hands them over."""
    return (
        sched,
        ",".join(str(r[0]) for r in rows),
        ",".join(str(r[1]) for r in rows),
        ",".join(r[2] for r in rows),
    )


def starts(
    cfg: ClinicConfig,
    free: list[tuple[int, int, str]],
    *,
    end: str = "23:00",
    busy: tuple[tuple[str, str], ...] = (),
    limit: int | None = None,
) -> tuple[int, list[tuple[str, tuple[str, ...]]]]:
    request = FindRequest(
        start=local(cfg, MONDAY, 0),
        end=local(cfg, MONDAY, int(end[:2]), int(end[3:])),
        visit_type="follow-up",  # 30 minutes: two 15-minute Slots
        practitioners=["smith"],
        patient_id="known",
    )
    taken = [
        (
            SMITH,
            local(cfg, MONDAY, int(a[:2]), int(a[3:])),
            local(cfg, MONDAY, int(b[:2]), int(b[3:])),
            "booked",
            "a1",
            "follow-up",
        )
        for a, b in busy
    ]
    calendar = Calendar(False, taken, _free_by_schedule([sqlite_row(SMITH, free)]))
    found = compute_options(cfg, plan_find(cfg, request), request, calendar, now=NOW, limit=limit)
    shown = [(o.start.astimezone(cfg.tz).strftime("%H:%M"), o.slots) for o in found.options]
    return found.total, shown


def test_only_slots_that_follow_each_other_compose_a_visit(cfg: ClinicConfig) -> None:
    free = slots(
        cfg,
        ("09:00", "09:15"),
        ("09:15", "09:30"),
        ("09:30", "09:45"),  # then a gap
        ("10:00", "10:15"),
        ("10:15", "10:30"),
        ("10:30", "11:00"),  # a longer Slot ends a run: it is not a step of the grid
        ("11:00", "11:15"),  # alone
    )
    total, shown = starts(cfg, free)
    assert total == 4
    assert shown == [
        ("09:00", ("s0900", "s0915")),
        ("09:15", ("s0915", "s0930")),
        ("10:00", ("s1000", "s1015")),
        ("10:15", ("s1015", "s1030")),
    ]
    # Slots handed over out of order are put in order first
    assert starts(cfg, list(reversed(free))) == (total, shown)
    # the visit must end inside the window
    assert starts(cfg, free, end="10:30") == (3, shown[:3])
    # busy time splits a run; the count covers every option, the list only ``limit``
    assert starts(cfg, free, busy=(("09:15", "09:30"),), limit=1) == (2, [shown[2]])


def test_a_slot_id_with_a_comma_is_refused_not_misread() -> None:
    with pytest.raises(RuntimeError, match="comma"):
        _free_by_schedule([("sched", "1,2", "2,3", "a,b,c")])
