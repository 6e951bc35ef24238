"""One request's audit trail: what it touched, turned into AuditEvents at the right moment.

Handlers :meth:`Trail.note` each access as they make it (a read of Appointment/1 for Patient
A; a search whose matches belong to Patients A and B). Writes call :meth:`Trail.commit_in`
inside their transaction, so the change and its AuditEvent commit together. Whatever is left
(reads, searches, and everything of a request that failed) is written by the HTTP layer before
the response leaves (``fhir_server/auditing.py``), with the outcome the response had.

This is the one audit interface: the HL7 bridge and the booking agent use it too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from security.audit import append
from security.balp import CONVERSATION, Actor, balp_event
from security.crypto import KeyRing

__all__ = ["AuditUnavailable", "Fact", "Trail", "commit_together"]


class AuditUnavailable(Exception):
    """The audit log refused a record; the access it describes must not happen."""


@dataclass(slots=True)
class Fact:
    kind: str  # a RESTful interaction, an operation ($find…) or a security event
    refs: list[str] = field(default_factory=list)  # "Type/id" touched
    patients: set[str] = field(default_factory=set)  # Patient ids whose data was touched
    query: str | None = None
    outcome: str = "success"
    description: str | None = None


@dataclass
class Trail:
    actor: Actor
    server: str
    facts: list[Fact] = field(default_factory=list)
    staged: int = 0  # facts[:staged] were appended inside a write transaction
    conversation: str | None = None  # the request's X-Conversation-Id, already checked

    def note(
        self,
        kind: str,
        *,
        refs: list[str] | None = None,
        patients: set[str] | None = None,
        query: str | None = None,
        outcome: str = "success",
        description: str | None = None,
    ) -> None:
        self.facts.append(Fact(kind, refs or [], patients or set(), query, outcome, description))

    def events(
        self, facts: list[Fact], *, outcome: str | None = None, description: str | None = None
    ) -> list[dict[str, Any]]:
        """BALP AuditEvents: one per fact, or one per patient when a fact touched several."""
        out = []
        identifiers = [(CONVERSATION, self.conversation)] if self.conversation else None
        for fact in facts:
            result = outcome if outcome and fact.outcome == "success" else fact.outcome
            why = description if result != "success" and not fact.description else fact.description
            each: list[str | None] = [*sorted(fact.patients)] or [None]
            for patient in each:
                out.append(
                    balp_event(
                        kind=fact.kind,
                        actor=self.actor,
                        server=self.server,
                        outcome=result,
                        description=why,
                        entities=fact.refs,
                        patient=patient,
                        query=fact.query,
                        identifiers=identifiers,
                    )
                )
        return out

    def commit_in(self, conn: Connection, keys: KeyRing) -> None:
        """Append what is noted so far inside the caller's (write) transaction."""
        commit_together(conn, keys, [self])

    def remaining(self, *, failed: bool) -> list[Fact]:
        """What still needs writing: on success the unstaged facts; on failure every fact,
        since a failed request's transaction (and the records staged in it) rolled back."""
        return list(self.facts) if failed else self.facts[self.staged :]


def commit_together(
    conn: Connection,
    keys: KeyRing,
    trails: list[Trail],
    *,
    head: tuple[int, bytes] | None = None,
) -> None:
    """:meth:`Trail.commit_in` for several trails written in one transaction (the HL7
    listener's groups of messages): their records go into the chain in one append (``head``:
    see :func:`security.audit.append`)."""
    pending = [(trail, trail.facts[trail.staged :]) for trail in trails]
    events = [e for trail, facts in pending if facts for e in trail.events(facts)]
    if not events:
        return
    try:
        append(conn, keys, events, head=head)
    except DBAPIError as exc:
        raise AuditUnavailable("the audit log refused the record") from exc
    for trail in trails:
        trail.staged = len(trail.facts)
