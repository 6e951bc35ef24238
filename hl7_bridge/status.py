"""SCH-25 filler status → Appointment.status, as senders actually write it.

The trigger event says what happened (HL7 v2.5.1 chapter 10.3: S12 booked, S13 rescheduled,
S14 modified, S15/S16 cancelled or discontinued, S17 deleted, S26 no-show); SCH-25 refines it
and never vetoes it:

* a status is looked up case-insensitively, ignoring spaces, dashes and underscores, first by
  its code (component 1), then by its text (component 2), in the sender's own table, then the
  global one, then the built-in one (HL7 table 0278 and the variants real senders use, see
  ``docs/hl7.md``, "Filler status");
* S12 and S13 take a known status as it maps; S14 too, or keeps the Appointment's status when
  SCH-25 is absent or unknown; S15/S16 cancel (a status that maps to ``noshow`` makes it a
  no-show), S17 deletes (``entered-in-error``), S26 is a no-show;
* an unknown status never refuses the message: the event decides, and the caller records a
  warning and keeps the sender's value on the Appointment (:data:`FILLER_STATUS_EXTENSION`).

Table 0278: https://terminology.hl7.org/CodeSystem-v2-0278.html
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "APPOINTMENT_STATUSES",
    "DEFAULT_STATUS_MAP",
    "EVENT_STATUS",
    "FILLER_STATUS_EXTENSION",
    "Status",
    "check_status_map",
    "describe_unknown",
    "resolve_status",
]

FILLER_STATUS_EXTENSION = "urn:fhir-sched:hl7:filler-status"  # SCH-25 as the sender wrote it

# FHIR R4 Appointment.status
APPOINTMENT_STATUSES = frozenset(
    {
        "proposed",
        "pending",
        "booked",
        "arrived",
        "fulfilled",
        "cancelled",
        "noshow",
        "entered-in-error",
        "checked-in",
        "waitlist",
    }
)

# Keys are normalised (see _key): lower case, letters and digits only.
DEFAULT_STATUS_MAP = {
    # HL7 table 0278 (filler status codes)
    "booked": "booked",
    "overbook": "booked",
    "blocked": "booked",
    "pending": "pending",
    "waitlist": "waitlist",
    "started": "arrived",
    "complete": "fulfilled",
    "cancelled": "cancelled",
    "dc": "cancelled",
    "deleted": "entered-in-error",
    "noshow": "noshow",
    # what senders write instead (docs/hl7.md, "Filler status", says who)
    "canceled": "cancelled",
    "cancel": "cancelled",
    "scheduled": "booked",
    "confirmed": "booked",
    "rescheduled": "booked",
    "arrived": "arrived",
    "checkedin": "checked-in",
    "checkin": "checked-in",
    "completed": "fulfilled",
    "checkedout": "fulfilled",
    "discontinued": "cancelled",
}
EVENT_STATUS = {"S15": "cancelled", "S16": "cancelled", "S17": "entered-in-error", "S26": "noshow"}


def _key(value: str) -> str:
    return re.sub(r"[^0-9a-z]+", "", value.lower())


@dataclass(frozen=True, slots=True)
class Status:
    """What SCH-25 and the event make of the Appointment's status."""

    value: str | None  # None: S14 without a usable SCH-25 keeps the Appointment's status
    original: dict[str, str] | None  # SCH-25 as sent (code, display, system), if any
    unknown: bool = False  # SCH-25 was sent and no table knows it

    def extension(self) -> dict[str, Any] | None:
        if self.original is None:
            return None
        return {"url": FILLER_STATUS_EXTENSION, "valueCoding": dict(self.original)}


def check_status_map(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``FHIRSCHED_HL7_STATUS_MAP`` checked: ``{"code": "status"}`` entries for every sender,
    and ``{"SENDER.KEY": {"code": "status"}}`` for one sender; every status a FHIR
    Appointment.status. Raises ValueError naming the bad entry."""
    for key, value in raw.items():
        entries = value.items() if isinstance(value, Mapping) else [(key, value)]
        for code, status in entries:
            if not isinstance(status, str) or status not in APPOINTMENT_STATUSES:
                raise ValueError(
                    f"status map entry {code!r}: {status!r} is not an Appointment.status "
                    f"({', '.join(sorted(APPOINTMENT_STATUSES))})"
                )
    return dict(raw)


def _table(sender: str, status_map: Mapping[str, Any]) -> dict[str, str]:
    table = dict(DEFAULT_STATUS_MAP)
    table.update({_key(k): v for k, v in status_map.items() if isinstance(v, str)})
    own = status_map.get(sender)
    if isinstance(own, Mapping):
        table.update({_key(k): str(v) for k, v in own.items()})
    return table


def resolve_status(
    event: str,
    *,
    code: str,
    text: str,
    system: str,
    sender: str,
    status_map: Mapping[str, Any] | None = None,
) -> Status:
    """Appointment.status for ``event`` with SCH-25 ``code^text^system``."""
    table = _table(sender, status_map or {})
    sent = {k: v for k, v in (("code", code), ("display", text), ("system", system)) if v}
    original = sent if (code or text) else None
    found = next((table[k] for k in (_key(code), _key(text)) if k and k in table), None)
    unknown = original is not None and found is None
    if event in EVENT_STATUS:
        value = EVENT_STATUS[event]
        if value == "cancelled" and found == "noshow":
            value = "noshow"
        return Status(value, original, unknown)
    if found is not None:
        return Status(found, original)
    # absent or unknown: the event decides (S14 changes details, not the status)
    return Status(None if event == "S14" else "booked", original, unknown)


def describe_unknown(event: str, status: Status, sender: str, applied: str) -> str:
    """The warning's words for an unknown SCH-25 (they quote the sender's code)."""
    sent = status.original or {}
    shown = "^".join(sent.get(k, "") for k in ("code", "display", "system")).rstrip("^")
    return (
        f"SCH-25 filler status {shown!r} is in no status table for sender {sender}; the "
        f"{event} was applied as {applied!r} and the value kept on the Appointment. To map "
        f'it, add it to FHIRSCHED_HL7_STATUS_MAP (e.g. {{"{sender}": '
        f'{{"{sent.get("code") or sent.get("display")}": "booked"}}}})'
    )
