"""Read-by-id throughput with encryption on, beside a bare FastAPI constant endpoint.

    .venv/bin/python -m bench.read_by_id [--seconds 10] [--connections 16]

Both servers are one uvicorn worker (uvloop + httptools); wrk (one thread) drives each in turn
with random ids from 1,000 seeded Patients.
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
            with serve(work, url, 8701) as base:
                auth = bench_auth(base, url)
                wrk(
                    f"{base}/fhir/Patient/p1",
                    script=script,
                    seconds=2,
                    connections=args.connections,
                    headers=auth,
                )  # warm-up
                fhir = wrk(
                    f"{base}/fhir/Patient/p1",
                    script=script,
                    seconds=args.seconds,
                    connections=args.connections,
                    headers=auth,
                )
    ratio = fhir["rps"] / baseline["rps"]
    print(f"{'endpoint':<28}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'non-2xx':>9}")
    for name, r in (("bare FastAPI constant", baseline), (f"read-by-id ({args.db})", fhir)):
        print(
            f"{name:<28}{r['rps']:>10.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}"
            f"{r['non_2xx']:>9.0f}"
        )
    print(f"read-by-id / bare = {ratio:.0%} (target >= 50%)")
    save(
        f"read_by_id_{args.db}",
        {"bare": baseline, "read_by_id": fhir, "ratio": ratio, "args": vars(args)},
    )


if __name__ == "__main__":
    main()
