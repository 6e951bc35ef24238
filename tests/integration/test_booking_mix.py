"""A random concurrent mix of 500+ book, cancel, reschedule and move calls on a real uvicorn.

Afterwards no schedule has overlapping busy time (checked in SQL), every booked Appointment's
Slots are busy and its time is exactly its busy time.
"""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from resources.sql.engine import Database
from tests.integration.test_booking_race import clinic_server, find_options

H = {"content-type": "application/fhir+json"}
CLINIC = {
    "name": "Mix clinic",
    "timezone": "America/New_York",
    "locations": [{"id": "main", "name": "Main"}],
    "practitioners": [{"id": "smith", "family": "Smith"}, {"id": "evans", "family": "Evans"}],
    "visit_types": [{"code": "visit", "display": "Visit", "minutes": 30}],
    "hours": [
        {
            "practitioner": p,
            "location": "main",
            "days": ["mon", "tue", "wed", "thu", "fri"],
            "start": "09:00",
            "end": "12:00",
        }
        for p in ("smith", "evans")
    ],
}
WORKERS = 8
CALLS_EACH = 70  # 560 calls in all

OVERLAPS = """
SELECT count(*) FROM busy_time a JOIN busy_time b
  ON a.schedule_id = b.schedule_id AND a.pk < b.pk AND a.start < b."end" AND b.start < a."end"
"""

BOOKED_TIME = "SELECT appointment_id, start, \"end\" FROM busy_time WHERE kind = 'booked'"


def _utc(value: Any) -> datetime:
    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    return when.replace(tzinfo=when.tzinfo or UTC).astimezone(UTC)


def _params(resource: dict[str, Any], old: str | None = None) -> dict[str, Any]:
    p: list[dict[str, Any]] = [{"name": "appointment-resource", "resource": resource}]
    if old:
        p.append({"name": "cancelled-appointment-id", "valueId": old})
    return {"resourceType": "Parameters", "parameter": p}


def test_random_mix_leaves_no_overlap(tmp_path: Path, database_url: str) -> None:
    with clinic_server(tmp_path, database_url, CLINIC) as server:
        options = find_options(server, 5, 500)
        assert len(options) == 2 * 5 * 11
        auth = server.headers
        booked: list[dict[str, Any]] = []
        statuses: list[int] = []
        lock = threading.Lock()

        def worker(seed: int) -> None:
            rnd = random.Random(seed)
            with httpx.Client(base_url=server.base, timeout=60, headers=auth) as c:
                for _ in range(CALLS_EACH):
                    kind = rnd.random()
                    with lock:
                        mine = rnd.choice(booked) if booked else None
                    if kind < 0.5 or mine is None:
                        r = c.post(
                            "/Appointment/$book", json=_params(rnd.choice(options)), headers=H
                        )
                    elif kind < 0.7:
                        r = c.post(
                            "/Appointment/$book",
                            json=_params({**mine, "status": "cancelled"}),
                            headers=H,
                        )
                    elif kind < 0.85:  # move in place (modify), maybe to the other doctor
                        to = rnd.choice(options)
                        fields = ("start", "end", "slot", "participant")
                        moved = {**mine, **{f: to[f] for f in fields}}
                        r = c.post("/Appointment/$book", json=_params(moved), headers=H)
                    else:
                        r = c.post(
                            "/Appointment/$book",
                            json=_params(rnd.choice(options), mine["id"]),
                            headers=H,
                        )
                    with lock:
                        statuses.append(r.status_code)
                        if r.status_code in (200, 201) and r.json()["status"] == "booked":
                            booked.append(r.json())

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(WORKERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert len(statuses) == WORKERS * CALLS_EACH
        assert not [s for s in statuses if s >= 500]
        assert statuses.count(201) > 20 and statuses.count(200) > 20
        db = Database(database_url)
        try:
            with db.read() as conn:
                assert conn.execute(text(OVERLAPS)).scalar_one() == 0
                claimed = {
                    (r.appointment_id, _utc(r.start), _utc(r.end))
                    for r in conn.execute(text(BOOKED_TIME))
                }
        finally:
            db.dispose()
        with httpx.Client(base_url=server.base, timeout=60, headers=auth) as c:
            live = c.get("/Appointment", params={"status": "booked", "_count": "500"}).json()
            assert live.get("total", 0) > 0
            times = {
                (e["resource"]["id"], _utc(e["resource"]["start"]), _utc(e["resource"]["end"]))
                for e in live.get("entry", [])
            }
            assert times == claimed
            for entry in live.get("entry", []):
                for slot in entry["resource"]["slot"]:
                    assert c.get(f"/{slot['reference']}").json()["status"] == "busy"
