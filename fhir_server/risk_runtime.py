"""The server's no-show risk job: ``scheduling.risk.rescore`` every
``FHIRSCHED_RISK_REFRESH_SECONDS``, in a thread, in one write transaction.

Each Appointment it changes is audited as an ``update`` by the server itself (client
``fhir-sched:risk``), in the same transaction as the change, as the HL7 listener's writes are
audited as ``hl7:<sender>``.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from base.logging import get_logger
from fhir_server.handlers import patients_of
from resources.sql.engine import Database
from resources.store import Store
from scheduling.config import ClinicConfig
from scheduling.risk import rescore
from security.balp import Actor
from security.trail import Trail

__all__ = ["RISK_CLIENT", "rescore_risk", "risk_job"]

RISK_CLIENT = "fhir-sched:risk"
log = get_logger("fhir_server.risk")


def rescore_risk(
    db: Database, store: Store, clinic: ClinicConfig, *, server: str, now: datetime | None = None
) -> int:
    """One run: rescore the upcoming Appointments and audit what changed; how many did."""
    trail = Trail(Actor(client_id=RISK_CLIENT), server)
    with db.write() as conn:
        written = rescore(conn, store=store, config=clinic, now=now or datetime.now(UTC))
        for stored in written:
            trail.note(
                "update",
                refs=[f"Appointment/{stored.res_id}"],
                patients=patients_of("Appointment", stored.res_id, stored),
                description="no-show risk rescored",
            )
        trail.commit_in(conn, store.keys)
    return len(written)


async def risk_job(
    db: Database, store: Store, clinic: ClinicConfig, *, server: str, every: int
) -> None:
    """:func:`rescore_risk` every ``every`` seconds (the first run after ``every``, as the
    horizon job's)."""
    while True:
        await asyncio.sleep(every)
        try:
            written = await asyncio.to_thread(rescore_risk, db, store, clinic, server=server)
        except Exception as exc:  # noqa: BLE001 - a failed run is logged and retried next time
            log.error("risk.rescore_failed", error_type=type(exc).__name__)
        else:
            log.info("risk.rescored", appointments=written)
