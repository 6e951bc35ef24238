"""Appointment (+ its Patient, Practitioner, Location) → an SIU message, built with hl7apy.

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

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message, Segment

from hl7_bridge.parse import escape

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
_TOLERANT = VALIDATION_LEVEL.TOLERANT


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


def _segment(name: str, version: str, fields: dict[int, str | list[str]]) -> Segment:
    """A segment from already-escaped values; a list is a repeating field."""
    seg = Segment(name, version=version, validation_level=_TOLERANT)
    for n, value in sorted(fields.items()):
        for rep in [value] if isinstance(value, str) else value:
            if rep:
                seg.add_field(f"{name}_{n}").value = rep
    return seg


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


def _pid(patient: dict[str, Any], version: str) -> Segment:
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
    return _segment(
        "PID",
        version,
        {
            1: "1",
            3: ids,
            5: xpn,
            7: str(patient.get("birthDate", "")).replace("-", ""),
            8: _SEX.get(str(patient.get("gender", "")), ""),
            13: escape(str(phone)),
        },
    )


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
    msg = Message("SIU_S12", version=v, validation_level=_TOLERANT)
    msg.msh.msh_3 = escape(env.application)
    msg.msh.msh_4 = escape(env.facility)
    msg.msh.msh_5 = escape(env.receiving_application)
    msg.msh.msh_6 = escape(env.receiving_facility)
    msg.msh.msh_7 = env.sent.strftime("%Y%m%d%H%M%S%z")
    msg.msh.msh_9 = f"SIU^{event}^SIU_S12"
    msg.msh.msh_10 = env.control_id
    msg.msh.msh_11 = "P"
    msg.msh.msh_12 = v
    msg.msh.msh_18 = "UNICODE UTF-8"
    start, end = _dtm(appointment.get("start")), _dtm(appointment.get("end"))
    minutes = str(appointment.get("minutesDuration", ""))
    visit = (appointment.get("serviceType") or [{}])[0]
    coding = (visit.get("coding") or [{}])[0] if isinstance(visit, dict) else {}
    status = str(appointment.get("status", ""))
    msg.add(
        _segment(
            "SCH",
            v,
            {
                1: f"{escape(str(appointment['id']))}^{escape(env.application)}",
                2: f"{escape(filler_id)}" if filler_id else "",
                6: escape(_text(appointment.get("cancelationReason"))),
                7: "^" + escape(_text((appointment.get("reasonCode") or [None])[0])),
                9: minutes,
                10: "min" if minutes else "",
                11: f"^^{minutes}^{start}^{end}" if start else "",
                25: FILLER_STATUS.get(status, ""),
            },
        )
    )
    if start:
        msg.add(_segment("TQ1", v, {1: "1", 7: start, 8: end}))
    lines = str(appointment.get("comment") or "").splitlines()
    for n, line in enumerate(line for line in lines if line.strip()):  # one NTE per line
        msg.add(_segment("NTE", v, {1: str(n + 1), 3: escape(line)}))
    if patient is not None:
        msg.add(_pid(patient, v))
    msg.add(_segment("RGS", v, {1: "1", 2: "A"}))
    if coding.get("code"):
        ce = f"{escape(str(coding['code']))}^{escape(str(coding.get('display', '')))}"
        msg.add(_segment("AIS", v, {1: "1", 2: "A", 3: ce.rstrip("^"), 4: start}))
    if location is not None:
        pl = f"{escape(str(location['id']))}^^^{escape(env.facility)}^^^^^"
        pl += escape(str(location.get("name", "")))
        msg.add(_segment("AIL", v, {1: "1", 2: "A", 3: pl, 6: start}))
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
        msg.add(_segment("AIP", v, {1: "1", 2: "A", 3: xcn, 6: start}))
    er7: str = msg.to_er7()
    return er7.encode("utf-8")
