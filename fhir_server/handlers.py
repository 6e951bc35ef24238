"""RESTful interactions as framework-free request → response functions (the scheduling
operations, which share the checks and audit notes defined here, are in
``scheduling_handlers.py``).

The FastAPI routes and the Bundle processor both call these, so a bundle entry behaves exactly
like the same request sent alone.  Bodies are built as plain dicts (or stored JSON bytes spliced
in with ``orjson.Fragment``) and serialised once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, cast
from urllib.parse import urlencode

import orjson
from sqlalchemy import Connection

from base.errors import (
    BadRequest,
    FHIRError,
    Forbidden,
    operation_outcome,
)
from fhir_server import authz
from fhir_server.authz import Access
from fhir_server.shaping import apply_elements, apply_summary
from resources import service
from resources.fhirdate import parse_fhir_date
from resources.search.engine import SearchResult
from resources.search.query import SearchQuery
from resources.service import Outcome, Paging
from resources.sql.async_reads import AsyncReader
from resources.store import Store, StoredVersion, format_instant
from scheduling.risk import RISK_URL, without_risk
from security.principal import Principal
from security.trail import Trail

__all__ = [
    "Context",
    "FHIRResponse",
    "Prefer",
    "commit_notes",
    "confined_write",
    "current_visible",
    "note",
    "parse_prefer",
    "patients_of",
    "version_headers",
    "version_visible",
]

FHIR_JSON = "application/fhir+json; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Context:
    """What every interaction needs besides the connection."""

    store: Store
    base_url: str
    paging: Paging
    principal: Principal | None = None  # None: nothing is allowed (every request sets it)
    trail: Trail | None = None  # where this request's accesses are noted for the audit log

    def acting(self, principal: Principal, trail: Trail | None = None) -> Context:
        """This context for one request made by ``principal``."""
        return replace(self, principal=principal, trail=trail)


@dataclass(frozen=True, slots=True)
class Prefer:
    ret: str = "representation"  # minimal | representation | OperationOutcome
    strict: bool = False


def parse_prefer(value: str | None) -> Prefer:
    """``Prefer: return=minimal, handling=strict`` (RFC 7240, FHIR http.html#ops)."""
    ret, strict = "representation", False
    for part in (value or "").replace(";", ",").split(","):
        key, _, val = part.strip().partition("=")
        val = val.strip().strip('"')
        if key == "return" and val in ("minimal", "representation", "OperationOutcome"):
            ret = val
        elif key == "handling":
            strict = val == "strict"
    return Prefer(ret, strict)


@dataclass
class FHIRResponse:
    status: int
    body: Any = None  # dict, bytes (already JSON) or None
    headers: dict[str, str] = field(default_factory=dict)
    stored: StoredVersion | None = None

    def content(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        return orjson.dumps(self.body)


def version_headers(stored: StoredVersion) -> dict[str, str]:
    return {
        "ETag": stored.etag,
        "Last-Modified": format_datetime(stored.last_updated.astimezone(UTC), usegmt=True),
    }


def resource_response(
    ctx: Context, outcome: Outcome, prefer: Prefer, *, location: bool = False
) -> FHIRResponse:
    stored = outcome.stored
    headers: dict[str, str] = {}
    body: Any = None
    if stored is not None:
        headers |= version_headers(stored)
        if location:
            headers["Location"] = (
                f"{ctx.base_url}/{stored.res_type}/{stored.res_id}/_history/{stored.version}"
            )
        if prefer.ret == "representation":
            body = stored.body
        elif prefer.ret == "OperationOutcome":
            verb = "created" if outcome.created else "updated"
            body = operation_outcome(
                severity="information",
                code="informational",
                diagnostics=f"{stored.res_type}/{stored.res_id} {verb} (version {stored.version})",
            )
    return FHIRResponse(outcome.status, body, headers, stored)


def _shape(stored: StoredVersion, query: SearchQuery) -> Any:
    if query.summary in ("true", "text", "data"):
        return apply_summary(stored.resource(), query.summary)
    if query.elements:
        return apply_elements(stored.resource(), query.elements)
    assert stored.body is not None
    return orjson.Fragment(stored.body)


def _link_params(params: list[tuple[str, str]], **override: str) -> str:
    kept = [(k, v) for k, v in params if k not in ("_cursor", *override)]
    kept.extend(override.items())
    return urlencode(kept)


def searchset(
    ctx: Context,
    *,
    resource_type: str,
    params: list[tuple[str, str]],
    query: SearchQuery,
    result: SearchResult,
) -> dict[str, Any]:
    """A searchset Bundle with total, self/next links, matches, includes and an outcome."""
    url = f"{ctx.base_url}/{resource_type}"
    links = [{"relation": "self", "url": f"{url}?{_link_params(params)}"}]
    if result.next_cursor:
        links.append(
            {"relation": "next", "url": f"{url}?{_link_params(params, _cursor=result.next_cursor)}"}
        )
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": f"{ctx.base_url}/{s.res_type}/{s.res_id}",
            "resource": _shape(s, query),
            "search": {"mode": "match"},
        }
        for s in result.matches
    ]
    entries.extend(
        {
            "fullUrl": f"{ctx.base_url}/{s.res_type}/{s.res_id}",
            "resource": orjson.Fragment(s.body or b"{}"),
            "search": {"mode": "include"},
        }
        for s in result.included
    )
    if query.unknown:
        entries.append(
            {
                "resource": operation_outcome(
                    severity="warning",
                    code="not-supported",
                    diagnostics="ignored unknown search parameter(s): " + ", ".join(query.unknown),
                    expression=query.unknown,
                    message_id="FS-0403",
                ),
                "search": {"mode": "outcome"},
            }
        )
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if result.total is not None:
        bundle["total"] = result.total
    bundle["link"] = links
    if entries:
        bundle["entry"] = entries
    return bundle


# -- interactions ------------------------------------------------------------------------------
# -- audit notes (security/trail.py) ------------------------------------------------------------
def patients_of(rtype: str, rid: str, stored: StoredVersion | None) -> set[str]:
    """The Patients whose data a resource is: the Patient itself, an Appointment's or a
    Communication's patients."""
    if rtype == "Patient":
        return {rid}
    if rtype in ("Appointment", "Communication") and stored is not None and stored.body is not None:
        return authz.patients_in(stored.resource())
    return set()


def note(
    ctx: Context,
    kind: str,
    rtype: str,
    rid: str | None = None,
    stored: StoredVersion | None = None,
    *,
    query: str | None = None,
    patients: set[str] | None = None,
) -> None:
    if ctx.trail is None:
        return
    found = (
        patients if patients is not None else (patients_of(rtype, rid, stored) if rid else set())
    )
    refs = [f"{rtype}/{rid}"] if rid else []
    ctx.trail.note(kind, refs=refs, patients=found, query=query)


def commit_notes(ctx: Context, conn: Connection) -> None:
    """A write's AuditEvents go into the write's own transaction."""
    if ctx.trail is not None:
        ctx.trail.commit_in(conn, ctx.store.keys)


def _visible(ctx: Context, conn: Connection | None, access: Access, stored: Any) -> None:
    """Refuse a resource the access does not reach (compartment, then granular filters)."""
    if stored is None or stored.body is None or access.unrestricted:
        return
    access.check(stored.resource())
    if access.filters != [()]:
        if conn is None:
            raise Forbidden(f"this token's {access.rtype} scopes need a search to check")
        probe = access.search_params([("_id", stored.res_id), ("_total", "accurate")])
        _, result = service.search(conn, store=ctx.store, resource_type=access.rtype, params=probe)
        if not result.matches:
            raise Forbidden(f"this {access.rtype} is outside what the token's scopes allow")


_RISK = RISK_URL.encode()


def shown(access: Access, stored: StoredVersion | None) -> StoredVersion | None:
    """What ``access`` is shown of a version: to a patient's token, an Appointment without
    its no-show risk (``scheduling/risk.py``), which is for staff only."""
    if (
        access.patient is None
        or stored is None
        or stored.body is None
        or stored.res_type != "Appointment"
        or _RISK not in stored.body
    ):
        return stored
    return replace(stored, body=orjson.dumps(without_risk(stored.resource())))


def _asks_risk(params: list[tuple[str, str]]) -> bool:
    return any(
        k.split(":")[0].split(".")[0] == "risk"
        or (k == "_sort" and "risk" in {i.lstrip("-") for i in v.split(",")})
        for k, v in params
    )


def _shown_outcome(access: Access, outcome: Outcome) -> Outcome:
    return replace(outcome, stored=shown(access, outcome.stored))


def read(
    ctx: Context, conn: Connection, rtype: str, rid: str, params: list[tuple[str, str]]
) -> FHIRResponse:
    access = authz.require(ctx.principal, rtype, "r")
    note(ctx, "read", rtype, rid, patients=set())
    outcome = service.read(conn, store=ctx.store, resource_type=rtype, resource_id=rid)
    _renote(ctx, rtype, rid, outcome.stored)
    _visible(ctx, conn, access, outcome.stored)
    return read_response(ctx, _shown_outcome(access, outcome), params)


def _renote(ctx: Context, rtype: str, rid: str, stored: StoredVersion | None) -> None:
    """The last note, now that the resource (and so its patients) is known."""
    if ctx.trail is not None and ctx.trail.facts:
        ctx.trail.facts[-1].patients = patients_of(rtype, rid, stored)


async def read_async(
    ctx: Context, reader: AsyncReader, rtype: str, rid: str, params: list[tuple[str, str]]
) -> FHIRResponse | None:
    """Read-by-id over an async PostgreSQL connection (same answers as :func:`read`); None
    when a granular scope needs a search to check the resource (use :func:`read` then)."""
    access = authz.require(ctx.principal, rtype, "r")
    if access.filters != [()]:
        return None
    note(ctx, "read", rtype, rid, patients=set())
    service.check_type(rtype)
    row = await reader.current(rtype, rid)
    stored = ctx.store.open_row(row) if row is not None else None
    _renote(ctx, rtype, rid, stored)
    _visible(ctx, None, access, stored)
    stored = shown(access, stored)
    outcome = service.read_outcome(stored, resource_type=rtype, resource_id=rid)
    return read_response(ctx, outcome, params)


def read_response(ctx: Context, outcome: Outcome, params: list[tuple[str, str]]) -> FHIRResponse:
    response = resource_response(ctx, outcome, Prefer())
    summary = dict(params).get("_summary")
    elements = dict(params).get("_elements")
    if (summary and summary != "false") or elements:
        assert outcome.stored is not None
        resource = outcome.stored.resource()
        if summary and summary != "false":
            if summary not in ("true", "text", "data"):
                raise BadRequest("_summary on a read must be true, text, data or false")
            resource = apply_summary(resource, summary)
        elif elements:
            resource = apply_elements(resource, [e.strip() for e in elements.split(",")])
        response.body = resource
    return response


def vread(ctx: Context, conn: Connection, rtype: str, rid: str, vid: str) -> FHIRResponse:
    access = authz.require(ctx.principal, rtype, "r")
    if access.filters != [()]:
        raise Forbidden("version reads are not available to a token with granular scopes")
    note(ctx, "vread", rtype, rid, patients=set())
    outcome = service.vread(
        conn, store=ctx.store, resource_type=rtype, resource_id=rid, version=vid
    )
    _renote(ctx, rtype, rid, outcome.stored)
    _visible(ctx, conn, access, outcome.stored)
    return resource_response(ctx, _shown_outcome(access, outcome), Prefer())


def search(
    ctx: Context, conn: Connection, rtype: str, params: list[tuple[str, str]], prefer: Prefer
) -> FHIRResponse:
    access = authz.require(ctx.principal, rtype, "s")
    if access.patient is not None and rtype == "Appointment" and _asks_risk(params):
        raise Forbidden("a patient's token cannot search or sort by risk")
    params = access.search_params(params)
    note(ctx, "search-type", rtype, query=f"{rtype}?{urlencode(params)}", patients=set())
    query, result = service.search(
        conn,
        store=ctx.store,
        resource_type=rtype,
        params=params,
        paging=ctx.paging,
        strict=prefer.strict,
    )
    if result.included:
        result = replace(result, included=[s for s in result.included if _may_include(ctx, s)])
    if ctx.trail is not None:  # one AuditEvent per patient whose data the answer holds
        touched: set[str] = set()
        for found in (*result.matches, *result.included):
            touched |= patients_of(found.res_type, found.res_id, found)
        ctx.trail.facts[-1].patients = touched
    if access.patient is not None:
        result = replace(
            result,
            matches=[cast(StoredVersion, shown(access, s)) for s in result.matches],
            included=[cast(StoredVersion, shown(access, s)) for s in result.included],
        )
    bundle = searchset(ctx, resource_type=rtype, params=params, query=query, result=result)
    return FHIRResponse(200, bundle)


def _may_include(ctx: Context, stored: StoredVersion) -> bool:
    """An ``_include``d resource appears only if the token could read it by itself."""
    try:
        access = authz.require(ctx.principal, stored.res_type, "r")
    except FHIRError:
        return False
    if access.filters != [()]:
        return False
    return access.patient is None or authz.in_compartment(
        stored.res_type, stored.resource(), access.patient
    )


def confined_write(access: Access, body: Any) -> None:
    """A patient-confined token writes only its own patient's resources."""
    if access.patient is None:
        return
    if access.rtype == "Patient" and isinstance(body, dict) and body.get("id") != access.patient:
        raise Forbidden("a patient's token cannot create or change another Patient")
    if access.rtype in ("Appointment", "Communication"):
        named = authz.patients_in(body) if isinstance(body, dict) else set()
        if named != {access.patient}:
            raise Forbidden("a patient's token books only for that patient (and no one else)")


def current_visible(ctx: Context, conn: Connection, access: Access, rid: str) -> None:
    if not access.unrestricted:
        _visible(ctx, conn, access, ctx.store.read(conn, access.rtype, rid))


def version_visible(ctx: Context, conn: Connection, access: Access, stored: StoredVersion) -> None:
    """Refuse this version of a resource if the access does not reach it (as a vread would)."""
    _visible(ctx, conn, access, stored)


def create(
    ctx: Context, conn: Connection, rtype: str, body: Any, headers: Mapping[str, str]
) -> FHIRResponse:
    access = authz.require(ctx.principal, rtype, "c")
    if access.patient is not None and rtype == "Patient":
        raise Forbidden("a patient's token cannot create Patients")
    confined_write(access, body)
    outcome = service.create(
        conn,
        store=ctx.store,
        resource_type=rtype,
        resource=body,
        if_none_exist=headers.get("if-none-exist"),
    )
    if outcome.stored is not None:
        note(ctx, "create", rtype, outcome.stored.res_id, outcome.stored)
        commit_notes(ctx, conn)
    prefer = parse_prefer(headers.get("prefer"))
    response = resource_response(ctx, outcome, prefer, location=True)
    if not outcome.created and outcome.stored is not None and prefer.ret == "OperationOutcome":
        stored = outcome.stored  # If-None-Exist matched: nothing was created or updated
        response.body = operation_outcome(
            severity="information",
            code="informational",
            diagnostics=f"{stored.res_type}/{stored.res_id} matches If-None-Exist; nothing created",
        )
    return response


def create_with_id(ctx: Context, conn: Connection, rtype: str, resource: Any) -> FHIRResponse:
    """A transaction entry's create whose id was assigned while resolving ``urn:uuid``s."""
    access = authz.require(ctx.principal, rtype, "c")
    if access.patient is not None and rtype == "Patient":
        raise Forbidden("a patient's token cannot create Patients")
    confined_write(access, resource)
    outcome = service.create(
        conn, store=ctx.store, resource_type=rtype, resource=resource, assigned_id=resource["id"]
    )
    if outcome.stored is not None:
        note(ctx, "create", rtype, outcome.stored.res_id, outcome.stored)
        commit_notes(ctx, conn)
    return resource_response(ctx, outcome, Prefer(), location=True)


def update(
    ctx: Context, conn: Connection, rtype: str, rid: str, body: Any, headers: Mapping[str, str]
) -> FHIRResponse:
    access = authz.require(ctx.principal, rtype, "u")
    current_visible(ctx, conn, access, rid)
    confined_write(access, body)
    outcome = service.update(
        conn,
        store=ctx.store,
        resource_type=rtype,
        resource_id=rid,
        resource=body,
        if_match=headers.get("if-match"),
    )
    note(ctx, "create" if outcome.created else "update", rtype, rid, outcome.stored)
    commit_notes(ctx, conn)
    prefer = parse_prefer(headers.get("prefer"))
    return resource_response(ctx, outcome, prefer, location=outcome.created)


def conditional_update(
    ctx: Context,
    conn: Connection,
    rtype: str,
    params: list[tuple[str, str]],
    body: Any,
    headers: Mapping[str, str],
) -> FHIRResponse:
    if not params:
        raise BadRequest("PUT on a type needs search criteria (conditional update)")
    if not authz.require(ctx.principal, rtype, "u").unrestricted:
        raise Forbidden("conditional update is not available to a confined or granular token")
    outcome = service.conditional_update(
        conn,
        store=ctx.store,
        resource_type=rtype,
        criteria=urlencode(params),
        resource=body,
        if_match=headers.get("if-match"),
    )
    if outcome.stored is not None:
        kind = "create" if outcome.created else "update"
        note(ctx, kind, rtype, outcome.stored.res_id, outcome.stored)
        commit_notes(ctx, conn)
    prefer = parse_prefer(headers.get("prefer"))
    return resource_response(ctx, outcome, prefer, location=outcome.created)


def patch(
    ctx: Context, conn: Connection, rtype: str, rid: str, body: Any, headers: Mapping[str, str]
) -> FHIRResponse:
    access = authz.require(ctx.principal, rtype, "u")
    current_visible(ctx, conn, access, rid)
    outcome = service.patch(
        conn,
        store=ctx.store,
        resource_type=rtype,
        resource_id=rid,
        operations=body,
        if_match=headers.get("if-match"),
    )
    if outcome.stored is not None and access.patient is not None:
        confined_write(access, outcome.stored.resource())  # refused: the patch rolls back
    note(ctx, "patch", rtype, rid, outcome.stored)
    commit_notes(ctx, conn)
    return resource_response(ctx, outcome, parse_prefer(headers.get("prefer")))


def delete(ctx: Context, conn: Connection, rtype: str, rid: str) -> FHIRResponse:
    current_visible(ctx, conn, authz.require(ctx.principal, rtype, "d"), rid)
    note(ctx, "delete", rtype, rid, ctx.store.read(conn, rtype, rid))
    service.delete(conn, store=ctx.store, resource_type=rtype, resource_id=rid)
    commit_notes(ctx, conn)
    return FHIRResponse(204)


def history(
    ctx: Context,
    conn: Connection,
    rtype: str,
    rid: str | None,
    params: list[tuple[str, str]],
) -> FHIRResponse:
    access = authz.require(ctx.principal, rtype, "r" if rid else "s")
    kind = "history-instance" if rid else "history-type"
    note(ctx, kind, rtype, rid, ctx.store.read(conn, rtype, rid) if rid else None)
    if rid is None and not access.unrestricted:
        raise Forbidden("type history is not available to a confined or granular token")
    if rid is not None and not access.unrestricted:
        current = ctx.store.read(conn, rtype, rid)
        if current is not None and current.body is None:
            raise Forbidden("the history of a deleted resource needs an unconfined token")
        _visible(ctx, conn, access, current)
    args = dict(params)
    count = ctx.paging.default_count
    if "_count" in args:
        if not args["_count"].isascii() or not args["_count"].isdigit() or int(args["_count"]) < 1:
            raise BadRequest("_count must be a positive whole number")
        count = min(int(args["_count"]), ctx.paging.max_count)
    since = None
    if "_since" in args:
        try:
            since = parse_fhir_date(args["_since"]).low
        except ValueError as exc:
            raise BadRequest(f"_since: {exc}") from exc
    cursor = _history_cursor(args.get("_cursor"))
    page, nxt = service.history(
        conn,
        store=ctx.store,
        resource_type=rtype,
        resource_id=rid,
        count=count,
        since=since,
        cursor=cursor,
    )
    url = f"{ctx.base_url}/{rtype}" + (f"/{rid}" if rid else "") + "/_history"
    links = [{"relation": "self", "url": f"{url}?{_link_params(params)}"}]
    if nxt is not None:
        token = orjson.dumps([nxt[0].isoformat(), nxt[1], nxt[2]]).hex()
        links.append({"relation": "next", "url": f"{url}?{_link_params(params, _cursor=token)}"})
    entries = []
    for v in (cast(StoredVersion, shown(access, v)) for v in page):
        entry: dict[str, Any] = {"fullUrl": f"{ctx.base_url}/{v.res_type}/{v.res_id}"}
        if v.body is not None:
            entry["resource"] = orjson.Fragment(v.body)
        entry["request"] = {
            "method": v.method,
            "url": f"{v.res_type}/{v.res_id}" if v.method != "POST" else v.res_type,
        }
        entry["response"] = {
            "status": {"POST": "201", "DELETE": "204"}.get(v.method, "200"),
            "etag": v.etag,
            "lastModified": format_instant(v.last_updated),
        }
        entries.append(entry)
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "history", "link": links}
    if entries:
        bundle["entry"] = entries
    return FHIRResponse(200, bundle)


def _history_cursor(raw: str | None) -> tuple[Any, ...] | None:
    if not raw:
        return None

    try:
        lu, rid, ver = orjson.loads(bytes.fromhex(raw))
        cursor = (datetime.fromisoformat(lu), str(rid), int(ver))
    except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
        raise BadRequest("the _cursor value is not one this server issued") from exc
    if not 0 < cursor[2] <= service.MAX_VERSION:
        raise BadRequest("the _cursor value is not one this server issued")
    return cursor
