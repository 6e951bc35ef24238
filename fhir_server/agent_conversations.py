"""The booking agent's conversations as outreach sees them (``outreach.hooks.Conversations``),
and the agent's SMS as outreach's opt-outs allow it.

``outreach`` may not import ``agent``; this module, on the top floor, joins them:

* :class:`AgentConversations`: a reminder sent is noted in the number's SMS conversation (the
  agent may then move or cancel that appointment), an escalation puts the conversation in
  ``GET /agent/queue``, and a text outreach does not understand is the agent's turn.
* :class:`OptOutAware`: the agent's SMS provider, skipping numbers that texted STOP, so
  nothing automated (the agent's answers and codes included) reaches them.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.engine import Agent
from agent.sms import SmsProvider
from base.logging import get_logger
from outreach.hooks import AppointmentFacts
from outreach.sending import number_opted_out
from resources.sql.engine import Database
from security.crypto import KeyRing

__all__ = ["AgentConversations", "OptOutAware", "opted_out_check"]

log = get_logger("fhir_server.agent_conversations")


class AgentConversations:
    """``outreach.hooks.Conversations`` over :class:`agent.engine.Agent`. Its calls run on the
    caller's thread: the SMS webhook calls them on the agent's pool."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def note(self, number: str, text: str, appointment: AppointmentFacts) -> None:
        self.agent.note_sms(
            number,
            text,
            patient=appointment.patient,
            start=appointment.start,
            shown=appointment.shown,
            visit_type=appointment.visit_type,
        )

    def escalate(self, number: str | None, *, reason: str, summary: str) -> None:
        self.agent.escalate(number, reason=reason, summary=summary)

    def hand_to_agent(self, number: str, body: str) -> None:
        row = self.agent.accept_sms(number, body)
        self.agent.answer(row.id, body)


def opted_out_check(
    db: Database, keys: KeyRing, region: str | None = None
) -> Callable[[str], bool]:
    def opted_out(number: str) -> bool:
        with db.read() as conn:
            return number_opted_out(conn, keys, number, region)

    return opted_out


class OptOutAware:
    """An SMS provider that sends nothing to a number that opted out: the text is dropped
    (the agent has stored it in the transcript already, where staff see it) and ``""`` is
    returned as its id."""

    def __init__(self, inner: SmsProvider, opted_out: Callable[[str], bool]) -> None:
        self.inner, self.opted_out = inner, opted_out
        self.name = inner.name

    def send(self, to: str, body: str) -> str:
        if self.opted_out(to):
            log.info("agent.sms_skipped", reason="opted_out")
            return ""
        return self.inner.send(to, body)
