"""The scheduled job that keeps the rolling Slot horizon materialised while serving."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from fhir_server.app import create_app
from fhir_server.settings import Settings
from resources.sql.engine import Database
from security.crypto import KeyRing
from tests.scheduling.test_clinic_config import make_config
from tests.smart import backend_token


def test_server_extends_the_horizon_on_schedule(
    db: Database, keys: KeyRing, tmp_path: Path
) -> None:
    path = tmp_path / "clinic.yaml"
    path.write_text(yaml.safe_dump(make_config(horizon_weeks=2)))
    settings = Settings(
        database_url="sqlite://",
        key_file=tmp_path / "k.json",
        base_url="http://testserver/fhir",
        clinic_file=path,
        clinic_refresh_seconds=1,
    )
    with TestClient(create_app(settings, keys=keys, db=db)) as client:
        client.headers["Authorization"] = f"Bearer {backend_token(client, db)}"
        assert client.get("/fhir/Slot", params={"_summary": "count"}).json()["total"] == 0
        deadline = time.monotonic() + 30
        total = 0
        while time.monotonic() < deadline and total == 0:
            time.sleep(0.3)
            total = client.get("/fhir/Slot", params={"_summary": "count"}).json()["total"]
        # 2 weeks, every day 09:00-10:00 in quarter hours (make_config's hours)
        assert total == 14 * 4
        assert client.get("/fhir/Schedule/sched-smith-main").status_code == 200


def test_a_run_gives_way_to_a_load_in_progress(db: Database, keys: KeyRing, tmp_path: Path) -> None:
    """Several server processes start their horizon jobs together: while one loads the
    clinic, the others skip their run instead of queueing to load it again."""
    import threading

    from fhir_server.app import extend_horizon
    from resources.store import Store
    from scheduling.clinic import lock_clinic_loads
    from scheduling.config import parse_clinic_config

    if db.is_sqlite:
        pytest.skip("SQLite's one writer already makes a second run wait, then find all done")
    store = Store(keys, base_url="http://testserver/fhir")
    clinic = parse_clinic_config(make_config(horizon_weeks=2))
    outcome: list[object] = []
    with db.write() as conn:
        assert lock_clinic_loads(conn, wait=False)  # a load in progress holds the lock
        runner = threading.Thread(target=lambda: outcome.append(extend_horizon(db, store, clinic)))
        runner.start()
        runner.join(timeout=30)
    assert outcome == [None]  # skipped, without waiting for the load
    report = extend_horizon(db, store, clinic)  # the next run, with no load in progress
    assert report is not None and report.slots_created == 14 * 4
