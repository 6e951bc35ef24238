"""Parse a FHIR search query string into a :class:`SearchQuery`.

See https://hl7.org/fhir/R4/search.html.  Repeated parameters AND together; comma-separated
values OR together.  Unknown parameters are collected (reported, or refused under
``Prefer: handling=strict``); an unknown modifier or a malformed value is always a 400.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from base.errors import BadRequest, NotSupported
from conformance.declaration import RESOURCE_TYPES, SearchParam, search_param

__all__ = ["Clause", "Include", "SearchQuery", "SortKey", "parse_query", "split_number"]

DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
NUMBER_PREFIXES = DATE_PREFIXES
MODIFIERS = {
    "string": {"exact", "contains", "missing"},
    "token": {"not", "missing"},
    "date": {"missing"},
    "reference": {"missing"},
    "uri": {"missing"},
    "number": {"missing"},
    "special": set(),
}
CONTROL = {
    "_count",
    "_sort",
    "_include",
    "_revinclude",
    "_summary",
    "_elements",
    "_total",
    "_cursor",
    "_format",
    "_pretty",
}
SUMMARY = {"true", "false", "count", "text", "data"}
# Each term is a join or a condition of the search's SQL: past these, a query is refused with
# a 400 that says so rather than handed to the database (700 repeated parameters overflowed
# SQLite's expression depth, a 500).
MAX_TERMS = 64  # parameters (ANDed), _include and _sort terms together
MAX_VALUES = 256  # comma-separated values (ORed), summed over every parameter


@dataclass(frozen=True, slots=True)
class Clause:
    """One ``name[:modifier]=v1,v2`` term (values OR'd).  ``chain`` holds ``a.b`` tails."""

    param: SearchParam
    modifier: str | None
    values: tuple[str, ...]
    chain: Clause | None = None
    target_type: str | None = None  # for reference :Type modifiers and chains


@dataclass(frozen=True, slots=True)
class SortKey:
    param: SearchParam
    descending: bool


@dataclass(frozen=True, slots=True)
class Include:
    source_type: str
    param: SearchParam | None  # None for ``*``
    target_type: str | None
    reverse: bool


@dataclass
class SearchQuery:
    resource_type: str
    clauses: list[Clause] = field(default_factory=list)
    count: int = 20
    sort: list[SortKey] = field(default_factory=list)
    includes: list[Include] = field(default_factory=list)
    summary: str | None = None
    elements: list[str] | None = None
    total: str = "accurate"
    cursor: str | None = None
    unknown: list[str] = field(default_factory=list)


def split_values(raw: str) -> tuple[str, ...]:
    """Split on commas not escaped with a backslash; unescape ``\\,``, ``\\$``, ``\\|``."""
    out: list[str] = []
    cur = []
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\\" and i + 1 < len(raw) and raw[i + 1] in ",$|\\":
            cur.append(raw[i + 1])
            i += 2
            continue
        if ch == ",":
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    out.append("".join(cur))
    return tuple(out)


def _clause(rtype: str, name: str, raw: str, depth: int = 0) -> Clause | None:
    chain_tail: str | None = None
    if "." in name:
        name, chain_tail = name.split(".", 1)
    modifier: str | None = None
    if ":" in name:
        name, modifier = name.split(":", 1)
    param = search_param(rtype, name)
    if param is None:
        return None
    target_type: str | None = None
    if param.type == "reference" and modifier and modifier[:1].isupper():
        if modifier not in param.targets and param.targets:
            raise BadRequest(f"{rtype}.{name} cannot refer to {modifier}")
        target_type, modifier = modifier, None
    if modifier is not None and modifier not in MODIFIERS[param.type]:
        raise BadRequest(
            f"modifier :{modifier} is not supported on {param.type} parameter {name}",
            expression=[f"{rtype}.{name}"],
        )
    if modifier == "missing" and raw not in ("true", "false"):
        raise BadRequest(f"{name}:missing takes true or false, not {raw!r}")
    if chain_tail is not None:
        if param.type != "reference" or depth > 0:
            raise BadRequest(f"chained search {name}.{chain_tail}: only one level is supported")
        targets = [target_type] if target_type else list(param.targets)
        for tt in targets:
            if tt in RESOURCE_TYPES:
                inner = _clause(tt, chain_tail, raw, depth + 1)
                if inner is not None:
                    return Clause(param, None, (), chain=inner, target_type=tt)
        raise BadRequest(f"chained parameter {chain_tail!r} is not searchable on {targets}")
    if param.phi and modifier == "contains":
        raise NotSupported(
            f"{name}:contains is not offered on protected patient data; search by the start "
            "of the value instead",
            expression=[f"{rtype}.{name}"],
        )
    values = split_values(raw)
    if any(v == "" for v in values) and modifier != "missing":
        raise BadRequest(f"search parameter {name} has an empty value")
    if param.type == "date" and modifier != "missing":
        for value in values:
            prefix = value[:2]
            if prefix.isalpha() and prefix not in DATE_PREFIXES:
                raise BadRequest(f"unknown date prefix {prefix!r} in {name}={value}")
    if param.type == "number" and modifier != "missing":
        for value in values:
            split_number(value, name)
    return Clause(param, modifier, values, target_type=target_type)


def split_number(value: str, name: str = "") -> tuple[str, Decimal]:
    """A number search value as (prefix, number): ``ge0.5`` → ("ge", Decimal("0.5")); a bare
    number is ``eq``. Anything else is a 400 (https://hl7.org/fhir/R4/search.html#number)."""
    prefix, text = "eq", value
    if value[:2].isalpha():
        prefix, text = value[:2], value[2:]
        if prefix not in NUMBER_PREFIXES:
            raise BadRequest(f"unknown number prefix {prefix!r} in {name}={value}")
    try:
        number = Decimal(text)
    except InvalidOperation as exc:
        raise BadRequest(f"{name}={value}: {text!r} is not a number") from exc
    if not number.is_finite() or text.strip() != text:
        raise BadRequest(f"{name}={value}: {text!r} is not a number")
    return prefix, number


def _int(name: str, raw: str, *, minimum: int = 0) -> int:
    try:
        value = int(raw)
    except ValueError as exc:
        raise BadRequest(f"{name} must be a whole number, not {raw!r}") from exc
    if value < minimum:
        raise BadRequest(f"{name} must be at least {minimum}")
    return value


def _include(rtype: str, raw: str, *, reverse: bool) -> Include:
    parts = raw.split(":")
    if len(parts) not in (2, 3):
        raise BadRequest(f"_include/_revinclude value {raw!r}: use Type:param[:TargetType]")
    source, name = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    if source not in RESOURCE_TYPES:
        raise BadRequest(f"_include source type {source!r} is not served here")
    if not reverse and source != rtype:
        raise BadRequest(f"_include={raw}: the source type must be {rtype}")
    if name == "*":
        return Include(source, None, target, reverse)
    param = search_param(source, name)
    if param is None or param.type != "reference":
        raise BadRequest(f"_include={raw}: {name} is not a reference parameter of {source}")
    return Include(source, param, target, reverse)


def parse_query(
    rtype: str,
    params: list[tuple[str, str]],
    *,
    default_count: int,
    max_count: int,
) -> SearchQuery:
    query = SearchQuery(resource_type=rtype, count=default_count)
    _check_size(params)
    for name, raw in params:
        base = name.split(":", 1)[0]
        if base in CONTROL or base.startswith("_include") or base.startswith("_revinclude"):
            _control(query, rtype, base, raw, max_count=max_count)
            continue
        clause = _clause(rtype, name, raw)
        if clause is None:
            query.unknown.append(name)
        else:
            query.clauses.append(clause)
    return query


def _check_size(params: list[tuple[str, str]]) -> None:
    if len(params) > MAX_TERMS:
        raise BadRequest(
            f"this search has {len(params)} parameters; at most {MAX_TERMS} are accepted "
            "(combine values of one parameter with commas, or search in parts)"
        )
    values = sum(raw.count(",") + 1 for _, raw in params)
    if values > MAX_VALUES:
        raise BadRequest(
            f"this search has {values} values; at most {MAX_VALUES} are accepted (search in parts)"
        )


def _control(query: SearchQuery, rtype: str, name: str, raw: str, *, max_count: int) -> None:
    if name == "_count":
        query.count = min(_int("_count", raw), max_count)
        if query.count == 0:
            query.summary = "count"
    elif name == "_sort":
        for item in raw.split(","):
            desc = item.startswith("-")
            key = item[1:] if desc else item
            param = search_param(rtype, key)
            sortable = ("date", "string", "token", "reference", "number")
            if param is None or param.type not in sortable:
                raise BadRequest(f"_sort={item}: {key} is not a sortable parameter of {rtype}")
            if param.phi:
                raise NotSupported(f"_sort={key}: protected patient data cannot be sorted")
            query.sort.append(SortKey(param, desc))
    elif name in ("_include", "_revinclude"):
        query.includes.append(_include(rtype, raw, reverse=name == "_revinclude"))
    elif name == "_summary":
        if raw not in SUMMARY:
            raise BadRequest(f"_summary must be one of {sorted(SUMMARY)}, not {raw!r}")
        query.summary = None if raw == "false" else raw
    elif name == "_elements":
        query.elements = [e.strip() for e in raw.split(",") if e.strip()]
    elif name == "_total":
        if raw not in ("none", "estimate", "accurate"):
            raise BadRequest("_total must be none, estimate or accurate")
        query.total = raw
    elif name == "_cursor":
        query.cursor = raw
