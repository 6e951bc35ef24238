"""CPU of one pass of the reminder job per 1,000 upcoming booked appointments, in-process.

    .venv/bin/python -m bench.reminder_job                 # SQLite (the default)
    .venv/bin/python -m bench.reminder_job --db postgresql

Seeds ``--appointments`` booked Appointments (the demo clinic's visit types, a patient with a
mobile number each, three in ten with a no-show risk score above the threshold) starting
between one and 80 hours after a virtual noon (a Tuesday in New York), all inside the job's
window, so every one is read by each pass. Then, at that noon:

* **sending pass**: the first pass, which sends each appointment's due reminder through the
  local outbox provider (claim, seal, the agent's outbox row, the Communication, the
  AuditEvent) and notes it in a conversation (``NoConversations``);
* **steady state**: later passes at the same time, with nothing due (every due key claimed),
  median of ``--passes``; "warm" is what a running server sees (the risk scores it read before
  are remembered per Appointment version), "cold" forgets them before each pass, as a freshly
  started worker would.

CPU is ``time.process_time()`` of this process (the job and, on SQLite, the database engine);
on PostgreSQL the server's own CPU is not counted (``bench.common.backend_cpu`` is not used
here: the job's queries are two index range scans).
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from base.logging import configure_logging
from bench.common import database, keyring
from fhir_server.agent_runtime import agent_store
from fhir_server.demo import DEMO_CLINIC
from outreach import reminders
from outreach.hooks import NoConversations
from outreach.reminders import RISK_URL, run_reminders
from outreach.sending import Outreach
from resources import service
from resources.store import Store
from scheduling.clinic import VISIT_TYPE_SYSTEM
from scheduling.config import parse_clinic_config

BASE = "http://bench.invalid/fhir"


def seed(db: Any, store: Store, count: int, now: datetime) -> None:
    rng = random.Random(30)
    with db.write() as conn:
        for i in range(count):
            patient = {
                "resourceType": "Patient",
                "name": [{"family": f"Bench{i}", "given": ["Pat"]}],
                "birthDate": "1980-01-01",
                "telecom": [{"system": "phone", "value": f"+1413555{i:04d}", "use": "mobile"}],
            }
            pid = service.create(conn, store=store, resource_type="Patient", resource=patient)
            assert pid.stored is not None
            start = now + timedelta(minutes=rng.randrange(60, 80 * 60, 15))
            appt: dict[str, Any] = {
                "resourceType": "Appointment",
                "status": "booked",
                "start": start.isoformat(),
                "end": (start + timedelta(minutes=30)).isoformat(),
                "serviceType": [{"coding": [{"system": VISIT_TYPE_SYSTEM, "code": "follow-up"}]}],
                "participant": [
                    {"actor": {"reference": f"Patient/{pid.stored.res_id}"}, "status": "accepted"},
                    {"actor": {"reference": "Practitioner/dr-smith"}, "status": "accepted"},
                    {"actor": {"reference": "Location/loc-main"}, "status": "accepted"},
                ],
            }
            if rng.random() < 0.3:
                appt["extension"] = [
                    {"url": RISK_URL, "extension": [{"url": "score", "valueDecimal": 0.7}]}
                ]
            service.create(conn, store=store, resource_type="Appointment", resource=appt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--appointments", type=int, default=1000)
    parser.add_argument("--passes", type=int, default=20)
    args = parser.parse_args()
    configure_logging(level="warning")
    config = parse_clinic_config(yaml.safe_load(DEMO_CLINIC.read_text()))
    now = datetime(2026, 12, 8, 12, 0, tzinfo=config.tz)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        with database(args.db, workdir) as (_, db):
            keys = keyring(workdir)
            store = Store(keys, base_url=BASE)
            seed(db, store, args.appointments, now)
            outreach = Outreach(
                db=db,
                store=store,
                keys=keys,
                sender=_outbox(db, keys),
                server=BASE,
                clock=lambda: now.astimezone(UTC),
            )

            def one() -> tuple[float, float, Any]:
                cpu, wall = time.process_time(), time.perf_counter()
                report = run_reminders(
                    outreach,
                    db=db,
                    store=store,
                    config=config,
                    conversations=NoConversations(),
                    now=now,
                )
                return time.process_time() - cpu, time.perf_counter() - wall, report

            cpu, wall, report = one()
            per = 1000 / report.upcoming
            print(
                f"{args.db}: {report.upcoming} upcoming; sending pass: {report.sent} sent, "
                f"{cpu * 1000 * per:.0f} ms CPU per 1,000 upcoming "
                f"({cpu * 1000 / max(report.sent, 1):.2f} ms per text), wall {wall * 1000:.0f} ms"
            )
            warm = [one() for _ in range(args.passes)]
            assert all(r.sent == 0 for _, _, r in warm)
            cold = []
            for _ in range(args.passes):
                reminders._RISK_CACHE.clear()
                cold.append(one())
            for label, runs in (("warm", warm), ("cold", cold)):
                ms = statistics.median(c for c, _, _ in runs) * 1000 * per
                opened = statistics.median(r.opened for _, _, r in runs)
                print(
                    f"{args.db}: steady state ({label}): {ms:.1f} ms CPU per 1,000 upcoming "
                    f"(median of {args.passes}; {opened:.0f} appointments opened per pass)"
                )


def _outbox(db: Any, keys: Any) -> Any:
    from agent.sms import OutboxSms

    return OutboxSms(agent_store(db, keys))


if __name__ == "__main__":
    main()
