"""Interactions as framework-free request → response functions.

The FastAPI routes and the Bundle processor both call these, so a bundle entry behaves exactly
like the same request sent alone.  Bodies are built as plain dicts (or stored JSON bytes spliced
in with ``orjson.Fragment``) and serialised once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlencode

import orjson
from anyio import to_thread
from sqlalchemy import Connection

from conformance.operations import OPERATIONS, parse_operation
from fhir_server import authz
from fhir_server.authz import Access
from fhir_server.errors import (
    BadRequest,
    FHIRError,
    Forbidden,
    Unprocessable,
    operation_outcome,
)
from fhir_server.scheduling import booking
from fhir_server.scheduling.config import ClinicConfig
from fhir_server.scheduling.find import (
    FindRequest,
    Found,
    compute_options,
    find_options,
    parse_find,
    plan_find,
    proposed_appointment,
    read_calendar_async,
    schedule_days,
)
from fhir_server.shaping import apply_elements, apply_summary
from resources import service
from resources.fhirdate import parse_fhir_date
from resources.search.engine import SearchResult
from resources.search.query import SearchQuery
from resources.service import Outcome, Paging
from resources.sql.async_reads import AsyncReader
from resources.sql.engine import Database
from resources.store import Store, StoredVersion, format_instant
from security.principal import Principal
from security.trail import Trail

__all__ = ["Context", "FHIRResponse", "Prefer", "parse_prefer"]

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
def _patients(rtype: str, rid: str, stored: StoredVersion | None) -> set[str]:
    """The Patients whose data a resource is: the Patient itself, an Appointment's patients."""
    if rtype == "Patient":
        return {rid}
    if rtype == "Appointment" and stored is not None and stored.body is not None:
        return authz.patients_in(stored.resource())
    return set()


def _note(
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
    found = patients if patients is not None else (_patients(rtype, rid, stored) if rid else set())
    refs = [f"{rtype}/{rid}"] if rid else []
    ctx.trail.note(kind, refs=refs, patients=found, query=query)


def _commit_notes(ctx: Context, conn: Connection) -> None:
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


def read(
    ctx: Context, conn: Connection, rtype: str, rid: str, params: list[tuple[str, str]]
) -> FHIRResponse:
    access = authz.require(ctx.principal, rtype, "r")
    _note(ctx, "read", rtype, rid, patients=set())
    outcome = service.read(conn, store=ctx.store, resource_type=rtype, resource_id=rid)
    _renote(ctx, rtype, rid, outcome.stored)
    _visible(ctx, conn, access, outcome.stored)
    return read_response(ctx, outcome, params)


def _renote(ctx: Context, rtype: str, rid: str, stored: StoredVersion | None) -> None:
    """The last note, now that the resource (and so its patients) is known."""
    if ctx.trail is not None and ctx.trail.facts:
        ctx.trail.facts[-1].patients = _patients(rtype, rid, stored)


async def read_async(
    ctx: Context, reader: AsyncReader, rtype: str, rid: str, params: list[tuple[str, str]]
) -> FHIRResponse | None:
    """Read-by-id over an async PostgreSQL connection (same answers as :func:`read`); None
    when a granular scope needs a search to check the resource (use :func:`read` then)."""
    access = authz.require(ctx.principal, rtype, "r")
    if access.filters != [()]:
        return None
    _note(ctx, "read", rtype, rid, patients=set())
    service.check_type(rtype)
    row = await reader.current(rtype, rid)
    stored = ctx.store.open_row(row) if row is not None else None
    _renote(ctx, rtype, rid, stored)
    _visible(ctx, None, access, stored)
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
    _note(ctx, "vread", rtype, rid, patients=set())
    outcome = service.vread(
        conn, store=ctx.store, resource_type=rtype, resource_id=rid, version=vid
    )
    _renote(ctx, rtype, rid, outcome.stored)
    _visible(ctx, conn, access, outcome.stored)
    return resource_response(ctx, outcome, Prefer())


def search(
    ctx: Context, conn: Connection, rtype: str, params: list[tuple[str, str]], prefer: Prefer
) -> FHIRResponse:
    access = authz.require(ctx.principal, rtype, "s")
    params = access.search_params(params)
    _note(ctx, "search-type", rtype, query=f"{rtype}?{urlencode(params)}", patients=set())
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
            touched |= _patients(found.res_type, found.res_id, found)
        ctx.trail.facts[-1].patients = touched
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


def _confined_write(access: Access, body: Any) -> None:
    """A patient-confined token writes only its own patient's resources."""
    if access.patient is None:
        return
    if access.rtype == "Patient" and isinstance(body, dict) and body.get("id") != access.patient:
        raise Forbidden("a patient's token cannot create or change another Patient")
    if access.rtype == "Appointment":
        named = authz.patients_in(body) if isinstance(body, dict) else set()
        if named != {access.patient}:
            raise Forbidden("a patient's token books only for that patient (and no one else)")


def _current_visible(ctx: Context, conn: Connection, access: Access, rid: str) -> None:
    if not access.unrestricted:
        _visible(ctx, conn, access, ctx.store.read(conn, access.rtype, rid))


def create(
    ctx: Context, conn: Connection, rtype: str, body: Any, headers: Mapping[str, str]
) -> FHIRResponse:
    access = authz.require(ctx.principal, rtype, "c")
    if access.patient is not None and rtype == "Patient":
        raise Forbidden("a patient's token cannot create Patients")
    _confined_write(access, body)
    outcome = service.create(
        conn,
        store=ctx.store,
        resource_type=rtype,
        resource=body,
        if_none_exist=headers.get("if-none-exist"),
    )
    if outcome.stored is not None:
        _note(ctx, "create", rtype, outcome.stored.res_id, outcome.stored)
        _commit_notes(ctx, conn)
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
    _confined_write(access, resource)
    outcome = service.create(
        conn, store=ctx.store, resource_type=rtype, resource=resource, assigned_id=resource["id"]
    )
    if outcome.stored is not None:
        _note(ctx, "create", rtype, outcome.stored.res_id, outcome.stored)
        _commit_notes(ctx, conn)
    return resource_response(ctx, outcome, Prefer(), location=True)


def update(
    ctx: Context, conn: Connection, rtype: str, rid: str, body: Any, headers: Mapping[str, str]
) -> FHIRResponse:
    access = authz.require(ctx.principal, rtype, "u")
    _current_visible(ctx, conn, access, rid)
    _confined_write(access, body)
    outcome = service.update(
        conn,
        store=ctx.store,
        resource_type=rtype,
        resource_id=rid,
        resource=body,
        if_match=headers.get("if-match"),
    )
    _note(ctx, "create" if outcome.created else "update", rtype, rid, outcome.stored)
    _commit_notes(ctx, conn)
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
        _note(ctx, kind, rtype, outcome.stored.res_id, outcome.stored)
        _commit_notes(ctx, conn)
    prefer = parse_prefer(headers.get("prefer"))
    return resource_response(ctx, outcome, prefer, location=outcome.created)


def patch(
    ctx: Context, conn: Connection, rtype: str, rid: str, body: Any, headers: Mapping[str, str]
) -> FHIRResponse:
    access = authz.require(ctx.principal, rtype, "u")
    _current_visible(ctx, conn, access, rid)
    outcome = service.patch(
        conn,
        store=ctx.store,
        resource_type=rtype,
        resource_id=rid,
        operations=body,
        if_match=headers.get("if-match"),
    )
    if outcome.stored is not None and access.patient is not None:
        _confined_write(access, outcome.stored.resource())  # refused: the patch rolls back
    _note(ctx, "patch", rtype, rid, outcome.stored)
    _commit_notes(ctx, conn)
    return resource_response(ctx, outcome, parse_prefer(headers.get("prefer")))


def delete(ctx: Context, conn: Connection, rtype: str, rid: str) -> FHIRResponse:
    _current_visible(ctx, conn, authz.require(ctx.principal, rtype, "d"), rid)
    _note(ctx, "delete", rtype, rid, ctx.store.read(conn, rtype, rid))
    service.delete(conn, store=ctx.store, resource_type=rtype, resource_id=rid)
    _commit_notes(ctx, conn)
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
    _note(ctx, kind, rtype, rid, ctx.store.read(conn, rtype, rid) if rid else None)
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
        if not args["_count"].isdigit() or int(args["_count"]) < 1:
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
    for v in page:
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
    from datetime import datetime

    try:
        lu, rid, ver = orjson.loads(bytes.fromhex(raw))
        return (datetime.fromisoformat(lu), str(rid), int(ver))
    except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
        raise BadRequest("the _cursor value is not one this server issued") from exc


def _clinic(config: ClinicConfig | None) -> ClinicConfig:
    if config is None:
        raise Unprocessable("no clinic is configured here; set FHIRSCHED_CLINIC_FILE")
    return config


def find(
    ctx: Context,
    conn: Connection,
    config: ClinicConfig | None,
    params: list[tuple[str, Any]],
    *,
    now: datetime,
) -> FHIRResponse:
    """Appointment/$find: a searchset Bundle of proposed Appointments, ordered by start."""
    access = authz.require(ctx.principal, "Appointment", "$find")
    config = _clinic(config)
    request = _confine_find(access, parse_find(params, max_count=ctx.paging.max_count))
    _note_find(ctx, params, request)
    found = find_options(
        conn, store=ctx.store, config=config, request=request, now=now, limit=request.count
    )
    return _find_bundle(config, request, found)


def _note_find(ctx: Context, params: list[tuple[str, Any]], request: FindRequest) -> None:
    shown = [(k, "(Patient resource)" if k == "patient-resource" else str(v)) for k, v in params]
    patients = {request.patient_id} if request.patient_id else set()
    query = f"Appointment/$find?{urlencode(shown)}"
    _note(ctx, "$find", "Appointment", query=query, patients=patients)


async def find_async(
    ctx: Context,
    reader: AsyncReader,
    db: Database,
    config: ClinicConfig | None,
    params: list[tuple[str, Any]],
    *,
    now: datetime,
) -> FHIRResponse:
    """``$find`` on PostgreSQL: the reads on async connections, the rules inline when the
    window is small (in the thread pool when not). A ``patient-resource`` needs a Patient
    search, which runs on the synchronous path."""
    access = authz.require(ctx.principal, "Appointment", "$find")
    config = _clinic(config)
    request = _confine_find(access, parse_find(params, max_count=ctx.paging.max_count))
    if request.patient_resource is not None:

        def run() -> FHIRResponse:
            with db.read() as conn:
                return find(ctx, conn, config, params, now=now)

        return await to_thread.run_sync(run)
    _note_find(ctx, params, request)
    plan = plan_find(config, request)
    calendar = await read_calendar_async(reader, plan, request, now)

    def compute() -> Found:
        return compute_options(config, plan, request, calendar, now=now, limit=request.count)

    if schedule_days(config, request) <= SMALL_FIND_SCHEDULE_DAYS:
        found = compute()
    else:
        found = await to_thread.run_sync(compute)
    return _find_bundle(config, request, found)


def _confine_find(access: Access, request: FindRequest) -> FindRequest:
    """A patient's token finds only for that patient."""
    if access.patient is None:
        return request
    if request.patient_resource is not None:
        raise Forbidden("a patient's token finds for its own patient: use patient-reference")
    if request.patient_id not in (None, access.patient):
        raise Forbidden("a patient's token finds only for that patient")
    return replace(request, patient_id=access.patient)


def _find_bundle(config: ClinicConfig, request: FindRequest, found: Found) -> FHIRResponse:
    entries = [
        {
            "resource": proposed_appointment(config, o, patient_id=request.patient_id),
            "search": {"mode": "match"},
        }
        for o in found.options
    ]
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": found.total}
    if entries:
        bundle["entry"] = entries
    return FHIRResponse(200, bundle)


# A $find over at most this many schedule-days (a whole 50-practitioner clinic for two days:
# a few milliseconds) may run on the event loop where lookups do (SQLite, see
# http.run_lookup); anything larger goes to the thread pool so it cannot stall other requests.
SMALL_FIND_SCHEDULE_DAYS = 100


def find_is_small(ctx: Context, config: ClinicConfig | None, params: list[tuple[str, Any]]) -> bool:
    """Whether a ``$find`` is cheap enough to run inline (invalid ones fail fast: yes)."""
    if config is None:
        return True
    try:
        request = parse_find(params, max_count=ctx.paging.max_count)
    except FHIRError:
        return True
    return schedule_days(config, request) <= SMALL_FIND_SCHEDULE_DAYS


def _operation_appointment(
    op_id: str, params: list[tuple[str, Any]]
) -> tuple[Any, str | None, dict[str, list[Any]]]:
    values = parse_operation(OPERATIONS[op_id], params)
    resource = values.get("appointment-resource", [None])[0]
    reference = values.get("appointment-reference", [None])[0]
    if resource is None and reference is None:
        raise BadRequest("give appointment-resource or appointment-reference")
    return resource, reference, values


def hold(
    ctx: Context,
    conn: Connection,
    config: ClinicConfig | None,
    params: list[tuple[str, Any]],
    *,
    now: datetime,
) -> FHIRResponse:
    """Appointment/$hold (ITI-116): a pending Appointment and an ``Expires`` header."""
    access = authz.require(ctx.principal, "Appointment", "$hold")
    config = _clinic(config)
    resource, reference, _ = _operation_appointment("appointment-hold", params)
    if access.patient is not None:
        if reference is not None:
            raise Forbidden("a patient's token holds a proposed appointment-resource")
        _confined_write(access, resource)
    _note_operation(ctx, "$hold", resource)
    stored, expires = booking.hold(
        conn, store=ctx.store, config=config, appointment=resource, now=now
    )
    _operation_done(ctx, conn, stored)
    headers = {
        "Expires": format_datetime(expires.astimezone(UTC), usegmt=True),
        **version_headers(stored),
    }
    return FHIRResponse(200, stored.body, headers, stored)


def book(
    ctx: Context,
    conn: Connection,
    config: ClinicConfig | None,
    params: list[tuple[str, Any]],
    *,
    now: datetime,
    idempotency_key: str | None = None,
) -> FHIRResponse:
    """Appointment/$book (ITI-117): book (201), modify a booked one (200), cancel (status
    cancelled, 200), or reschedule (``cancelled-appt-id``: the old one is cancelled only if the
    new one is booked; 201)."""
    access = authz.require(ctx.principal, "Appointment", "$book")
    resource, reference, values = _operation_appointment("appointment-book", params)
    old = values.get("cancelled-appointment-id", [None])[0]
    if access.patient is not None:
        _confine_book(ctx, conn, access, resource, reference, old)
    _note_operation(ctx, "$book", resource, old)
    config = _clinic(config)
    action = _book_action(ctx, conn, resource, old)
    key = _idempotency_key(idempotency_key, resource, action)
    if key is not None:
        prior = booking.claim_key(conn, key, now)
        if prior is not None:  # a retry: the first result, never a second booking
            first = ctx.store.vread(conn, prior.res_type, prior.res_id, prior.version)
            assert first is not None
            _operation_done(ctx, conn, first)
            return FHIRResponse(int(prior.status), first.body, version_headers(first), first)
    status = 200
    if action == "cancel":
        stored = booking.cancel(
            conn,
            store=ctx.store,
            config=config,
            appointment_id=str(resource["id"]),
            now=now,
            reason=resource.get("cancelationReason"),
        )
    elif action == "modify":
        stored = booking.modify(conn, store=ctx.store, config=config, appointment=resource, now=now)
    else:
        if old:  # one transaction: if the new booking fails, the cancellation rolls back too
            booking.cancel(
                conn,
                store=ctx.store,
                config=config,
                appointment_id=str(old).split("/")[-1],
                now=now,
            )
        stored = booking.book_new(
            conn,
            store=ctx.store,
            config=config,
            appointment=resource,
            reference=reference,
            now=now,
        )
        status = 201
    if key is not None:
        booking.remember(conn, key, status, stored)
    _operation_done(ctx, conn, stored)
    headers = version_headers(stored)
    if status == 201:
        location = f"{ctx.base_url}/Appointment/{stored.res_id}/_history/{stored.version}"
        headers["Location"] = location
    return FHIRResponse(status, stored.body, headers, stored)


def _note_operation(ctx: Context, kind: str, resource: Any, old: Any = None) -> None:
    """Noted before acting, so a refused or failed attempt is audited with its patient."""
    if ctx.trail is None:
        return
    patients = authz.patients_in(resource) if isinstance(resource, dict) else set()
    refs = []
    if isinstance(resource, dict) and resource.get("id"):
        refs.append(f"Appointment/{resource['id']}")
    if old:
        refs.append(f"Appointment/{str(old).split('/')[-1]}")
    ctx.trail.note(kind, refs=refs, patients=patients)


def _operation_done(ctx: Context, conn: Connection, stored: StoredVersion) -> None:
    if ctx.trail is None:
        return
    fact = ctx.trail.facts[-1]
    ref = f"Appointment/{stored.res_id}"
    if ref not in fact.refs:
        fact.refs.insert(0, ref)
    fact.patients |= _patients("Appointment", stored.res_id, stored)
    _commit_notes(ctx, conn)


def _confine_book(
    ctx: Context, conn: Connection, access: Access, resource: Any, reference: Any, old: Any
) -> None:
    """A patient's token books, changes and cancels only that patient's appointments."""
    if reference is not None:
        target = str(reference.get("reference") if isinstance(reference, dict) else reference)
        _current_visible(ctx, conn, access, target.split("/")[-1])
    if isinstance(resource, dict):
        if resource.get("id"):
            _current_visible(ctx, conn, access, str(resource["id"]))
        if resource.get("status") != "cancelled" or resource.get("participant"):
            _confined_write(access, resource)
    if old:
        _current_visible(ctx, conn, access, str(old).split("/")[-1])


def _book_action(ctx: Context, conn: Connection, resource: Any, old: Any) -> str:
    """What a ``$book`` asks for: ``cancel``, ``modify``, ``reschedule`` or ``book``."""
    if isinstance(resource, dict) and resource.get("status") == "cancelled":
        if not resource.get("id"):
            raise BadRequest("a cancellation names the Appointment by its id")
        return "cancel"
    if old:
        return f"reschedule:{str(old).split('/')[-1]}"
    if isinstance(resource, dict) and resource.get("id"):
        stored = ctx.store.read(conn, "Appointment", str(resource["id"]))
        if stored and not stored.deleted and stored.resource().get("status") == "booked":
            return "modify"
    return "book"


def _idempotency_key(header: str | None, resource: Any, action: str) -> str | None:
    """``Idempotency-Key`` header, else the Appointment's first identifier (system|value) for
    that action: a modification, whose content differs each time, needs the header."""
    if header:
        return f"header:{header.strip()[:150]}"
    if isinstance(resource, dict) and action != "modify":
        for ident in resource.get("identifier", []):
            if isinstance(ident, dict) and ident.get("value"):
                prefix = "identifier" if action == "book" else f"identifier:{action}"
                return f"{prefix}:{ident.get('system', '')}|{ident['value']}"[:200]
    return None


def replay_book(ctx: Context, conn: Connection, key: str) -> FHIRResponse | None:
    """After losing a race on the idempotency key: the winner's result."""
    found = booking.replay(conn, ctx.store, key)
    if found is None:
        return None
    status, stored = found
    return FHIRResponse(status, stored.body, version_headers(stored), stored)
