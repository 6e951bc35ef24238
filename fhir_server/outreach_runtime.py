"""Wiring of ``outreach`` into the server: the :class:`~outreach.sending.Outreach` built from
the settings, with the SMS provider the booking agent's channel uses (Twilio, or the local
outbox in the agent's table: ``FHIRSCHED_SMS_PROVIDER``), and the reminder job run every
``FHIRSCHED_REMINDER_SECONDS`` while the server runs.

The conversations the job tells of each reminder (and escalates to staff) are handed in:
``outreach.hooks.NoConversations`` where no implementation over the agent is given.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime

from base.logging import get_logger
from fhir_server.agent_runtime import agent_store, sms_provider
from fhir_server.settings import Settings
from outreach.hooks import Conversations
from outreach.reminders import Report, run_reminders
from outreach.sending import Outreach
from resources.sql.engine import Database
from resources.store import Store
from scheduling.config import ClinicConfig
from security.crypto import KeyRing

__all__ = ["build_outreach", "reminder_job", "reminders_on", "reminders_once"]

log = get_logger("fhir_server.outreach_runtime")


def build_outreach(
    settings: Settings,
    *,
    db: Database,
    store: Store,
    keys: KeyRing,
    clock: Callable[[], datetime] | None = None,
    clinic: ClinicConfig | None = None,
) -> Outreach:
    """Automated texts through ``FHIRSCHED_SMS_PROVIDER``, audited as the server's, to numbers
    read in the clinic's ``phone_region``."""
    return Outreach(
        db=db,
        store=store,
        keys=keys,
        sender=sms_provider(settings, agent_store(db, keys)),
        server=settings.fhir_base,
        clock=clock,
        audit=settings.audit_enabled,
        region=clinic.phone_region if clinic is not None else None,
    )


def reminders_on(settings: Settings, clinic: ClinicConfig | None) -> bool:
    return clinic is not None and clinic.reminders.enabled and settings.reminder_seconds > 0


def reminders_once(
    outreach: Outreach,
    *,
    clinic: ClinicConfig,
    conversations: Conversations,
    now: datetime | None = None,
) -> Report:
    """One pass of the reminder job at ``now`` (default: the outreach clock)."""
    return run_reminders(
        outreach,
        db=outreach.db,
        store=outreach.store,
        config=clinic,
        conversations=conversations,
        now=now or outreach.clock(),
    )


async def reminder_job(
    outreach: Outreach, *, clinic: ClinicConfig, conversations: Conversations, every: float
) -> None:
    """The scheduled job: a pass in a thread every ``every`` seconds. Every worker runs it; the
    claimed keys make that safe."""
    while True:
        await asyncio.sleep(every)
        try:
            await asyncio.to_thread(
                reminders_once, outreach, clinic=clinic, conversations=conversations
            )
        except Exception as exc:  # noqa: BLE001 - a failed pass is logged and retried next time
            log.error("reminders.failed", error_type=type(exc).__name__)
