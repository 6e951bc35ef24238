"""Read-by-id throughput with encryption on, beside a bare FastAPI constant endpoint.

    .venv/bin/python -m bench.read_by_id [--seconds 10] [--connections 16]

Both servers are one uvicorn worker (uvloop + httptools); wrk (one thread) drives each in turn
with random ids from 1,000 seeded Patients, with a backend token. The FHIR server is measured
twice in the same run: with the audit log on (every read recorded before its response) and off
(``FHIRSCHED_AUDIT_ENABLED=false``), so the audit's cost is a ratio of the same run.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.common import bench_auth, bulk_load, database, keyring, save, serve, serve_bare, wrk

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
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with database(args.db, work) as (url, db):
            keys = keyring(work)
            patients = [
                {
                    "resourceType": "Patient",
                    "id": f"p{n}",
                    "gender": "other",
                    "name": [{"family": f"Family{n}", "given": ["Given"]}],
                    "birthDate": "1970-01-01",
                    "telecom": [{"system": "phone", "value": f"555-01{n:04d}"}],
                }
                for n in range(1000)
            ]
            bulk_load(db, keys, patients, "http://127.0.0.1:8701/fhir")
            ids = work / "ids.txt"
            ids.write_text("\n".join(p["id"] for p in patients) + "\n")
            script = work / "read.lua"
            script.write_text(LUA % ids)
            with serve_bare(8702) as bare:
                baseline = wrk(
                    f"{bare}/fhir/Patient/x",
                    script=None,
                    seconds=args.seconds,
                    connections=args.connections,
                )
            runs = {}
            for audit in ("true", "false"):
                env = {"FHIRSCHED_AUDIT_ENABLED": audit}
                with serve(work, url, 8701, env) as base:
                    auth = bench_auth(base, url)
                    wrk(
                        f"{base}/fhir/Patient/p1",
                        script=script,
                        seconds=2,
                        connections=args.connections,
                        headers=auth,
                    )  # warm-up
                    runs[audit] = wrk(
                        f"{base}/fhir/Patient/p1",
                        script=script,
                        seconds=args.seconds,
                        connections=args.connections,
                        headers=auth,
                    )
            fhir, unaudited = runs["true"], runs["false"]
    ratio = fhir["rps"] / baseline["rps"]
    print(f"{'endpoint':<36}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'non-2xx':>9}")
    rows = (
        ("bare FastAPI constant", baseline),
        (f"read-by-id, audit off ({args.db})", unaudited),
        (f"read-by-id, audited ({args.db})", fhir),
    )
    for name, r in rows:
        print(
            f"{name:<36}{r['rps']:>10.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}"
            f"{r['non_2xx']:>9.0f}"
        )
    cost = 1 - fhir["rps"] / unaudited["rps"]
    print(f"read-by-id (audited) / bare = {ratio:.0%} (target >= 50%)")
    print(f"audit cost = {cost:.0%} of unaudited throughput (target <= 20%)")
    save(
        f"read_by_id_{args.db}",
        {
            "bare": baseline,
            "read_by_id": fhir,
            "read_by_id_unaudited": unaudited,
            "ratio": ratio,
            "audit_cost": cost,
            "args": vars(args),
        },
    )


if __name__ == "__main__":
    main()
