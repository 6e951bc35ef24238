"""Checkpoints anchor the audit chain's head outside the database: someone who can write the
database (its triggers dropped) deletes the newest records and moves the head back to the new
last one, which the chain alone cannot show; ``fhir-sched audit verify`` finds it at the
checkpoint written before. On both databases, through the command line and the server's job."""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from fhir_server.app import create_app
from fhir_server.cli import main
from fhir_server.settings import Settings
from resources.sql.engine import Database
from resources.sql.guards import audit_guard_drop
from resources.sql.tables import AuditLog
from security.audit import append, verify
from security.crypto import KeyRing, generate_key_material
from tests.security.test_audit_chain import _events, _fill


def _env(db: Database, keys: KeyRing, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "FHIRSCHED_DATABASE_URL": db.url,
        "FHIRSCHED_KEYS": json.dumps(keys.to_document()),
        "FHIRSCHED_AUDIT_CHECKPOINT_FILE": str(tmp_path / "checkpoints" / "audit.jsonl"),
        # these tests count records: the commands' own AuditEvents (which a checkpoint
        # covers too) are tested in tests/fhir_server/test_console_trail.py
        "FHIRSCHED_AUDIT_ENABLED": "false",
        **extra,
    }


def _cli(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(main, ["audit", *args], env=env)


def _verify(env: dict[str, str], *args: str) -> dict[str, Any]:
    result = _cli(env, "verify", *args)
    report: dict[str, Any] = json.loads(result.output)
    assert result.exit_code == (0 if report["intact"] else 1), result.output
    return report


def _kinds(report: dict[str, Any]) -> set[tuple[str, int | None]]:
    return {(f["kind"], f["seq"]) for f in report["findings"]}


def _truncate_to(db: Database, last: int) -> None:
    """The attack: lift the guard, delete every record after ``last`` (and their index rows)
    and point the head at ``last``, as the chain would look had they never been written."""
    with db.write() as conn:
        for statement in audit_guard_drop(db.dialect):
            conn.execute(text(statement))
        mac = conn.execute(select(AuditLog.mac).filter_by(seq=last)).scalar_one()
        conn.execute(text("DELETE FROM audit_index WHERE seq > :s"), {"s": last})
        conn.execute(text("DELETE FROM audit_log WHERE seq > :s"), {"s": last})
        conn.execute(text("UPDATE audit_head SET seq = :s, mac = :m"), {"s": last, "m": mac})


def test_truncating_the_newest_records_is_found_at_a_checkpoint(
    db: Database, keys: KeyRing, tmp_path: Path
) -> None:
    _fill(db, keys, 10)
    env = _env(db, keys, tmp_path)
    written = _cli(env, "checkpoint")
    assert written.exit_code == 0, written.output
    assert json.loads(written.output)["seq"] == 10
    assert _verify(env) == {"records": 10, "intact": True, "checkpoints": 1, "findings": []}
    _truncate_to(db, 7)
    with db.read() as conn:  # the chain alone still looks whole
        assert verify(conn, keys).intact
    report = _verify(env)
    assert not report["intact"] and report["records"] == 7
    assert _kinds(report) == {("truncated", 10)}


def test_records_written_again_after_a_truncation_do_not_match_the_checkpoint(
    db: Database, keys: KeyRing, tmp_path: Path
) -> None:
    """Truncated, then the server goes on writing past the checkpoint's sequence number: the
    record now at that number is not the one checkpointed."""
    _fill(db, keys, 10)
    env = _env(db, keys, tmp_path)
    assert _cli(env, "checkpoint").exit_code == 0
    _truncate_to(db, 7)
    with db.write() as conn:
        append(conn, keys, _events(5, 100))
    report = _verify(env)
    assert not report["intact"] and report["records"] == 12
    assert _kinds(report) == {("checkpoint-mismatch", 10)}


def test_every_checkpoint_in_the_file_is_checked(
    db: Database, keys: KeyRing, tmp_path: Path
) -> None:
    env = _env(db, keys, tmp_path)
    assert _cli(env, "checkpoint").exit_code == 0  # the empty log: seq 0
    _fill(db, keys, 4)
    assert _cli(env, "checkpoint").exit_code == 0
    with db.write() as conn:
        append(conn, keys, _events(4, 10))
    assert _cli(env, "checkpoint").exit_code == 0
    report = _verify(env)
    assert report["intact"] and report["checkpoints"] == 3
    _truncate_to(db, 3)
    assert _kinds(_verify(env)) == {("truncated", 4), ("truncated", 8)}


def test_a_checkpoint_is_signed_with_a_key_the_database_does_not_hold(
    db: Database, keys: KeyRing, tmp_path: Path
) -> None:
    """Lines edited in the file, or signed under another key ring, are findings, not anchors."""
    _fill(db, keys, 6)
    env = _env(db, keys, tmp_path)
    assert _cli(env, "checkpoint").exit_code == 0
    path = Path(env["FHIRSCHED_AUDIT_CHECKPOINT_FILE"])
    genuine = json.loads(path.read_text())
    edited = {**genuine, "seq": 5}
    other = KeyRing.from_document(generate_key_material())
    stranger = _cli({**env, "FHIRSCHED_KEYS": json.dumps(other.to_document())}, "checkpoint")
    assert stranger.exit_code == 0
    with path.open("a") as fh:
        fh.write(json.dumps(edited) + "\n")
        fh.write("not a checkpoint\n")
    report = _verify(env)
    assert not report["intact"] and report["checkpoints"] == 1
    assert [f["kind"] for f in report["findings"]] == ["checkpoint-invalid"] * 3
    assert {f["line"] for f in report["findings"]} == {2, 3, 4}


def test_the_checkpoint_file_is_created_0600_and_only_appended_to(
    db: Database, keys: KeyRing, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import security.audit_checkpoint as module

    flags: list[int] = []
    real_open = os.open

    def spy(path: Any, flag: int, *args: Any, **kw: Any) -> int:
        if str(path).endswith("audit.jsonl"):
            flags.append(flag)
        return real_open(path, flag, *args, **kw)

    monkeypatch.setattr(module.os, "open", spy)
    env = _env(db, keys, tmp_path)
    path = Path(env["FHIRSCHED_AUDIT_CHECKPOINT_FILE"])
    assert _cli(env, "checkpoint").exit_code == 0
    _fill(db, keys, 2)
    assert _cli(env, "checkpoint").exit_code == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [json.loads(line)["seq"] for line in path.read_text().splitlines()] == [0, 2]
    assert flags and all(f & os.O_APPEND and not f & os.O_TRUNC for f in flags)


def test_checkpoints_also_go_to_syslog(db: Database, keys: KeyRing, tmp_path: Path) -> None:
    """A collector elsewhere keeps what the database's host cannot take back; lines copied
    from it verify like the file's."""
    _fill(db, keys, 3)
    collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    collector.bind(("127.0.0.1", 0))
    collector.settimeout(5)
    port = collector.getsockname()[1]
    env = _env(db, keys, tmp_path, FHIRSCHED_AUDIT_CHECKPOINT_SYSLOG=f"127.0.0.1:{port}")
    try:
        assert _cli(env, "checkpoint").exit_code == 0
        received = collector.recv(4096).decode()
    finally:
        collector.close()
    assert "fhir-sched" in received and '"seq": 3' in received
    copy = tmp_path / "from-syslog.log"
    copy.write_text(received + "\n")
    report = _verify(env, "--checkpoints", str(copy))
    assert report["intact"] and report["checkpoints"] == 1, (received, report)
    _truncate_to(db, 2)
    assert _kinds(_verify(env, "--checkpoints", str(copy))) == {("truncated", 3)}


def test_the_server_writes_checkpoints_while_it_serves(
    db: Database, keys: KeyRing, settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "served.jsonl"
    served = settings.model_copy(
        update={"audit_checkpoint_file": path, "audit_checkpoint_seconds": 0.05}
    )
    app = create_app(served, keys=keys, db=db)
    with TestClient(app, raise_server_exceptions=False) as c:
        for _ in range(2):  # audited, refused or not: the head moves
            assert c.get("/fhir/Patient").status_code == 401
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            lines = path.read_text().splitlines() if path.exists() else []
            if lines and json.loads(lines[-1])["seq"] >= 1:
                break
            time.sleep(0.05)
        else:
            pytest.fail("no checkpoint of the moved head was written")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    env = _env(db, keys, tmp_path, FHIRSCHED_AUDIT_CHECKPOINT_FILE=str(path))
    assert _verify(env)["intact"]
    with db.read() as conn:
        last = conn.execute(text("SELECT max(seq) FROM audit_log")).scalar_one()
    _truncate_to(db, last - 1)
    assert ("truncated", last) in _kinds(_verify(env))
