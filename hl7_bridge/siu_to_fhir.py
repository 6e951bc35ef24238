"""SIU (S12-S17, S26) → what the message asks of an Appointment, as plain data.

Pure: no database, no clock. :func:`read_siu` turns a parsed message into a :class:`SIUChange`
(keys, status, times, patient, resources); ``inbound.py`` resolves those against the server's
records and applies them. Field choices follow the HL7 v2-to-FHIR IG (SIU_S12 → Appointment,
SCH → Appointment, PID → Patient, AIP/AIL/AIS → participants and serviceType, NTE →
comment) and chapter 10 of v2.5.1:

* keys: SCH-1 (placer appointment id) and SCH-2 (filler appointment id) become Appointment
  identifiers (types PLAC and FILL) in a system named after the sender, so two EMRs that
  number alike never meet;
* status: the event, refined by SCH-25 through the status tables (``status.py``); an unknown
  SCH-25 is a warning, never a refusal;
* times: the first complete source of SCH-11, TQ1 and the resource segments (``times.py``);
  offset-less times are in the sender's configured zone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

from hl7_bridge.parse import Message, ParseError, parse_date, parse_dtm
from hl7_bridge.status import Status, describe_unknown, resolve_status
from hl7_bridge.times import read_times

__all__ = [
    "Person",
    "SIUChange",
    "read_siu",
    "sender_key",
]

KEY_LENGTH = 200  # hl7_link.value
_GENDER = {"M": "male", "F": "female", "O": "other", "A": "other", "N": "other", "U": "unknown"}


@dataclass(frozen=True, slots=True)
class Person:
    """A practitioner or location as the sender names it (matched against ours later)."""

    id: str
    name: str = ""
    authority: str = ""


@dataclass(frozen=True)
class SIUChange:
    event: str
    sender: str  # MSH-3^MSH-4 as a key: letters, digits, '.', '-'
    control_id: str
    sent_at: datetime | None  # MSH-7: orders messages about the same appointment
    placer: str | None  # SCH-1.1
    filler: str | None  # SCH-2.1
    status: str | None  # None: keep the Appointment's (an S14 without a usable SCH-25)
    start: datetime | None
    end: datetime | None  # None with a start: the visit type's length, else the stored one
    patient: dict[str, Any] | None  # a Patient resource without id
    practitioners: list[Person] = field(default_factory=list)
    locations: list[Person] = field(default_factory=list)
    resources: list[Person] = field(default_factory=list)  # AIG-3: rooms, devices, people
    services: list[dict[str, str]] = field(default_factory=list)  # codings from AIS-3
    reason: str | None = None  # SCH-7 text
    comment: str | None = None  # NTE-3, joined
    all_day: bool = False  # a date without a time: the whole day, claiming no time
    filler_status: Status | None = None  # SCH-25 as sent, and whether any table knew it
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (code, words)

    def identifiers(self) -> list[dict[str, Any]]:
        out = []
        for kind, value in (("placer", self.placer), ("filler", self.filler)):
            if value:
                out.append(
                    {
                        "type": {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                    "code": "PLAC" if kind == "placer" else "FILL",
                                }
                            ]
                        },
                        "system": key_system(self.sender, kind),
                        "value": value,
                    }
                )
        return out


def sender_key(application: str, facility: str) -> str:
    """How a sender is named here: MSH-3 and MSH-4 (first components) joined by a dot, with
    only letters, digits, dots and dashes (it goes into identifier system URIs)."""
    raw = f"{application}.{facility}" if facility else application
    return re.sub(r"[^A-Za-z0-9.-]+", "-", raw).strip("-")[:200] or "unknown"


def key_system(sender: str, kind: str) -> str:
    return f"urn:fhir-sched:hl7:{sender}:{kind}"


def _patient(msg: Message, sender: str, systems: dict[str, str]) -> dict[str, Any] | None:
    pid = msg.first("PID")
    if pid is None:
        return None
    patient: dict[str, Any] = {"resourceType": "Patient"}
    idents = []
    for field_no in (3, 2):  # PID-3 patient identifier list; PID-2 (pre-2.5) external id
        for rep in range(len(pid.repetitions(field_no))):
            value = pid.get(field_no, 1, rep=rep)
            if not value:
                continue
            namespace, universal = pid.get(field_no, 4, 1, rep), pid.get(field_no, 4, 2, rep)
            kind = pid.get(field_no, 4, 3, rep).upper()
            if universal and kind == "ISO":
                system = f"urn:oid:{universal}"
            elif namespace:
                system = systems.get(namespace, f"urn:fhir-sched:hl7:id:{namespace}")
            else:
                system = f"urn:fhir-sched:hl7:{sender}:id"
            ident: dict[str, Any] = {"system": system, "value": value}
            id_type = pid.get(field_no, 5, rep=rep)
            if id_type:
                ident["type"] = {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": id_type}
                    ]
                }
            if ident not in idents:
                idents.append(ident)
        if idents:
            break
    if idents:
        patient["identifier"] = idents
    family, given = pid.get(5, 1), [g for g in (pid.get(5, 2), pid.get(5, 3)) if g]
    if family or given:
        name: dict[str, Any] = {"use": "official"}
        if family:
            name["family"] = family
        if given:
            name["given"] = given
        if pid.get(5, 5):
            name["prefix"] = [pid.get(5, 5)]
        if pid.get(5, 4):
            name["suffix"] = [pid.get(5, 4)]
        patient["name"] = [name]
    born = parse_date(pid.get(7))
    if born is not None:
        patient["birthDate"] = born.isoformat()
    gender = _GENDER.get(pid.get(8).upper()[:1]) if pid.get(8) else None
    if gender:
        patient["gender"] = gender
    phone = pid.get(13, 1) or pid.get(13, 12)
    if phone:
        patient["telecom"] = [{"system": "phone", "value": phone, "use": "home"}]
    return patient if len(patient) > 1 else None


def _people(msg: Message, name: str) -> list[Person]:
    """AIP-3 (XCN: id^family^given…), AIG-3 (CWE: code^text) or AIL-3 (PL: point of care ^
    room ^ bed ^ facility … ^ description). Senders bend them: a name with no id in AIP-3, a
    bare user name in AIG-3, a person in AIL-3 (``inbound`` tells which is which)."""
    out = []
    for seg in msg.all(name):
        ident = seg.get(3, 1)
        if name == "AIP":
            label = " ".join(x for x in (seg.get(3, 3), seg.get(3, 2)) if x)
            authority = seg.get(3, 9)
        elif name == "AIG":
            label, authority = seg.get(3, 2), seg.get(3, 3)
        else:
            label = seg.get(3, 9) or (
                " ".join(x for x in (seg.get(3, 3), seg.get(3, 2)) if x) if ident else ""
            )
            authority = seg.get(3, 4)
        if ident or label:
            out.append(Person(ident, label or ident, authority))
    return out


def _services(msg: Message) -> list[dict[str, str]]:
    codings = []
    for seg in msg.all("AIS"):
        code = seg.get(3, 1)
        if code:
            coding = {"code": code}
            if seg.get(3, 2):
                coding["display"] = seg.get(3, 2)
            if seg.get(3, 3):
                coding["system"] = seg.get(3, 3)
            codings.append(coding)
    return codings


def read_siu(
    msg: Message,
    *,
    sender_tz: tzinfo,
    status_map: Mapping[str, Any] | None = None,
    identifier_systems: dict[str, str] | None = None,
) -> SIUChange:
    """What ``msg`` asks for. :class:`ParseError` when it cannot be understood."""
    msh = msg.msh
    event = msh.get(9, 2).upper()
    sender = sender_key(msh.get(3), msh.get(4))
    sch = msg.first("SCH")
    if sch is None:
        raise ParseError(
            "no SCH segment: an SIU message carries the appointment in SCH (its ids in SCH-1 "
            "and SCH-2)",
            location="SCH",
        )
    arq = msg.first("ARQ")  # SRM's request segment, which some senders copy into SIU
    placer = sch.get(1) or (arq.get(1) if arq else "") or None
    filler = sch.get(2) or (arq.get(2) if arq else "") or None
    for n, key in ((1, placer), (2, filler)):
        if key and len(key) > KEY_LENGTH:
            raise ParseError(
                f"SCH-{n}.1 is {len(key)} characters long; an appointment id of at most "
                f"{KEY_LENGTH} is needed",
                location=f"SCH-{n}",
            )
    if not placer and not filler:
        raise ParseError(
            "no appointment id: SCH-1 (placer appointment id) and SCH-2 (filler appointment "
            "id) are both empty; send the EMR's appointment number in SCH-2.1 (or SCH-1.1)",
            location="SCH-2",
        )
    status = resolve_status(
        event,
        code=sch.get(25, 1),
        text=sch.get(25, 2),
        system=sch.get(25, 3),
        sender=sender,
        status_map=status_map,
    )
    warnings: list[tuple[str, str]] = list(msg.notes)
    try:
        sent_at = parse_dtm(msh.get(7), sender_tz)
    except ParseError:
        sent_at = None
        warnings.append(
            ("time-unreadable", "MSH-7 is not an HL7 date/time: messages are applied in order")
        )
    if status.unknown:
        applied = status.value or "its current status"
        warnings.append(("status-unknown", describe_unknown(event, status, sender, applied)))
    timing = read_times(msg, sender_tz)
    warnings += timing.warnings
    notes = [n.text(3, rep) for n in msg.all("NTE") for rep in range(len(n.repetitions(3)))]
    return SIUChange(
        event=event,
        sender=sender,
        control_id=msh.raw(10),
        sent_at=sent_at,
        placer=placer,
        filler=filler,
        status=status.value,
        start=timing.start,
        end=timing.end,
        all_day=timing.all_day,
        patient=_patient(msg, sender, identifier_systems or {}),
        practitioners=_people(msg, "AIP"),
        locations=_people(msg, "AIL"),
        resources=_people(msg, "AIG"),
        services=_services(msg),
        reason=sch.get(7, 2) or sch.get(7, 1) or None,
        comment="\n".join(n for n in notes if n) or None,
        filler_status=status,
        warnings=warnings,
    )
