"""``slot_time`` follows every Slot write, and migration 0004's backfill agrees with it."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import delete, select, text

from resources import service
from resources.sql.engine import Database
from resources.sql.tables import SlotTime
from resources.store import Store, VersionConflict

ST = SlotTime.__table__
migration = importlib.import_module("resources.sql.migrations.versions.0004_slot_time")


def _slot(sid: str, hour: int, status: str = "free", schedule: str = "s1") -> dict[str, Any]:
    return {
        "resourceType": "Slot",
        "id": sid,
        "schedule": {"reference": f"Schedule/{schedule}"},
        "status": status,
        "start": f"2027-03-01T{hour:02d}:00:00-05:00",
        "end": f"2027-03-01T{hour:02d}:15:00-05:00",
    }


def _rows(db: Database) -> set[tuple[Any, ...]]:
    with db.read() as conn:
        rows = conn.execute(select(ST.c.slot_id, ST.c.schedule_id, ST.c.start_s, ST.c.status))
        return {
            (sid, sched, datetime.fromtimestamp(start, UTC), st) for sid, sched, start, st in rows
        }


def _put(db: Database, store: Store, body: dict[str, Any]) -> None:
    with db.write() as conn:
        service.update(
            conn, store=store, resource_type="Slot", resource_id=body["id"], resource=body
        )


def test_slot_time_follows_slot_writes(db: Database, store: Store) -> None:
    nine = datetime(2027, 3, 1, 14, tzinfo=UTC)
    _put(db, store, _slot("a", 9))
    _put(db, store, _slot("b", 10, schedule="s2"))
    assert ("a", "s1", nine, "free") in _rows(db)
    _put(db, store, _slot("a", 9, status="busy"))  # an update replaces the row
    assert {r for r in _rows(db) if r[0] == "a"} == {("a", "s1", nine, "busy")}
    with db.write() as conn:
        service.delete(conn, store=store, resource_type="Slot", resource_id="b")
    assert {r[0] for r in _rows(db)} == {"a"}
    with db.write() as conn:  # other types never write slot_time
        service.update(
            conn,
            store=store,
            resource_type="Schedule",
            resource_id="s1",
            resource={"resourceType": "Schedule", "id": "s1", "actor": [{"display": "x"}]},
        )
    assert len(_rows(db)) == 1


def test_migration_backfill_matches_what_writes_maintain(db: Database, store: Store) -> None:
    for n, status in enumerate(["free", "busy", "free", "busy-tentative"]):
        _put(db, store, _slot(f"s{n}", 9 + n, status=status, schedule=f"sched{n % 2}"))
    with db.write() as conn:
        service.delete(conn, store=store, resource_type="Slot", resource_id="s2")
    maintained = _rows(db)
    assert len(maintained) == 3
    with db.write() as conn:
        conn.execute(delete(ST))
        conn.execute(text(migration.backfill_sql(conn.dialect.name)))
    assert _rows(db) == maintained


def test_a_status_only_update_rewrites_just_the_status_rows(db: Database, store: Store) -> None:
    _put(db, store, _slot("a", 9))
    with db.write() as conn:
        service.update(
            conn,
            store=store,
            resource_type="Slot",
            resource_id="a",
            resource=_slot("a", 9, status="busy"),
            trusted=True,
            changed=frozenset({"status"}),
        )

    def search(**params: str) -> set[str]:
        with db.read() as conn:
            _, result = service.search(
                conn, store=store, resource_type="Slot", params=list(params.items())
            )
        return {m.res_id for m in result.matches}

    assert search(status="busy") == {"a"}
    assert search(status="free") == set()
    assert search(schedule="Schedule/s1", start="ge2027-03-01") == {"a"}  # untouched rows
    assert {r[3] for r in _rows(db)} == {"busy"}


def test_update_many_writes_a_batch_and_skips_what_it_need_not(db: Database, store: Store) -> None:
    for n, sid in enumerate(["a", "b", "c", "d"]):
        _put(db, store, _slot(sid, 9 + n, status="busy" if sid == "c" else "free"))
    with db.write() as conn:
        service.delete(conn, store=store, resource_type="Slot", resource_id="d")

    def busy(body: dict[str, Any]) -> dict[str, Any] | None:
        return None if body["status"] == "busy" else {**body, "status": "busy"}

    with db.write() as conn:  # "c" is busy already, "d" deleted, "x" never existed
        written = store.update_many(
            conn, "Slot", ["b", "x", "c", "a", "d", "a"], busy, changed=frozenset({"status"})
        )
    assert [(s.res_id, s.version) for s in written] == [("a", 2), ("b", 2)]
    with db.read() as conn:
        for sid, version in [("a", 2), ("b", 2), ("c", 1)]:
            stored = store.read(conn, "Slot", sid)
            assert stored is not None and stored.version == version
            assert stored.resource()["status"] == "busy"
            assert stored.resource()["meta"]["versionId"] == str(version)
        _, found = service.search(
            conn, store=store, resource_type="Slot", params=[("status", "busy")]
        )
    assert {m.res_id for m in found.matches} == {"a", "b", "c"}
    assert {r[0]: r[3] for r in _rows(db)} == {"a": "busy", "b": "busy", "c": "busy"}


def test_update_many_refuses_a_batch_when_one_changed_meanwhile(db: Database, store: Store) -> None:
    _put(db, store, _slot("a", 9))
    _put(db, store, _slot("b", 10))

    def busy_after_someone_else(body: dict[str, Any]) -> dict[str, Any]:
        if body["id"] == "b":  # another write lands between the read and the batch's write
            _put_in(conn, store, _slot("b", 10, status="busy-tentative"))
        return {**body, "status": "busy"}

    with pytest.raises(VersionConflict), db.write() as conn:
        store.update_many(
            conn, "Slot", ["a", "b"], busy_after_someone_else, changed=frozenset({"status"})
        )
    with db.read() as conn:  # the whole transaction rolled back, the other write with it
        assert [store.read(conn, "Slot", s).version for s in "ab"] == [1, 1]  # type: ignore[union-attr]


def _put_in(conn: Any, store: Store, body: dict[str, Any]) -> None:
    service.update(conn, store=store, resource_type="Slot", resource_id=body["id"], resource=body)
