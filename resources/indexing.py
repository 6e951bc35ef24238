"""Turn a resource into search-index rows, following ``conformance.declaration``.

Plain values go to ``idx_string``/``idx_token``/``idx_date``/``idx_reference``/``idx_number``;
values of ``phi=True`` parameters go only to ``idx_blind`` as keyed digests (see
:mod:`resources.blind`).

A parameter's path is dotted element names, as FHIRPath writes them, with two more of
FHIRPath's forms (https://hl7.org/fhirpath/N1/): ``where(key='value')`` keeps the elements
whose ``key`` is that string (an extension by its ``url``), and ``value`` names a choice
element ``value[x]`` (``valueDecimal``, ``valueString``, ...).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from typing import Any

from conformance.declaration import RESOURCE_TYPES, SearchParam
from resources import blind
from resources.fhirdate import MAX_INSTANT, MIN_INSTANT, DateRange, parse_fhir_date
from resources.normalize import PHONE_SYSTEMS, norm_string, norm_token_code, phone_variants
from security.crypto import KeyRing

__all__ = [
    "IndexRows",
    "element_values",
    "index_kinds",
    "index_resource",
    "number_values",
    "split_reference",
]

STRING_PARTS = ("text", "family", "given", "prefix", "suffix")
ADDRESS_PARTS = ("text", "line", "city", "district", "state", "postalCode", "country")


def index_kinds(rtype: str) -> tuple[str, ...]:
    """The index tables (``IndexRows`` fields) a resource of this type can have rows in."""
    kinds: set[str] = {"slot"} if rtype == "Slot" else set()
    for param in RESOURCE_TYPES[rtype].params.values():
        if param.type in ("string", "token", "date", "reference", "number"):
            kinds.add(param.index_table)
    return tuple(sorted(kinds))


@dataclass
class IndexRows:
    string: list[dict[str, Any]] = field(default_factory=list)
    token: list[dict[str, Any]] = field(default_factory=list)
    date: list[dict[str, Any]] = field(default_factory=list)
    reference: list[dict[str, Any]] = field(default_factory=list)
    slot: list[dict[str, Any]] = field(default_factory=list)  # Slot only: table slot_time
    blind: list[dict[str, Any]] = field(default_factory=list)
    number: list[dict[str, Any]] = field(default_factory=list)


# a path's steps: element names, or where(key='value') (quoted values may hold dots)
_STEP = re.compile(r"where\((\w+)='([^']*)'\)|([A-Za-z_]\w*)")


@lru_cache(maxsize=128)
def _steps(path: str) -> tuple[tuple[str, str | None], ...]:
    """``path`` as steps: ``(name, None)`` for an element, ``(key, value)`` for a ``where``."""
    steps: list[tuple[str, str | None]] = []
    pos = 0
    while pos < len(path):
        m = _STEP.match(path, pos)
        if m is None:
            raise ValueError(f"unsupported search path {path!r}")
        steps.append((m[1], m[2]) if m[1] else (m[3], None))
        pos = m.end()
        if pos < len(path):
            if path[pos] != ".":
                raise ValueError(f"unsupported search path {path!r}")
            pos += 1
    return tuple(steps)


def _child(node: dict[str, Any], name: str) -> Any:
    if name in node:
        return node[name]
    if name == "value":  # the choice element value[x]
        for key, item in node.items():
            if key.startswith("value") and key[5:6].isupper():
                return item
    return None


def element_values(resource: dict[str, Any], path: str) -> list[Any]:
    """Values at a dotted path, flattening lists: ``element_values(p, "name.given")``,
    ``element_values(a, "extension.where(url='urn:x').extension.where(url='score').value")``."""
    nodes: list[Any] = [resource]
    for name, wanted in _steps(path):
        if wanted is not None:
            nodes = [n for n in nodes if isinstance(n, dict) and n.get(name) == wanted]
            continue
        nxt: list[Any] = []
        for node in nodes:
            value = _child(node, name) if isinstance(node, dict) else None
            if isinstance(value, list):
                nxt.extend(value)
            elif value is not None:
                nxt.append(value)
        nodes = nxt
    return nodes


def _param_values(resource: dict[str, Any], param: SearchParam) -> Iterator[Any]:
    for path in param.paths:
        for value in element_values(resource, path):
            if param.where is not None:
                key, expected = param.where
                if not (isinstance(value, dict) and value.get(key) == expected):
                    continue
            yield value


def string_values(value: Any) -> list[str]:
    """Strings a FHIR string parameter matches in a value (HumanName and Address parts)."""
    if isinstance(value, str):
        return [value]
    out: list[str] = []
    if isinstance(value, dict):
        for part in (*STRING_PARTS, *ADDRESS_PARTS):
            item = value.get(part)
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, list):
                out.extend(x for x in item if isinstance(x, str))
    return out


def token_values(value: Any) -> list[tuple[str | None, str]]:
    """(system, code) pairs of a Coding, CodeableConcept, Identifier, ContactPoint or code."""
    if isinstance(value, bool):
        return [(None, "true" if value else "false")]
    if isinstance(value, str):
        return [(None, value)]
    if not isinstance(value, dict):
        return []
    if "coding" in value:
        return [
            (c.get("system"), c["code"])
            for c in value["coding"]
            if isinstance(c, dict) and isinstance(c.get("code"), str)
        ]
    if isinstance(value.get("code"), str):
        return [(value.get("system"), value["code"])]
    if isinstance(value.get("value"), str):
        system = value.get("system")
        if system in PHONE_SYSTEMS:
            return [(system, v) for v in sorted(phone_variants(value["value"]))]
        return [(system, norm_token_code(system, value["value"]))]
    return []


def date_ranges(value: Any) -> list[DateRange]:
    if isinstance(value, str):
        try:
            return [parse_fhir_date(value)]
        except ValueError:
            return []
    if isinstance(value, dict) and ("start" in value or "end" in value):
        low = parse_fhir_date(value["start"]).low if value.get("start") else MIN_INSTANT
        high = parse_fhir_date(value["end"]).high if value.get("end") else MAX_INSTANT
        return [DateRange(low, high, "period")]
    return []


def number_values(value: Any) -> list[float]:
    """A decimal or integer (a Quantity's ``value``) as a float; booleans are not numbers."""
    if isinstance(value, dict):
        value = value.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return []
    number = float(value)
    return [number] if math.isfinite(number) else []


def split_reference(reference: str, base_url: str = "") -> tuple[str | None, str] | None:
    """``Patient/1`` → ("Patient", "1"); our own absolute URL likewise; others → (None, url)."""
    if reference.startswith("#"):
        return None
    if base_url and reference.startswith(base_url.rstrip("/") + "/"):
        reference = reference[len(base_url.rstrip("/")) + 1 :]
    if "://" in reference or reference.startswith("urn:"):
        return (None, reference)
    parts = reference.split("/")
    if len(parts) >= 2 and parts[-2] == "_history" and len(parts) >= 4:
        parts = parts[:-2]
    if len(parts) == 2 and parts[0] and parts[1]:
        return (parts[0], parts[1])
    return None


def index_resource(
    resource: dict[str, Any],
    *,
    seq: int,
    keys: KeyRing,
    base_url: str = "",
    only: frozenset[str] | None = None,
) -> IndexRows:
    """Index rows for every declared parameter of this resource's type, or only for the
    parameters named in ``only`` (a Slot's ``slot_time`` row is always there)."""
    rtype = resource["resourceType"]
    rows = IndexRows()
    decl = RESOURCE_TYPES[rtype]
    for param in decl.params.values():
        if only is not None and param.name not in only:
            continue
        base = {"seq": seq, "res_type": rtype, "param": param.name}
        values = list(_param_values(resource, param))
        if not values:
            continue
        if param.type == "string":
            strings = [s for v in values for s in string_values(v)]
            if param.phi:
                digests = {d for s in strings for d in blind.string_digests(keys, rtype, param, s)}
                rows.blind.extend({**base, "digest": d} for d in digests)
            else:
                seen = {(norm_string(s), s) for s in strings}
                rows.string.extend({**base, "value_norm": n, "value_exact": s} for n, s in seen)
        elif param.type == "token":
            pairs = {p for v in values for p in token_values(v)}
            if param.phi:
                digests = {
                    d for s, c in pairs for d in blind.token_digests(keys, rtype, param, s, c)
                }
                rows.blind.extend({**base, "digest": d} for d in digests)
            else:
                rows.token.extend({**base, "system": s, "code": c} for s, c in pairs)
        elif param.type == "date":
            ranges = [r for v in values for r in date_ranges(v)]
            if param.phi:
                digests = {d for r in ranges for d in blind.date_digests(keys, rtype, param, r)}
                rows.blind.extend({**base, "digest": d} for d in digests)
            else:
                rows.date.extend({**base, "low": r.low, "high": r.high} for r in ranges)
        elif param.type == "reference":
            seen_refs: set[tuple[str | None, str]] = set()
            for v in values:
                if not (isinstance(v, dict) and isinstance(v.get("reference"), str)):
                    continue
                target = split_reference(v["reference"], base_url)
                if target is None:
                    continue
                if target[0] is not None and param.targets and target[0] not in param.targets:
                    continue
                seen_refs.add(target)
            rows.reference.extend(
                {**base, "target_type": tt, "target_id": ti} for tt, ti in seen_refs
            )
        elif param.type == "number":
            numbers = {n for v in values for n in number_values(v)}
            rows.number.extend({**base, "value": n} for n in sorted(numbers))
    if rtype == "Slot":
        rows.slot.extend(_slot_row(resource, seq, base_url))
    return rows


def _slot_row(resource: dict[str, Any], seq: int, base_url: str) -> list[dict[str, Any]]:
    """The Slot's ``slot_time`` row, if it names its Schedule, start and end."""
    ref = (resource.get("schedule") or {}).get("reference")
    target = split_reference(ref, base_url) if isinstance(ref, str) else None
    try:
        start = parse_fhir_date(str(resource["start"])).low
        end = parse_fhir_date(str(resource["end"])).low
    except (KeyError, ValueError):
        return []
    if target is None or target[0] not in (None, "Schedule"):
        return []
    return [
        {
            "seq": seq,
            "slot_id": resource["id"],
            "schedule_id": target[1],
            "start_s": int(start.timestamp()),
            "end_s": int(end.timestamp()),
            "status": str(resource.get("status", "")),
        }
    ]
