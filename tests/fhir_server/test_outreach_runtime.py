"""The reminder job inside the server (its lifespan runs a pass every
``FHIRSCHED_REMINDER_SECONDS``, on real time), texts kept by the local outbox provider, and
``fhir-sched outbox`` showing them, masked, after recording an AuditEvent."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import select

from fhir_server.app import create_app
from fhir_server.cli import main
from fhir_server.demo import DEMO_CLINIC
from fhir_server.replies_runtime import conversations_of
from fhir_server.settings import Settings
from outreach.hooks import NoConversations
from resources.sql.engine import Database
from resources.sql.tables import AuditLog, OutreachMessage
from scheduling.clinic import VISIT_TYPE_SYSTEM
from security.audit import open_event
from security.crypto import KeyRing
from tests.builders import FHIR_JSON, make_appointment, make_patient
from tests.smart import backend_token

T = OutreachMessage.__table__


def _clinic_file(tmp_path: Path) -> Path:
    data = yaml.safe_load(DEMO_CLINIC.read_text())
    data["reminders"]["quiet_hours"] = None  # the test runs at whatever hour it is
    path = tmp_path / "clinic.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _booked(patient: str, start: datetime) -> dict[str, Any]:
    body = make_appointment(
        f"Patient/{patient}",
        "Practitioner/dr-smith",
        start.isoformat(),
        (start + timedelta(minutes=30)).isoformat(),
    )
    body["participant"].append({"actor": {"reference": "Location/loc-main"}, "status": "accepted"})
    body["serviceType"] = [{"coding": [{"system": VISIT_TYPE_SYSTEM, "code": "follow-up"}]}]
    return body


def _sent(db: Database) -> list[Any]:
    with db.read() as conn:
        return list(conn.execute(select(T.c.kind, T.c.state, T.c.appointment_id)).all())


def test_the_server_sends_due_reminders_and_the_outbox_command_shows_them(
    db: Database, keys: KeyRing, settings: Settings, tmp_path: Path
) -> None:
    settings = settings.model_copy(
        update={
            "clinic_file": _clinic_file(tmp_path),
            "reminder_seconds": 1,
            "clinic_refresh_seconds": 0,
        }
    )
    app = create_app(settings, keys=keys, db=db)
    assert app.state.agent is None  # no agent registered: its conversations are nobody's
    assert isinstance(conversations_of(app), NoConversations)
    with TestClient(app) as client:
        auth = {"Authorization": f"Bearer {backend_token(client, db)}", **FHIR_JSON}
        patient = make_patient("Outbox", ["Olive"], phone="+1 413 555 0177")
        pid = client.post("/fhir/Patient", json=patient, headers=auth).json()["id"]
        start = (datetime.now(UTC) + timedelta(hours=47, minutes=50)).replace(microsecond=0)
        made = client.post("/fhir/Appointment", json=_booked(pid, start), headers=auth)
        assert made.status_code == 201, made.text
        aid = made.json()["id"]
        deadline = time.monotonic() + 15
        while not _sent(db) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _sent(db) == [("reminder", "sent", aid)]
        time.sleep(1.5)  # another pass: nothing more
        assert len(_sent(db)) == 1
        about = client.get(
            "/fhir/Communication", params={"about": f"Appointment/{aid}"}, headers=auth
        )
        assert about.json()["total"] == 1

    env = {
        "FHIRSCHED_DATABASE_URL": db.url,
        "FHIRSCHED_KEYS": json.dumps(keys.to_document()),
        "FHIRSCHED_AUDIT_CHECKPOINT_FILE": str(tmp_path / "checkpoints.jsonl"),
    }
    shown = CliRunner().invoke(main, ["outbox"], env=env)
    assert shown.exit_code == 0, shown.output
    assert "local outbox" in shown.output
    [line] = [x for x in shown.output.splitlines() if "reminder" in x]
    assert "***-**77" in line and "4135550177" not in line
    assert "Reminder: Dr. Alice Smith" in line and " sent " in line
    full = CliRunner().invoke(main, ["outbox", "--unmasked", "--to", "+14135550177"], env=env)
    assert "+14135550177" in full.output
    nobody = CliRunner().invoke(main, ["outbox", "--to", "+15550000000"], env=env)
    assert "Reminder" not in nobody.output
    with db.read() as conn:
        events = [open_event(keys, r) for r in conn.execute(select(AuditLog.__table__))]
    commands = [e["subtype"][0]["code"] for e in events if e["subtype"][0]["code"] == "outbox"]
    assert len(commands) == 3
    sent = [e for e in events if e["subtype"][0]["code"] == "reminder"]
    assert len(sent) == 1 and "Reminder" not in json.dumps(sent[0])
