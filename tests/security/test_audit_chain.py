"""The audit log's hash chain, on both databases: intact after appends; the first broken
sequence number reported after a record is edited, deleted or reordered directly in SQL; the
database refusing UPDATE and DELETE to the application's own role."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Connection, bindparam, insert, select, text
from sqlalchemy.exc import DBAPIError

from resources.sql.async_reads import AsyncReader
from resources.sql.direct import Direct, deferring, pipelined
from resources.sql.engine import Database
from resources.sql.guards import audit_guard_drop
from resources.sql.tables import AuditHead, AuditLog, IdempotencyKey
from security.audit import (
    AsyncChain,
    AuditQuery,
    append,
    open_event,
    search,
    send_head,
    verify,
)
from security.balp import Actor, balp_event
from security.crypto import KeyRing

SERVER = "http://testserver/fhir"


def _events(n: int, offset: int = 0) -> list[dict[str, Any]]:
    actor = Actor(client_id="app", address="10.0.0.7", user="Practitioner/p1", token_jti="j1")
    return [
        balp_event(
            kind="read",
            actor=actor,
            server=SERVER,
            patient=f"pat-{(i + offset) % 3}",
            entities=[f"Appointment/a{i + offset}"],
        )
        for i in range(n)
    ]


def _fill(db: Database, keys: KeyRing, n: int = 10) -> None:
    with db.write() as conn:
        append(conn, keys, _events(n // 2))
    with db.write() as conn:
        append(conn, keys, _events(n - n // 2, n // 2))


def test_chain_is_intact_and_sealed(db: Database, keys: KeyRing) -> None:
    _fill(db, keys)
    with db.read() as conn:
        report = verify(conn, keys)
        assert report.intact and report.records == 10
        rows = conn.execute(select(AuditLog).order_by(AuditLog.seq)).all()
    assert [r.seq for r in rows] == list(range(1, 11))
    assert all(b"pat-" not in bytes(r.ciphertext) for r in rows)  # sealed, not plain JSON
    event = open_event(keys, rows[0])
    assert event["resourceType"] == "AuditEvent" and event["entity"][0]["what"]["reference"]


def test_the_async_writer_extends_the_chain_after_other_writers(
    db: Database, keys: KeyRing
) -> None:
    """PostgreSQL's one-statement appends: a batch sealed after a head another writer has
    since moved adds nothing and is resealed after the new head; two writers racing, a batch
    too big for one statement and a batch with nothing to index all leave one intact chain."""
    if db.is_sqlite:
        pytest.skip("the async writer is PostgreSQL's")

    written: list[dict[str, Any]] = []

    def events(n: int, offset: int) -> list[dict[str, Any]]:
        made = _events(n, offset)
        written.extend(made)
        return made

    async def run() -> list[list[int]]:
        reader = AsyncReader(db.url, max_size=4)
        await reader.open()
        mine, other = AsyncChain(keys), AsyncChain(keys)
        numbers = []
        try:
            async with reader.connection() as conn:
                numbers.append(await mine.append(conn, events(3, 0)))
                numbers.append(await mine.append(conn, events(2, 3)))
                with db.write() as sync:  # a write transaction moves the head meanwhile
                    numbers.append(append(sync, keys, events(1, 5)))
                numbers.append(await mine.append(conn, events(2, 6)))
                bare = [{**e, "agent": [], "entity": []} for e in _events(2, 8)]
                numbers.append(await mine.append(conn, bare))  # no digests to index
                numbers.append(await mine.append(conn, events(AsyncChain.MOST + 1, 10)))

            async def race(chain: AsyncChain, start: int) -> list[int]:
                got = []
                async with reader.connection() as conn:
                    for n in range(10):
                        got += await chain.append(conn, events(2, start + 2 * n))
                return got

            numbers += await asyncio.gather(race(mine, 1000), race(other, 2000))
        finally:
            await reader.close()
        return numbers

    numbers = asyncio.run(run())
    total = 3 + 2 + 1 + 2 + 2 + AsyncChain.MOST + 1 + 40
    assert numbers[:5] == [[1, 2, 3], [4, 5], [6], [7, 8], [9, 10]]
    assert sorted(n for batch in numbers for n in batch) == list(range(1, total + 1))
    with db.read() as conn:
        report = verify(conn, keys)
        assert report.intact and report.records == total
        hits, _ = search(conn, keys, AuditQuery(digested=(("patient", ("Patient/pat-1",)),)))
    pat1 = [e for e in written if e["entity"][0]["what"]["reference"] == "Patient/pat-1"]
    assert hits == len(pat1) > 0


def test_an_append_after_a_head_read_earlier_in_the_transaction(
    db: Database, keys: KeyRing
) -> None:
    """PostgreSQL (the HL7 listener's groups): events sealed after the head read at the start
    of the transaction go in one statement with the rows a ``deferring`` block kept; when
    another writer has moved the head since, they go the locked way instead, after it. Either
    way the chain stays intact, every event is there once, and the kept rows are written."""
    if db.is_sqlite:
        pytest.skip("the head read ahead is PostgreSQL's")
    _fill(db, keys, 2)
    with db.write() as conn, deferring(conn):
        with pipelined(conn):
            head = send_head(conn)
        assert head() == _head(db) and head()[0] == 2
        _KEEP.run(conn, {"key": "kept-1", "value": "v"})
        assert append(conn, keys, _events(3, 2), head=head()) == [3, 4, 5]
    with db.write() as conn, deferring(conn):
        with pipelined(conn):
            stale = send_head(conn)
        with db.write() as other:  # another writer moves the head meanwhile
            assert append(other, keys, _events(1, 5)) == [6]
        _KEEP.run(conn, {"key": "kept-2", "value": "v"})
        assert stale()[0] == 5
        assert append(conn, keys, _events(2, 6), head=stale()) == [7, 8]  # the locked way
    with db.read() as conn:
        report = verify(conn, keys)
        assert report.intact and report.records == 8
        kept = conn.execute(text("SELECT count(*) FROM idempotency_key")).scalar_one()
    assert kept == 2


_KEEP = Direct(
    insert(IdempotencyKey).values(
        client_id="app",
        user_id="",
        patient="",
        key=bindparam("key"),
        operation=bindparam("value"),
        status=200,
        res_type="Appointment",
        res_id=bindparam("value"),
        version=1,
        created=datetime(2026, 1, 1, tzinfo=UTC),
    ),
    deferrable=True,
)


def _head(db: Database) -> tuple[int, bytes]:
    with db.read() as conn:
        row = conn.execute(select(AuditHead.seq, AuditHead.mac).filter_by(id=1)).one()
    return int(row[0]), bytes(row[1])


def test_application_role_cannot_update_or_delete(db: Database, keys: KeyRing) -> None:
    _fill(db, keys, 2)
    for statement in ("UPDATE audit_log SET outcome = '4'", "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError), db.write() as conn:
            conn.execute(text(statement))
    with db.read() as conn:
        assert verify(conn, keys).intact


def _tamper(db: Database, change: Callable[[Connection], None]) -> None:
    """What someone with more power than the application's role could do: lift the guard."""
    with db.write() as conn:
        for statement in audit_guard_drop(db.dialect):
            conn.execute(text(statement))
        change(conn)


def _swap(conn: Connection) -> None:
    a = conn.execute(select(AuditLog).filter_by(seq=4)).one()
    b = conn.execute(select(AuditLog).filter_by(seq=5)).one()
    cols = ("event_id", "kek_id", "wrapped_key", "nonce", "ciphertext", "mac", "prev_hash")
    conn.execute(text("UPDATE audit_log SET event_id = 'tmp' WHERE seq = 5"))
    for row, seq in ((b, 4), (a, 5)):
        values = {c: getattr(row, c) for c in cols}
        sets = ", ".join(f"{c} = :{c}" for c in cols)
        conn.execute(text(f"UPDATE audit_log SET {sets} WHERE seq = :seq"), {**values, "seq": seq})


TAMPERING: dict[str, tuple[Callable[[Connection], None], int]] = {
    "edited body": (
        lambda c: c.execute(
            text("UPDATE audit_log SET ciphertext = :x WHERE seq = 6"), {"x": b"\x00" * 64}
        ),
        6,
    ),
    "edited search column": (
        lambda c: c.execute(text("UPDATE audit_log SET outcome = '8' WHERE seq = 3")),
        3,
    ),
    "deleted in the middle": (lambda c: c.execute(text("DELETE FROM audit_log WHERE seq = 7")), 7),
    "deleted at the end": (lambda c: c.execute(text("DELETE FROM audit_log WHERE seq = 10")), 10),
    "deleted first": (lambda c: c.execute(text("DELETE FROM audit_log WHERE seq = 1")), 1),
    "reordered": (_swap, 4),
}


@pytest.mark.parametrize("tampering", list(TAMPERING.values()), ids=list(TAMPERING))
def test_verify_finds_the_first_broken_record(
    db: Database, keys: KeyRing, tampering: tuple[Callable[[Connection], None], int]
) -> None:
    change, broken = tampering
    _fill(db, keys)
    _tamper(db, change)
    with db.read() as conn:
        report = verify(conn, keys)
    assert not report.intact
    assert report.broken_at == broken, report


def test_verify_reports_every_anomaly_and_never_raises(db: Database, keys: KeyRing) -> None:
    """Several records tampered with at once, some with values of the wrong type (SQLite keeps
    TEXT in a BLOB column): each is a finding, the walk goes on past it, nothing raises."""
    _fill(db, keys)

    def change(conn: Connection) -> None:
        conn.execute(text("UPDATE audit_log SET ciphertext = :x WHERE seq = 2"), {"x": bytes(64)})
        conn.execute(text("DELETE FROM audit_log WHERE seq = 5"))
        conn.execute(text("UPDATE audit_log SET outcome = '8' WHERE seq = 8"))
        if db.is_sqlite:
            conn.execute(text("UPDATE audit_log SET mac = hex(mac) WHERE seq = 3"))
            conn.execute(text("UPDATE audit_log SET recorded = 'yesterday' WHERE seq = 9"))
            conn.execute(text("UPDATE audit_index SET digest = hex(digest) WHERE seq = 10"))
        else:
            conn.execute(text("UPDATE audit_log SET mac = :x WHERE seq = 3"), {"x": b"\x00"})
            conn.execute(
                text("UPDATE audit_log SET recorded = recorded - interval '1 day' WHERE seq = 9")
            )
            conn.execute(text("UPDATE audit_index SET digest = :x WHERE seq = 10"), {"x": b"\x00"})

    _tamper(db, change)
    with db.read() as conn:
        report = verify(conn, keys)
    found = {(f.kind, f.seq) for f in report.findings}
    third = (
        {("record-malformed", 3)} if db.is_sqlite else {("record-changed", 3), ("record-link", 4)}
    )
    assert found == third | {
        ("record-unreadable", 2),
        ("record-missing", 5),
        ("index-extra", 5),  # the deleted record's index rows are still there
        ("record-columns", 8),
        ("record-columns", 9),
        ("index-missing", 10),
        ("index-extra", 10),
    }
    assert not report.intact and report.broken_at == 2 and report.records == 9


def test_verify_with_another_key_fails(db: Database, keys: KeyRing) -> None:
    from security.crypto import generate_key_material

    _fill(db, keys, 3)
    with db.read() as conn:
        assert verify(conn, KeyRing.from_document(generate_key_material())).broken_at == 1


def test_audit_commands(tmp_path: Any) -> None:
    import json

    from click.testing import CliRunner

    from fhir_server.cli import main
    from resources.sql.engine import migrate
    from security.crypto import load_keyring

    url = f"sqlite:///{tmp_path}/audit.db"
    env = {"FHIRSCHED_DATABASE_URL": url, "FHIRSCHED_KEY_FILE": str(tmp_path / "keys.json")}
    ring = load_keyring(key_file=tmp_path / "keys.json", keys_json=None)
    db = Database(url)
    migrate(db)
    _fill(db, ring, 6)
    runner = CliRunner()
    ok = runner.invoke(main, ["audit", "verify"], env=env)
    assert ok.exit_code == 0
    assert json.loads(ok.output) == {"records": 6, "intact": True, "checkpoints": 0, "findings": []}
    exported = runner.invoke(
        main, ["audit", "export", "--since", "2000-01-01", "--patient", "Patient/pat-1"], env=env
    )
    lines = [json.loads(line) for line in exported.output.splitlines()]
    assert len(lines) == 3 and all(e["resourceType"] == "AuditEvent" for e in lines)
    # the export recorded itself, about that patient, before it wrote anything out
    itself = lines[-1]
    assert itself["type"]["code"] == "110101" and itself["subtype"][0]["code"] == "audit export"
    assert itself["entity"][0]["what"]["reference"] == "Patient/pat-1"
    assert itself["agent"][0]["who"]["identifier"]["value"] == "fhir-sched-console"
    assert itself["agent"][1]["who"]["identifier"]["value"].startswith("console:")
    _tamper(db, lambda c: c.execute(text("DELETE FROM audit_log WHERE seq = 3")))
    db.dispose()
    broken = runner.invoke(main, ["audit", "verify"], env=env)
    assert broken.exit_code == 1 and json.loads(broken.output)["broken_at"] == 3
    findings = json.loads(broken.output)["findings"]
    assert [(f["kind"], f["seq"]) for f in findings][:2] == [
        ("record-missing", 3),
        ("index-extra", 3),  # one for each index row the deleted record left
    ]
    assert {f["kind"] for f in findings[1:]} == {"index-extra"}
