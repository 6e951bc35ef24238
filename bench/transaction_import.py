"""Transaction import: POST transaction Bundles through the real server, report resources/s.

    .venv/bin/python -m bench.transaction_import [--db sqlite|postgresql] [--bundles 20]

Each Bundle holds Patients, Schedules, Slots and Appointments linked by urn:uuid references
(validated with the R4B models, sealed, indexed, all in one database transaction).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench.common import BackendToken, RunFailed, database, machine_speed, save, serve

H = {"content-type": "application/fhir+json", "prefer": "return=minimal"}


def bundle(n: int, size: int) -> dict[str, Any]:
    entries: list[dict[str, Any]] = []
    start = datetime(2027, 3, 1, 8, tzinfo=UTC) + timedelta(days=n)
    sched = f"urn:uuid:{uuid.uuid4()}"
    entries.append(
        {
            "fullUrl": sched,
            "request": {"method": "POST", "url": "Schedule"},
            "resource": {
                "resourceType": "Schedule",
                "active": True,
                "actor": [{"reference": f"Practitioner/dr{n}"}],
            },
        }
    )
    i = 0
    while len(entries) < size:
        pat = f"urn:uuid:{uuid.uuid4()}"
        slot = f"urn:uuid:{uuid.uuid4()}"
        t = start + timedelta(minutes=15 * i)
        entries += [
            {
                "fullUrl": pat,
                "request": {"method": "POST", "url": "Patient"},
                "resource": {
                    "resourceType": "Patient",
                    "gender": "female",
                    "birthDate": "1980-01-02",
                    "name": [{"family": f"Import{n}x{i}", "given": ["Bulk"]}],
                    "telecom": [{"system": "phone", "value": f"555-{i:04d}"}],
                    "identifier": [{"system": "urn:mrn", "value": f"B{n}-{i}"}],
                },
            },
            {
                "fullUrl": slot,
                "request": {"method": "POST", "url": "Slot"},
                "resource": {
                    "resourceType": "Slot",
                    "schedule": {"reference": sched},
                    "status": "busy",
                    "start": t.isoformat(),
                    "end": (t + timedelta(minutes=15)).isoformat(),
                },
            },
            {
                "request": {"method": "POST", "url": "Appointment"},
                "resource": {
                    "resourceType": "Appointment",
                    "status": "booked",
                    "start": t.isoformat(),
                    "end": (t + timedelta(minutes=15)).isoformat(),
                    "slot": [{"reference": slot}],
                    "participant": [{"actor": {"reference": pat}, "status": "accepted"}],
                },
            },
        ]
        i += 1
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries[:size]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--bundles", type=int, default=20)
    ap.add_argument("--size", type=int, default=250)
    args = ap.parse_args()
    bundles = [bundle(n, args.size) for n in range(args.bundles + 1)]
    bare = machine_speed(8732)  # this machine's speed at the time
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with (
            database(args.db, work) as (url, _db),
            serve(work, url, 8731) as base,
            httpx.Client(timeout=120) as c,
        ):
            token = BackendToken(base, url)  # renewed as the run goes (tokens last 300 s)
            elapsed = 0.0
            for n, b in enumerate(bundles):  # the first one warms up, not timed
                auth = token.headers(120)
                t0 = time.perf_counter()
                r = c.post(f"{base}/fhir", json=b, headers={**H, **auth})
                if n:
                    elapsed += time.perf_counter() - t0
                if r.status_code != 200:
                    raise RunFailed(f"Bundle {n} answered {r.status_code}: {r.text[:500]}")
    total = args.bundles * args.size
    rate = total / elapsed
    print(f"bare FastAPI app (async constant, same run): {bare:,.0f} req/s")
    print(
        f"transaction import on {args.db}: {total:,} resources in {elapsed:.1f} s = "
        f"{rate:,.0f} resources/s ({args.bundles} bundles of {args.size}; target >= 500/s)"
    )
    save(
        f"transaction_import_{args.db}",
        {
            "resources": total,
            "seconds": elapsed,
            "per_second": rate,
            "bare_app_rps": bare,
            "args": vars(args),
        },
    )


if __name__ == "__main__":
    main()
