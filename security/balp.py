"""AuditEvents shaped as IHE Basic Audit Log Patterns (BALP) prescribe, for FHIR R4.

One builder for every kind of access: RESTful interactions (``rest`` + the interaction as
subtype), the scheduling operations (``rest`` + ITI-115/116/117), and security events (DICOM
110114 user authentication, 110113 security alert). Agents: the client application (with its
network address), the user when one signed in, and this server. Entities: what was touched,
and for searches the query itself (base64), never result data. Tokens never appear; a token is
named by its ``jti``.

See https://profiles.ihe.net/ITI/BALP/ and https://hl7.org/fhir/R4/auditevent.html
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

__all__ = ["CONSOLE", "CONVERSATION", "OUTCOMES", "Actor", "balp_event"]

DCM = "http://dicom.nema.org/resources/ontology/DCM"
EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
IHE_EVENTS = "urn:ihe:event-type-code"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/extra-security-role-type"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
HL7_EVENTS = "http://terminology.hl7.org/CodeSystem/v2-0003"
# an entity identifier in this system is the conversation (``X-Conversation-Id``) a request
# belonged to: the way from an AuditEvent to a booking agent's transcript
CONVERSATION = "urn:fhir-sched:conversation"

# success, minor failure (e.g. refused), serious failure, major failure
OUTCOMES = {"success": "0", "minor": "4", "serious": "8", "major": "12"}

ACTIONS = {
    "read": "R",
    "vread": "R",
    "search-type": "E",
    "search-system": "E",
    "history-instance": "R",
    "history-type": "R",
    "create": "C",
    "update": "U",
    "patch": "U",
    "delete": "D",
    "operation": "E",
    "transaction": "E",
    "batch": "E",
}
OPERATIONS = {
    "$find": ("ITI-115", "Find Appointments"),
    "$hold": ("ITI-116", "Hold Appointment"),
    "$book": ("ITI-117", "Book Appointment"),
}
# what an inbound SIU event does to the Appointment it names
HL7_ACTIONS = {"S12": "C", "S13": "U", "S14": "U", "S15": "U", "S16": "U", "S17": "D", "S26": "U"}
SECURITY = {
    "login": ("110114", "User Authentication", "110122", "Login"),
    "logout": ("110114", "User Authentication", "110123", "Logout"),
    "token": ("110114", "User Authentication", "token-issued", "Access token issued"),
    "introspect": ("110114", "User Authentication", "introspect", "Token introspection"),
    "revoke": ("110114", "User Authentication", "revoke", "Token revocation"),
    "alert": ("110113", "Security Alert", "replay", "Replayed or forged credential"),
}

# commands run at the server's console (``fhir-sched …``), by what they do: the DICOM event
# type and the action; the command itself is the subtype (urn:fhir-sched:console)
CONSOLE = {
    "audit": ("110101", "Audit Log Used", "R"),
    "export": ("110106", "Export", "R"),
    "import": ("110107", "Import", "C"),
    "query": ("110112", "Query", "E"),
    "security": ("110113", "Security Alert", "U"),  # clients, users, keys, launches
    "application": ("110100", "Application Activity", "E"),
}

# the booking agent's doors (``/agent/…``): what happened there, as DICOM event type and
# action; the action itself is the subtype (urn:fhir-sched:agent)
AGENT = {
    "conversation": ("110100", "Application Activity", "C"),  # a conversation started
    "message": ("110100", "Application Activity", "E"),  # a patient's message answered
    "replies": ("110110", "Patient Record", "R"),  # a patient's page fetched staff replies
    "queue": ("110112", "Query", "E"),  # staff listed the handed-over conversations
    "transcript": ("110110", "Patient Record", "R"),  # staff read a transcript
    "staff": ("110110", "Patient Record", "U"),  # staff took, answered or handed back
}

# automated texts to patients and their replies (``outreach/``): "outreach-<what>:<kind>", e.g.
# outreach-sent:reminder; the kind is the subtype (urn:fhir-sched:outreach). No text is recorded.
OUTREACH = {
    "sent": ("110106", "Export", "R"),  # a reminder, waitlist offer or notice left for a patient
    "failed": ("110106", "Export", "R"),  # the provider refused it (outcome says so)
    "received": ("110107", "Import", "C"),  # a patient's reply to one
    "acted": ("110100", "Application Activity", "U"),  # what a reply did (confirm, cancel, take)
}


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acted: the client (always), the user behind it (if any), from where, which token."""

    client_id: str | None
    address: str | None = None
    user: str | None = None  # fhirUser reference, else the user id
    token_jti: str | None = None
    roles: tuple[str, ...] = field(default_factory=tuple)


def _coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


@lru_cache(maxsize=4096)
def _agents(actor: Actor, server: str) -> list[dict[str, Any]]:
    """The agents of an event (shared between events of the same actor: never mutated)."""
    client: dict[str, Any] = {
        "type": {"coding": [_coding(DCM, "110150", "Application")]},
        "who": {
            "identifier": {
                "system": "urn:fhir-sched:client",
                "value": actor.client_id or "anonymous",
            }
        },
        "requestor": actor.user is None,
    }
    if actor.address:
        client["network"] = {"address": actor.address, "type": "2"}
    if actor.token_jti:
        client["policy"] = [f"urn:fhir-sched:token:{actor.token_jti}"]
    agents = [client]
    if actor.user:
        who = (
            {"reference": actor.user}
            if "/" in actor.user
            else {"identifier": {"system": "urn:fhir-sched:user", "value": actor.user}}
        )
        agents.append(
            {
                "type": {"coding": [_coding(PARTICIPATION, "humanuser", "human user")]},
                "who": who,
                "requestor": True,
            }
        )
    agents.append(
        {
            "type": {"coding": [_coding(DCM, "110152", "Destination Role ID")]},
            "who": {"display": server},
            "requestor": False,
            "network": {"address": server, "type": "5"},
        }
    )
    return agents


@lru_cache(maxsize=16)
def _source(server: str) -> dict[str, Any]:
    return {
        "site": server,
        "observer": {"display": "fhir-sched"},
        "type": [_coding(SOURCE_TYPE, "4", "Application Server")],
    }


def balp_event(
    *,
    kind: str,
    actor: Actor,
    server: str,
    outcome: str = "success",
    description: str | None = None,
    entities: list[str] | None = None,
    identifiers: list[tuple[str, str]] | None = None,
    patient: str | None = None,
    query: str | None = None,
    recorded: datetime | None = None,
) -> dict[str, Any]:
    """One AuditEvent. ``kind`` is a RESTful interaction (``read``, ``search-type``…), an
    operation (``$find``…), a security event (``login``, ``token``, ``alert``…), an HL7
    message (``hl7-in:S12``, ``hl7-out:S15``), a console command (``console-export:hl7
    show``, see :data:`CONSOLE`), a booking-agent door (``agent-message:sms``, see
    :data:`AGENT`) or an automated text (``outreach-sent:reminder``, see :data:`OUTREACH`)."""
    event: dict[str, Any] = {"resourceType": "AuditEvent"}
    if kind in OPERATIONS:
        code, display = OPERATIONS[kind]
        event["type"] = _coding(EVENT_TYPE, "rest", "Restful Operation")
        event["subtype"] = [_coding(RESTFUL, "operation"), _coding(IHE_EVENTS, code, display)]
        event["action"] = "E" if kind == "$find" else "C"
    elif kind.startswith(("hl7-in:", "hl7-out:")):
        # an HL7 v2 message received (DICOM 110107 Import) or sent (110106 Export)
        direction, _, hl7_event = kind.partition(":")
        inbound = direction == "hl7-in"
        event["type"] = _coding(DCM, *(("110107", "Import") if inbound else ("110106", "Export")))
        event["subtype"] = [_coding(HL7_EVENTS, hl7_event)]
        event["action"] = HL7_ACTIONS.get(hl7_event, "E") if inbound else "R"
    elif kind.startswith("console-"):
        # "console-<what>:<command>", e.g. console-export:hl7 show
        family, _, command = kind.removeprefix("console-").partition(":")
        type_code, type_display, action = CONSOLE[family]
        event["type"] = _coding(DCM, type_code, type_display)
        event["subtype"] = [_coding("urn:fhir-sched:console", command)]
        event["action"] = action
    elif kind.startswith("agent-"):
        # "agent-<what>:<action>", e.g. agent-message:sms
        family, _, action = kind.removeprefix("agent-").partition(":")
        type_code, type_display, verb = AGENT[family]
        event["type"] = _coding(DCM, type_code, type_display)
        event["subtype"] = [_coding("urn:fhir-sched:agent", action or family)]
        event["action"] = verb
    elif kind.startswith("outreach-"):
        family, _, what = kind.removeprefix("outreach-").partition(":")
        type_code, type_display, verb = OUTREACH[family]
        event["type"] = _coding(DCM, type_code, type_display)
        event["subtype"] = [_coding("urn:fhir-sched:outreach", what or family)]
        event["action"] = verb
    elif kind in SECURITY:
        type_code, type_display, sub_code, sub_display = SECURITY[kind]
        event["type"] = _coding(DCM, type_code, type_display)
        event["subtype"] = [_coding("urn:fhir-sched:security-event", sub_code, sub_display)]
        event["action"] = "E"
    else:
        event["type"] = _coding(EVENT_TYPE, "rest", "Restful Operation")
        event["subtype"] = [_coding(RESTFUL, kind)]
        event["action"] = ACTIONS.get(kind, "E")
    event["recorded"] = (recorded or datetime.now(UTC)).isoformat()
    event["outcome"] = OUTCOMES[outcome]
    if description and outcome != "success":
        event["outcomeDesc"] = description
    event["agent"] = _agents(actor, server)
    event["source"] = _source(server)
    items: list[dict[str, Any]] = []
    if patient:
        items.append(
            {
                "what": {"reference": f"Patient/{patient}"},
                "type": _coding(ENTITY_TYPE, "1", "Person"),
                "role": _coding(OBJECT_ROLE, "1", "Patient"),
            }
        )
    for ref in entities or []:
        if patient and ref == f"Patient/{patient}":
            continue
        items.append(
            {
                "what": {"reference": ref},
                "type": _coding(ENTITY_TYPE, "2", "System Object"),
                "role": _coding(OBJECT_ROLE, "4", "Domain Resource"),
            }
        )
    for system, value in identifiers or []:  # things that are not FHIR resources
        items.append(
            {
                "what": {"identifier": {"system": system, "value": value}},
                "type": _coding(ENTITY_TYPE, "2", "System Object"),
            }
        )
    if query is not None:
        items.append(
            {
                "type": _coding(ENTITY_TYPE, "2", "System Object"),
                "role": _coding(OBJECT_ROLE, "24", "Query"),
                "query": base64.b64encode(query.encode()).decode(),
            }
        )
    if items:
        event["entity"] = items
    return event
