"""The scheduling operations, declared once: served as OperationDefinitions, listed in
``/metadata``, and used to parse each operation's input (names, aliases, cardinality).

Parameter names follow IHE ITI Scheduling 1.0.0 (ITI-115/116/117); the Argonaut Scheduling
names are accepted as aliases and never emitted.
See https://profiles.ihe.net/ITI/Scheduling/ and https://hl7.org/fhir/R4/operationdefinition.html.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from base.errors import BadRequest

__all__ = [
    "OPERATIONS",
    "OpParam",
    "OperationDecl",
    "operation_definition",
    "parse_operation",
    "require_parameters",
]

BASE = "urn:fhir-sched:OperationDefinition/"
IHE = "https://profiles.ihe.net/ITI/Scheduling/OperationDefinition/"


@dataclass(frozen=True, slots=True)
class OpParam:
    name: str
    type: str
    min: int = 0
    max: str = "1"
    doc: str = ""
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class OperationDecl:
    id: str
    code: str
    title: str
    description: str
    affects_state: bool
    parameters: tuple[OpParam, ...]
    resource: str = "Appointment"
    out: tuple[OpParam, ...] = field(default_factory=tuple)

    @property
    def url(self) -> str:
        return BASE + self.id

    def param(self, name: str) -> OpParam | None:
        return next((p for p in self.parameters if name == p.name or name in p.aliases), None)


_FIND = OperationDecl(
    id="appointment-find",
    code="find",
    title="Find bookable appointments (IHE ITI-115)",
    description="Proposed Appointments for a visit type in a window, after every clinic rule "
    "for this patient; held and busy time are never offered.",
    affects_state=False,
    parameters=(
        OpParam("start", "dateTime", 1, doc="window start, with an offset", aliases=("startTime",)),
        OpParam("end", "dateTime", 1, doc="window end, with an offset", aliases=("endTime",)),
        OpParam("specialty", "Coding", 0, "*", doc="practitioner specialty (system|code)"),
        OpParam(
            "visit-type",
            "Coding",
            1,
            doc="a visit type code from the clinic file",
            aliases=("appt-type",),
        ),
        OpParam("practitioner", "Reference", 0, "*", aliases=("provider",)),
        OpParam("organization", "Reference", doc="accepted; this server serves one clinic"),
        OpParam("location-reference", "Reference", 0, "*", aliases=("location",)),
        OpParam("location-string", "string", doc="part of a location's name"),
        OpParam(
            "patient-reference",
            "Reference",
            aliases=("patient-id",),
            doc="the patient, new or existing as the clinic file's existing_patient says (by "
            "default: a visit here that began before now, booked, arrived, checked-in or "
            "fulfilled, or the Patient tag urn:fhir-sched:patient-status|existing); without a "
            "patient, times are found for a new one",
        ),
        OpParam(
            "patient-resource",
            "Patient",
            doc="matched by identifier, else family name + birth date (a phone number breaks a "
            "tie); the proposals carry it as a contained Patient (#patient), as it was sent, "
            "for $book to match again or create",
        ),
        OpParam("reason", "CodeableConcept", 0, "*", doc="accepted, not used for matching"),
        OpParam("_count", "integer", doc="most options to return on a page"),
        OpParam(
            "_cursor",
            "string",
            doc="where a page starts, as the next link gives it (opaque); Bundle.total "
            "still counts every option in the window",
        ),
    ),
    out=(
        OpParam(
            "return",
            "Bundle",
            1,
            doc="searchset of proposed Appointments, a page of _count of them: total counts "
            "every option in the window, and self and next links (GET URLs) lead on. A "
            "patient-resource fits in no URL: such an answer has no links and, while more "
            "options follow, an OperationOutcome entry (FS-0606) gives the _cursor to send "
            "again with the same Parameters. An empty searchset holds an OperationOutcome "
            "entry (search.mode outcome, FS-0605) with an information issue per clinic rule "
            "that removed times (details.text in words, details.coding "
            "urn:fhir-sched:find-reason the rule); other patients' bookings are never named",
        ),
    ),
)
_APPOINTMENT_IN = (
    OpParam(
        "appointment-resource",
        "Appointment",
        aliases=("appt-resource",),
        doc="a proposed Appointment from $find, which $book books only if a participant is "
        "the patient (Patient/<id>, or a contained Patient: it is matched "
        "again, else created with the booking; several matches are 422), or, for $book, one "
        "with status cancelled: named by its id, or by its patient (a Patient reference or a "
        "contained Patient) and start, which must name exactly one booked Appointment (else "
        "404, the same answer for none and several)",
    ),
    OpParam(
        "appointment-reference",
        "Reference",
        aliases=("appt-id",),
        doc="a pending (held) Appointment",
    ),
)
_HOLD = OperationDecl(
    id="appointment-hold",
    code="hold",
    title="Hold an appointment (IHE ITI-116)",
    description="Hold a proposed Appointment for the clinic's hold time (Expires header).",
    affects_state=True,
    parameters=_APPOINTMENT_IN,
    out=(OpParam("return", "Appointment", 1),),
)
_BOOK = OperationDecl(
    id="appointment-book",
    code="book",
    title="Book, cancel or reschedule an appointment (IHE ITI-117)",
    description="Book a proposed or held Appointment (creating its contained Patient if nobody "
    "matches), cancel one (status cancelled; by id, or by patient and start), or reschedule "
    "(cancelled-appointment-id, or cancelled-appointment by patient and start) in one "
    "transaction. An appointment-resource with status waitlist (requestedPeriod, the visit type "
    "in serviceType, the patient, optionally the clinician; no slot) joins the clinic's "
    "waitlist instead: it claims no time, and freed time that fits is offered by text.",
    affects_state=True,
    parameters=(
        *_APPOINTMENT_IN,
        OpParam(
            "cancelled-appointment-id",
            "id",
            aliases=("cancelled-appt-id",),
            doc="the booked Appointment this booking replaces",
        ),
        OpParam(
            "cancelled-appointment",
            "Appointment",
            doc="instead of cancelled-appointment-id: the booked Appointment this booking "
            "replaces, named by its patient (a Patient reference, or a contained Patient matched "
            "as patient-resource is) and its start (a dateTime with an offset); only the one "
            "booked Appointment of that patient starting at that instant is cancelled, and "
            "none or several are the same 404",
        ),
    ),
    out=(OpParam("return", "Appointment", 1),),
)
OPERATIONS: dict[str, OperationDecl] = {op.id: op for op in (_FIND, _HOLD, _BOOK)}


# Datatypes whose values reach parse_operation as text: a query string's, or what
# scheduling.find.parameters_pairs takes from a Parameters resource (a Reference's reference,
# a Coding's code).  A type named with a capital and not listed here is a resource.
_TEXT_DATATYPES = frozenset({"Coding", "CodeableConcept", "Reference"})
_TYPE_NAME = re.compile(r"[A-Z][A-Za-z]{0,63}")


def _fits(param: OpParam, value: Any) -> bool:
    """Whether ``value`` has the shape ``param``'s declared type arrives in."""
    if param.type[:1].isupper() and param.type not in _TEXT_DATATYPES:
        return isinstance(value, dict) and value.get("resourceType") == param.type
    if param.type == "integer" and isinstance(value, int) and not isinstance(value, bool):
        return True
    return isinstance(value, str)


def require_parameters(op: OperationDecl, body: Any) -> dict[str, Any]:
    """``body`` if it is a Parameters resource; otherwise a 400 that names what was sent and,
    when it is a resource one of ``op``'s parameters takes (an Appointment for $book), how to
    wrap it. Only the body's resourceType is repeated, never its content.
    See https://hl7.org/fhir/R4/operations.html#request."""
    if isinstance(body, dict) and body.get("resourceType") == "Parameters":
        return body
    takes = f"POST ${op.code} takes a Parameters resource"
    sent = body.get("resourceType") if isinstance(body, dict) else None
    if not isinstance(sent, str) or not _TYPE_NAME.fullmatch(sent):  # repeated only if a name
        raise BadRequest(f"{takes}; this body is not one", expression=["resourceType"])
    holding = next((p for p in op.parameters if p.type == sent), None)
    article = "an" if sent[:1] in "AEIOU" else "a"
    if holding is None:
        raise BadRequest(f"{takes}; this body is {article} {sent}", expression=["resourceType"])
    wrapped = (
        '{"resourceType": "Parameters", "parameter": [{"name": "'
        + holding.name
        + '", "resource": {...}}]}'
    )
    raise BadRequest(
        f"{takes} holding {holding.name}; this body is {article} {sent}: wrap it as {wrapped}",
        expression=["resourceType"],
    )


def parse_operation(op: OperationDecl, pairs: list[tuple[str, Any]]) -> dict[str, list[Any]]:
    """Input (name, value) pairs → values by declared name, checked against the declaration:
    names, cardinality, and that each value has its type's shape (a resource parameter takes a
    resource of that type; the others text, or a number for an integer)."""
    values: dict[str, list[Any]] = {}
    for name, value in pairs:
        param = op.param(name)
        if param is None:
            raise BadRequest(f"${op.code} has no parameter {name!r}", expression=[name])
        if not _fits(param, value):
            raise BadRequest(
                f"${op.code} takes {param.name} as a {param.type}", expression=[param.name]
            )
        values.setdefault(param.name, []).append(value)
    for param in op.parameters:
        got = len(values.get(param.name, []))
        if got < param.min:
            raise BadRequest(f"${op.code} needs {param.name}", expression=[param.name])
        if param.max == "1" and got > 1:
            raise BadRequest(f"${op.code} takes {param.name} once", expression=[param.name])
    return values


def _param_json(p: OpParam, use: str) -> dict[str, Any]:
    out: dict[str, Any] = {"name": p.name, "use": use, "min": p.min, "max": p.max}
    if p.doc:
        out["documentation"] = p.doc
    out["type"] = p.type
    return out


def operation_definition(op: OperationDecl) -> dict[str, Any]:
    return {
        "resourceType": "OperationDefinition",
        "id": op.id,
        "url": op.url,
        "name": op.title.split(" (")[0].title().replace(" ", ""),
        "title": op.title,
        "status": "active",
        "kind": "operation",
        "description": op.description,
        "affectsState": op.affects_state,
        "code": op.code,
        "base": IHE + op.id,
        "resource": [op.resource],
        "system": False,
        "type": True,
        "instance": False,
        "parameter": [_param_json(p, "in") for p in op.parameters]
        + [_param_json(p, "out") for p in op.out],
    }
