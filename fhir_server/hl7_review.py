"""The HL7 message store for staff over HTTP, without the web framework: what ``fhir-sched hl7
messages``, ``show`` and ``replay`` give (``fhir_server/cli_hl7.py``), as JSON-ready dicts.
``routes/hl7.py`` is the HTTP edge (who may call, the audit records).

A listing names no message content: ids, times, direction, peer, control id, event, status,
ACK code, the HL7 error code (table 0357) and warning codes, the Appointment. ``show`` opens the
sealed part (the message, the ACK, the sender's address, why it failed, the warnings' words):
patient data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from base.errors import BadRequest, Conflict, NotFound
from fhir_server.hl7_runtime import bridge_config
from fhir_server.settings import Settings
from hl7_bridge.listener import Listener
from hl7_bridge.messages import STATUSES, MessageRecord, MessageStore
from resources.fhirdate import as_utc
from resources.sql.engine import Database
from resources.store import Store
from scheduling.config import ClinicConfig
from security.crypto import KeyRing

__all__ = ["ListQuery", "listing", "parse_listing", "patient_of", "replay", "show"]

DEFAULT_COUNT = 100
MAX_COUNT = 1000
_FLAGS = {"true": True, "false": False}


@dataclass(frozen=True, slots=True)
class ListQuery:
    statuses: tuple[str, ...] = ()
    direction: str | None = None
    warned: bool = False
    count: int = DEFAULT_COUNT
    before: int | None = None


def _whole(name: str, value: str, most: int) -> int:
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= most:
        raise BadRequest(f"{name} must be a whole number from 1 to {most}")
    return int(value)


def parse_listing(params: list[tuple[str, str]]) -> ListQuery:
    """``status`` (repeated or comma-separated), ``direction`` (in, out), ``warnings`` (true,
    false), ``_count`` (1-1000, default 100), ``before`` (a listed message's ``seq``: the next
    page). Anything else is a 400 that names the parameter, never its value."""
    statuses: list[str] = []
    query: dict[str, Any] = {}
    for name, value in params:
        if name == "status":
            for status in (v.strip() for v in value.split(",") if v.strip()):
                if status not in STATUSES:
                    raise BadRequest(f"status is one of {', '.join(STATUSES)}")
                statuses.append(status)
        elif name == "direction":
            if value not in ("in", "out"):
                raise BadRequest("direction is in or out")
            query["direction"] = value
        elif name == "warnings":
            if value not in _FLAGS:
                raise BadRequest("warnings is true or false")
            query["warned"] = _FLAGS[value]
        elif name == "_count":
            query["count"] = _whole("_count", value, MAX_COUNT)
        elif name == "before":
            query["before"] = _whole("before", value, 2**63 - 1)
        else:
            raise BadRequest(
                f"{name!r} is not a parameter here: status, direction, warnings, _count, before"
            )
    return ListQuery(statuses=tuple(dict.fromkeys(statuses)), **query)


def _summary(r: MessageRecord | Any) -> dict[str, Any]:
    return {
        "id": r.id,
        "seq": r.seq,
        "created": as_utc(r.created).isoformat(),  # SQLite hands back naive UTC
        "direction": r.direction,
        "peer": r.peer,
        "control_id": r.control_id,
        "event": r.event,
        "status": r.status,
        "ack_code": r.ack_code,
        "error": r.error,
        "warnings": (r.warnings or "").split(),
        "appointment_id": r.appointment_id,
        "attempts": r.attempts,
        "next_attempt": as_utc(r.next_attempt).isoformat() if r.next_attempt else None,
    }


def listing(db: Database, keys: KeyRing, query: ListQuery) -> dict[str, Any]:
    """``{"messages": [...], "next_before": seq | None}``, newest first."""
    with db.read() as conn:
        rows = MessageStore(keys).listing(
            conn,
            direction=query.direction,
            statuses=list(query.statuses),
            limit=query.count,
            warned=query.warned,
            newest_first=True,
            before=query.before,
        )
    more = rows[-1].seq if len(rows) == query.count else None
    return {"messages": [_summary(r) for r in rows], "next_before": more}


def _row(db: Database, keys: KeyRing, message_id: str) -> Any:
    with db.read() as conn:
        row = MessageStore(keys).get(conn, message_id)
    if row is None:
        raise NotFound("no stored HL7 message has this id")
    return row


def patient_of(db: Database, store: Store, appointment_id: str | None) -> str | None:
    """The Patient id of the message's Appointment, for the audit record of a ``show``."""
    if appointment_id is None:
        return None
    with db.read() as conn:
        found = store.read(conn, "Appointment", appointment_id)
    if found is None or found.body is None:
        return None
    for participant in found.resource().get("participant") or []:
        ref = (participant.get("actor") or {}).get("reference") or ""
        if ref.startswith("Patient/"):
            return str(ref.removeprefix("Patient/"))
    return None


def show(db: Database, keys: KeyRing, message_id: str) -> tuple[dict[str, Any], str | None]:
    """The message as ``hl7 show`` prints it, and its Appointment's id (for the audit record,
    written before this is sent)."""
    row = _row(db, keys, message_id)
    opened = MessageStore(keys).open(row)
    body = _summary(row) | {
        "address": opened.address,
        "reason": opened.detail,
        "warning_texts": list(opened.warnings),
        # segments one a line, as `hl7 show` prints them
        "message": opened.message.decode("utf-8", "replace").replace("\r", "\n"),
        "ack": opened.ack.decode("utf-8", "replace").replace("\r", "\n") if opened.ack else None,
    }
    return body, row.appointment_id


def replay(
    settings: Settings,
    *,
    db: Database,
    keys: KeyRing,
    store: Store,
    clinic: ClinicConfig | None,
    message_id: str,
) -> dict[str, Any]:
    """Apply a failed inbound message again, as ``hl7 replay`` does (a replayed change reaches
    the other EMRs and the waitlist through ``store``'s watchers); the message as it now
    stands, with why it still fails if it does. 404 unknown, 409 not a failed inbound one."""
    row = _row(db, keys, message_id)
    if row.direction != "in" or row.status not in ("failed", "received"):
        raise Conflict(
            f"the message is {row.direction}bound and {row.status}: only failed "
            "inbound messages are replayed"
        )
    listener = Listener(db, keys, store, clinic=clinic, config=bridge_config(settings, clinic))
    try:
        listener.replay(message_id)
    except LookupError:
        raise NotFound("no stored HL7 message has this id") from None
    except ValueError as exc:  # settled by someone else meanwhile
        raise Conflict("the message is no longer a failed one: list it again") from exc
    row = _row(db, keys, message_id)
    opened = MessageStore(keys).open(row)
    return _summary(row) | {"reason": opened.detail, "warning_texts": list(opened.warnings)}
