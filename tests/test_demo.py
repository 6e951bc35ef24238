"""The demo clinic loads, is idempotent, and the `fhir-sched` commands work."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import KeySet
from sqlalchemy import func, select

from fhir_server.app import create_app
from fhir_server.cli import main
from fhir_server.demo import DEMO_CLINIC, load_demo
from fhir_server.keyring import open_keys
from fhir_server.settings import Settings
from resources.sql.engine import Database, migrate
from resources.store import V
from scheduling.availability import time_off_on
from scheduling.config import load_clinic_config
from security.smart.registry import add_user, find_user
from tests.smart import authorize_params, pkce, sign_in_and_allow

MONDAY = date(2026, 11, 30)


def _settings(tmp_path: Path) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path}/demo.db", key_file=tmp_path / "keys.json")


def _versions(settings: Settings) -> int:
    db = Database(settings.database_url)
    try:
        with db.read() as conn:
            return int(conn.execute(select(func.count()).select_from(V)).scalar_one())
    finally:
        db.dispose()


def test_demo_clinic_exercises_every_rule() -> None:
    cfg = load_clinic_config(DEMO_CLINIC)
    assert 2 <= len(cfg.practitioners) <= 3
    rules = cfg.rules
    assert rules.buffers
    assert rules.new_patient_windows
    assert rules.exclusions
    assert rules.daily_caps
    assert cfg.exceptions
    assert {v.patients for v in cfg.visit_types} == {"new", "existing", "any"}
    assert cfg.existing_patient.within_years


def test_demo_contents(tmp_path: Path) -> None:
    report, patients = load_demo(_settings(tmp_path), weeks=2, start_day=MONDAY)
    assert patients["Patient"] == 4
    assert patients["PractitionerRole"] == 1  # the front desk's record
    assert patients["Appointment"] == 2  # Peter Chalmers and Maria Rivera, seen last year
    # 2 locations, 5 services, 3 practitioners, 3 roles, 3 schedules
    assert report.created == 16
    # two weeks: smith 10 days x 32, evans 8 x 32 + 2 x 16, nguyen 6 x 32, minus the staff
    # meeting on Wed 2 Dec (one hour: 4 slots for smith and for evans; nguyen 4)
    assert report.slots_created == 320 + 288 + 192 - 12


@pytest.fixture
def demo_server(tmp_path: Path) -> Iterator[TestClient]:
    """``./dev demo`` in-process: the demo loaded from today, served, with the README's token
    (the demo backend client, client credentials)."""
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/demo.db",
        key_file=tmp_path / "keys.json",
        clinic_file=DEMO_CLINIC,
        base_url="http://testserver/fhir",
    )
    load_demo(settings, weeks=2)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        token = c.post(
            "/auth/token",
            auth=("demo-backend", "demo-backend-secret"),
            data={"grant_type": "client_credentials", "scope": "system/*.cruds"},
        ).json()["access_token"]
        c.headers["Authorization"] = f"Bearer {token}"
        yield c


def next_monday() -> date:
    today = datetime.now(load_clinic_config(DEMO_CLINIC).tz).date()
    return today + timedelta(days=7 - today.weekday())


def monday_window(monday: date) -> dict[str, str]:
    """The README's window: a Monday, 00:00 to 23:59 in the clinic's zone."""
    tz = load_clinic_config(DEMO_CLINIC).tz
    return {
        "start": datetime.combine(monday, time(0), tzinfo=tz).isoformat(),
        "end": datetime.combine(monday, time(23, 59), tzinfo=tz).isoformat(),
    }


def _find(client: TestClient, monday: date | None = None, **params: str) -> dict[str, Any]:
    window = monday_window(monday or next_monday())
    r = client.get("/fhir/Appointment/$find", params={**window, **params})
    assert r.status_code == 200, r.text
    found: dict[str, Any] = r.json()
    return found


def test_demo_patients_seen_last_year_are_offered_follow_ups(demo_server: TestClient) -> None:
    """The README's follow-up example: Peter Chalmers and Maria Rivera were seen last year;
    Chidi Okafor and Sara Lindqvist are new patients here."""
    for seen in ("pat-1", "pat-2"):
        found = _find(demo_server, **{"visit-type": "follow-up", "patient-reference": seen})
        assert found["total"] > 0, seen
    for new in ("pat-3", "pat-4"):
        assert (
            _find(demo_server, **{"visit-type": "follow-up", "patient-reference": new})["total"]
            == 0
        ), new
        assert (
            _find(demo_server, **{"visit-type": "new-patient", "patient-reference": new})["total"]
            > 0
        ), new


def test_an_empty_demo_find_says_why(demo_server: TestClient) -> None:
    """The issue's two empty answers: a follow-up for a new patient, and a procedure for a new
    patient on a Monday (Dr. Smith sees new patients only on Tuesday mornings)."""

    def reasons(found: dict[str, Any]) -> list[str]:
        assert found["total"] == 0
        (outcome,) = [e["resource"] for e in found["entry"] if e["search"]["mode"] == "outcome"]
        return [issue["details"]["text"] for issue in outcome["issue"]]

    cfg = load_clinic_config(DEMO_CLINIC)
    monday = next_monday()
    while time_off_on(cfg, "dr-smith", monday):  # the demo's leave: a Monday she works
        monday += timedelta(weeks=1)
    new = {"patient-reference": "Patient/pat-3"}
    assert reasons(_find(demo_server, monday, **{"visit-type": "follow-up"}, **new)) == [
        "a follow-up visit needs an earlier visit here"
    ]
    assert reasons(_find(demo_server, monday, **{"visit-type": "procedure"}, **new)) == [
        "Dr. Alice Smith sees new patients only on Tuesday mornings (08:00 to 12:00)"
    ]


def test_demo_load_is_idempotent(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    load_demo(settings, weeks=2, start_day=MONDAY)
    before = _versions(settings)
    report, patients = load_demo(settings, weeks=2, start_day=MONDAY)
    assert (report.created, report.updated, report.slots_created, patients["Patient"]) == (
        0,
        0,
        0,
        0,
    )
    assert _versions(settings) == before


DEMO_APP_REDIRECT = "http://127.0.0.1:9000/callback"


def test_the_front_desk_id_token_names_its_record(tmp_path: Path) -> None:
    settings = _settings(tmp_path).model_copy(update={"base_url": "http://testserver/fhir"})
    load_demo(settings, weeks=1, start_day=MONDAY)
    with TestClient(create_app(settings), follow_redirects=False) as c:
        verifier, challenge = pkce()
        params = authorize_params(
            "demo-app", challenge, redirect_uri=DEMO_APP_REDIRECT, scope="openid fhirUser user/*.rs"
        )
        done = sign_in_and_allow(c, params, login="frontdesk", password="frontdesk-demo")
        assert done.headers["location"].startswith(DEMO_APP_REDIRECT), done.text
        code = dict(parse_qsl(urlsplit(done.headers["location"]).query))["code"]
        token = c.post(
            "/auth/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": DEMO_APP_REDIRECT,
                "client_id": "demo-app",
                "code_verifier": verifier,
            },
        ).json()
        keys = KeySet.import_key_set(c.get("/auth/jwks").json())
        claims = jwt.decode(token["id_token"], keys, algorithms=["RS256"]).claims
        assert claims["fhirUser"] == "http://testserver/fhir/PractitionerRole/front-desk"
        record = c.get(
            "/fhir/PractitionerRole/front-desk",
            headers={"Authorization": f"Bearer {token['access_token']}"},
        )
        assert record.status_code == 200
        assert record.json()["code"] == [{"text": "Front desk"}]


def test_a_demo_loaded_before_gives_the_front_desk_its_record(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    db = Database(settings.database_url)
    try:
        migrate(db)
        keys = open_keys(settings, db)
        with db.write() as conn:  # as a demo loaded before the front desk had a record
            add_user(conn, keys, login="frontdesk", password="frontdesk-demo", role="front-desk")
        load_demo(settings, weeks=1, start_day=MONDAY)
        with db.read() as conn:
            user = find_user(conn, keys, login="frontdesk", password="frontdesk-demo")
            drsmith = find_user(conn, keys, login="drsmith", password="drsmith-demo")
    finally:
        db.dispose()
    assert user is not None and user.fhir_user == "PractitionerRole/front-desk"
    assert drsmith is not None and drsmith.fhir_user == "Practitioner/dr-smith"


def test_key_file_is_private(tmp_path: Path) -> None:
    load_demo(_settings(tmp_path), weeks=1, start_day=MONDAY)
    assert (tmp_path / "keys.json").stat().st_mode & 0o777 == 0o600


def test_db_upgrade_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FHIRSCHED_DATABASE_URL", f"sqlite:///{tmp_path}/cli.db")
    result = CliRunner().invoke(main, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert "up to date" in result.output


def test_clinic_load_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FHIRSCHED_DATABASE_URL", f"sqlite:///{tmp_path}/cli.db")
    monkeypatch.setenv("FHIRSCHED_KEY_FILE", str(tmp_path / "keys.json"))
    first = CliRunner().invoke(main, ["clinic", "load", str(DEMO_CLINIC), "--weeks", "1"])
    assert first.exit_code == 0, first.output
    assert json.loads(first.output)["created"] == 16
    again = CliRunner().invoke(main, ["clinic", "load", str(DEMO_CLINIC), "--weeks", "1"])
    assert json.loads(again.output)["unchanged"] == 16
    assert json.loads(again.output)["slots_created"] == 0


def test_clinic_load_refuses_bad_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FHIRSCHED_DATABASE_URL", f"sqlite:///{tmp_path}/cli.db")
    bad = tmp_path / "bad.yaml"
    bad.write_text(DEMO_CLINIC.read_text().replace("America/New_York", "America/Atlantis"))
    result = CliRunner().invoke(main, ["clinic", "load", str(bad)])
    assert result.exit_code != 0
    assert "timezone" in result.output
    assert "IANA" in result.output


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3"], ids=["any", "private"])
def test_refuses_non_loopback_bind_by_default(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        Settings(host=host).check_bind()
    Settings(host=host, allow_remote=True).check_bind()
