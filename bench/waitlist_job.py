"""CPU of one waitlist job pass (``outreach.waitlist.Waitlist.run``), in-process.

    .venv/bin/python -m bench.waitlist_job --db sqlite          # and --db postgresql

Seeds the demo clinic with ``--booked`` upcoming booked Appointments (1,000 by default, over
four weeks), ``--waiting`` waitlist entries (200: follow-ups and procedures, for any clinician
or one, over the same weeks, for existing patients with phones), then measures, as this
process's CPU (``time.process_time``; PostgreSQL's own CPU is reported beside it):

* **steady**: a pass with nothing freed (what the job costs every minute, almost always);
* **freed**: ``--freed`` bookings cancelled through ``scheduling.booking.cancel`` (the Store
  watcher queues each), then one pass that matches, holds and texts each (to a sender that
  keeps nothing).

Figures are per pass and per 1,000 upcoming appointments (the issue's target: under 50 ms).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from base.errors import Conflict
from base.logging import configure_logging
from bench.common import backend_cpu, database, keyring, save
from fhir_server.demo import DEMO_CLINIC
from outreach.sending import Outreach
from outreach.waitlist import Waitlist, waitlist_watcher
from resources import service
from resources.store import Store
from scheduling import booking
from scheduling.clinic import VISIT_TYPE_SYSTEM, load_clinic
from scheduling.config import ClinicConfig, parse_clinic_config
from scheduling.find import find_options, proposed_appointment
from scheduling.plan import FindRequest

BASE = "http://bench.invalid/fhir"


class Quiet:
    name = "bench"

    def send(self, to: str, body: str) -> str:
        return "SM0"


def clinic() -> ClinicConfig:
    data: dict[str, Any] = yaml.safe_load(DEMO_CLINIC.read_text())
    data["waitlist"] = {"enabled": True, "offer_batch": 3, "offer_minutes": 30}
    data["rules"]["daily_caps"] = []
    data["rules"]["new_patient_windows"] = []
    for visit in data["visit_types"]:  # existing patients book every kind here
        visit["patients"] = "any"
    return parse_clinic_config(data)


def seed(db: Any, store: Store, cfg: ClinicConfig, booked: int, waiting: int) -> list[str]:
    """Patients, ``booked`` bookings and ``waiting`` entries; the booked ids."""
    rng = random.Random(7)
    now = datetime.now(UTC)
    today = now.astimezone(cfg.tz).date()
    with db.write() as conn:
        load_clinic(conn, store=store, config=cfg, today=today, weeks=5)
        people = []
        for i in range(400):
            body = {
                "resourceType": "Patient",
                "name": [{"family": f"Bench{i}", "given": ["Pat"]}],
                "birthDate": "1970-01-01",
                "telecom": [{"system": "phone", "value": f"+1555{i:07d}"}],
            }
            pid = service.create(conn, store=store, resource_type="Patient", resource=body)
            assert pid.stored is not None
            people.append(pid.stored.res_id)
            seen = {
                "resourceType": "Appointment",
                "status": "fulfilled",
                "participant": [
                    {"actor": {"reference": f"Patient/{pid.stored.res_id}"}, "status": "accepted"}
                ],
            }
            service.create(conn, store=store, resource_type="Appointment", resource=seen)
    start = now + timedelta(days=2)
    ids: list[str] = []
    day = 0
    while len(ids) < booked and day < 35:
        lo = start + timedelta(days=day)
        with db.write() as conn:
            for code in ("follow-up", "procedure", "pt-follow-up"):
                request = FindRequest(start=lo, end=lo + timedelta(days=1), visit_type=code)
                for o in find_options(
                    conn, store=store, config=cfg, request=request, now=now
                ).options:
                    if len(ids) >= booked or rng.random() < 0.1:
                        continue
                    appt = proposed_appointment(cfg, o, patient_id=rng.choice(people))
                    try:  # options of two visit types overlap: the check refuses the second
                        stored = booking.book_new(
                            conn, store=store, config=cfg, appointment=appt, reference=None, now=now
                        )
                    except Conflict:
                        continue
                    ids.append(stored.res_id)
        day += 1
    with db.write() as conn:
        for i in range(waiting):
            code = rng.choice(["follow-up", "follow-up", "procedure", "pt-follow-up"])
            lo = start + timedelta(days=rng.randrange(0, 20))
            participants = [
                {"actor": {"reference": f"Patient/{rng.choice(people)}"}, "status": "needs-action"}
            ]
            if code == "follow-up" and rng.random() < 0.3:
                who = rng.choice(["dr-smith", "dr-evans"])
                participants.append(
                    {"actor": {"reference": f"Practitioner/{who}"}, "status": "needs-action"}
                )
            entry = {
                "resourceType": "Appointment",
                "status": "waitlist",
                "created": (now - timedelta(days=30, minutes=i)).isoformat(),
                "serviceType": [{"coding": [{"system": VISIT_TYPE_SYSTEM, "code": code}]}],
                "requestedPeriod": [
                    {"start": lo.isoformat(), "end": (lo + timedelta(days=10)).isoformat()}
                ],
                "participant": participants,
            }
            service.create(conn, store=store, resource_type="Appointment", resource=entry)
    return ids


def measure(waitlist: Waitlist, url: str) -> tuple[float, float, Any]:
    cpu, backend = time.process_time(), backend_cpu(url)
    report = waitlist.run()
    return time.process_time() - cpu, backend_cpu(url) - backend, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--booked", type=int, default=1000)
    parser.add_argument("--waiting", type=int, default=200)
    parser.add_argument("--freed", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    configure_logging("warning")
    with tempfile.TemporaryDirectory() as tmp, database(args.db, Path(tmp)) as (url, db):
        keys = keyring(Path(tmp))
        store = Store(keys, base_url=BASE)
        cfg = clinic()
        store.watch("Appointment", waitlist_watcher(store, cfg, queue=True))
        booked = seed(db, store, cfg, args.booked, args.waiting)
        outreach = Outreach(db=db, store=store, keys=keys, sender=Quiet(), server=BASE)
        waitlist = Waitlist(outreach, db, store, cfg)
        per = 1000 / len(booked)
        steady = [measure(waitlist, url) for _ in range(args.rounds)]
        rng = random.Random(11)
        now = datetime.now(UTC)
        with db.write() as conn:
            for rid in rng.sample(booked, args.freed):
                booking.cancel(
                    conn, store=store, config=cfg, appointment_id=rid, now=now, enforce_notice=False
                )
        freed = measure(waitlist, url)
        after = [measure(waitlist, url) for _ in range(args.rounds)]  # offers standing
    med = sorted(s[0] for s in steady)[len(steady) // 2]
    med_after = sorted(s[0] for s in after)[len(after) // 2]
    result = {
        "db": args.db,
        "booked": len(booked),
        "waiting": args.waiting,
        "steady_ms": round(med * 1000, 2),
        "steady_ms_per_1000": round(med * 1000 * per, 2),
        "freed": args.freed,
        "freed_pass_ms": round(freed[0] * 1000, 1),
        "freed_pass_ms_per_1000": round(freed[0] * 1000 * per, 1),
        "freed_pass_db_cpu_ms": round(freed[1] * 1000, 1),
        "offers": freed[2].offers,
        "sent": freed[2].sent,
        "standing_offers_pass_ms": round(med_after * 1000, 2),
    }
    print(result)
    save(f"waitlist_job_{args.db}", result)


if __name__ == "__main__":
    main()
