"""Search clauses → SQL conditions over the ``resource`` table and the index tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Select, Table, and_, false, not_, or_, select, true

from base.errors import BadRequest
from conformance.declaration import SearchParam
from resources import blind
from resources.fhirdate import MAX_INSTANT, MIN_INSTANT, DateRange, parse_fhir_date
from resources.indexing import split_reference
from resources.normalize import norm_phone, norm_string
from resources.search.query import Clause, split_number
from resources.store import INDEX_TABLES, R
from security.crypto import KeyRing

__all__ = ["clause_condition", "resource_filter"]

BLIND_DATE_FLOOR = date(1850, 1, 1)
YEAR = timedelta(days=365)


def _shift(value: Any, delta: timedelta, limit: Any) -> Any:
    """``value + delta`` (a date or datetime), or ``limit`` where that would pass the
    calendar's ends (years 1 and 9999): ``ap`` widens a range by a year or a tenth of its
    distance from now."""
    try:
        return value + delta
    except OverflowError:
        return limit


def _like_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass
class Plan:
    sets: list[Select[Any]] = field(default_factory=list)
    conds: list[ColumnElement[bool]] = field(default_factory=list)


class ConditionBuilder:
    def __init__(self, keys: KeyRing, base_url: str, *, now: datetime | None = None) -> None:
        self.keys = keys
        self.base_url = base_url
        self.now = now or datetime.now(UTC)

    # -- entry points -----------------------------------------------------------------------
    def resource_filter(self, rtype: str, clauses: list[Clause]) -> ColumnElement[bool]:
        """All clauses as one condition on ``resource`` (used for chains and simple callers)."""
        plan = self.plan(rtype, clauses)
        return and_(
            R.c.res_type == rtype,
            R.c.deleted == false(),
            *(R.c.seq.in_(s) for s in plan.sets),
            *plan.conds,
        )

    def plan(self, rtype: str, clauses: list[Clause]) -> Plan:
        """Split clauses into candidate ``seq`` sets (index lookups) and other conditions.

        The engine intersects the sets and joins ``resource`` to that small result, so the
        database drives the search from the index tables instead of scanning ``resource``.
        """
        plan = Plan()
        ranges: dict[str, list[Clause]] = {}
        for c in clauses:
            if _is_point_range(c):
                ranges.setdefault(c.param.name, []).append(c)
                continue
            found = self.clause_set(rtype, c)
            if found is not None:
                plan.sets.append(found)
            else:
                plan.conds.append(self.clause(rtype, c))
        plan.sets.extend(self._point_range(rtype, group) for group in ranges.values())
        return plan

    def _point_range(self, rtype: str, group: list[Clause]) -> Select[Any]:
        """``start=ge…&start=lt…`` on an instant as ONE index range scan, not two big sets.

        For a single-valued instant this is the same as ANDing the clauses one by one.
        """
        table = INDEX_TABLES["date"]
        bounds = [self._date(table.c.low, table.c.high, c.values[0], point=True) for c in group]
        return select(table.c.seq).where(
            table.c.res_type == rtype, table.c.param == group[0].param.name, *bounds
        )

    def clause_set(self, rtype: str, clause: Clause) -> Select[Any] | None:
        """The ``seq`` values a positive index clause matches, or None if it is not one."""
        param = clause.param
        if clause.chain is not None:
            return self._chain_set(rtype, clause)
        if param.name in ("_id", "_lastUpdated") or clause.modifier in ("missing", "not"):
            return None
        table = INDEX_TABLES[param.index_table]
        value_cond = or_(*(self._value(rtype, table, param, clause, v) for v in clause.values))
        return select(table.c.seq).where(
            table.c.res_type == rtype, table.c.param == param.name, value_cond
        )

    def clause(self, rtype: str, clause: Clause) -> ColumnElement[bool]:
        param = clause.param
        found = self.clause_set(rtype, clause)
        if found is not None:
            return R.c.seq.in_(found)
        if param.name == "_id":
            cond = R.c.res_id.in_(clause.values)
            return not_(cond) if clause.modifier == "not" else cond
        if param.name == "_lastUpdated":
            if clause.modifier == "missing":
                return true() if clause.values[0] == "false" else false()
            return or_(
                *(
                    self._date(R.c.last_updated, R.c.last_updated, v, point=True)
                    for v in clause.values
                )
            )
        table_kind = param.index_table
        table = INDEX_TABLES[table_kind]
        base = [table.c.res_type == rtype, table.c.param == param.name]
        if clause.modifier == "missing":
            present = R.c.seq.in_(select(table.c.seq).where(*base))
            return not_(present) if clause.values[0] == "true" else present
        value_cond = or_(*(self._value(rtype, table, param, clause, v) for v in clause.values))
        matching = R.c.seq.in_(select(table.c.seq).where(*base, value_cond))
        return not_(matching) if clause.modifier == "not" else matching

    # -- per type ---------------------------------------------------------------------------
    def _value(
        self, rtype: str, table: Table, param: SearchParam, clause: Clause, value: str
    ) -> ColumnElement[bool]:
        if param.phi:
            digests = self.blind_digests(rtype, param, clause.modifier, value)
            if not digests:
                return false()
            if len(digests) == 1:
                return table.c.digest == digests[0]
            return table.c.digest.in_(digests)
        if param.type == "string":
            return self._string(table, clause.modifier, value)
        if param.type == "token":
            return self._token(table, param, value)
        if param.type == "date":
            return self._date(table.c.low, table.c.high, value, point=param.point)
        if param.type == "reference":
            return self._reference(table, clause, value)
        if param.type == "number":
            return _number(table.c.value, value, param.name)
        raise BadRequest(f"search on {param.type} parameter {param.name} is not supported")

    def blind_digests(
        self, rtype: str, param: SearchParam, modifier: str | None, value: str
    ) -> list[bytes]:
        """The ``idx_blind`` digests one value of a PHI parameter matches (any of them): the
        exact value or a prefix of a string, a token's code or system, the year, month or day
        tokens tiling a birth-date range. None of them: the value matches nothing."""
        if param.type == "string":
            if modifier == "exact":
                return [blind.exact_digest(self.keys, rtype, param, value)]
            return [blind.prefix_digest(self.keys, rtype, param, value)]
        if param.type == "token":
            system, code = _token_parts(value)
            if system is not None and code is None:
                return [blind.token_query_digest(self.keys, rtype, param, system, None)]
            return [
                blind.token_query_digest(self.keys, rtype, param, system, c)
                for c in _token_code_variants(param, code)
            ]
        if param.type == "date":
            return self._blind_date(rtype, param, value)
        raise BadRequest(f"search on {param.type} parameter {param.name} is not supported")

    def _string(self, table: Table, modifier: str | None, value: str) -> ColumnElement[bool]:
        if modifier == "exact":
            return table.c.value_exact == value
        needle = _like_escape(norm_string(value))
        pattern = f"%{needle}%" if modifier == "contains" else f"{needle}%"
        return table.c.value_norm.like(pattern, escape="\\")

    def _token(self, table: Table, param: SearchParam, value: str) -> ColumnElement[bool]:
        system, code = _token_parts(value)
        codes = _token_code_variants(param, code)
        conds: list[ColumnElement[bool]] = []
        if code is not None:
            conds.append(table.c.code.in_(codes))
        if system == "":
            conds.append(table.c.system.is_(None))
        elif system is not None:
            conds.append(table.c.system == system)
        return and_(*conds)

    def _parse_date(self, value: str) -> tuple[str, DateRange]:
        prefix = "eq"
        if value[:2].isalpha():
            prefix, value = value[:2], value[2:]
        try:
            return prefix, parse_fhir_date(value)
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc

    def _date(self, low: Any, high: Any, value: str, *, point: bool) -> ColumnElement[bool]:
        """R4 range semantics (search.html#prefix); instants compare as points on ``low``."""
        prefix, rng = self._parse_date(value)
        ql, qh = rng.low, rng.high
        if prefix == "ap":
            slack = max(
                abs(self.now - ql) * 0.1,
                timedelta(days=1) if rng.precision != "second" else timedelta(minutes=1),
            )
            ql, qh = _shift(ql, -slack, MIN_INSTANT), _shift(qh, slack, MAX_INSTANT)
            return and_(low < qh, high > ql) if not point else and_(low >= ql, low < qh)
        table: dict[str, ColumnElement[bool]]
        if point:
            table = {
                "eq": and_(low >= ql, low < qh),
                "ne": or_(low < ql, low >= qh),
                "gt": low >= qh,
                "sa": low >= qh,
                "lt": low < ql,
                "eb": low < ql,
                "ge": low >= ql,
                "le": low < qh,
            }
            return table[prefix]
        eq = and_(low >= ql, high <= qh)
        table = {
            "eq": eq,
            "ne": not_(eq),
            "gt": high > qh,
            "lt": low < ql,
            "ge": or_(high > qh, eq),
            "le": or_(low < ql, eq),
            "sa": low >= qh,
            "eb": high <= ql,
        }
        return table[prefix]

    def _blind_date(self, rtype: str, param: SearchParam, value: str) -> list[bytes]:
        """Birth dates are digests: a range becomes the set of year/month/day tokens tiling it."""
        prefix, rng = self._parse_date(value)
        lo, hi = rng.low.date(), rng.high.date()
        ceiling = self.now.date() + timedelta(days=366)
        spans = {
            "eq": [(lo, hi)],
            "ne": [(BLIND_DATE_FLOOR, lo), (hi, ceiling)],
            "gt": [(hi, ceiling)],
            "sa": [(hi, ceiling)],
            "ge": [(lo, ceiling)],
            "lt": [(BLIND_DATE_FLOOR, lo)],
            "eb": [(BLIND_DATE_FLOOR, lo)],
            "le": [(BLIND_DATE_FLOOR, hi)],
            "ap": [
                (
                    max(_shift(lo, -YEAR, date.min), BLIND_DATE_FLOOR),
                    min(_shift(hi, YEAR, date.max), ceiling),
                )
            ],
        }[prefix]
        purpose = f"{rtype}.{param.name}"
        if prefix == "eq":
            token = blind.date_token(
                rng.precision if rng.precision in ("year", "month") else "day", lo
            )
            return [self.keys.blind(purpose, token)]
        tokens = [t for a, b in spans if a < b for t in blind.date_cover_tokens(a, b)]
        return [self.keys.blind(purpose, t) for t in tokens]

    def _reference(self, table: Table, clause: Clause, value: str) -> ColumnElement[bool]:
        target = split_reference(value, self.base_url)
        if target is None:
            # a bare id: any target type the parameter allows (or the :Type given)
            cond = table.c.target_id == value
            if clause.target_type:
                cond = and_(cond, table.c.target_type == clause.target_type)
            return cond
        ttype, tid = target
        if clause.target_type and ttype and ttype != clause.target_type:
            return false()
        conds = [table.c.target_id == tid]
        if ttype is not None:
            conds.append(table.c.target_type == ttype)
        return and_(*conds)

    def _chain_set(self, rtype: str, clause: Clause) -> Select[Any]:
        assert clause.chain is not None
        assert clause.target_type is not None
        inner = select(R.c.res_id).where(self.resource_filter(clause.target_type, [clause.chain]))
        table = INDEX_TABLES["reference"]
        return select(table.c.seq).where(
            table.c.res_type == rtype,
            table.c.param == clause.param.name,
            table.c.target_type == clause.target_type,
            table.c.target_id.in_(inner),
        )


def _number(column: Any, value: str, name: str) -> ColumnElement[bool]:
    """R4 number search (https://hl7.org/fhir/R4/search.html#number). ``eq`` (the default) and
    ``ne`` use the range the value's precision implies: ``100`` is [99.5, 100.5), ``0.5`` is
    [0.45, 0.55), ``1e2`` is [50, 150); ``ap`` is within 10 % of the value; the others compare
    with the value itself (a stored value is exact: ``sa`` is ``gt``, ``eb`` is ``lt``)."""
    prefix, number = split_number(value, name)
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)  # split_number refuses NaN and infinities
    half = Decimal(5).scaleb(exponent - 1)
    low, high = float(number - half), float(number + half)
    if prefix == "ap":
        slack = abs(number) / 10
        return and_(column >= float(number - slack), column <= float(number + slack))
    exact = float(number)
    compare: dict[str, ColumnElement[bool]] = {
        "eq": and_(column >= low, column < high),
        "ne": or_(column < low, column >= high),
        "gt": column > exact,
        "sa": column > exact,
        "lt": column < exact,
        "eb": column < exact,
        "ge": column >= exact,
        "le": column <= exact,
    }
    return compare[prefix]


def _is_point_range(clause: Clause) -> bool:
    p = clause.param
    return (
        p.type == "date"
        and p.point
        and not p.phi
        and p.name != "_lastUpdated"
        and clause.chain is None
        and clause.modifier is None
        and len(clause.values) == 1
    )


def _token_parts(value: str) -> tuple[str | None, str | None]:
    """``system|code``, ``|code``, ``system|`` or ``code`` as (system, code); None: not given."""
    if "|" not in value:
        return None, value
    system, code = value.split("|", 1)
    return system, code or None


def _token_code_variants(param: SearchParam, code: str | None) -> list[str]:
    """Query codes to try: telecom values are stored normalised (see normalize.norm_token_code)."""
    if code is None:
        return []
    if param.name in ("phone",) or (param.where and param.where[1] == "phone"):
        return [norm_phone(code)]
    if param.name == "email":
        return [code.strip().casefold()]
    if param.name == "telecom":
        return sorted({code, norm_phone(code), code.strip().casefold()} - {""})
    return [code]


def resource_filter(
    keys: KeyRing, base_url: str, rtype: str, clauses: list[Clause]
) -> ColumnElement[bool]:
    return ConditionBuilder(keys, base_url).resource_filter(rtype, clauses)


def clause_condition(keys: KeyRing, base_url: str, rtype: str, clause: Clause) -> Any:
    return ConditionBuilder(keys, base_url).clause(rtype, clause)
