"""$find and $book over a year of Slots for 50 practitioners, through the real server.

    .venv/bin/python -m bench.find_book --db sqlite        # and --db postgresql

Seeds (with a progress bar) a clinic of 50 practitioners in 5 specialties, weekdays 08:00-18:00
in America/New_York, 15-minute Slots over 53 weeks (530,000 Slots), with the clinic's rules
(buffers, new-patient windows, exclusions, daily caps) loaded from a clinic file as in
production; with ``--history-weeks N``, also the busy time of N past weeks (about 60 % of every
practitioner's half hours), as a clinic that has used the server for a while has. Then, with
wrk (one thread, 8 connections) against one uvicorn worker (``--workers N``: ``fhir-sched serve
--workers N``, PostgreSQL only), after measuring the bare FastAPI app
(`bench/bare_app.py`) the same way for 5 s as a yardstick of the machine's speed at the time:

* ``$find``: a mix of what patients and staff ask: one practitioner over 7 days (50 %), one
  specialty (10 practitioners) over 2 days (40 %), the whole clinic for one day (10 %); always
  a follow-up for a known patient, ``_count=10``, random days across the year.
* ``$book``: distinct 30-minute follow-ups (every request a different practitioner and time),
  each re-checked against every rule and committed before it answers.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import yaml
from sqlalchemy import insert, text

from bench.common import (
    BackendToken,
    bulk_load,
    database,
    keyring,
    machine_speed,
    save,
    serve,
    wrk,
)
from resources.sql.tables import BusyTime
from scheduling.availability import schedule_id, slot_specs
from scheduling.clinic import VISIT_TYPE_SYSTEM, clinic_resources, slot_resource
from scheduling.config import ClinicConfig, parse_clinic_config

PRACTITIONERS = 50
SPECIALTIES = 5
WEEKS = 53
CHUNK = 10_000
CONNECTIONS = 8
WEEKDAYS = ["mon", "tue", "wed", "thu", "fri"]


def clinic(today: date) -> dict[str, Any]:
    docs = [f"p{n:02d}" for n in range(PRACTITIONERS)]
    specialty = [
        {"system": "urn:bench:specialty", "code": f"sp{k}", "display": f"Specialty {k}"}
        for k in range(SPECIALTIES)
    ]
    return {
        "name": "Benchmark clinic",
        "timezone": "America/New_York",
        "slot_minutes": 15,
        "horizon_weeks": WEEKS,
        "locations": [{"id": "main", "name": "Main"}],
        "practitioners": [
            {"id": d, "family": f"Doctor{n}", "specialties": [specialty[n % SPECIALTIES]]}
            for n, d in enumerate(docs)
        ],
        "visit_types": [
            {"code": "new-patient", "display": "New", "minutes": 45, "patients": "new"},
            {"code": "follow-up", "display": "Follow-up", "minutes": 30, "patients": "existing"},
            {"code": "procedure", "display": "Procedure", "minutes": 30},
        ],
        "hours": [
            {
                "practitioner": d,
                "location": "main",
                "days": WEEKDAYS,
                "start": "08:00",
                "end": "18:00",
            }
            for d in docs
        ],
        "rules": {
            "buffers": [{"after": ["procedure"], "minutes": 15}],
            "new_patient_windows": [{"days": ["tue"], "start": "08:00", "end": "12:00"}],
            "exclusions": [{"practitioner": "p00", "patients": "new", "days": ["fri"]}],
            "daily_caps": [{"visit_type": "procedure", "max": 4}],
            "min_notice_minutes": 120,
            "booking_horizon_days": 7 * WEEKS,
            "cancellation_notice_hours": 24,
        },
    }


def clinic_file(work: Path, today: date) -> tuple[ClinicConfig, Path]:
    """The benchmark clinic (:func:`clinic`), parsed and written where a server can load it."""
    data = clinic(today)
    path = work / "clinic.yaml"
    path.write_text(yaml.safe_dump(data))
    return parse_clinic_config(data), path


def seed(
    db: Any, keys: Any, config: ClinicConfig, today: date, base_url: str, weeks: int = WEEKS
) -> int:
    bulk_load(db, keys, clinic_resources(config), base_url)
    last = today + timedelta(weeks=weeks) - timedelta(days=1)
    expected = PRACTITIONERS * weeks * 5 * 40
    batch: list[dict[str, Any]] = []
    done = 0
    started = time.perf_counter()
    for spec in slot_specs(config, first_day=today, last_day=last):
        batch.append(slot_resource(config, spec))
        if len(batch) >= CHUNK:
            bulk_load(db, keys, batch, base_url)
            done += len(batch)
            batch = []
            rate = done / (time.perf_counter() - started)
            bar = "#" * int(30 * done / expected)
            print(
                f"\rseeding [{bar:<30}] {done:>8,}/~{expected:,} Slots ({rate:,.0f}/s)",
                end="",
                file=sys.stderr,
                flush=True,
            )
    if batch:
        bulk_load(db, keys, batch, base_url)
        done += len(batch)
    print(file=sys.stderr)
    if db.is_sqlite:
        with db.engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    else:  # as autovacuum would by the time a real clinic's year is loaded: statistics, and
        # the visibility map that lets the covering slot_time index answer alone
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    return done


def past_bookings(db: Any, config: ClinicConfig, today: date, weeks: int) -> int:
    """A clinic's history: busy time for about 60 % of every practitioner's half hours over
    the ``weeks`` before ``today`` (rows only: ``$find`` and ``$book`` read busy time, not the
    past Appointments). Every overlap query of the server sees these rows before its window."""
    rnd = random.Random(5)
    rows = []
    for back in range(1, 7 * weeks + 1):
        day = today - timedelta(days=back)
        if day.weekday() >= 5:
            continue
        for doc in range(PRACTITIONERS):
            for half in range(20):
                if rnd.random() < 0.6:
                    start = datetime.combine(day, datetime.min.time(), tzinfo=config.tz)
                    start += timedelta(hours=8, minutes=30 * half)
                    rows.append(
                        {
                            "schedule_id": schedule_id(f"p{doc:02d}", "main"),
                            "start": start.astimezone(UTC),
                            "end": (start + timedelta(minutes=30)).astimezone(UTC),
                            "appointment_id": f"past-{len(rows)}",
                            "kind": "booked",
                            "visit_type": "follow-up",
                            "expires_at": None,
                        }
                    )
    if rows:
        with db.engine.begin() as conn:
            conn.execute(insert(BusyTime.__table__), rows)
            conn.execute(text("ANALYZE busy_time"))
    return len(rows)


def known_patient(c: httpx.Client) -> str:
    h = {"content-type": "application/fhir+json"}
    p = c.post(
        "/Patient",
        json={"resourceType": "Patient", "name": [{"family": "Bench"}], "birthDate": "1970-01-01"},
        headers=h,
    ).json()
    c.post(
        "/Appointment",
        json={
            "resourceType": "Appointment",
            "status": "fulfilled",
            "participant": [{"actor": {"reference": f"Patient/{p['id']}"}, "status": "accepted"}],
        },
        headers=h,
    ).raise_for_status()
    return str(p["id"])


def find_urls(
    config: ClinicConfig, today: date, patient: str, n: int, weeks: int = WEEKS
) -> list[str]:
    rnd = random.Random(11)
    tz = config.tz
    days = [today + timedelta(days=k) for k in range(2, 7 * weeks - 7)]
    out = []
    for _ in range(n):
        day = rnd.choice(days)
        start = datetime.combine(day, datetime.min.time(), tzinfo=tz)
        kind = rnd.random()
        params = {
            "visit-type": "follow-up",
            "patient-reference": f"Patient/{patient}",
            "_count": "10",
        }
        if kind < 0.5:
            span = 7
            params["practitioner"] = f"Practitioner/p{rnd.randrange(PRACTITIONERS):02d}"
        elif kind < 0.9:
            span = 2
            params["specialty"] = f"urn:bench:specialty|sp{rnd.randrange(SPECIALTIES)}"
        else:
            span = 1
        params["start"] = start.isoformat()
        params["end"] = (start + timedelta(days=span)).isoformat()
        out.append("/fhir/Appointment/$find?" + urlencode(params))
    return out


def book_bodies(config: ClinicConfig, today: date, patient: str, n: int) -> list[str]:
    """Distinct, non-overlapping follow-ups: practitioner-major, then day, then half hour."""
    tz = config.tz
    bodies = []
    k = 0
    day = today + timedelta(days=2)
    while len(bodies) < n:
        if day.weekday() < 5:
            for doc in range(PRACTITIONERS):
                for half in range(0, 20, 2):
                    start = datetime.combine(day, datetime.min.time(), tzinfo=tz) + timedelta(
                        hours=8, minutes=15 * half
                    )
                    bodies.append(_book_body(config, f"p{doc:02d}", start, patient))
                    k += 1
        day += timedelta(days=1)
    return bodies[:n]


def _book_body(config: ClinicConfig, doc: str, start: datetime, patient: str) -> str:
    end = start + timedelta(minutes=30)
    slots = [
        f"Slot/slot-{doc}-main-{(start + timedelta(minutes=15 * i)).astimezone(UTC):%Y%m%d%H%M}"
        for i in range(2)
    ]
    appt = {
        "resourceType": "Appointment",
        "status": "proposed",
        "serviceType": [{"coding": [{"system": VISIT_TYPE_SYSTEM, "code": "follow-up"}]}],
        "start": start.isoformat(),
        "end": end.isoformat(),
        "slot": [{"reference": s} for s in slots],
        "participant": [
            {"actor": {"reference": f"Practitioner/{doc}"}, "status": "needs-action"},
            {"actor": {"reference": "Location/main"}, "status": "needs-action"},
            {"actor": {"reference": f"Patient/{patient}"}, "status": "needs-action"},
        ],
    }
    return json.dumps(
        {
            "resourceType": "Parameters",
            "parameter": [{"name": "appointment-resource", "resource": appt}],
        },
        separators=(",", ":"),
    )


FIND_LUA = """
local urls = {}
for line in io.lines("%s") do urls[#urls + 1] = line end
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", urls[(i %% #urls) + 1])
end
"""

BOOK_LUA = """
local bodies = {}
for line in io.lines("%s") do bodies[#bodies + 1] = line end
local i = 0
wrk.headers["Content-Type"] = "application/fhir+json"  -- beside -H Authorization
request = function()
  i = i + 1
  if i > #bodies then i = 1 end  -- only if the run outlasts the bodies: 409s, and it fails
  return wrk.format("POST", "/fhir/Appointment/$book", nil, bodies[i])
end
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument(
        "--history-weeks",
        type=int,
        default=0,
        help="busy time over this many past weeks first, as a clinic in use has (0: none)",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes (`fhir-sched serve --workers`; more than 1 needs PostgreSQL)",
    )
    ap.add_argument(
        "--sqlite-synchronous",
        choices=["full", "normal"],
        default="full",
        help="SQLite: wait for the disk at each commit (full, the default) or not (normal)",
    )
    args = ap.parse_args()
    port = 8731
    today = datetime.now(UTC).date()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config, path = clinic_file(work, today)
        with database(args.db, work, synchronous=args.sqlite_synchronous) as (url, db):
            slots = seed(db, keyring(work), config, today, f"http://127.0.0.1:{port}/fhir")
            past = past_bookings(db, config, today, args.history_weeks)
            env = {"FHIRSCHED_CLINIC_FILE": str(path), "FHIRSCHED_WORKERS": str(args.workers)}
            bare = machine_speed(port + 1)
            with serve(work, url, port, env) as base:
                token = BackendToken(base, url)  # renewed before each part (tokens last 300 s)
                headers = token.headers(60)
                with httpx.Client(base_url=f"{base}/fhir", timeout=30, headers=headers) as c:
                    patient = known_patient(c)
                    # Some of the mix's windows fall on a weekend and rightly find nothing;
                    # the first ten together must find something, or the seeding went wrong.
                    probes = [
                        c.get(u.removeprefix("/fhir"))
                        for u in find_urls(config, today, patient, 10)
                    ]
                    assert all(p.status_code == 200 for p in probes), [p.text for p in probes]
                    assert any(p.json()["total"] > 0 for p in probes), probes[0].text
                urls = work / "find.txt"
                urls.write_text("\n".join(find_urls(config, today, patient, 5000)) + "\n")
                script = work / "find.lua"
                script.write_text(FIND_LUA % urls)
                wrk(
                    base + "/fhir/metadata",
                    script=script,
                    seconds=3,
                    connections=CONNECTIONS,
                    headers=token.headers(3),
                )
                found = wrk(
                    base + "/fhir/metadata",
                    script=script,
                    seconds=args.seconds,
                    connections=CONNECTIONS,
                    headers=token.headers(args.seconds),
                )
                bodies = work / "book.txt"
                wanted = int(args.seconds * 1000)  # more than can be booked in the run
                bodies.write_text("\n".join(book_bodies(config, today, patient, wanted)) + "\n")
                script = work / "book.lua"
                script.write_text(BOOK_LUA % bodies)
                booked = wrk(
                    base + "/fhir/metadata",
                    script=script,
                    seconds=args.seconds,
                    connections=CONNECTIONS,
                    headers=token.headers(args.seconds),
                )
                headers = token.headers(60)
                with httpx.Client(base_url=f"{base}/fhir", timeout=60, headers=headers) as c:
                    count = c.get(
                        "/Appointment", params={"status": "booked", "_summary": "count"}
                    ).json()["total"]
    history = f", {past:,} past busy rows" if past else ""
    print(
        f"$find / $book over {slots:,} Slots{history} on {args.db}, {CONNECTIONS} connections, "
        f"{args.workers} server process{'es' if args.workers > 1 else ''}:"
    )
    print(f"  bare FastAPI app (async constant, same run): {bare:,.0f} req/s")
    print(
        f"  $find  {found['rps']:,.0f} req/s ({found['rps'] / bare:.1%} of bare)  "
        f"p50 {found['p50_ms']:.1f}  p95 {found['p95_ms']:.1f}  p99 {found['p99_ms']:.1f} ms  "
        "targets: p95 <= 50 ms, >= 500 req/s"
    )
    print(
        f"  $book  {booked['rps']:,.0f} req/s ({booked['rps'] / bare:.1%} of bare)  "
        f"p50 {booked['p50_ms']:.1f}  p95 {booked['p95_ms']:.1f}  p99 {booked['p99_ms']:.1f} ms  "
        f"({count:,} booked in all; wrk counted {booked['requests']:,.0f} answers inside its "
        "window)  targets: p95 <= 100 ms, >= 200/s"
    )
    print(f"  every answer 2xx: $find {found['statuses']}, $book {booked['statuses']}")
    save(
        f"find_book_{args.db}",
        {
            "slots": slots,
            "past_busy_rows": past,
            "find": found,
            "book": booked,
            "booked": count,
            "bare_app_rps": bare,
            "args": vars(args),
        },
    )


if __name__ == "__main__":
    main()
