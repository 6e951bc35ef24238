"""The console is a door like the API: each ``fhir-sched`` command that reads or changes stored
data leaves an AuditEvent naming the command, the operating-system account that ran it and its
outcome, and a command that shows stored data records that before it shows anything."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from fhir_server.cli import main
from hl7_bridge.messages import MessageStore
from resources.sql.engine import Database
from resources.sql.tables import AuditLog
from security.audit import open_event
from security.crypto import KeyRing
from tests.conftest import audit_writes_refused

MESSAGE = (
    b"MSH|^~\\&|EMR|CLINIC|FHIRSCHED||20261206090000||SIU^S12|CTL-1|P|2.5.1\r"
    b"PID|1||MRN-77^^^H||Doe^Jane"
)


@pytest.fixture
def env(db: Database, keys: KeyRing, tmp_path: Any) -> dict[str, str]:
    return {
        "FHIRSCHED_DATABASE_URL": db.url,
        "FHIRSCHED_KEYS": json.dumps(keys.to_document()),
        "FHIRSCHED_AUDIT_CHECKPOINT_FILE": str(tmp_path / "checkpoints.jsonl"),
    }


def _run(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def _events(db: Database, keys: KeyRing) -> list[dict[str, Any]]:
    with db.read() as conn:
        rows = conn.execute(select(AuditLog.__table__).order_by(AuditLog.__table__.c.seq))
        return [open_event(keys, r) for r in rows]


def _console(event: dict[str, Any]) -> tuple[str, str, str]:
    """(DICOM type, command, outcome) of a console event."""
    assert event["agent"][0]["who"]["identifier"]["value"] == "fhir-sched-console"
    assert event["agent"][1]["who"]["identifier"]["value"].startswith("console:")
    return event["type"]["code"], event["subtype"][0]["code"], event["outcome"]


def _stored_message(db: Database, keys: KeyRing, control_id: str) -> str:
    with db.write() as conn:
        return MessageStore(keys).add(
            conn,
            direction="in",
            peer="EMR",
            control_id=control_id,
            event="S12",
            message=MESSAGE,
            status="failed",
            now=datetime.now(UTC),
        )


def test_showing_a_stored_hl7_message_is_recorded_before_it_is_shown(
    db: Database, keys: KeyRing, env: dict[str, str]
) -> None:
    message_id = _stored_message(db, keys, "CTL-1")
    shown = _run(env, "hl7", "show", message_id)
    assert shown.exit_code == 0 and "Doe^Jane" in shown.output
    missing = _run(env, "hl7", "show", "no-such-id")
    assert missing.exit_code == 1
    listed = _run(env, "hl7", "messages")
    assert listed.exit_code == 0
    events = _events(db, keys)
    assert [_console(e) for e in events] == [
        ("110106", "hl7 show", "0"),
        ("110106", "hl7 show", "4"),
        ("110112", "hl7 messages", "0"),
    ]
    what = events[0]["entity"][0]["what"]["identifier"]
    assert what == {"system": "urn:fhir-sched:hl7-message", "value": message_id}
    assert events[1]["outcomeDesc"] == "no such message"
    # nothing of the message itself is in its record
    assert "Doe" not in json.dumps(events)


def test_a_show_that_cannot_be_recorded_shows_nothing(
    db: Database, keys: KeyRing, env: dict[str, str]
) -> None:
    message_id = _stored_message(db, keys, "CTL-2")
    with audit_writes_refused(db):
        shown = _run(env, "hl7", "show", message_id)
        assert shown.exit_code != 0
        assert "Doe^Jane" not in shown.output


def test_administration_commands_are_recorded_with_their_outcome(
    db: Database, keys: KeyRing, env: dict[str, str]
) -> None:
    steps = [
        ("client", "add", "--name", "x", "--kind", "symmetric", "--scope", "system/*.rs"),
        ("client", "list"),
        ("client", "revoke", "no-such-client"),
        ("user", "unblock", "desk"),
        ("launch", "--patient", "pat-9"),
        ("user", "list"),
    ]
    codes = [_run(env, *step).exit_code for step in steps]
    assert codes == [0, 0, 1, 0, 0, 0]
    events = _events(db, keys)
    assert [_console(e) for e in events] == [
        ("110113", "client add", "0"),
        ("110112", "client list", "0"),
        ("110113", "client revoke", "4"),
        ("110113", "user unblock", "0"),
        ("110113", "launch", "0"),
        ("110112", "user list", "0"),
    ]
    assert "no-such-client" in events[2]["outcomeDesc"]
    assert events[4]["entity"][0]["what"]["reference"] == "Patient/pat-9"


def test_a_checkpoint_covers_its_own_record(
    db: Database, keys: KeyRing, env: dict[str, str]
) -> None:
    written = _run(env, "audit", "checkpoint")
    assert written.exit_code == 0, written.output
    events = _events(db, keys)
    assert [_console(e) for e in events] == [("110101", "audit checkpoint", "0")]
    assert json.loads(written.output)["seq"] == 1
    verified = _run(env, "audit", "verify")
    assert json.loads(verified.output)["intact"], verified.output
    assert [_console(e)[1] for e in _events(db, keys)] == ["audit checkpoint", "audit verify"]


def test_a_missing_key_file_is_not_replaced_for_a_database_that_holds_data(
    db: Database, keys: KeyRing, env: dict[str, str], tmp_path: Any
) -> None:
    """A wrong FHIRSCHED_KEY_FILE used to get a fresh key file made there, and the command's
    records sealed under it broke the audit chain. Now the command stops, in one line, and
    writes nothing; on an empty database the key file is still made on first run."""
    assert _run(env, "user", "list").exit_code == 0  # one record under the real keys
    wrong = tmp_path / "typo" / "keys.json"
    mistaken = {k: v for k, v in env.items() if k != "FHIRSCHED_KEYS"}
    mistaken["FHIRSCHED_KEY_FILE"] = str(wrong)
    for args in (("user", "list"), ("hl7", "messages"), ("audit", "verify")):
        refused = _run(mistaken, *args)
        assert refused.exit_code == 1, refused.output
        assert f"Error: no key file at {wrong}, but the database" in refused.output
    assert not wrong.exists()
    assert len(_events(db, keys)) == 1
    verified = _run(env, "audit", "verify")
    assert json.loads(verified.output)["intact"], verified.output

    fresh = tmp_path / "fresh"
    first_run = {
        "FHIRSCHED_DATABASE_URL": f"sqlite:///{fresh}/new.db",
        "FHIRSCHED_KEY_FILE": str(fresh / "keys.json"),
    }
    assert _run(first_run, "user", "list").exit_code == 0
    assert (fresh / "keys.json").exists()
