"""Appointment/$find (IHE ITI-115) over HTTP, on both databases."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import insert

from fhir_server.app import create_app
from fhir_server.settings import Settings
from resources.sql.engine import Database
from resources.sql.tables import BusyTime
from resources.store import Store
from scheduling.clinic import load_clinic
from scheduling.config import ClinicConfig, parse_clinic_config
from security.crypto import KeyRing
from tests.builders import FHIR_JSON, create, make_patient
from tests.scheduling.test_clinic_config import make_config
from tests.smart import backend_token

WEEKDAYS = ["mon", "tue", "wed", "thu", "fri"]


def clinic_data() -> dict[str, Any]:
    gp = {"system": "http://snomed.info/sct", "code": "394814009"}
    return make_config(
        practitioners=[
            {"id": "smith", "family": "Smith", "specialties": [gp]},
            {"id": "evans", "family": "Evans", "specialties": [gp]},
        ],
        visit_types=[
            {"code": "new-patient", "display": "New", "minutes": 45, "patients": "new"},
            {"code": "follow-up", "display": "Follow-up", "minutes": 30, "patients": "existing"},
            {
                "code": "procedure",
                "display": "Procedure",
                "minutes": 30,
                "practitioners": ["smith"],
            },
        ],
        hours=[
            {
                "practitioner": p,
                "location": "main",
                "days": WEEKDAYS,
                "start": "09:00",
                "end": "12:00",
            }
            for p in ("smith", "evans")
        ],
        rules={
            "buffers": [{"after": ["procedure"], "minutes": 15, "practitioners": ["smith"]}],
            "new_patient_windows": [
                {"practitioners": ["smith"], "days": ["tue"], "start": "09:00", "end": "12:00"}
            ],
            "exclusions": [{"practitioner": "evans", "patients": "new", "days": ["fri"]}],
            "daily_caps": [{"visit_type": "procedure", "max": 2}],
        },
    )


def next_monday() -> date:
    today = datetime.now(UTC).date() + timedelta(days=7)
    return today + timedelta(days=(7 - today.weekday()) % 7)


MONDAY = next_monday()


@pytest.fixture
def cfg() -> ClinicConfig:
    return parse_clinic_config(clinic_data())


@pytest.fixture
def app_client(
    db: Database, keys: KeyRing, store: Store, tmp_path: Path, cfg: ClinicConfig
) -> Iterator[TestClient]:
    path = tmp_path / "clinic.yaml"
    path.write_text(yaml.safe_dump(clinic_data()))
    with db.write() as conn:
        load_clinic(conn, store=store, config=cfg, today=MONDAY, weeks=1)
    settings = Settings(
        database_url="sqlite://",
        key_file=tmp_path / "k.json",
        base_url="http://testserver/fhir",
        clinic_file=path,
    )
    with TestClient(create_app(settings, keys=keys, db=db), raise_server_exceptions=False) as c:
        c.headers["Authorization"] = f"Bearer {backend_token(c, db)}"
        yield c


def local(cfg: ClinicConfig, day: date, hh: int, mm: int = 0) -> datetime:
    return datetime.combine(day, time(hh, mm), tzinfo=cfg.tz)


def find(client: TestClient, cfg: ClinicConfig, day: date, visit: str, **extra: str) -> Any:
    params = {
        "start": local(cfg, day, 0).isoformat(),
        "end": local(cfg, day + timedelta(days=1), 0).isoformat(),
        "visit-type": visit,
        **extra,
    }
    return client.get("/fhir/Appointment/$find", params=params)


def options(bundle: dict[str, Any], cfg: ClinicConfig) -> list[tuple[str, str]]:
    out = []
    for e in bundle.get("entry", []):
        if e["search"]["mode"] != "match":  # an empty answer's reasons
            continue
        appt = e["resource"]
        who = appt["participant"][0]["actor"]["reference"].split("/")[1]
        out.append(
            (who, datetime.fromisoformat(appt["start"]).astimezone(cfg.tz).strftime("%H:%M"))
        )
    return out


def existing_patient(client: TestClient) -> str:
    p = create(client, make_patient("Known", mrn="K-1"))
    create(
        client,
        {
            "resourceType": "Appointment",
            "status": "fulfilled",
            "participant": [{"actor": {"reference": f"Patient/{p['id']}"}, "status": "accepted"}],
        },
    )
    return str(p["id"])


def test_follow_up_for_existing_patient(app_client: TestClient, cfg: ClinicConfig) -> None:
    pid = existing_patient(app_client)
    r = find(app_client, cfg, MONDAY, "follow-up", **{"patient-reference": f"Patient/{pid}"})
    assert r.status_code == 200, r.text
    b = r.json()
    assert b["type"] == "searchset"
    starts = [f"{h:02d}:{m:02d}" for h in (9, 10, 11) for m in (0, 15, 30, 45)][:11]
    assert b["total"] == 22
    assert options(b, cfg) == sorted(
        [(p, s) for s in starts for p in ("evans", "smith")], key=lambda o: (o[1], o[0])
    )
    appt = b["entry"][0]["resource"]
    assert appt["status"] == "proposed"
    assert {p["status"] for p in appt["participant"]} == {"needs-action"}
    assert appt["participant"][-1]["actor"]["reference"] == f"Patient/{pid}"
    assert len(appt["slot"]) == 2
    offset = local(cfg, MONDAY, 9).strftime("%z")
    assert appt["start"].endswith(f"{offset[:3]}:{offset[3:]}")
    for slot in appt["slot"]:
        assert app_client.get(f"/fhir/{slot['reference']}").json()["status"] == "free"


def test_follow_up_is_refused_to_a_new_patient(app_client: TestClient, cfg: ClinicConfig) -> None:
    b = find(app_client, cfg, MONDAY, "follow-up").json()
    assert b["total"] == 0
    assert [e["search"]["mode"] for e in b["entry"]] == ["outcome"]  # why: test_find_reasons


@pytest.mark.parametrize(
    ("offset", "expected"),
    [(0, {"evans"}), (1, {"evans", "smith"}), (4, set())],
    ids=["monday-evans-only", "tuesday-both", "friday-nobody"],
)
def test_new_patient_rules(
    app_client: TestClient, cfg: ClinicConfig, offset: int, expected: set[str]
) -> None:
    b = find(app_client, cfg, MONDAY + timedelta(days=offset), "new-patient").json()
    assert {who for who, _ in options(b, cfg)} == expected
    if expected:
        assert b["entry"][0]["resource"]["end"] > b["entry"][0]["resource"]["start"]


def _busy(
    db: Database,
    cfg: ClinicConfig,
    hh: int,
    mm: int,
    minutes: int,
    kind: str,
    visit: str | None = "procedure",
    expires: datetime | None = None,
) -> None:
    start = local(cfg, MONDAY, hh, mm).astimezone(UTC)
    with db.write() as conn:
        conn.execute(
            insert(BusyTime.__table__).values(
                schedule_id="sched-smith-main",
                start=start,
                end=start + timedelta(minutes=minutes),
                appointment_id="x",
                kind=kind,
                visit_type=visit,
                expires_at=expires,
            )
        )


def test_busy_time_and_buffers_are_never_offered(
    app_client: TestClient, db: Database, cfg: ClinicConfig
) -> None:
    _busy(db, cfg, 10, 0, 30, "booked")
    pid = existing_patient(app_client)  # new patients see Dr. Smith only on Tuesdays
    b = find(app_client, cfg, MONDAY, "procedure", **{"patient-reference": pid}).json()
    smith = [t for who, t in options(b, cfg) if who == "smith"]
    assert smith == ["09:00", "09:15", "10:45", "11:00", "11:15", "11:30"]


def test_live_holds_hide_time_and_expired_holds_free_it(
    app_client: TestClient, db: Database, cfg: ClinicConfig
) -> None:
    _busy(db, cfg, 9, 0, 60, "held", None, datetime.now(UTC) + timedelta(minutes=5))
    _busy(db, cfg, 11, 0, 60, "held", None, datetime.now(UTC) - timedelta(seconds=1))
    pid = existing_patient(app_client)
    b = find(app_client, cfg, MONDAY, "procedure", **{"patient-reference": pid}).json()
    smith = [t for who, t in options(b, cfg) if who == "smith"]
    assert smith == ["10:00", "10:15", "10:30", "10:45", "11:00", "11:15", "11:30"]


def _block(
    db: Database, start: datetime, end: datetime, kind: str, expires: datetime | None
) -> None:
    with db.write() as conn:
        conn.execute(
            insert(BusyTime.__table__).values(
                schedule_id="sched-smith-main",
                start=start.astimezone(UTC),
                end=end.astimezone(UTC),
                appointment_id=f"block-{kind}",
                kind=kind,
                visit_type=None,
                expires_at=expires,
            )
        )


@pytest.mark.parametrize("kind", ["booked", "held"])
def test_busy_time_longer_than_a_day_that_began_days_before_is_never_offered(
    app_client: TestClient, db: Database, cfg: ClinicConfig, kind: str
) -> None:
    """Busy time is read by a scan bounded below plus a partial index of rows longer than a
    day (scheduling/spans.py): a leave block sent from Friday to Monday 10:30, or
    a long live hold, still hides Monday morning."""
    pid = existing_patient(app_client)
    before = find(app_client, cfg, MONDAY, "procedure", **{"patient-reference": pid}).json()
    smith = [t for who, t in options(before, cfg) if who == "smith"]
    assert "09:00" in smith and "11:00" in smith
    expires = datetime.now(UTC) + timedelta(minutes=5) if kind == "held" else None
    _block(db, local(cfg, MONDAY - timedelta(days=3), 9), local(cfg, MONDAY, 10, 30), kind, expires)
    after = find(app_client, cfg, MONDAY, "procedure", **{"patient-reference": pid}).json()
    assert [t for who, t in options(after, cfg) if who == "smith"] == [
        t for t in smith if t >= "10:30"
    ]


def test_daily_cap(app_client: TestClient, db: Database, cfg: ClinicConfig) -> None:
    _busy(db, cfg, 9, 0, 15, "booked")
    _busy(db, cfg, 9, 30, 15, "booked")
    pid = existing_patient(app_client)
    b = find(app_client, cfg, MONDAY, "procedure", **{"patient-reference": pid}).json()
    assert b["total"] == 0
    tuesday = find(
        app_client, cfg, MONDAY + timedelta(days=1), "procedure", **{"patient-reference": pid}
    ).json()
    assert tuesday["total"] == 11  # the cap counts per day


def test_post_parameters_and_argonaut_aliases_agree(
    app_client: TestClient, cfg: ClinicConfig
) -> None:
    start = local(cfg, MONDAY + timedelta(days=1), 0).isoformat()
    end = local(cfg, MONDAY + timedelta(days=2), 0).isoformat()
    got = app_client.get(
        "/fhir/Appointment/$find",
        params={
            "startTime": start,
            "endTime": end,
            "appt-type": "new-patient",
            "provider": "smith",
            "_count": "3",
        },
    ).json()
    posted = app_client.post(
        "/fhir/Appointment/$find",
        headers=FHIR_JSON,
        json={
            "resourceType": "Parameters",
            "parameter": [
                {"name": "start", "valueDateTime": start},
                {"name": "end", "valueDateTime": end},
                {"name": "visit-type", "valueCoding": {"code": "new-patient"}},
                {"name": "practitioner", "valueReference": {"reference": "Practitioner/smith"}},
                {"name": "_count", "valueInteger": 3},
            ],
        },
    ).json()
    assert got["total"] == posted["total"] == 10  # 09:00-11:15 starts for a 45-minute visit
    assert options(got, cfg) == options(posted, cfg)
    assert len(got["entry"]) == 3


def test_patient_resource_is_matched_by_identifier(
    app_client: TestClient, cfg: ClinicConfig
) -> None:
    existing_patient(app_client)
    r = app_client.post(
        "/fhir/Appointment/$find",
        headers=FHIR_JSON,
        json={
            "resourceType": "Parameters",
            "parameter": [
                {"name": "start", "valueDateTime": local(cfg, MONDAY, 0).isoformat()},
                {"name": "end", "valueDateTime": local(cfg, MONDAY, 23).isoformat()},
                {"name": "visit-type", "valueString": "follow-up"},
                {"name": "patient-resource", "resource": make_patient("Known", mrn="K-1")},
            ],
        },
    )
    assert r.json()["total"] == 22


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"start": "2026-12-01T09:00:00"}, "offset"),
        ({"start": "2026-12-01"}, "offset"),
        ({"end": "2020-01-01T00:00:00Z"}, "after start"),
        ({"end": "2099-01-01T00:00:00Z"}, "wider than"),
        ({"visit-type": "massage"}, "unknown visit-type"),
        ({"colour": "red"}, "no parameter"),
    ],
    ids=["no-offset", "date-only", "end-before-start", "too-wide", "unknown-visit", "unknown"],
)
def test_bad_input_is_400(
    app_client: TestClient, cfg: ClinicConfig, params: dict[str, str], needle: str
) -> None:
    base = {
        "start": local(cfg, MONDAY, 0).isoformat(),
        "end": local(cfg, MONDAY, 23).isoformat(),
        "visit-type": "follow-up",
    }
    r = app_client.get("/fhir/Appointment/$find", params={**base, **params})
    assert r.status_code == 400
    assert needle in r.json()["issue"][0]["diagnostics"]
    missing = app_client.get("/fhir/Appointment/$find", params={"start": base["start"]})
    assert missing.status_code == 400


@pytest.mark.parametrize(
    "parameter",
    [
        "start",
        [True],
        [{"valueString": "follow-up"}],
        [{"name": 6.3e16, "valueString": "follow-up"}],
        [{"name": "reason", "valueCodeableConcept": {"coding": []}}],
        [{"name": "reason", "valueCodeableConcept": {"coding": [{"system": "urn:x"}]}}],
        [{"name": "_count", "valueInteger": {"value": 3}}],
        [{"name": "practitioner", "valueReference": {"display": "Dr. Smith"}}],
        [{"name": "patient-resource", "resource": {"resourceType": "Appointment"}}],
    ],
    ids=[
        "not-a-list",
        "not-an-object",
        "no-name",
        "name-not-text",
        "no-coding",
        "coding-without-code",
        "count-not-a-number",
        "reference-without-reference",
        "other-resource",
    ],
)
def test_malformed_parameters_are_400(
    app_client: TestClient, cfg: ClinicConfig, parameter: Any
) -> None:
    """Found by tests/integration/test_fuzz_api.py: each of these was a 500 (or an outcome
    whose expression was not text)."""
    base = [
        {"name": "start", "valueDateTime": local(cfg, MONDAY, 0).isoformat()},
        {"name": "end", "valueDateTime": local(cfg, MONDAY, 23).isoformat()},
        {"name": "visit-type", "valueString": "follow-up"},
    ]
    body = {
        "resourceType": "Parameters",
        "parameter": [*base, *parameter] if isinstance(parameter, list) else parameter,
    }
    r = app_client.post("/fhir/Appointment/$find", headers=FHIR_JSON, json=body)
    assert r.status_code == 400, r.text
    issue = r.json()["issue"][0]
    assert all(isinstance(e, str) for e in issue.get("expression", [])), issue


def test_only_small_finds_run_on_the_event_loop(cfg: ClinicConfig) -> None:
    """A $find over a few schedule-days may run inline; a month of every schedule may not."""
    from fhir_server.handlers import Context
    from fhir_server.scheduling_handlers import (
        SMALL_FIND_SCHEDULE_DAYS,
        find_is_small,
        parse_quietly,
    )

    ctx = cast(Context, SimpleNamespace(paging=SimpleNamespace(max_count=200)))

    def params(days: int) -> list[tuple[str, Any]]:
        return [
            ("start", local(cfg, MONDAY, 0).isoformat()),
            ("end", local(cfg, MONDAY + timedelta(days=days), 0).isoformat()),
            ("visit-type", "follow-up"),
        ]

    def small(params: list[tuple[str, Any]]) -> bool:
        return find_is_small(cfg, parse_quietly(ctx, params))

    schedules = 2  # Smith and Evans at the main location offer follow-ups
    assert small(params(1))
    assert not small(params(SMALL_FIND_SCHEDULE_DAYS // schedules + 1))
    assert parse_quietly(ctx, [("start", "not a date")]) is None
    assert small([("start", "not a date")])  # refused at once, inline
