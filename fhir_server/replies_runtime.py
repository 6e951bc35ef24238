"""Wiring of outreach's replies into the server: the late-cancellation watcher and its job, and
the :class:`outreach.replies.Replies` the SMS webhook hands each text to first.

The replies act through ``app.state.outreach`` (the reminders' :class:`Outreach`, built by
``fhir_server/outreach_runtime.py``); where that is not set, one is built here on the same SMS
provider as the agent's. A :class:`Replies` is built for each text (a few references): it
talks to the agent the app holds at that moment.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI

from base.logging import get_logger
from fhir_server.agent_conversations import AgentConversations
from fhir_server.http import Services
from fhir_server.waitlist_runtime import install_waitlist_watch
from outreach.escalations import LateCancellations, escalate_late_cancellations
from outreach.hooks import AppointmentFacts, Conversations, NoConversations
from outreach.replies import Replies
from outreach.sending import Outreach
from resources.store import Store
from scheduling.config import ClinicConfig

__all__ = [
    "ESCALATE_EVERY",
    "LiveConversations",
    "conversations_of",
    "escalations",
    "handle_waiting",
    "install",
    "install_outreach_watch",
    "outreach_of",
    "replies_for",
]

log = get_logger("fhir_server.replies")

ESCALATE_EVERY = 60.0  # seconds between passes of the late-cancellation job


def install_outreach_watch(store: Store, clinic: ClinicConfig | None) -> None:
    """What a process that changes Appointments outside ``serve`` (``fhir-sched hl7 listen``,
    ``hl7 replay``) must watch too: waitlist entries checked and freed time queued, late
    cancellations queued. The server's jobs pick up what is queued."""
    install_waitlist_watch(store, clinic)
    if clinic is not None:
        store.watch("Appointment", LateCancellations(store, clinic).on_change)


def install(app: FastAPI) -> None:
    """Watch Appointment writes for late cancellations (with a clinic file only: the notice
    window is the clinic's)."""
    services: Services = app.state.services
    if services.clinic is not None:
        late = LateCancellations(services.store, services.clinic)
        services.store.watch("Appointment", late.on_change)


def outreach_of(app: FastAPI) -> Outreach | None:
    """The app's :class:`Outreach` (``fhir_server/outreach_runtime.py: build_outreach``)."""
    found: Outreach | None = getattr(app.state, "outreach", None)
    return found


def conversations_of(app: FastAPI) -> Conversations:
    agent = getattr(app.state, "agent", None)
    return AgentConversations(agent) if agent is not None else NoConversations()


class LiveConversations:
    """:class:`Conversations` over whichever agent ``app.state.agent`` holds at each call (the
    jobs start before a test harness or ``agent register`` may set it)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def note(self, number: str, text: str, appointment: AppointmentFacts) -> None:
        conversations_of(self.app).note(number, text, appointment)

    def escalate(self, number: str | None, *, reason: str, summary: str) -> None:
        conversations_of(self.app).escalate(number, reason=reason, summary=summary)

    def hand_to_agent(self, number: str, body: str) -> None:
        conversations_of(self.app).hand_to_agent(number, body)


def replies_for(app: FastAPI) -> Replies | None:
    """What answers an inbound text first; None without a clinic file or an SMS provider."""
    services: Services = app.state.services
    outreach = outreach_of(app)
    if services.clinic is None or outreach is None:
        return None
    return Replies(
        outreach=outreach,
        db=services.db,
        store=services.store,
        clinic=services.clinic,
        conversations=conversations_of(app),
        waitlist=getattr(app.state, "waitlist", None),
    )


def handle_waiting(app: FastAPI) -> int:
    """At start-up: the inbound texts a stopped process kept but never handled, handled now,
    oldest first. Returns how many."""
    replies = replies_for(app)
    if replies is None:
        return 0
    done = 0
    for message in replies.outreach.waiting_inbound():
        sid = message.provider_id or ""  # the provider's id of the text, as received
        replies.handle(message.to, message.body, message_sid=sid, opt_out_type=message.opt_out_type)
        replies.outreach.handled(message.id)
        done += 1
    if done:
        log.info("outreach.inbox_replayed", count=done)
    return done


def _pass(app: FastAPI) -> int:
    services: Services = app.state.services
    if services.clinic is None:
        return 0
    return escalate_late_cancellations(
        db=services.db,
        store=services.store,
        clinic=services.clinic,
        conversations=conversations_of(app),
        outreach=outreach_of(app),
    )


async def escalations(app: FastAPI, every: float = ESCALATE_EVERY) -> Any:
    """The job: late cancellations to the staff queue, every ``every`` seconds."""
    while True:
        await asyncio.sleep(every)
        try:
            await asyncio.to_thread(_pass, app)
        except Exception as exc:  # noqa: BLE001 - logged, and the rows wait for the next pass
            log.error("outreach.escalations_failed", error_type=type(exc).__name__)
