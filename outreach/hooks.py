"""What outreach needs from the booking agent's conversations, as a protocol: ``fhir_server``
hands in an implementation over ``agent.engine.Agent`` (``outreach`` may not import ``agent``),
or :class:`NoConversations` when the agent does not run here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from base.logging import get_logger

__all__ = ["AppointmentFacts", "Conversations", "NoConversations"]

log = get_logger("outreach.hooks")


@dataclass(frozen=True, slots=True)
class AppointmentFacts:
    """An appointment as the agent may act on it without proof of the phone: how ``$book``
    names it (``patient``: name and birth date, and ``start``) and how the patient reads it
    (``shown``: date, time, clinician, location, visit)."""

    appointment_id: str
    patient: dict[str, Any]  # a Patient: name (family, given) and birthDate
    start: str
    shown: dict[str, str] = field(default_factory=dict)
    visit_type: str | None = None


class Conversations(Protocol):
    def note(self, number: str, text: str, appointment: AppointmentFacts) -> None:
        """The clinic wrote ``text`` (already sent) to ``number`` about ``appointment``: the
        patient's SMS conversation records it, and the agent may act on that appointment."""
        ...

    def escalate(self, number: str | None, *, reason: str, summary: str) -> None:
        """Put the patient's conversation (a new one if needed) in the staff queue, with why.
        ``summary`` is for staff: no more PHI than they need to find the appointment."""
        ...

    def hand_to_agent(self, number: str, body: str) -> None:
        """A text from ``number`` that is not an answer outreach understands: the agent's."""
        ...


class NoConversations:
    """Where the booking agent does not run: notes are dropped, escalations logged (ids only)
    and free text is answered by nobody but staff reading ``fhir-sched outbox``."""

    def note(self, number: str, text: str, appointment: AppointmentFacts) -> None:
        return None

    def escalate(self, number: str | None, *, reason: str, summary: str) -> None:
        log.warning("outreach.escalated_without_agent", reason=reason)

    def hand_to_agent(self, number: str, body: str) -> None:
        log.info("outreach.no_agent_for_reply")
