"""Read-by-id throughput with encryption on, beside a bare FastAPI constant endpoint.

    .venv/bin/python -m bench.read_by_id [--rounds 5] [--seconds 5] [--connections 16]

Every server is one uvicorn worker (uvloop + httptools); wrk (one thread) drives each in turn
with random ids from 1,000 seeded Patients, with a backend token. The FHIR server runs twice
side by side on one database: with the audit log on (every read recorded before its response)
and off (``FHIRSCHED_AUDIT_ENABLED=false``). wrk visits the bare app, audit off and audit on in
turn, ``--rounds`` times; the figures are medians over the rounds, so the audit's cost is a
ratio of measurements taken seconds apart.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.common import (
    BARE_PATH,
    BackendToken,
    bulk_load,
    database,
    keyring,
    patients,
    save,
    serve,
    serve_bare,
    wrk,
)
from resources.sql.engine import Database

LUA = """
local ids = {}
for line in io.lines("%s") do ids[#ids + 1] = line end
math.randomseed(42)
request = function()
  return wrk.format("GET", "/fhir/Patient/" .. ids[math.random(#ids)])
end
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5, help="per target and round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with database(args.db, work) as (url, db):
            keys = keyring(work)
            seeded = patients(1000)
            bulk_load(db, keys, seeded, "http://127.0.0.1:8701/fhir")
            ids = work / "ids.txt"
            ids.write_text("\n".join(p["id"] for p in seeded) + "\n")
            script = work / "read.lua"
            script.write_text(LUA % ids)
            with ExitStack() as stack:
                # All three servers run side by side and wrk visits them in turn, round after
                # round: this machine's speed drifts by ±20 % over a minute, so only
                # measurements taken close together compare fairly.
                bare = stack.enter_context(serve_bare(8702))
                servers = {}
                for audit, port in (("true", 8701), ("false", 8703)):
                    env = {"FHIRSCHED_AUDIT_ENABLED": audit}
                    base = stack.enter_context(serve(work, url, port, env))
                    servers[audit] = (base, BackendToken(base, url))
                targets: dict[str, tuple[str, Path | None, BackendToken | None]] = {
                    "bare": (f"{bare}{BARE_PATH}", None, None),
                    "off": (f"{servers['false'][0]}/fhir/Patient/p1", script, servers["false"][1]),
                    "on": (f"{servers['true'][0]}/fhir/Patient/p1", script, servers["true"][1]),
                }
                # The audited server's reads are counted against the records it wrote, so a
                # cost that looks too small is checked, not believed.
                records_before = _audit_records(db)
                audited_reads = 0.0
                for name, (target, lua, token) in targets.items():  # warm-up
                    warm = wrk(
                        target,
                        script=lua,
                        seconds=2,
                        connections=args.connections,
                        headers=token.headers(2) if token else None,
                    )
                    audited_reads += warm["requests"] if name == "on" else 0
                rounds: dict[str, list[dict[str, Any]]] = {k: [] for k in targets}
                for n in range(args.rounds):
                    for name, (target, lua, token) in targets.items():
                        # a token lasts 300 s: renewed between parts of a long run
                        auth = token.headers(args.seconds) if token else None
                        rounds[name].append(
                            wrk(
                                target,
                                script=lua,
                                seconds=args.seconds,
                                connections=args.connections,
                                headers=auth,
                            )
                        )
                    audited_reads += rounds["on"][-1]["requests"]
                    print(
                        f"round {n + 1}/{args.rounds}: "
                        + ", ".join(f"{k} {v[-1]['rps']:.0f}" for k, v in rounds.items())
                        + " req/s",
                        file=sys.stderr,
                    )
            records = _audit_records(db) - records_before
    baseline, unaudited, fhir = (_median(rounds[k]) for k in ("bare", "off", "on"))
    ratio = fhir["rps"] / baseline["rps"]
    print(
        f"{'endpoint (median of rounds)':<36}{'req/s':>10}{'p50 ms':>10}{'p95 ms':>10}"
        f"{'p99 ms':>10}{'/ bare':>8}"
    )
    rows = (
        ("bare FastAPI app (async, constant)", baseline),
        (f"read-by-id, audit off ({args.db})", unaudited),
        (f"read-by-id, audited ({args.db})", fhir),
    )
    for name, r in rows:
        print(
            f"{name:<36}{r['rps']:>10.0f}{r['p50_ms']:>10.2f}{r['p95_ms']:>10.2f}"
            f"{r['p99_ms']:>10.2f}{r['rps'] / baseline['rps']:>8.0%}"
        )
    paired = [
        1 - on["rps"] / off["rps"] for on, off in zip(rounds["on"], rounds["off"], strict=True)
    ]
    cost = 1 - fhir["rps"] / unaudited["rps"]
    print(f"read-by-id (audited) / bare = {ratio:.0%} (target >= 50%)")
    print(
        f"audit cost = {cost:.0%} of unaudited throughput (target <= 20%); "
        f"per round: {', '.join(f'{c:.0%}' for c in paired)}"
    )
    print(f"audit log: {records:,} records for {audited_reads:,.0f} audited reads")
    save(
        f"read_by_id_{args.db}",
        {
            "bare": baseline,
            "read_by_id": fhir,
            "read_by_id_unaudited": unaudited,
            "ratio": ratio,
            "audit_cost": cost,
            "audit_cost_per_round": paired,
            "audit_records": records,
            "audited_reads": audited_reads,
            "rounds": rounds,
            "args": vars(args),
        },
    )


def _audit_records(db: Database) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM audit_log")).scalar_one())


def _median(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Each figure's median over the rounds."""
    return {k: statistics.median(float(r[k]) for r in runs) for k in runs[0] if k != "statuses"}


if __name__ == "__main__":
    main()
