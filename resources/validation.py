"""Validate incoming resources against the fhir.resources R4B models (R4 wire format).

The stored body is the client's JSON (plus ``id`` and ``meta``), not a model dump: validation
checks, it never rewrites, so a resource reads back as it was sent.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import orjson
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from base.errors import InvalidResource
from conformance.declaration import RESOURCE_TYPES

__all__ = ["parse_json", "validate_resource"]

MAX_ERRORS = 10

# Required bindings the R4B models do not enforce (they check only the code pattern).
# See the "Binding" column of each resource's page, e.g. https://hl7.org/fhir/R4/slot.html.
_CONTACT = ("phone", "fax", "email", "pager", "url", "sms", "other")
REQUIRED_CODES: dict[str, dict[str, tuple[str, ...]]] = {
    "Patient": {
        "gender": ("male", "female", "other", "unknown"),
        "telecom.system": _CONTACT,
    },
    "Practitioner": {"gender": ("male", "female", "other", "unknown"), "telecom.system": _CONTACT},
    "Location": {"status": ("active", "suspended", "inactive"), "mode": ("instance", "kind")},
    "Slot": {
        "status": ("busy", "free", "busy-unavailable", "busy-tentative", "entered-in-error"),
    },
    "Appointment": {
        "status": (
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
        ),
        "participant.status": ("accepted", "declined", "tentative", "needs-action"),
        "participant.required": ("required", "optional", "information-only"),
    },
}


def parse_json(body: bytes) -> Any:
    """Parse a request body; malformed JSON is a 400 saying where it broke."""
    if not body or not body.strip():
        raise InvalidResource("the request body is empty; send a FHIR JSON resource")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidResource(f"the request body is not valid JSON: {exc}") from exc
    _refuse_duplicate_keys(body)
    return data


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> None:
    if len(pairs) > 1 and len({key for key, _ in pairs}) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)


def _refuse_duplicate_keys(body: bytes) -> None:
    """A JSON object that names a key twice is refused (RFC 8259 leaves its meaning open, so
    two readers may each take a different value). orjson keeps the last silently; the
    standard library's parser hands each object's pairs to a hook, which checks them and
    builds nothing (a second pass, run only on bodies orjson accepted)."""
    try:
        json.loads(body, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as exc:
        raise InvalidResource(
            f"the request body names the key {exc.key!r} twice in one object; send it once",
        ) from None
    except RecursionError:
        raise InvalidResource("the request body is nested too deeply") from None


@functools.cache
def _model(resource_type: str) -> Any:
    return get_fhir_model_class(resource_type)


def _expression(resource_type: str, loc: tuple[int | str, ...]) -> str:
    out = resource_type
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not str(part).startswith(("function-", "value_error")):
            out += f".{part}"
    return out


def validate_resource(data: Any, *, expected_type: str | None = None) -> dict[str, Any]:
    """Check ``data`` is a valid R4 resource of a served type; return it unchanged.

    Raises :class:`InvalidResource` naming the offending elements (FHIRPath-like paths).
    """
    if not isinstance(data, dict):
        raise InvalidResource("the body must be a JSON object holding one FHIR resource")
    rtype = data.get("resourceType")
    if not isinstance(rtype, str):
        raise InvalidResource("the resource has no resourceType", expression=["resourceType"])
    if expected_type is not None and rtype != expected_type:
        raise InvalidResource(
            f"the body is a {rtype} but the URL is for {expected_type}",
            expression=["resourceType"],
        )
    if rtype not in RESOURCE_TYPES:
        raise InvalidResource(f"resource type {rtype} is not served here")
    try:
        _model(rtype).model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()[:MAX_ERRORS]
        paths = [_expression(rtype, tuple(e["loc"])) for e in errors]
        detail = "; ".join(f"{p}: {e['msg']}" for p, e in zip(paths, errors, strict=True))
        raise InvalidResource(f"invalid {rtype}: {detail}", expression=paths) from exc
    _check_codes(rtype, data)
    return data


def _check_codes(rtype: str, data: dict[str, Any]) -> None:
    from resources.indexing import element_values

    for path, allowed in REQUIRED_CODES.get(rtype, {}).items():
        for value in element_values(data, path):
            if value not in allowed:
                raise InvalidResource(
                    f"invalid {rtype}: {rtype}.{path} must be one of {', '.join(allowed)}",
                    expression=[f"{rtype}.{path}"],
                )
