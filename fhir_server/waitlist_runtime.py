"""The waitlist in the server: the Store watcher that queues freed time (and checks waitlist
entries) in every process that writes Appointments, and the job that offers it
(:class:`outreach.waitlist.Waitlist`), every ``FHIRSCHED_WAITLIST_SECONDS`` while the clinic
file enables the waitlist.

Offers go out through the server's :class:`outreach.sending.Outreach` (``app.state.outreach``)
when there is one; otherwise one is built here over the SMS provider the agent uses
(``FHIRSCHED_SMS_PROVIDER``: Twilio, or the local outbox that ``fhir-sched outbox`` lists).
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

from base.logging import get_logger
from fhir_server.settings import Settings
from outreach.sending import Outreach
from outreach.waitlist import Waitlist, waitlist_watcher
from resources.sql.engine import Database
from resources.store import Store
from scheduling.config import ClinicConfig
from security.crypto import KeyRing

__all__ = ["install_waitlist_watch", "run_waitlist", "start_waitlist"]

log = get_logger("fhir_server.waitlist_runtime")


def install_waitlist_watch(store: Store, clinic: ClinicConfig | None) -> None:
    """Check waitlist entries as they are written (against the clinic, if there is one), and
    queue the time every cancelled booking frees while the waitlist is enabled."""
    enabled = clinic is not None and clinic.waitlist.enabled
    store.watch("Appointment", waitlist_watcher(store, clinic, queue=enabled))


def start_waitlist(
    app: FastAPI,
    settings: Settings,
    *,
    db: Database,
    store: Store,
    keys: KeyRing,
    clinic: ClinicConfig | None,
) -> Waitlist | None:
    """``app.state.waitlist`` (None unless the clinic file enables the waitlist)."""
    app.state.waitlist = None
    if clinic is None or not clinic.waitlist.enabled:
        return None
    outreach: Outreach = app.state.outreach  # built before (create_app: build_outreach)
    app.state.waitlist = Waitlist(outreach, db, store, clinic)
    return app.state.waitlist  # type: ignore[no-any-return]


async def run_waitlist(waitlist: Waitlist, every: int) -> None:
    """The job: :meth:`Waitlist.run` in a thread every ``every`` seconds."""
    while True:
        await asyncio.sleep(every)
        try:
            report = await asyncio.to_thread(waitlist.run, None)
        except Exception as exc:  # noqa: BLE001 - a failed pass is logged and run again next time
            log.error("waitlist.run_failed", error_type=type(exc).__name__)
            continue
        if report.offers or report.expired or report.done:
            log.info(
                "waitlist.run",
                offers=report.offers,
                sent=report.sent,
                expired=report.expired,
                done=report.done,
            )
