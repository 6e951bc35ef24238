"""A compliance query over a large audit log: one patient over a date range, newest first.

    .venv/bin/python -m bench.audit_query --db postgresql --records 1000000

Seeds N AuditEvents (reads and searches by 20 clients about 10,000 patients, spread over a
year) through the same ``security.audit.append`` the server uses (sealed, chained, indexed),
then asks ``AuditEvent?patient=Patient/pN&date=geD&date=ltD+30&_sort=-date&_count=20`` for
random patients and months as a compliance client, sequentially, end to end over HTTP.
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

import httpx
from sqlalchemy import text

from bench.common import (
    BackendToken,
    check_statuses,
    database,
    keyring,
    machine_speed,
    percentiles,
    save,
    serve,
)
from security.audit import append
from security.balp import Actor, balp_event

PATIENTS = 10_000
CLIENTS = 20
START = datetime(2026, 1, 1, tzinfo=UTC)
BATCH = 5_000


def seed(db: object, keys: object, total: int, server: str) -> None:
    rnd = random.Random(11)
    started = time.perf_counter()
    step = timedelta(days=365) / total
    done = 0
    while done < total:
        events = []
        for n in range(done, min(total, done + BATCH)):
            actor = Actor(client_id=f"client-{rnd.randrange(CLIENTS)}", address="10.0.0.9")
            patient = f"p{rnd.randrange(PATIENTS)}"
            kind = "read" if rnd.random() < 0.7 else "search-type"
            events.append(
                balp_event(
                    kind=kind,
                    actor=actor,
                    server=server,
                    patient=patient,
                    entities=[f"Appointment/a{n}"] if kind == "read" else None,
                    query="Appointment?patient=x" if kind != "read" else None,
                    recorded=START + step * n,
                )
            )
        with db.write() as conn:  # type: ignore[attr-defined]
            append(conn, keys, events)  # type: ignore[arg-type]
        done += len(events)
        rate = done / (time.perf_counter() - started)
        print(f"\rseeded {done:,}/{total:,} ({rate:,.0f}/s)", end="", file=sys.stderr)
    print(file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="postgresql")
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=300)
    args = ap.parse_args()
    random.seed(5)
    port = 8741
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with database(args.db, work) as (url, db):
            seed(db, keyring(work), args.records, f"http://127.0.0.1:{port}/fhir")
            if args.db == "postgresql":
                with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                    c.execute(text("VACUUM ANALYZE audit_log"))
                    c.execute(text("VACUUM ANALYZE audit_index"))
            bare = machine_speed(port + 1)  # this machine's speed at the time
            with serve(work, url, port) as base:
                # an audit client's token, renewed as the run goes (tokens last 300 s)
                token = BackendToken(base, url, scope="system/AuditEvent.rs")
                samples, totals = [], []
                statuses: Counter[int] = Counter()
                with httpx.Client(base_url=f"{base}/fhir", timeout=60) as c:
                    for n in range(args.queries + 20):
                        lo = START + timedelta(days=random.randrange(335))
                        params = [
                            ("patient", f"Patient/p{random.randrange(PATIENTS)}"),
                            ("date", f"ge{lo.date().isoformat()}"),
                            ("date", f"lt{(lo + timedelta(days=30)).date().isoformat()}"),
                            ("_sort", "-date"),
                            ("_count", "20"),
                        ]
                        auth = token.headers(60)
                        t0 = time.perf_counter()
                        r = c.get("/AuditEvent", params=params, headers=auth)
                        elapsed = (time.perf_counter() - t0) * 1000
                        statuses[r.status_code] += 1
                        if n >= 20 and r.status_code == 200:
                            samples.append(elapsed)
                            totals.append(r.json()["total"])
                check_statuses("AuditEvent query", statuses, {200})
    stats = percentiles(samples)
    print(f"bare FastAPI app (async constant, same run): {bare:,.0f} req/s")
    print(
        f"AuditEvent patient + 30-day query over {args.records:,} records on {args.db}: "
        f"p50 {stats['p50']:.1f}  p95 {stats['p95']:.1f}  p99 {stats['p99']:.1f} ms "
        f"(mean total {sum(totals) / len(totals):.1f}; target p95 <= 100 ms)"
    )
    save(f"audit_query_{args.db}", {"stats": stats, "bare_app_rps": bare, "args": vars(args)})


if __name__ == "__main__":
    main()
