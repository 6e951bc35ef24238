"""Loading a clinic: resources and Slots, idempotence, changed hours, busy time kept."""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import func, select

from resources import service
from resources.sql.engine import Database
from resources.store import Store, V
from scheduling.clinic import load_clinic
from scheduling.config import parse_clinic_config
from tests.scheduling.test_clinic_config import make_config

MONDAY = date(2026, 11, 23)


def clinic(start: str = "09:00", end: str = "11:00") -> dict[str, Any]:
    return make_config(
        practitioners=[
            {
                "id": "smith",
                "family": "Smith",
                "given": ["Alice"],
                "identifiers": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234"}],
                "specialties": [{"system": "http://snomed.info/sct", "code": "394814009"}],
            },
            {"id": "evans", "family": "Evans"},
        ],
        hours=[
            {
                "practitioner": p,
                "location": "main",
                "days": ["mon", "tue", "wed", "thu", "fri"],
                "start": start,
                "end": end,
            }
            for p in ("smith", "evans")
        ],
    )


def versions(db: Database) -> int:
    with db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(V)).scalar_one())


def slots(db: Database, store: Store, schedule: str) -> list[dict[str, Any]]:
    with db.read() as conn:
        _, result = service.search(
            conn,
            store=store,
            resource_type="Slot",
            params=[("schedule", f"Schedule/{schedule}"), ("_count", "500")],
            paging=service.Paging(500, 500),
        )
    return [m.resource() for m in result.matches]


def test_load_creates_resources_and_slots(db: Database, store: Store) -> None:
    cfg = parse_clinic_config(clinic())
    with db.write() as conn:
        report = load_clinic(conn, store=store, config=cfg, today=MONDAY, weeks=1)
    # 1 location, 1 service, 2 practitioners, 2 roles, 2 schedules
    assert report.created == 8
    assert report.slots_created == 2 * 5 * 8  # 2 practitioners x 5 days x 8 quarter hours
    smith = slots(db, store, "sched-smith-main")
    assert len(smith) == 40
    assert smith[0]["start"] == "2026-11-23T09:00:00-05:00"
    assert {s["status"] for s in smith} == {"free"}


def test_loading_twice_changes_nothing(db: Database, store: Store) -> None:
    cfg = parse_clinic_config(clinic())
    with db.write() as conn:
        load_clinic(conn, store=store, config=cfg, today=MONDAY, weeks=1)
    before = versions(db)
    with db.write() as conn:
        again = load_clinic(conn, store=store, config=cfg, today=MONDAY, weeks=1)
    assert (again.created, again.updated, again.slots_created, again.slots_removed) == (0, 0, 0, 0)
    assert again.unchanged == 8
    assert versions(db) == before


def test_changed_hours_touch_free_slots_only_and_report_busy(db: Database, store: Store) -> None:
    with db.write() as conn:
        load_clinic(conn, store=store, config=parse_clinic_config(clinic()), today=MONDAY, weeks=1)
    busy_id = "slot-smith-main-202611231545"  # Monday 10:45 local
    with db.write() as conn:
        slot = store.read(conn, "Slot", busy_id)
        assert slot is not None
        body = slot.resource()
        body["status"] = "busy"
        service.update(conn, store=store, resource_type="Slot", resource_id=busy_id, resource=body)
    shorter = parse_clinic_config(clinic(end="10:00"))
    with db.write() as conn:
        report = load_clinic(conn, store=store, config=shorter, today=MONDAY, weeks=1)
    assert report.outside_hours == [busy_id]
    assert report.slots_removed == 2 * 5 * 4 - 1
    remaining = slots(db, store, "sched-smith-main")
    assert len(remaining) == 5 * 4 + 1
    assert any(s["id"] == busy_id and s["status"] == "busy" for s in remaining)


def test_concurrent_loads_run_one_after_the_other(db: Database, store: Store) -> None:
    """Two server processes' horizon jobs (or ``clinic load`` beside a server) loading at once:
    the second waits for the first, then finds everything in place. Without the lock it
    tried to create the same resources and failed on the first one."""
    import threading

    config = parse_clinic_config(clinic())
    reports: list[Any] = []
    errors: list[BaseException] = []

    def second() -> None:
        try:
            with db.write() as conn:
                reports.append(load_clinic(conn, store=store, config=config, today=MONDAY))
        except BaseException as exc:  # noqa: BLE001 - reported to the test below
            errors.append(exc)

    with db.write() as conn:
        first = load_clinic(conn, store=store, config=config, today=MONDAY)
        waiting = threading.Thread(target=second)
        waiting.start()
        if not db.is_sqlite:  # (SQLite has one writer: the second cannot begin before this)
            waiting.join(timeout=1.0)
            assert waiting.is_alive(), "the second load did not wait for the first"
    waiting.join(timeout=60)
    assert not errors, errors
    assert first.created > 0 and first.slots_created > 0
    assert reports[0].created == 0 and reports[0].slots_created == 0
