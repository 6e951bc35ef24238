"""The chain's status for the console (``security/audit_status.py``): the records added since
the last walk are walked from where it stopped; tampering with them is found at once, tampering
with records already verified at the next walk of the whole chain; checkpoints are compared
once each, and a truncation below the last one is found."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from resources.sql.engine import Database
from security.audit import append, verify
from security.audit_checkpoint import Checkpoint, CheckpointLog, read_head
from security.audit_status import ChainStatus
from security.crypto import KeyRing
from tests.security.test_audit_chain import TAMPERING, _events, _fill, _tamper
from tests.security.test_audit_checkpoint import _truncate_to


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _status(keys: KeyRing, tmp_path: Path, clock: Clock) -> tuple[ChainStatus, CheckpointLog]:
    log = CheckpointLog(tmp_path / "audit.jsonl")
    return ChainStatus(keys, log, full_every=3600, clock=clock), log


def test_later_calls_walk_only_the_new_records(db: Database, keys: KeyRing, tmp_path: Path) -> None:
    clock = Clock()
    status, _ = _status(keys, tmp_path, clock)
    _fill(db, keys, 10)
    with db.read() as conn:
        first = status.check(conn)
    assert first["intact"] and first["mode"] == "full"
    assert first["verified_through"]["seq"] == 10
    assert first["verified_through"]["recorded"] is not None
    assert first["full_verified_at"] == first["verified_at"]
    with db.write() as conn:
        append(conn, keys, _events(3, 10))
    clock.now += 60
    with db.read() as conn:
        later = status.check(conn)
    assert later["intact"] and later["mode"] == "incremental"
    assert later["verified_through"]["seq"] == 13
    assert later["full_verified_at"] == first["verified_at"] != later["verified_at"]


@pytest.mark.parametrize("tampering", list(TAMPERING.values()), ids=list(TAMPERING))
def test_an_edit_to_verified_records_is_found_by_the_next_full_walk(
    db: Database, keys: KeyRing, tmp_path: Path, tampering: tuple[object, int]
) -> None:
    change, broken = tampering
    clock = Clock()
    status, _ = _status(keys, tmp_path, clock)
    _fill(db, keys, 10)
    with db.read() as conn:
        assert status.check(conn)["intact"]
    _tamper(db, change)  # type: ignore[arg-type]
    clock.now += 3600
    with db.read() as conn:
        found = status.check(conn)
    assert found["mode"] == "full"
    assert not found["intact"]
    assert found["broken_at"] == broken
    assert found["findings"][0]["seq"] == broken
    assert found["verified_through"]["seq"] == broken - 1
    clock.now += 10
    with db.read() as conn:
        assert status.check(conn)["mode"] == "cached"  # broken stays broken until the next walk


def test_an_edit_to_new_records_is_found_incrementally(
    db: Database, keys: KeyRing, tmp_path: Path
) -> None:
    clock = Clock()
    status, _ = _status(keys, tmp_path, clock)
    _fill(db, keys, 6)
    with db.read() as conn:
        status.check(conn)
    with db.write() as conn:
        append(conn, keys, _events(4, 6))
    _tamper(
        db,
        lambda c: c.execute(
            text("UPDATE audit_log SET ciphertext = :x WHERE seq = 8"), {"x": b"\x00" * 64}
        ),
    )
    clock.now += 5
    with db.read() as conn:
        found = status.check(conn)
        whole = verify(conn, keys)
    assert found["mode"] == "incremental"
    assert found["broken_at"] == whole.broken_at == 8


def test_checkpoints_are_reported_and_a_truncation_below_one_is_found(
    db: Database, keys: KeyRing, tmp_path: Path
) -> None:
    clock = Clock()
    status, log = _status(keys, tmp_path, clock)
    _fill(db, keys, 10)
    with db.read() as conn:
        head = read_head(conn)
        assert status.check(conn)["last_checkpoint"] is None
    log.write(keys, Checkpoint.now(head))
    clock.now += 5
    with db.read() as conn:
        seen = status.check(conn)
    assert seen["intact"] and seen["checkpoints"] == 1
    assert seen["last_checkpoint"]["seq"] == 10
    _truncate_to(db, 7)  # the head moved back: the chain alone looks whole
    clock.now += 3600
    with db.read() as conn:
        found = status.check(conn)
    assert not found["intact"]
    assert found["findings"][0]["kind"] == "truncated"
