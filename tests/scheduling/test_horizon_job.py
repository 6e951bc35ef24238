"""The scheduled job that keeps the rolling Slot horizon materialised while serving."""

from __future__ import annotations

import time
from pathlib import Path

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
