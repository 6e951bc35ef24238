"""``_summary`` and ``_elements``: subsets of a resource, marked SUBSETTED.

See https://hl7.org/fhir/R4/search.html#summary and #elements.
"""

from __future__ import annotations

import functools
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

__all__ = ["apply_elements", "apply_summary"]

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "Resource encoded in summary mode",
}
ALWAYS = {"resourceType", "id", "meta"}


@functools.cache
def _fields(resource_type: str) -> tuple[frozenset[str], frozenset[str]]:
    """(summary elements, required elements) by JSON name, from the R4B model."""
    model = get_fhir_model_class(resource_type)
    summary: set[str] = set()
    required: set[str] = set()
    for name, info in model.model_fields.items():
        key = info.alias or name
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if extra.get("summary_element_property"):
            summary.add(key)
        if extra.get("element_required"):
            required.add(key)
    return frozenset(summary), frozenset(required)


def _mark(resource: dict[str, Any]) -> dict[str, Any]:
    meta = dict(resource.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    resource["meta"] = meta
    return resource


def apply_summary(resource: dict[str, Any], mode: str) -> dict[str, Any]:
    if mode == "data":
        return _mark({k: v for k, v in resource.items() if k != "text"})
    summary, required = _fields(resource["resourceType"])
    if mode == "text":
        keep = ALWAYS | {"text"} | required
    else:
        keep = ALWAYS | summary | required
    return _mark({k: v for k, v in resource.items() if k in keep})


def apply_elements(resource: dict[str, Any], elements: list[str]) -> dict[str, Any]:
    _, required = _fields(resource["resourceType"])
    wanted = {e.split(".", 1)[0] for e in elements}
    keep = ALWAYS | required | wanted
    return _mark({k: v for k, v in resource.items() if k in keep})
