"""The audit log over FHIR, without the web framework: who may read it, the search
parameters, and the searchset / read answers (``routes/audit.py`` is the HTTP edge).

Search parameters: ``date`` (with ``ge``/``gt``/``le``/``lt``), ``patient``, ``agent``,
``entity`` (and ``entity:identifier=urn:fhir-sched:conversation|<id>``, a request's
``X-Conversation-Id``), ``type``, ``subtype``, ``action``, ``outcome``, ``source``; ``_sort=-date``
(newest first, the default) or ``date``; ``_count`` with ``next`` links; ``Bundle.total``.
A compliance query is itself recorded.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any
from urllib.parse import urlencode

import orjson
from sqlalchemy import Connection, select

from base.errors import BadRequest, Forbidden, NotFound
from fhir_server.handlers import Context, FHIRResponse
from resources.fhirdate import parse_fhir_date
from resources.sql.tables import AuditLog
from security.audit import AuditQuery, open_event, search
from security.balp import CONVERSATION
from security.principal import Principal

__all__ = ["parse_audit_query", "read", "require_audit_scope", "search_log"]


PLAIN = ("type", "subtype", "action", "outcome", "source")
DIGESTED = ("patient", "agent", "entity")
MAX_SEQ = 2**63 - 1  # audit_log.seq is a BigInteger: a larger cursor overflows the driver


def require_audit_scope(principal: Principal | None, permission: str) -> None:
    """Only a scope naming AuditEvent itself, in user or system context, opens the log: a
    wildcard (``system/*.rs``) does not, nor does any patient/ scope."""
    scopes = principal.grants.scopes if principal else ()
    if not any(
        s.resource_type == "AuditEvent"
        and s.context in ("user", "system")
        and s.covers(s.context, "AuditEvent", permission)
        for s in scopes
    ):
        raise Forbidden(
            "the audit log is open to compliance officers (user/AuditEvent.rs) and registered "
            "audit clients (system/AuditEvent.rs) only"
        )


def _values(raw: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in raw.split(",") if v.strip())


def _reference(name: str, value: str) -> str:
    if name == "patient" and "/" not in value:
        return f"Patient/{value}"
    return value


def parse_audit_query(params: list[tuple[str, str]], default: int, maximum: int) -> AuditQuery:
    dates, plain, digested = [], [], []
    newest_first, count, after = True, default, None
    for name, value in params:
        base = name.split(":")[0]
        if base == "date":
            prefix = value[:2] if value[:2] in ("ge", "gt", "le", "lt", "eq") else "eq"
            raw = value[2:] if value[:2] == prefix else value
            try:
                span = parse_fhir_date(raw)
            except ValueError as exc:
                raise BadRequest(f"date: {exc}") from exc
            if prefix in ("ge", "eq"):
                dates.append(("ge", span.low))
            if prefix in ("lt", "eq"):
                dates.append(("lt", span.high if prefix == "eq" else span.low))
            if prefix == "gt":
                dates.append(("ge", span.high))
            if prefix == "le":
                dates.append(("lt", span.high))
        elif base in PLAIN:
            plain.append((base, tuple(v.split("|")[-1] for v in _values(value))))
        elif name == "entity:identifier":  # only conversation ids are indexed so
            if not all(v.startswith(f"{CONVERSATION}|") for v in _values(value)):
                raise BadRequest(f"entity:identifier searches {CONVERSATION}|<conversation id>")
            digested.append(("entity", _values(value)))
        elif base in DIGESTED:
            digested.append((base, tuple(_reference(base, v) for v in _values(value))))
        elif name == "_sort":
            if value not in ("-date", "date"):
                raise BadRequest("AuditEvent sorts by -date (newest first) or date")
            newest_first = value == "-date"
        elif name == "_count":
            if not value.isascii() or not value.isdigit() or int(value) < 1:
                raise BadRequest("_count must be a positive whole number")
            count = min(int(value), maximum)
        elif name == "_cursor":
            if not (value.isascii() and value.isdigit()) or int(value) > MAX_SEQ:
                raise BadRequest("the _cursor value is not one this server issued")
            after = int(value)
        else:
            raise BadRequest(f"AuditEvent has no search parameter {name!r}")
    return AuditQuery(tuple(dates), tuple(plain), tuple(digested), newest_first, count, after)


def search_log(ctx: Context, conn: Connection, params: list[tuple[str, str]]) -> FHIRResponse:
    require_audit_scope(ctx.principal, "s")
    query = parse_audit_query(params, ctx.paging.default_count, ctx.paging.max_count)
    if ctx.trail is not None:
        ctx.trail.note("search-type", query=f"AuditEvent?{urlencode(params)}")
    # one row more than the page: a next link only when there is a next page
    total, rows = search(conn, ctx.store.keys, replace(query, count=query.count + 1))
    more, rows = len(rows) > query.count, rows[: query.count]
    url = f"{ctx.base_url}/AuditEvent"
    kept = [(k, v) for k, v in params if k != "_cursor"]
    links = [{"relation": "self", "url": f"{url}?{urlencode(params)}"}]
    if more:
        nxt = urlencode([*kept, ("_cursor", str(rows[-1].seq))])
        links.append({"relation": "next", "url": f"{url}?{nxt}"})
    entries = []
    for row in rows:
        event = open_event(ctx.store.keys, row)
        entries.append(
            {"fullUrl": f"{url}/{event['id']}", "resource": event, "search": {"mode": "match"}}
        )
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": total}
    bundle["link"] = links
    if entries:
        bundle["entry"] = entries
    return FHIRResponse(200, bundle)


def read(ctx: Context, conn: Connection, event_id: str) -> FHIRResponse:
    require_audit_scope(ctx.principal, "r")
    if ctx.trail is not None:
        ctx.trail.note("read", refs=[f"AuditEvent/{event_id}"])
    row = conn.execute(select(AuditLog).filter_by(event_id=event_id)).first()
    if row is None:
        raise NotFound(f"AuditEvent/{event_id} is not known")
    return FHIRResponse(200, orjson.dumps(open_event(ctx.store.keys, row)))
