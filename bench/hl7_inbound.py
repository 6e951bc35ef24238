"""Inbound SIU^S12 throughput through `fhir-sched hl7 listen`, with the FHIR change committed
before each ACK.

    .venv/bin/python -m bench.hl7_inbound --db sqlite        # and --db postgresql

Seeds (with a progress bar) a clinic of 50 practitioners, weekdays 08:00-18:00 in
America/New_York, 15-minute Slots over 8 weeks (80,000 Slots), loaded from a clinic file as in
production; starts the bridge as its own process (one worker); then sends S12 messages, each a
distinct 30-minute appointment (its own placer/filler ids, practitioner, time and two Slots to
mark busy; patients drawn from a pool of 500, so the first message for each creates the
Patient and later ones match it by identifier), first over one MLLP connection, then over 8
at once. Each connection waits for the ACK before sending the next message, as MLLP senders
do. Reports messages/s, per-message round-trip percentiles and the listener process's CPU
time per message (from ``/proc``: what the listener costs, apart from the machine's wake-ups
and the sender's share of the two cores), and checks that every ACK
was AA and every message was applied; first, the bare FastAPI app's requests/s for 5 s
(``bench.common.machine_speed``) as a yardstick of the machine's speed at the time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from sqlalchemy import text

from bench.common import (
    VENV_BIN,
    RunFailed,
    check_statuses,
    database,
    keyring,
    machine_speed,
    percentiles,
    save,
)
from bench.find_book import clinic, seed
from hl7_bridge.ack import read_ack
from hl7_bridge.mllp import FrameReader, frame
from scheduling.config import ClinicConfig, parse_clinic_config

WEEKS = 8
PATIENTS = 500
NY = ZoneInfo("America/New_York")


def bench_clinic(today: date) -> tuple[dict[str, Any], ClinicConfig]:
    """``bench.find_book``'s clinic over ``WEEKS`` weeks: its file's content, and as parsed."""
    data = clinic(today)
    data["horizon_weeks"] = WEEKS
    data["rules"]["booking_horizon_days"] = 7 * WEEKS
    return data, parse_clinic_config(data)


def times(today: date, count: int) -> list[tuple[str, datetime]]:
    """``count`` distinct (practitioner, start) pairs: 30-minute steps inside opening hours."""
    out: set[tuple[str, datetime]] = set()
    rng = random.Random(7)
    while len(out) < count:
        day = today + timedelta(days=rng.randrange(7, 7 * WEEKS - 1))
        if day.weekday() >= 5:
            continue
        start = datetime(day.year, day.month, day.day, 8, tzinfo=NY) + timedelta(
            minutes=30 * rng.randrange(0, 19)
        )
        out.add((f"p{rng.randrange(50):02d}", start))
    return sorted(out)


def message(n: int, practitioner: str, start: datetime) -> bytes:
    stamp = start.strftime("%Y%m%d%H%M%S%z")
    end = (start + timedelta(minutes=30)).strftime("%Y%m%d%H%M%S%z")
    patient = n % PATIENTS
    return "\r".join(
        [
            f"MSH|^~\\&|BENCHEMR|CLINIC|FHIRSCHED|CLINIC|{stamp}||SIU^S12^SIU_S12|B{n}|P|2.5.1",
            f"SCH|P{n}^BENCHEMR|F{n}^BENCHEMR|||||^Follow-up|||||||||||||||||Booked",
            f"TQ1|1||||||{stamp}|{end}",
            f"PID|1||MRN{patient:05d}^^^CLINIC^MR||Patient{patient}^Bench||19700101|F",
            "RGS|1",
            "AIS|1||follow-up^Follow-up",
            f"AIP|1||{practitioner}^Doctor",
            "AIL|1||main",
        ]
    ).encode()


async def connection(port: int, batch: list[bytes], latencies: list[float]) -> list[str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    frames = FrameReader()
    codes = []
    try:
        for raw in batch:
            sent = time.perf_counter()
            writer.write(frame(raw))
            await writer.drain()
            acks: list[bytes] = []
            while not acks:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("listener closed the connection")
                acks = frames.feed(data)
            latencies.append((time.perf_counter() - sent) * 1000)
            codes.append(read_ack(acks[0])[0])
    finally:
        writer.close()
        await writer.wait_closed()
    return codes


async def run(port: int, messages: list[bytes], connections: int) -> dict[str, Any]:
    batches = [messages[k::connections] for k in range(connections)]
    latencies: list[float] = []
    started = time.perf_counter()
    results = await asyncio.gather(*(connection(port, b, latencies) for b in batches))
    elapsed = time.perf_counter() - started
    codes = Counter(c for r in results for c in r)
    check_statuses(f"S12 over {connections} connection(s)", codes, {"AA"})
    return {
        "connections": connections,
        "messages": len(messages),
        "seconds": round(elapsed, 2),
        "messages_per_s": round(len(messages) / elapsed, 1),
        "latency_ms": {k: round(v, 2) for k, v in percentiles(latencies).items()},
        "acks": dict(codes),
    }


def process_cpu(pid: int) -> tuple[float, float]:
    """Seconds of CPU a process has used so far (all its threads), from ``/proc``: in user
    mode, and in the kernel on its behalf (sockets, wake-ups)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def measured(port: int, messages: list[bytes], connections: int, pid: int) -> dict[str, Any]:
    """:func:`run`, with the listener's CPU per message (ms) around it: in all, and of that
    in the kernel."""
    user, system = process_cpu(pid)
    result = asyncio.run(run(port, messages, connections))
    user_after, system_after = process_cpu(pid)
    per = 1000 / len(messages)
    result["listener_cpu_ms"] = round((user_after - user + system_after - system) * per, 3)
    result["listener_kernel_ms"] = round((system_after - system) * per, 3)
    return result


def wait_listening(port: int, proc: subprocess.Popen[Any]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the listener exited during start-up")
        try:
            asyncio.run(asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1))
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the listener did not come up")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--one", type=int, default=1500, help="messages over one connection")
    parser.add_argument("--eight", type=int, default=3000, help="messages over 8 connections")
    parser.add_argument("--port", type=int, default=2590)
    args = parser.parse_args()
    today = date.today()
    with tempfile.TemporaryDirectory(prefix="bench-hl7-") as tmp:
        workdir = Path(tmp)
        data, config = bench_clinic(today)
        clinic_file = workdir / "clinic.yaml"
        clinic_file.write_text(yaml.safe_dump(data))
        keys = keyring(workdir)
        with database(args.db, workdir) as (url, db):
            slots = seed(db, keys, config, today, "http://127.0.0.1/fhir", weeks=WEEKS)
            bare = machine_speed(args.port + 1)  # this machine's speed at the time
            picked = times(today, args.one + args.eight)
            messages = [message(n, p, t) for n, (p, t) in enumerate(picked)]
            random.Random(3).shuffle(messages)
            env = {
                **os.environ,
                "FHIRSCHED_DATABASE_URL": url,
                "FHIRSCHED_KEY_FILE": str(workdir / "keys.json"),
                "FHIRSCHED_CLINIC_FILE": str(clinic_file),
                "FHIRSCHED_HL7_PORT": str(args.port),
                "FHIRSCHED_LOG_LEVEL": "warning",
            }
            with (workdir / "listener.log").open("w") as log:
                proc = subprocess.Popen(
                    [str(VENV_BIN / "fhir-sched"), "hl7", "listen"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                try:
                    wait_listening(args.port, proc)
                    # a part asked to send nothing (--one 0 or --eight 0) is skipped
                    one = (
                        measured(args.port, messages[: args.one], 1, proc.pid) if args.one else None
                    )
                    eight = (
                        measured(args.port, messages[args.one :], 8, proc.pid)
                        if args.eight
                        else None
                    )
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
            with db.read() as conn:
                applied = conn.execute(
                    text("SELECT count(*) FROM hl7_message WHERE status = 'applied'")
                ).scalar()
                busy = conn.execute(text("SELECT count(*) FROM busy_time")).scalar()
    if applied != args.one + args.eight:
        raise RunFailed(f"{applied:,} of {args.one + args.eight:,} messages applied")
    result = {
        "db": args.db,
        "bare_app_rps": round(bare),
        "slots": slots,
        "one_connection": one,
        "eight_connections": eight,
        "applied": applied,
        "busy_time_rows": busy,
        "command": f"python -m bench.hl7_inbound --db {args.db}",
    }
    print(yaml.safe_dump(result, sort_keys=False), file=sys.stderr)
    save(f"hl7_inbound_{args.db}", result)


if __name__ == "__main__":
    main()
