"""The demo clinic loads, is idempotent, and is served by the `fhir-sched` command."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from fhir_server.cli import main
from fhir_server.demo import load_demo
from fhir_server.settings import Settings
from resources.sql.engine import Database
from resources.store import V

MONDAY = date(2026, 11, 23)


def _settings(tmp_path: Path) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path}/demo.db", key_file=tmp_path / "keys.json")


def _versions(settings: Settings) -> int:
    db = Database(settings.database_url)
    try:
        with db.read() as conn:
            return int(conn.execute(select(func.count()).select_from(V)).scalar_one())
    finally:
        db.dispose()


def test_demo_clinic_contents(tmp_path: Path) -> None:
    counts = load_demo(_settings(tmp_path), days=14, start_day=MONDAY)
    assert 2 <= counts["Practitioner"] <= 3
    assert counts["Patient"] >= 3
    assert counts["Schedule"] == counts["Practitioner"]
    # 10 weekdays x 16 half-hour slots x each practitioner
    assert counts["Slot"] == 10 * 16 * counts["Practitioner"]


def test_demo_load_is_idempotent(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    first = load_demo(settings, days=14, start_day=MONDAY)
    before = _versions(settings)
    assert before == sum(first.values())
    load_demo(settings, days=14, start_day=MONDAY)
    assert _versions(settings) == before


def test_key_file_is_private(tmp_path: Path) -> None:
    load_demo(_settings(tmp_path), days=1, start_day=MONDAY)
    assert (tmp_path / "keys.json").stat().st_mode & 0o777 == 0o600


def test_db_upgrade_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FHIRSCHED_DATABASE_URL", f"sqlite:///{tmp_path}/cli.db")
    result = CliRunner().invoke(main, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert "up to date" in result.output


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3"], ids=["any", "private"])
def test_refuses_non_loopback_bind_by_default(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        Settings(host=host).check_bind()
    Settings(host=host, allow_remote=True).check_bind()
