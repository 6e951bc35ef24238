"""The soak (`bench/soak.py`) in short: about 30 s per database of booking, cancelling,
rescheduling and moving from 16 clients with HL7 beside them and a ``kill -9`` in the middle,
then every check passes. And each check fails on planted data (`bench/soak_check.py`): a
checker that cannot fail would prove nothing."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bench.soak import run
from bench.soak_check import CREATED_BY, BusyRow, Ledger, Snapshot, State, check, state_of

SECONDS = 30  # per database: about a minute of load in all


@pytest.mark.slow
def test_soak_with_a_kill_in_the_middle_finds_nothing_wrong(
    tmp_path: Path, database_url: str
) -> None:
    report = run(
        database_url=database_url,
        workdir=tmp_path,
        seconds=SECONDS,
        clients=16,
        kills=1,
        hl7_offgrid=0.2,
    )
    failed = {name: c for name, c in report["checks"].items() if not c["passed"]}
    assert not failed, json.dumps(failed, indent=1)
    assert report["passed"]
    assert len(report["restarts"]) == 1
    assert report["appointments_tracked"] > 100  # the ledger had something to check
    assert report["ops"]["hl7-S12"].get("AA", 0) > 10
    assert report["audit"]["intact"] is True and report["audit"]["records"] > 1000


T0 = datetime(2030, 1, 7, 14, 0, tzinfo=UTC)
SCHED = "sched-d00-main"


def _at(minutes: int) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat()


def _slot(sid: str, minutes: int, status: str) -> dict[str, Any]:
    return {
        "resourceType": "Slot",
        "id": sid,
        "schedule": {"reference": f"Schedule/{SCHED}"},
        "status": status,
        "start": _at(minutes),
        "end": _at(minutes + 15),
    }


def _appt(aid: str, status: str, minutes: int, slots: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "id": aid,
        "meta": {"versionId": "2"},
        "status": status,
        "start": _at(minutes),
        "end": _at(minutes + 30),
        "participant": [{"actor": {"reference": "Practitioner/d00"}}],
        "slot": [{"reference": f"Slot/{s}"} for s in slots],
        "identifier": [{"system": CREATED_BY, "value": f"op-{aid}"}],
        **extra,
    }


def _busy(aid: str, minutes: int, kind: str = "booked") -> BusyRow:
    start = T0 + timedelta(minutes=minutes)
    return BusyRow(SCHED, start, start + timedelta(minutes=30), aid, kind)


def _books() -> tuple[Snapshot, Ledger]:
    """A consistent end state: a1 booked 14:00-14:30 on two busy Slots, a2 cancelled."""
    snapshot = Snapshot(
        appointments=[
            _appt("a1", "booked", 0, ["s1", "s2"]),
            _appt("a2", "cancelled", 30, ["s3"]),
        ],
        slots=[_slot("s1", 0, "busy"), _slot("s2", 15, "busy"), _slot("s3", 30, "free")],
        busy=[_busy("a1", 0)],
        audit={"intact": True, "records": 10, "returncode": 0},
    )
    ledger = Ledger()
    for appt in snapshot.appointments:
        ledger.ack(f"fhir:{appt['id']}", state_of(appt))
        ledger.created(f"op-{appt['id']}", "acked")
    return snapshot, ledger


def _overlap(s: Snapshot, ledger: Ledger) -> None:
    s.appointments.append(_appt("a3", "booked", 15, []))
    s.busy.append(_busy("a3", 15))
    ledger.created("op-a3", "acked")


def _conflict_tagged(s: Snapshot, ledger: Ledger) -> None:
    tag = {"tag": [{"system": "urn:fhir-sched:tags", "code": "hl7-conflict"}]}
    s.appointments.append(_appt("a3", "booked", 15, [], meta=tag, identifier=[]))


def _slot_status(sid: str, status: str) -> Callable[[Snapshot, Ledger], None]:
    def plant(s: Snapshot, ledger: Ledger) -> None:
        next(x for x in s.slots if x["id"] == sid)["status"] = status

    return plant


def _lost(s: Snapshot, ledger: Ledger) -> None:
    s.appointments = [a for a in s.appointments if a["id"] != "a2"]


def _written_after_ack(s: Snapshot, ledger: Ledger) -> None:
    s.appointments[1]["meta"]["versionId"] = "3"


def _unknown_applied(s: Snapshot, ledger: Ledger) -> None:
    ledger.unknown("fhir:a2", State("cancelled", version=3))
    s.appointments[1]["meta"]["versionId"] = "3"


def _moved(s: Snapshot, ledger: Ledger) -> None:
    s.appointments[0]["start"], s.appointments[0]["end"] = _at(60), _at(90)
    s.busy[0] = _busy("a1", 60)
    s.slots += [_slot("s5", 60, "busy"), _slot("s6", 75, "busy")]
    s.appointments[0]["slot"] = [{"reference": "Slot/s5"}, {"reference": "Slot/s6"}]
    next(x for x in s.slots if x["id"] == "s1")["status"] = "free"
    next(x for x in s.slots if x["id"] == "s2")["status"] = "free"


def _refused_applied(s: Snapshot, ledger: Ledger) -> None:
    ledger.created("op-a1", "refused")


def _busy_row_left(s: Snapshot, ledger: Ledger) -> None:
    s.busy.append(_busy("a2", 30))


def _busy_row_gone(s: Snapshot, ledger: Ledger) -> None:
    s.busy.clear()


def _audit_broken(s: Snapshot, ledger: Ledger) -> None:
    s.audit = {"intact": False, "broken_at": 7, "reason": "mac-mismatch", "returncode": 1}


CASES: list[tuple[str, Callable[[Snapshot, Ledger], None], set[str]]] = [
    ("consistent", lambda s, ledger: None, set()),
    ("overlapping-bookings", _overlap, {"busy_time_overlap", "appointment_overlap"}),
    ("hl7-conflict-may-overlap", _conflict_tagged, set()),
    ("booked-with-a-free-slot", _slot_status("s2", "free"), {"booked_with_free_slot"}),
    ("busy-slot-nobody-booked", _slot_status("s3", "busy"), {"busy_slot_without_booking"}),
    ("acknowledged-write-lost", _lost, {"acknowledged_writes"}),
    ("written-after-its-ack", _written_after_ack, {"acknowledged_writes"}),
    ("unknown-write-applied", _unknown_applied, set()),
    ("moved-without-an-ack", _moved, {"acknowledged_writes"}),
    ("refused-booking-applied", _refused_applied, {"refused_writes_applied"}),
    ("busy-time-of-a-cancelled-one", _busy_row_left, {"busy_time_without_booking"}),
    (
        "booked-without-busy-time",
        _busy_row_gone,
        {"booked_without_busy_time", "busy_slot_without_booking"},
    ),
    ("audit-chain-broken", _audit_broken, {"audit_chain"}),
]


@pytest.mark.parametrize(("plant", "fails"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_check_finds_what_was_planted(
    plant: Callable[[Snapshot, Ledger], None], fails: set[str]
) -> None:
    snapshot, ledger = _books()
    snapshot = copy.deepcopy(snapshot)
    plant(snapshot, ledger)
    found = check(snapshot, ledger)
    assert {name for name, v in found.items() if v} == fails, found
