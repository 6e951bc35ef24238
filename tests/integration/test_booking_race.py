"""50 concurrent $book calls for the same time against a real uvicorn: one wins, 49 get 409."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import yaml

from tests.integration.server import Server, running_server, server_env

TZ = ZoneInfo("America/New_York")
CLINIC = {
    "name": "Race clinic",
    "timezone": "America/New_York",
    "locations": [{"id": "main", "name": "Main"}],
    "practitioners": [{"id": "smith", "family": "Smith"}],
    "visit_types": [{"code": "visit", "display": "Visit", "minutes": 30}],
    "hours": [
        {
            "practitioner": "smith",
            "location": "main",
            "days": ["mon", "tue", "wed", "thu", "fri"],
            "start": "09:00",
            "end": "12:00",
        }
    ],
}
CALLERS = 50


def _monday() -> datetime:
    day = datetime.now(TZ).date() + timedelta(days=7)
    day += timedelta(days=(7 - day.weekday()) % 7)
    return datetime.combine(day, time(0, 0), tzinfo=TZ)


@contextmanager
def clinic_server(
    tmp_path: Path, database_url: str, clinic: dict[str, Any], **extra: str
) -> Iterator[Server]:
    """A real server with ``clinic`` loaded three weeks ahead and its rules in force (``extra``:
    more of its environment)."""
    path = tmp_path / "clinic.yaml"
    path.write_text(yaml.safe_dump(clinic))
    env = server_env(tmp_path, database_url, FHIRSCHED_CLINIC_FILE=str(path), **extra)
    with running_server(tmp_path, env) as server:
        loaded = server.cli("clinic", "load", str(path), "--weeks", "3")
        assert loaded.returncode == 0, loaded.stderr
        yield server


def find_options(server: Server, days: int, count: int) -> list[dict[str, Any]]:
    """$find for the next Monday onwards (visit type ``visit``), for a Patient created here
    ($book needs one)."""
    monday = _monday()
    patient = httpx.post(
        f"{server.base}/Patient",
        json={"resourceType": "Patient", "name": [{"family": "Race"}]},
        headers=server.headers,
        timeout=60,
    ).json()
    found = httpx.get(
        f"{server.base}/Appointment/$find",
        params={
            "start": monday.isoformat(),
            "end": (monday + timedelta(days=days)).isoformat(),
            "visit-type": "visit",
            "patient-reference": f"Patient/{patient['id']}",
            "_count": str(count),
        },
        headers=server.headers,
        timeout=60,
    ).json()
    return [e["resource"] for e in found["entry"]]


def test_fifty_concurrent_bookings_one_wins(tmp_path: Path, database_url: str) -> None:
    with clinic_server(tmp_path, database_url, CLINIC) as server:
        race_for_one_time(server)


def book_together(
    server: Server, proposed: dict[str, Any], callers: int, **headers: str
) -> list[httpx.Response]:
    """``callers`` clients post ``$book`` of ``proposed`` at the same moment (a barrier)."""
    body = {
        "resourceType": "Parameters",
        "parameter": [{"name": "appointment-resource", "resource": proposed}],
    }
    auth = server.headers
    answers: list[httpx.Response] = []
    lock = threading.Lock()
    barrier = threading.Barrier(callers)

    def call() -> None:
        with httpx.Client(timeout=60, headers=auth) as client:
            barrier.wait()
            r = client.post(
                f"{server.base}/Appointment/$book",
                json=body,
                headers={"content-type": "application/fhir+json", **headers},
            )
        with lock:
            answers.append(r)

    threads = [threading.Thread(target=call) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return answers


def race_for_one_time(server: Server) -> None:
    """``CALLERS`` clients book the same proposed time at once: one 201, the rest 409."""
    proposed = find_options(server, 1, 1)[0]
    statuses = [r.status_code for r in book_together(server, proposed, CALLERS)]
    assert sorted(statuses) == [201] + [409] * (CALLERS - 1)
    booked: Any = httpx.get(
        f"{server.base}/Appointment",
        params={"status": "booked", "_summary": "count"},
        headers=server.headers,
    ).json()
    assert booked["total"] == 1
    start = datetime.fromisoformat(proposed["start"]).astimezone(UTC)
    assert start.astimezone(TZ).hour == 9


def test_concurrent_retries_with_one_key_book_once(tmp_path: Path, database_url: str) -> None:
    with clinic_server(tmp_path, database_url, CLINIC) as server:
        proposed = find_options(server, 1, 1)[0]
        answers = book_together(server, proposed, 10, **{"idempotency-key": "same-key"})
        results = [(r.status_code, r.json().get("id", "")) for r in answers]
        assert {status for status, _ in results} == {201}
        assert len({rid for _, rid in results}) == 1
