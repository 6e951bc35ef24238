"""Slot search by schedule and date range over 500,000 Slots, through the real server.

    .venv/bin/python -m bench.slot_search --db sqlite --slots 500000
    .venv/bin/python -m bench.slot_search --db postgresql --slots 500000

Seeds 50 Schedules x N/50 fifteen-minute Slots (weekdays 08:00-18:00 UTC) in bulk, then asks
`Slot?schedule=Schedule/s{k}&start=ge{day}&start=lt{day+window}` for random schedules and days
from one client, sequentially, and reports latency percentiles (end to end over HTTP).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from bench.common import (
    BackendToken,
    bulk_load,
    check_statuses,
    database,
    keyring,
    machine_speed,
    percentiles,
    save,
    serve,
)

SCHEDULES = 50
CHUNK = 10_000
START = datetime(2027, 1, 4, tzinfo=UTC)  # a Monday


def slot_times(per_schedule: int) -> list[datetime]:
    out: list[datetime] = []
    day = START
    while len(out) < per_schedule:
        if day.weekday() < 5:
            t = day.replace(hour=8)
            while t < day.replace(hour=18) and len(out) < per_schedule:
                out.append(t)
                t += timedelta(minutes=15)
        day += timedelta(days=1)
    return out


def seed(db: Any, keys: Any, total: int, base_url: str) -> list[datetime]:
    times = slot_times(total // SCHEDULES)
    batch: list[dict[str, Any]] = []
    done = 0
    started = time.perf_counter()
    bulk_load(
        db,
        keys,
        [
            {
                "resourceType": "Schedule",
                "id": f"s{k}",
                "active": True,
                "actor": [{"reference": f"Practitioner/dr{k}"}],
            }
            for k in range(SCHEDULES)
        ],
        base_url,
    )
    for k in range(SCHEDULES):
        for t in times:
            batch.append(
                {
                    "resourceType": "Slot",
                    "id": f"s{k}-{t:%Y%m%d%H%M}",
                    "schedule": {"reference": f"Schedule/s{k}"},
                    "status": "free" if random.random() < 0.7 else "busy",
                    "start": t.isoformat(),
                    "end": (t + timedelta(minutes=15)).isoformat(),
                }
            )
            if len(batch) >= CHUNK:
                bulk_load(db, keys, batch, base_url)
                done += len(batch)
                batch = []
                rate = done / (time.perf_counter() - started)
                print(
                    f"\rseeding {done:>8,}/{total:,} slots ({rate:,.0f}/s)",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
    if batch:
        bulk_load(db, keys, batch, base_url)
    print(file=sys.stderr)
    with db.engine.begin() as conn:
        conn.execute(text("ANALYZE"))
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--slots", type=int, default=500_000)
    ap.add_argument("--queries", type=int, default=400)
    ap.add_argument("--window-days", type=int, default=1)
    args = ap.parse_args()
    random.seed(7)
    port = 8721
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with database(args.db, work) as (url, db):
            times = seed(db, keyring(work), args.slots, f"http://127.0.0.1:{port}/fhir")
            days = sorted({t.date() for t in times})
            bare = machine_speed(port + 1)  # this machine's speed at the time
            with serve(work, url, port) as base, httpx.Client(base_url=base, timeout=30) as c:
                token = BackendToken(base, url)  # renewed as the run goes (tokens last 300 s)
                samples: list[float] = []
                totals: list[int] = []
                statuses: Counter[int] = Counter()
                for n in range(args.queries + 20):
                    day = random.choice(days)
                    lo = datetime(day.year, day.month, day.day, tzinfo=UTC)
                    hi = lo + timedelta(days=args.window_days)
                    params = {
                        "schedule": f"Schedule/s{random.randrange(SCHEDULES)}",
                        "start": [f"ge{lo.isoformat()}", f"lt{hi.isoformat()}"],
                        "_count": "100",
                    }
                    auth = token.headers(30)
                    t0 = time.perf_counter()
                    r = c.get("/fhir/Slot", params=params, headers=auth)
                    elapsed = (time.perf_counter() - t0) * 1000
                    statuses[r.status_code] += 1
                    if n >= 20 and r.status_code == 200:  # warm-up excluded
                        samples.append(elapsed)
                        totals.append(r.json()["total"])
                check_statuses("Slot search", statuses, {200})
    stats = percentiles(samples)
    print(f"Slot search over {args.slots:,} slots on {args.db}, window {args.window_days} day(s):")
    print(f"  bare FastAPI app (async constant, same run): {bare:,.0f} req/s")
    print(
        f"  p50 {stats['p50']:.1f} ms  p95 {stats['p95']:.1f} ms  p99 {stats['p99']:.1f} ms"
        f"  ({stats['n']} queries, mean {sum(totals) / len(totals):.0f} matches each)"
        "  target p95 <= 50 ms"
    )
    save(
        f"slot_search_{args.db}",
        {"latency_ms": stats, "bare_app_rps": bare, "args": vars(args)},
    )


if __name__ == "__main__":
    main()
