"""Run a :class:`SearchQuery`: filter, count, sort, keyset page, includes.

Pages are keyset cursors over (sort values…, ``resource.seq``): a next link names the last row
it showed, so rows inserted meanwhile never shift a page (no duplicates, no skips).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    FromClause,
    and_,
    false,
    func,
    intersect,
    or_,
    select,
    true,
    tuple_,
)

from base.errors import BadRequest
from resources.fhirdate import MAX_INSTANT, MIN_INSTANT
from resources.search.conditions import ConditionBuilder
from resources.search.query import SearchQuery, SortKey
from resources.sql.engine import PLAN_PER_RUN
from resources.store import INDEX_TABLES, R, Store, StoredVersion

__all__ = ["SearchResult", "run_search"]

MAX_INCLUDES = 1000
HIGH_TEXT = "\U0010ffff"
NUMBER_END = 1e308  # sorts after any stored number (a resource without one sorts last)


@dataclass
class SearchResult:
    matches: list[StoredVersion] = field(default_factory=list)
    included: list[StoredVersion] = field(default_factory=list)
    total: int | None = None
    next_cursor: str | None = None


def _sort_expr(key: SortKey) -> Any:
    param = key.param
    if param.name == "_lastUpdated":
        return R.c.last_updated
    if param.name == "_id":
        return R.c.res_id
    table = INDEX_TABLES[param.type]
    agg = func.max if key.descending else func.min
    column, sentinel = {
        "date": (table.c.low if param.type == "date" else None, MIN_INSTANT),
        "string": (table.c.value_norm if param.type == "string" else None, ""),
        "token": (table.c.code if param.type == "token" else None, ""),
        "reference": (table.c.target_id if param.type == "reference" else None, ""),
        "number": (table.c.value if param.type == "number" else None, -NUMBER_END),
    }[param.type]
    if not key.descending:
        sentinel = {"date": MAX_INSTANT, "number": NUMBER_END}.get(param.type, HIGH_TEXT)
    sub = (
        select(agg(column))
        .where(table.c.seq == R.c.seq, table.c.param == param.name)
        .scalar_subquery()
    )
    return func.coalesce(sub, sentinel)


def _encode_cursor(values: list[Any]) -> str:
    tagged = [["d", v.isoformat()] if isinstance(v, datetime) else ["v", v] for v in values]
    return base64.urlsafe_b64encode(orjson.dumps(tagged)).decode().rstrip("=")


def _sort_kind(key: SortKey) -> type:
    """The Python type of :func:`_sort_expr`'s values for ``key``."""
    if key.param.name == "_lastUpdated" or key.param.type == "date":
        return datetime
    return float if key.param.type == "number" else str


def _decode_cursor(text: str, kinds: list[type]) -> list[Any]:
    """The sort values a next link carries, each of its sort key's type (``kinds``): a forged
    cursor must not reach the database with a value it cannot compare (PostgreSQL refuses a
    text or a datetime against ``seq``, both drivers an integer past 8 bytes)."""
    try:
        raw = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        values = [datetime.fromisoformat(v) if t == "d" else v for t, v in raw]
    except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
        raise BadRequest("the _cursor value is not one this server issued") from exc
    if len(values) != len(kinds):
        raise BadRequest("the _cursor does not fit this search's _sort")
    for value, kind in zip(values, kinds, strict=True):
        if type(value) is not kind or (isinstance(value, int) and not 0 < value < 2**63):
            raise BadRequest("the _cursor value is not one this server issued")
    return values


def _after(exprs: list[Any], descending: list[bool], values: list[Any]) -> ColumnElement[bool]:
    """Rows strictly after ``values`` in the (mixed-direction) sort order."""
    terms: list[ColumnElement[bool]] = []
    for i, (expr, desc) in enumerate(zip(exprs, descending, strict=True)):
        eqs = [exprs[j] == values[j] for j in range(i)]
        terms.append(and_(*eqs, expr < values[i] if desc else expr > values[i]))
    return or_(*terms) if terms else false()


_PER_RUN = {PLAN_PER_RUN: True}


def run_search(
    conn: Connection,
    *,
    store: Store,
    query: SearchQuery,
    extra: list[ColumnElement[bool]] | None = None,
) -> SearchResult:
    """Execute ``query``; ``extra`` conditions (e.g. scope filters) AND onto it. On
    PostgreSQL the count and the page are planned for their own values on every run
    (``resources.sql.engine.PLAN_PER_RUN``): how many rows a value matches decides the plan."""
    builder = ConditionBuilder(store.keys, store.base_url)
    plan = builder.plan(query.resource_type, query.clauses)
    source: FromClause = R
    seq_col: Any = R.c.seq
    where: ColumnElement[bool]
    if plan.sets:
        # drive from the (small) intersection of index lookups
        cand = (plan.sets[0] if len(plan.sets) == 1 else intersect(*plan.sets)).subquery("cand")
        seq_col = cand.c.seq
        if plan.conds or extra or query.sort:
            source = R.join(cand, R.c.seq == cand.c.seq)
        else:
            # Index rows exist only for live resources of their own type (deletes remove
            # them), so the candidates need no join: it would tempt the planner into walking
            # all of resource in key order.
            source = cand
    if source is R or plan.conds or extra or query.sort:
        where = and_(
            R.c.res_type == query.resource_type,
            R.c.deleted == false(),
            *plan.conds,
            *(extra or []),
        )
    else:
        where = true()
    result = SearchResult()
    if query.total != "none" or query.summary == "count":
        count = select(func.count()).select_from(source).where(where)
        total = conn.execute(count, execution_options=_PER_RUN).scalar_one()
        result.total = int(total)
    if query.summary == "count":
        return result

    exprs = [_sort_expr(k) for k in query.sort] + [seq_col]
    desc = [k.descending for k in query.sort] + [False]
    page_where = where
    if query.cursor:
        kinds = [_sort_kind(k) for k in query.sort] + [int]
        page_where = and_(where, _after(exprs, desc, _decode_cursor(query.cursor, kinds)))
    labelled = [e.label(f"k{i}") for i, e in enumerate(exprs)]
    order = [e.desc() if d else e.asc() for e, d in zip(exprs, desc, strict=True)]
    rows = conn.execute(
        select(*labelled)
        .select_from(source)
        .where(page_where)
        .order_by(*order)
        .limit(query.count + 1),
        execution_options=_PER_RUN,
    ).all()
    more = len(rows) > query.count
    rows = rows[: query.count]
    seqs = [row[-1] for row in rows]
    opened = store.read_many(conn, seqs)
    result.matches = [opened[s] for s in seqs if s in opened]
    if more and rows:
        result.next_cursor = _encode_cursor(list(rows[-1]))
    if query.includes and seqs:
        result.included = _includes(
            conn, store=store, query=query, seqs=seqs, matches=result.matches
        )
    return result


def _includes(
    conn: Connection,
    *,
    store: Store,
    query: SearchQuery,
    seqs: list[int],
    matches: list[StoredVersion],
) -> list[StoredVersion]:
    ref = INDEX_TABLES["reference"]
    found: set[int] = set()
    for inc in query.includes:
        if not inc.reverse:
            conds: list[ColumnElement[bool]] = [ref.c.seq.in_(seqs)]
            if inc.param is not None:
                conds.append(ref.c.param == inc.param.name)
            if inc.target_type:
                conds.append(ref.c.target_type == inc.target_type)
            targets = select(ref.c.target_type, ref.c.target_id).where(*conds)
            rows = conn.execute(
                select(R.c.seq)
                .where(
                    R.c.deleted == false(),
                    tuple_(R.c.res_type, R.c.res_id).in_(targets),
                )
                .limit(MAX_INCLUDES)
            ).all()
        else:
            keys = [(m.res_type, m.res_id) for m in matches]
            conds_rev: list[ColumnElement[bool]] = [
                ref.c.res_type == inc.source_type,
                tuple_(ref.c.target_type, ref.c.target_id).in_(keys),
            ]
            if inc.param is not None:
                conds_rev.append(ref.c.param == inc.param.name)
            rows = conn.execute(
                select(R.c.seq)
                .where(R.c.deleted == false(), R.c.seq.in_(select(ref.c.seq).where(*conds_rev)))
                .limit(MAX_INCLUDES)
            ).all()
        found.update(r[0] for r in rows)
    found.difference_update(seqs)
    opened = store.read_many(conn, sorted(found))
    return [opened[s] for s in sorted(found) if s in opened]
