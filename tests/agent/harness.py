"""A clinic and its booking agent, for the agent's tests and its evaluation.

The agent is the real one (``agent/``), built as the server builds it, reaching the server
only over HTTP: its FHIR client sends requests through the TestClient's transport, so each goes
through the whole app (token endpoint, authorization, ``$find``/``$book``, audit).

Time: the server runs on real time; the agent and its model run on a virtual clock (a weekday
morning a week or more ahead, or a week before the next daylight-saving change), so "tomorrow"
and "next week" mean the same every day the tests run. Slots are loaded for the weeks around
the virtual time and the clinic's booking horizon is widened to reach them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx2
import yaml
from fastapi.testclient import TestClient

from agent.engine import Agent
from agent.model import Model
from agent.offline import OfflineModel
from fhir_server.agent_runtime import build_agent, directory_of, register_agent
from fhir_server.app import create_app
from fhir_server.demo import DEMO_CLINIC, demo_patients
from fhir_server.settings import Settings
from resources import service
from resources.sql.engine import Database
from resources.store import Store
from scheduling.clinic import load_clinic
from scheduling.config import ClinicConfig, parse_clinic_config
from security.crypto import KeyRing
from tests.smart import backend_token

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def clinic_data() -> dict[str, Any]:
    """The demo clinic, its booking horizon wide enough for the virtual weeks."""
    data: dict[str, Any] = yaml.safe_load(DEMO_CLINIC.read_text())
    data["rules"]["booking_horizon_days"] = 400
    data["exceptions"] = [e for e in data["exceptions"] if "practitioners" not in e]
    return data


def clinic_config() -> ClinicConfig:
    return parse_clinic_config(clinic_data())


def virtual_monday(tz: ZoneInfo, today: date | None = None) -> date:
    """The first Monday at least eight days from today."""
    today = today or datetime.now(tz).date()
    day = today + timedelta(days=8)
    return day + timedelta(days=(7 - day.weekday()) % 7)


def next_dst_change(tz: ZoneInfo, after: date) -> date:
    """The first day after ``after`` whose UTC offset differs from the day before."""
    day = after
    while True:
        noon = datetime.combine(day, time(12), tzinfo=tz)
        nxt = datetime.combine(day + timedelta(days=1), time(12), tzinfo=tz)
        if noon.utcoffset() != nxt.utcoffset():
            return day + timedelta(days=1)
        day += timedelta(days=1)


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


@dataclass
class World:
    client: TestClient  # a full-access staff/system client (setup and grading)
    db: Database
    keys: KeyRing
    store: Store
    cfg: ClinicConfig
    agent: Agent
    clock: Clock
    monday: date  # the virtual week's Monday
    dst_day: date  # the first day on the other side of the next DST change
    settings: Settings
    extra: dict[str, Any] = field(default_factory=dict)

    def at(self, day: date, hh: int, mm: int = 0) -> datetime:
        return datetime.combine(day, time(hh, mm), tzinfo=self.cfg.tz)

    def search(self, rtype: str, params: dict[str, str]) -> list[dict[str, Any]]:
        r = self.client.get(f"/fhir/{rtype}", params={**params, "_count": "500"})
        assert r.status_code == 200, r.text
        return [e["resource"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match"]


def load_weeks(db: Database, store: Store, cfg: ClinicConfig, start: date, weeks: int) -> None:
    with db.write() as conn:
        load_clinic(conn, store=store, config=cfg, today=start, weeks=weeks)


@contextmanager
def agent_world(
    db: Database,
    keys: KeyRing,
    store: Store,
    tmp_path: Path,
    *,
    model: Callable[[OfflineModel], Model] | None = None,
    settings_extra: dict[str, Any] | None = None,
    agent_extra: dict[str, Any] | None = None,
) -> Iterator[World]:
    """The demo clinic with its patients, a server, and the agent registered and built."""
    cfg = clinic_config()
    clinic_file = tmp_path / "clinic.yaml"
    clinic_file.write_text(yaml.safe_dump(clinic_data()))
    settings = Settings(
        database_url="sqlite://",
        key_file=tmp_path / "keys.json",
        base_url="http://testserver/fhir",
        clinic_file=clinic_file,
        token_cache_seconds=0,
        **(settings_extra or {}),
    )
    monday = virtual_monday(cfg.tz)
    dst_day = next_dst_change(cfg.tz, monday + timedelta(days=14))
    load_weeks(db, store, cfg, monday - timedelta(days=7), 4)
    load_weeks(db, store, cfg, dst_day - timedelta(days=8), 2)
    with db.write() as conn:
        for patient in demo_patients():
            service.update(
                conn,
                store=store,
                resource_type="Patient",
                resource_id=patient["id"],
                resource=patient,
            )
        register_agent(conn, settings)
    clock = Clock(datetime.combine(monday, time(9), tzinfo=cfg.tz))
    app = create_app(settings, keys=keys, db=db)
    with TestClient(app, raise_server_exceptions=False) as c:
        c.headers["Authorization"] = f"Bearer {backend_token(c, db)}"
        # the agent's own HTTP client: the same app, none of the test client's headers
        http = httpx2.Client(transport=c._transport, base_url="http://testserver")
        offline = OfflineModel(directory_of(cfg), clock)
        agent = build_agent(
            settings,
            db=db,
            keys=keys,
            clinic=cfg,
            http=http,  # type: ignore[arg-type]  # httpx2, as the TestClient speaks
            model=model(offline) if model else offline,
            clock=clock,
            **(agent_extra or {}),
        )
        assert agent is not None
        app.state.agent = agent  # the routes use it too (the app's own cannot reach "testserver")
        try:
            yield World(c, db, keys, store, cfg, agent, clock, monday, dst_day, settings)
        finally:
            agent.fhir.close()


def existing_patient(world: World, patient_id: str) -> None:
    """Make ``patient_id`` an existing patient here: a visit last year, fulfilled (the demo
    clinic counts visits within three years)."""
    last_year = datetime.now(UTC).replace(microsecond=0) - timedelta(days=365)
    r = world.client.post(
        "/fhir/Appointment",
        json={
            "resourceType": "Appointment",
            "status": "fulfilled",
            "start": last_year.isoformat(),
            "end": (last_year + timedelta(minutes=30)).isoformat(),
            "participant": [
                {"actor": {"reference": f"Patient/{patient_id}"}, "status": "accepted"}
            ],
        },
        headers=FHIR_JSON,
    )
    assert r.status_code == 201, r.text


def staff_book(
    world: World,
    patient: str,
    start: datetime,
    *,
    visit: str = "follow-up",
    clinician: str | None = None,
) -> dict[str, Any]:
    """Book ``start`` for ``patient`` as the front desk would ($find, then $book)."""
    params = [
        {"name": "start", "valueDateTime": start.isoformat()},
        # $find offers visits that end by ``end``: leave room for the longest visit
        {"name": "end", "valueDateTime": (start + timedelta(hours=2)).isoformat()},
        {"name": "visit-type", "valueString": visit},
        {"name": "patient-reference", "valueReference": {"reference": f"Patient/{patient}"}},
    ]
    if clinician:
        params.append(
            {"name": "practitioner", "valueReference": {"reference": f"Practitioner/{clinician}"}}
        )
    found = world.client.post(
        "/fhir/Appointment/$find",
        json={"resourceType": "Parameters", "parameter": params},
        headers=FHIR_JSON,
    )
    assert found.status_code == 200, found.text
    options = [e["resource"] for e in found.json().get("entry", []) if "resource" in e]
    options = [
        o
        for o in options
        if o.get("resourceType") == "Appointment" and utc(o["start"]) == start.astimezone(UTC)
    ]
    assert options, f"nothing to book at {start}"
    booked = world.client.post(
        "/fhir/Appointment/$book",
        json={
            "resourceType": "Parameters",
            "parameter": [{"name": "appointment-resource", "resource": options[0]}],
        },
        headers=FHIR_JSON,
    )
    assert booked.status_code == 201, booked.text
    return dict(booked.json())


def utc(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(UTC)
