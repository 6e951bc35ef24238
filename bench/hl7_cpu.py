"""CPU per inbound S12, in-process: the listener's own and PostgreSQL's, with no sockets.

    .venv/bin/python -m bench.hl7_cpu --db postgresql        # and --db sqlite

``bench.hl7_inbound`` measures throughput over MLLP, but on this 2-core machine the sender,
the listener and PostgreSQL share the cores, and the machine's speed moves between hours, so
its figures compare poorly across sessions. This one seeds the same clinic, builds the same
messages, and hands them to the listener's own entry point (``Listener.handle``, which the MLLP
server calls with each frame), from ``connections`` senders at once that each wait for their
ACK, as MLLP senders do: one, then 8 (so the group commit forms its groups as it does over
the wire). It reports, per message, the CPU time of this process (the listener, all threads)
and of its PostgreSQL server processes, and the wall time; over one sender the wall time is the
serial cost that bounds one connection's throughput. Compare two commits with it.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

from base.logging import configure_logging
from bench.common import backend_cpu, check_statuses, database, keyring, machine_speed, save
from bench.find_book import seed
from bench.hl7_inbound import WEEKS, bench_clinic, message, times
from hl7_bridge.ack import read_ack
from hl7_bridge.listener import BridgeConfig, Listener
from resources.store import Store

BASE = "http://bench.invalid/fhir"


async def send(listener: Listener, batch: list[bytes], codes: list[str]) -> None:
    """One sender: each message after the last one's ACK."""
    for raw in batch:
        answered: list[bytes] = []

        async def reply(ack: bytes, into: list[bytes] = answered) -> None:
            into.append(ack)

        await listener.handle(raw, "127.0.0.1:40000", reply)
        codes.append(read_ack(answered[-1])[0])


async def measure(
    listener: Listener, messages: list[bytes], senders: int, url: str
) -> dict[str, Any]:
    codes: list[str] = []
    batches = [messages[i::senders] for i in range(senders)]
    pg = backend_cpu(url)
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(send(listener, b, codes) for b in batches))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    pg = backend_cpu(url) - pg
    n = len(messages)
    check_statuses(f"S12 from {senders} sender(s)", Counter(codes), {"AA"})
    return {
        "senders": senders,
        "messages": n,
        "listener_cpu_ms": round(cpu / n * 1000, 3),
        "postgresql_cpu_ms": round(pg / n * 1000, 3),
        "wall_ms": round(wall / n * 1000, 3),
        "messages_per_s": round(n / wall, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--warm", type=int, default=300, help="messages first, not measured")
    ap.add_argument("--one", type=int, default=600, help="messages from one sender")
    ap.add_argument("--eight", type=int, default=1200, help="messages from 8 senders")
    args = ap.parse_args()
    configure_logging("warning")
    today = date.today()
    with tempfile.TemporaryDirectory(prefix="bench-hl7cpu-") as tmp:
        work = Path(tmp)
        _, config = bench_clinic(today)
        keys = keyring(work)
        with database(args.db, work) as (url, db):
            seed(db, keys, config, today, BASE, weeks=WEEKS)
            bare = machine_speed(8751)  # this machine's speed at the time
            store = Store(keys, base_url=BASE)
            listener = Listener(  # as `fhir-sched hl7 listen` runs it (runtime.start_bridge)
                db,
                keys,
                store,
                clinic=config,
                config=BridgeConfig(config.tz, server=BASE),
                inline_writes=db.is_sqlite,
            )
            picked = times(today, args.warm + args.one + args.eight)
            messages = [message(n, p, t) for n, (p, t) in enumerate(picked)]
            random.Random(3).shuffle(messages)
            warm, one = messages[: args.warm], messages[args.warm : args.warm + args.one]
            eight = messages[args.warm + args.one :]

            async def run() -> list[dict[str, Any]]:
                await measure(listener, warm, 8, url)
                return [
                    await measure(listener, one, 1, url),
                    await measure(listener, eight, 8, url),
                ]

            results = asyncio.run(run())
    print(f"S12 in-process on {args.db} (per message):", file=sys.stderr)
    print(f"  bare FastAPI app (async constant, same run): {bare:,.0f} req/s", file=sys.stderr)
    for r in results:
        print(
            f"  {r['senders']} sender(s), {r['messages']} messages: listener CPU "
            f"{r['listener_cpu_ms']:.2f} ms, PostgreSQL CPU {r['postgresql_cpu_ms']:.2f} ms, "
            f"wall {r['wall_ms']:.2f} ms ({r['messages_per_s']:.0f}/s)",
            file=sys.stderr,
        )
    save(f"hl7_cpu_{args.db}", {"args": vars(args), "bare_app_rps": bare, "results": results})


if __name__ == "__main__":
    main()
