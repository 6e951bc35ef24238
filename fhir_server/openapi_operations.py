"""The scheduling operations in the OpenAPI document: the query parameters of ``GET $find``,
the Parameters resource each operation's POST takes (a component per operation,
``AppointmentFindParameters``, …) and an example input "Try it out" fills in, all derived from
the declarations in ``conformance/operations.py``.

See https://hl7.org/fhir/R4/operations.html and https://profiles.ihe.net/ITI/Scheduling/.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from conformance.operations import OPERATIONS, OperationDecl, OpParam
from fhir_server.openapi import CODING, FHIR_JSON, ID_SCHEMA, REFERENCE, body

__all__ = [
    "add_operation_inputs",
    "operation_body",
    "operation_examples",
    "operation_query",
    "parameters_name",
    "parameters_schema",
]

_VALUE_TYPES: dict[str, tuple[str, dict[str, Any]]] = {
    "dateTime": ("valueDateTime", {"type": "string", "format": "date-time"}),
    "string": ("valueString", {"type": "string"}),
    "integer": ("valueInteger", {"type": "integer"}),
    "id": ("valueId", ID_SCHEMA),
    "Coding": ("valueCoding", CODING),
    "CodeableConcept": (
        "valueCodeableConcept",
        {
            "type": "object",
            "properties": {
                "coding": {"type": "array", "items": CODING},
                "text": {"type": "string"},
            },
        },
    ),
    "Reference": ("valueReference", REFERENCE),
}


def _parameter(p: OpParam) -> dict[str, Any]:
    key, schema = _VALUE_TYPES.get(p.type) or (
        "resource",
        {
            "type": "object",
            "required": ["resourceType"],
            "properties": {"resourceType": {"const": p.type}},
        },
    )
    many = "at most once" if p.max == "1" else "any number of times"
    need = "required" if p.min > 0 else "optional"
    aka = f" (Argonaut name: {', '.join(p.aliases)})" if p.aliases else ""
    return {
        "title": p.name,
        "type": "object",
        "required": ["name", key],
        "properties": {"name": {"enum": [p.name, *p.aliases]}, key: schema},
        "description": f"{p.type}, {need}, {many}{aka}" + (f": {p.doc}" if p.doc else ""),
    }


def parameters_name(op_id: str) -> str:
    """The component that holds ``OPERATIONS[op_id]``'s input (``AppointmentBookParameters``)."""
    op = OPERATIONS[op_id]
    return f"{op.resource}{op.code.capitalize()}Parameters"


def parameters_schema(op: OperationDecl) -> dict[str, Any]:
    """A Parameters resource holding ``op``'s declared parameters (by name or alias): each
    required one present (``contains``), and nothing undeclared.
    See https://hl7.org/fhir/R4/parameters.html and https://hl7.org/fhir/R4/operations.html."""
    required = [
        {
            "contains": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"enum": [p.name, *p.aliases]}},
            }
        }
        for p in op.parameters
        if p.min > 0
    ]
    parameter: dict[str, Any] = {
        "type": "array",
        "items": {"anyOf": [_parameter(p) for p in op.parameters]},
    }
    if required:
        parameter["allOf"] = required
    return {
        "title": f"${op.code} input",
        "description": f"{op.title}. {op.description} Declared by {op.url} "
        f"(GET /fhir/OperationDefinition/{op.id}).",
        "type": "object",
        "required": ["resourceType", "parameter"] if required else ["resourceType"],
        "properties": {"resourceType": {"const": "Parameters"}, "parameter": parameter},
    }


def operation_body(op_id: str) -> dict[str, Any]:
    """``openapi_extra=`` for POST of ``OPERATIONS[op_id]``: a Parameters resource whose
    parameters are those the operation declares (the component :func:`install` adds, with an
    example)."""
    return body(parameters_name(op_id))


def operation_examples(day: date) -> dict[str, dict[str, Any]]:
    """An input for each operation, as "Try it out" fills it in: ``$find`` over the week from
    ``day`` for a new patient (the demo clinic's visit type; another clinic names its own), and
    the shape of ``$hold`` and ``$book``, whose Appointment is one ``$find`` proposed."""
    start = datetime.combine(day, time(8), UTC)
    proposed = {
        "resourceType": "Appointment",
        "status": "proposed",
        "start": start.isoformat(),
        "end": (start + timedelta(minutes=45)).isoformat(),
        "participant": [
            {"actor": {"reference": "Patient/pat-1"}, "status": "needs-action"},
            {"actor": {"reference": "Practitioner/dr-smith"}, "status": "accepted"},
        ],
    }
    return {
        "appointment-find": _parameters(
            {"name": "start", "valueDateTime": start.isoformat()},
            {"name": "end", "valueDateTime": (start + timedelta(days=7)).isoformat()},
            {"name": "visit-type", "valueCoding": {"code": "new-patient"}},
            {"name": "patient-reference", "valueReference": {"reference": "Patient/pat-1"}},
        ),
        "appointment-hold": _parameters({"name": "appointment-resource", "resource": proposed}),
        "appointment-book": _parameters({"name": "appointment-resource", "resource": proposed}),
    }


def _parameters(*parameter: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(parameter)}


def operation_query(op_id: str) -> dict[str, Any]:
    """``openapi_extra=`` for GET of ``OPERATIONS[op_id]``: its declared parameters (other
    than resources) in the query string. The aliases are accepted too."""
    schemas = {
        "integer": {"type": "integer"},
        "dateTime": {"type": "string", "format": "date-time"},
    }
    return {
        "parameters": [
            {
                "name": p.name,
                "in": "query",
                "required": p.min > 0,
                "schema": schemas.get(p.type, {"type": "string"}),
                "description": p.doc or p.type,
            }
            for p in OPERATIONS[op_id].parameters
            if p.type in _VALUE_TYPES
        ]
    }


def add_operation_inputs(doc: dict[str, Any], day: date) -> None:
    """The operations' Parameters components, and an example input on each POST."""
    schemas = doc["components"]["schemas"]
    examples = operation_examples(day)
    for op_id, op in OPERATIONS.items():
        schemas[parameters_name(op_id)] = parameters_schema(op)
        post = doc["paths"].get(f"/fhir/{op.resource}/${op.code}", {}).get("post")
        if post is not None and op_id in examples:
            post["requestBody"]["content"][FHIR_JSON]["example"] = examples[op_id]
