"""CPU time per request of the FHIR app, driven in-process: no sockets and no load generator.

    .venv/bin/python -m bench.cpu_per_request --db sqlite        # and --db postgresql

The throughput benchmarks share this two-core machine with wrk, and the machine's speed moves
by half between hours, so their figures compare poorly from one session to the next. This one
calls the ASGI app itself, ``--concurrency`` requests at a time (so the audit writer batches as
it does under load), and reports the process's CPU time per request (``time.process_time``):
read-by-id with the audit log off and on, hence the audit's cost, and ``bench.find_book``'s
``$find`` mix over ``--weeks`` of Slots. Compare two commits, or two versions of a dependency,
with it; the throughput targets are still measured over HTTP by the other benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import uvloop
from fastapi import FastAPI

from base.logging import configure_logging
from bench import bare_app
from bench.common import (
    BARE_PATH,
    BackendToken,
    bulk_load,
    check_statuses,
    database,
    keyring,
    patients,
    save,
)
from bench.find_book import clinic_file, find_urls, seed
from fhir_server.app import create_app
from fhir_server.settings import Settings
from scheduling.config import ClinicConfig

ROOT = "http://bench.invalid"
PATIENTS = 200
Call = Callable[[str], Awaitable[int]]
Renew = Callable[[], Awaitable[None]]


def caller(app: FastAPI, token: Callable[[], str] | None) -> Call:
    """A GET as uvicorn would hand it to the app, with the token ``token()`` gives at the
    time (none for the bare app); returns the status."""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def call(target: str) -> int:
        path, _, query = target.partition("?")
        headers = [(b"host", b"bench.invalid")]
        if token:
            headers.append((b"authorization", f"Bearer {token()}".encode()))
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 80),
        }
        status = 0

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await app(scope, receive, send)
        return status

    return call


async def _wave(call: Call, targets: list[str], first: int, concurrency: int) -> list[int]:
    """``concurrency`` requests at once, from ``targets[first]`` on (wrapping round)."""
    batch = [targets[(first + j) % len(targets)] for j in range(concurrency)]
    return list(await asyncio.gather(*(call(t) for t in batch)))


async def cpu_per_request(
    call: Call, targets: list[str], count: int, concurrency: int, renew: Renew
) -> float:
    """Microseconds of this process's CPU per request, over ``count`` requests after a warm-up;
    every answer must be a 200 (else the run fails). ``renew`` replaces the token when it is
    about to run out (tokens last 300 s); its CPU is not counted."""
    statuses: Counter[int] = Counter()
    for k in range(0, 200, concurrency):
        await _wave(call, targets, k, concurrency)
    started, renewing = time.process_time(), 0.0
    for k in range(0, count, concurrency):
        paused = time.process_time()
        await renew()
        renewing += time.process_time() - paused
        statuses.update(await _wave(call, targets, k, concurrency))
    spent = time.process_time() - started - renewing
    check_statuses(f"in-process {targets[0]}", statuses, {200})
    return spent / count * 1e6


async def measure(
    settings: Settings, config: ClinicConfig, args: argparse.Namespace
) -> dict[str, Any]:
    """Read-by-id with the audit log off, then on, then ``$find`` (audited), ``--rounds`` times
    in turn; medians over the rounds."""
    apps = {
        audit: create_app(settings.model_copy(update={"audit_enabled": audit}))
        for audit in (False, True)
    }
    today = datetime.now(UTC).date()
    reads = [f"/fhir/Patient/p{n}" for n in random.Random(5).sample(range(PATIENTS), PATIENTS)]
    finds = find_urls(config, today, "p0", 2000, weeks=args.weeks)
    samples: dict[str, list[float]] = {"bare": [], "read_off": [], "read_on": [], "find": []}
    off, on = apps[False], apps[True]
    async with (
        off.router.lifespan_context(off),
        on.router.lifespan_context(on),
        AsyncExitStack() as clients,
    ):
        calls, renewals = {}, {}
        for audit, app in apps.items():
            transport = httpx.ASGITransport(app=app)
            client = await clients.enter_async_context(
                httpx.AsyncClient(transport=transport, base_url=ROOT)
            )
            token = BackendToken(ROOT, settings.database_url)
            await token.arenew(client)
            calls[audit] = caller(app, token.current)
            renewals[audit] = partial(token.arenew, client, 30)
        bare = caller(bare_app.app, None)

        async def nothing() -> None:
            pass

        for n in range(args.rounds):
            for name, call, targets, renew in (
                ("bare", bare, [BARE_PATH], nothing),
                ("read_off", calls[False], reads, renewals[False]),
                ("read_on", calls[True], reads, renewals[True]),
                ("find", calls[True], finds, renewals[True]),
            ):
                us = await cpu_per_request(call, targets, args.requests, args.concurrency, renew)
                samples[name].append(us)
            print(
                f"round {n + 1}/{args.rounds}: "
                + ", ".join(f"{k} {v[-1]:,.0f} us" for k, v in samples.items()),
                file=sys.stderr,
            )
    medians = {k: round(statistics.median(v)) for k, v in samples.items()}
    cost = (medians["read_on"] - medians["read_off"]) / medians["read_on"]
    return {
        "us_per_request": medians,
        "rounds": samples,
        # as bench.read_by_id states it: the throughput lost, 1 - on/off in requests/s
        "audit_cost": round(cost, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--requests", type=int, default=3000, help="per measurement")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--weeks", type=int, default=8, help="of Slots for $find")
    args = ap.parse_args()
    configure_logging("warning")
    today = datetime.now(UTC).date()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config, path = clinic_file(work, today)
        with database(args.db, work) as (url, db):
            keys = keyring(work)
            seed(db, keys, config, today, f"{ROOT}/fhir", weeks=args.weeks)
            known = {  # p0 has been seen before: $find applies the existing-patient rules
                "resourceType": "Appointment",
                "id": "known",
                "status": "fulfilled",
                "participant": [{"actor": {"reference": "Patient/p0"}, "status": "accepted"}],
            }
            bulk_load(db, keys, [*patients(PATIENTS), known], f"{ROOT}/fhir")
            settings = Settings(
                database_url=url,
                key_file=work / "keys.json",
                base_url=f"{ROOT}/fhir",
                clinic_file=path,
            )
            result = uvloop.run(measure(settings, config, args))
    m = result["us_per_request"]
    print(f"CPU per request on {args.db}, {args.concurrency} at a time (median of rounds):")
    print(f"  bare FastAPI app       {m['bare']:,} us  (async constant)")
    print(f"  read-by-id, audit off  {m['read_off']:,} us")
    print(f"  read-by-id, audited    {m['read_on']:,} us  (audit cost {result['audit_cost']:.0%})")
    print(f"  $find mix, audited     {m['find']:,} us")
    save(f"cpu_per_request_{args.db}", {"args": vars(args), **result})


if __name__ == "__main__":
    main()
