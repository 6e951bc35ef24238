"""Appointment (+ its Patient, Practitioner, Location) → an SIU message for the version the
EMR takes (2.3 to 2.8.2), valid under hl7apy's strict tables for that version (tested).

Pure: the caller reads the resources. Segments follow the SIU_S12 order (MSH, SCH, TQ1, NTE,
PID, RGS, AIS, AIL, AIP), mapped back along the HL7 v2-to-FHIR IG's lines:

* SCH-1 placer id = our Appointment id (namespace = our MSH-3), SCH-2 the EMR's own filler id
  when we know it (the Appointment came from that EMR); SCH-6 the cancellation reason, SCH-7
  the reason, SCH-9/10 the duration in minutes, SCH-11 a TQ (for 2.3/2.4 receivers) and TQ1
  (2.5+) with the times in the clinic's offset, SCH-25 the filler status (table 0278);
* PID-3 the Patient's identifiers (assigning authority from the identifier system), PID-5
  name, PID-7 birth date, PID-8 sex, PID-13 phone;
* AIS-3 the visit type, AIP-3 the practitioner (NPI when known), AIL-3 the location.

Free text is escaped for the message's delimiters (``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``); a
multi-line comment becomes one NTE per line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hl7_bridge.parse import _HL7APY_VERSION, escape

__all__ = ["FILLER_STATUS", "Envelope", "build_siu"]

FILLER_STATUS = {
    "booked": "Booked",
    "pending": "Pending",
    "waitlist": "Waitlist",
    "arrived": "Started",
    "checked-in": "Started",
    "fulfilled": "Complete",
    "cancelled": "Cancelled",
    "noshow": "Noshow",
    "entered-in-error": "Deleted",
}
_SEX = {"male": "M", "female": "F", "other": "O", "unknown": "U"}
NPI = "http://hl7.org/fhir/sid/us-npi"


@dataclass(frozen=True, slots=True)
class Envelope:
    """MSH for one outbound message."""

    control_id: str
    sent: datetime
    application: str = "FHIRSCHED"
    facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    version: str = "2.5.1"


def _dtm(value: str | None) -> str:
    if not value:
        return ""
    t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return t.strftime("%Y%m%d%H%M%S") + (t.strftime("%z") if t.tzinfo else "")


def _segment(name: str, fields: Mapping[int, str | list[str]]) -> str:
    """A segment from already-escaped values at their standard positions; a list is a
    repeating field. Written by position, not through hl7apy: its 2.7+ tables leave out
    withdrawn fields (SCH-9, SCH-11) and it then writes the later ones one place early
    (SCH-25 as SCH-23)."""
    last = max((n for n, value in fields.items() if value), default=0)
    values = [fields.get(n, "") for n in range(1, last + 1)]
    return "|".join([name, *("~".join(v) if isinstance(v, list) else v for v in values)])


def _text(concept: Any) -> str:
    if not isinstance(concept, dict):
        return ""
    coding = (concept.get("coding") or [{}])[0]
    return str(concept.get("text") or coding.get("display") or coding.get("code") or "")


def _authority(system: str) -> str:
    if system.startswith("urn:oid:"):
        return f"&{system[8:]}&ISO"
    if system.startswith("urn:fhir-sched:hl7:id:"):
        return escape(system.rsplit(":", 1)[1])
    return escape(system.rstrip("/").rsplit("/", 1)[-1])


def _pid(patient: dict[str, Any], version: str) -> str:
    ids = []
    for ident in patient.get("identifier", []):
        code = ((ident.get("type") or {}).get("coding") or [{}])[0].get("code", "")
        value = escape(str(ident.get("value", "")))
        ids.append(f"{value}^^^{_authority(str(ident.get('system', '')))}^{escape(code)}")
    name = (patient.get("name") or [{}])[0]
    given = name.get("given") or []
    xpn = "^".join(
        escape(str(x))
        for x in (
            name.get("family", ""),
            given[0] if given else "",
            " ".join(given[1:]),
            (name.get("suffix") or [""])[0],
            (name.get("prefix") or [""])[0],
        )
    ).rstrip("^")
    phone = next(
        (t.get("value") for t in patient.get("telecom", []) if t.get("system") == "phone"), ""
    )
    # XTN-1 (the formatted number) is withdrawn from 2.7: there the number goes to XTN-12
    # (unformatted), with its use (PRN) and type (PH). hl7apy's 2.6 tables drop XTN-1 and
    # shift the others, so no component takes a number as text: a 2.6 receiver gets none
    # rather than a message its validator refuses.
    if not phone or version == "2.6":
        xtn = ""
    elif _before(version, "2.7"):
        xtn = escape(str(phone))
    else:
        xtn = f"^PRN^PH{'^' * 9}{escape(str(phone))}"
    return _segment(
        "PID",
        {
            1: "1",
            3: ids,
            5: xpn,
            7: str(patient.get("birthDate", "")).replace("-", ""),
            8: _SEX.get(str(patient.get("gender", "")), ""),
            13: xtn,
        },
    )


_ORDER = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2")


def _before(version: str, than: str) -> bool:
    """Whether ``version`` is older than ``than`` (an unknown version counts as newest)."""
    return version in _ORDER and _ORDER.index(version) < _ORDER.index(than)


_EVENT_REASON = {
    "S12": "New appointment booking",
    "S13": "Appointment rescheduling",
    "S14": "Appointment modification",
    "S15": "Appointment cancellation",
    "S17": "Appointment deletion",
    "S26": "Patient did not show up",
}


def build_siu(
    event: str,
    appointment: dict[str, Any],
    env: Envelope,
    *,
    patient: dict[str, Any] | None = None,
    practitioner: dict[str, Any] | None = None,
    location: dict[str, Any] | None = None,
    filler_id: str | None = None,
) -> bytes:
    """The SIU^``event`` message for ``appointment`` (CR-separated, ASCII-safe UTF-8)."""
    v = env.version
    lib = _HL7APY_VERSION.get(v, v)  # the tables whose withdrawn fields are left out
    # the message structure (MSH-9.3) exists from 2.3.1 on
    kind = f"SIU^{event}" if _before(v, "2.3.1") else f"SIU^{event}^SIU_S12"
    msh = {3: escape(env.application), 4: escape(env.facility)}
    msh |= {5: escape(env.receiving_application), 6: escape(env.receiving_facility)}
    msh |= {7: env.sent.strftime("%Y%m%d%H%M%S%z"), 9: kind, 10: escape(env.control_id)}
    msh |= {11: "P", 12: v, 18: "UNICODE UTF-8"}
    segments = ["MSH|^~\\&|" + _segment("MSH", msh).split("|", 3)[3]]
    start, end = _dtm(appointment.get("start")), _dtm(appointment.get("end"))
    minutes = str(appointment.get("minutesDuration", ""))
    visit = (appointment.get("serviceType") or [{}])[0]
    coding = (visit.get("coding") or [{}])[0] if isinstance(visit, dict) else {}
    status = str(appointment.get("status", ""))
    cancelled = escape(_text(appointment.get("cancelationReason")))
    us = escape(env.application)  # the filler of our appointments, and who entered them
    sch: dict[int, str | list[str]] = {
        1: f"{escape(str(appointment['id']))}^{us}",
        2: f"{escape(filler_id)}" if filler_id else "",
        6: f"{event}^{cancelled or _EVENT_REASON.get(event, event)}",  # required
        7: "^" + escape(_text((appointment.get("reasonCode") or [None])[0])),
        16: us,  # filler contact person: required
        20: us,  # entered by: required
        25: FILLER_STATUS.get(status, ""),
    }
    # SCH-9 (withdrawn in 2.8) and SCH-11, the TQ (withdrawn in 2.7), for older receivers;
    # TQ1 (from 2.5) for newer ones
    if _before(lib, "2.8") and minutes:
        sch |= {9: minutes, 10: "min"}
    if _before(lib, "2.7") and start:
        sch[11] = f"^^{minutes}^{start}^{end}"
    segments.append(_segment("SCH", sch))
    if start and not _before(v, "2.5"):
        segments.append(_segment("TQ1", {1: "1", 7: start, 8: end}))
    lines = str(appointment.get("comment") or "").splitlines()
    for n, line in enumerate(line for line in lines if line.strip()):  # one NTE per line
        segments.append(_segment("NTE", {1: str(n + 1), 3: escape(line)}))
    if patient is not None:
        segments.append(_pid(patient, lib))
    segments.append(_segment("RGS", {1: "1", 2: "A"}))
    if coding.get("code"):
        ce = f"{escape(str(coding['code']))}^{escape(str(coding.get('display', '')))}"
        segments.append(_segment("AIS", {1: "1", 2: "A", 3: ce.rstrip("^"), 4: start}))
    if location is not None:
        pl = f"{escape(str(location['id']))}^^^{escape(env.facility)}^^^^^"
        pl += escape(str(location.get("name", "")))
        what = "C^Clinic^HL70305"  # AIL-4, required in 2.3.1 and 2.4
        segments.append(_segment("AIL", {1: "1", 2: "A", 3: pl, 4: what, 6: start}))
    if practitioner is not None:
        npi = next(
            (i["value"] for i in practitioner.get("identifier", []) if i.get("system") == NPI),
            None,
        )
        name = (practitioner.get("name") or [{}])[0]
        xcn = "^".join(
            [
                escape(str(npi or practitioner["id"])),
                escape(str(name.get("family", ""))),
                escape(str((name.get("given") or [""])[0])),
            ]
        )
        if npi:
            xcn += "^^^^^^NPI"
        role = "ATND^Attending"  # AIP-4, required up to 2.4
        segments.append(_segment("AIP", {1: "1", 2: "A", 3: xcn, 4: role, 6: start}))
    return "\r".join(segments).encode("utf-8")
