"""The server's rescoring run: its writes are audited as the server's own, in their
transaction, and a run that changes nothing records nothing."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, text

from fhir_server.risk_runtime import RISK_CLIENT, rescore_risk
from resources.sql.engine import Database
from resources.sql.tables import AuditLog
from resources.store import Store
from scheduling.config import ClinicConfig
from scheduling.risk import risk_of
from security.audit import open_event
from security.crypto import KeyRing
from tests.scheduling.test_find import cfg  # noqa: F401 - fixture
from tests.scheduling.test_risk import NOW, _read, clinic_history  # noqa: F401 - fixture


def _events(db: Database, keys: KeyRing) -> list[dict[str, Any]]:
    with db.read() as conn:
        rows = conn.execute(select(AuditLog.__table__).order_by(text("seq")))
        return [open_event(keys, r) for r in rows]


def test_a_run_is_audited_as_the_server(
    db: Database,
    keys: KeyRing,
    store: Store,
    cfg: ClinicConfig,  # noqa: F811
    clinic_history: None,  # noqa: F811
) -> None:
    before = len(_events(db, keys))
    assert rescore_risk(db, store, cfg, server="http://testserver/fhir", now=NOW) == 1
    assert risk_of(_read(db, store, "next")) is not None
    (event,) = _events(db, keys)[before:]
    assert event["action"] == "U"
    who = [a["who"].get("identifier", {}).get("value") for a in event["agent"]]
    assert RISK_CLIENT in who
    refs = [e["what"]["reference"] for e in event["entity"] if "what" in e]
    assert "Appointment/next" in refs and "Patient/pat1" in refs
    assert rescore_risk(db, store, cfg, server="http://testserver/fhir", now=NOW) == 0
    assert len(_events(db, keys)) == before + 1
