"""FHIR interactions over the store, free of any web framework.

Each function takes the open connection (one unit of work) and keyword-only arguments, applies
the R4 RESTful semantics (https://hl7.org/fhir/R4/http.html) and returns an :class:`Outcome`.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import jsonpatch
from sqlalchemy import Connection, Select, and_, select
from sqlalchemy.exc import DBAPIError

from base.errors import (
    BadRequest,
    Conflict,
    Gone,
    InvalidResource,
    NotFound,
    PreconditionFailed,
    Unprocessable,
)
from conformance.declaration import RESOURCE_TYPES
from resources.search.engine import SearchResult, run_search
from resources.search.query import SearchQuery, parse_query
from resources.store import Current, Store, StoredVersion, V, VersionConflict
from resources.validation import validate_resource

__all__ = [
    "Outcome",
    "conditional_matches",
    "create",
    "delete",
    "history",
    "new_id",
    "parse_etag",
    "patch",
    "read",
    "read_outcome",
    "search",
    "update",
    "vread",
]

ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
# resource_version.version is an Integer (4 bytes on PostgreSQL): no version lies beyond it,
# and a larger number overflows SQLite's driver (OverflowError) before it is compared.
MAX_VERSION = 2**31 - 1
_ETAG = re.compile(r'^\s*(?:W/)?"?(\d+)"?\s*$')


@dataclass(frozen=True, slots=True)
class Outcome:
    """Result of an interaction: status, the version it concerns, and whether it was created."""

    status: int
    stored: StoredVersion | None = None
    created: bool = False


@dataclass(frozen=True, slots=True)
class Paging:
    default_count: int = 20
    max_count: int = 500


def new_id() -> str:
    return str(uuid.uuid4())


def parse_etag(value: str) -> int:
    m = _ETAG.match(value)
    if not m:
        raise BadRequest(f'If-Match must be a version ETag like W/"3", not {value!r}')
    return int(m.group(1))


def check_type(resource_type: str) -> None:
    if resource_type not in RESOURCE_TYPES:
        raise NotFound(f"resource type {resource_type} is not served here")


def check_id(resource_id: str) -> None:
    if not ID_RE.match(resource_id):
        raise BadRequest(f"{resource_id!r} is not a valid FHIR id ([A-Za-z0-9-.]{{1,64}})")


# -- reads ---------------------------------------------------------------------------------
def read(conn: Connection, *, store: Store, resource_type: str, resource_id: str) -> Outcome:
    check_type(resource_type)
    return read_outcome(
        store.read(conn, resource_type, resource_id),
        resource_type=resource_type,
        resource_id=resource_id,
    )


def read_outcome(stored: StoredVersion | None, *, resource_type: str, resource_id: str) -> Outcome:
    """What a read answers, given the current version as fetched (None: never existed)."""
    if stored is None:
        raise NotFound(f"{resource_type}/{resource_id} does not exist")
    if stored.deleted:
        raise Gone(
            f"{resource_type}/{resource_id} was deleted",
            headers={"ETag": stored.etag},
        )
    return Outcome(200, stored)


def vread(
    conn: Connection, *, store: Store, resource_type: str, resource_id: str, version: str
) -> Outcome:
    check_type(resource_type)
    # isdigit() alone admits digits int() refuses, such as "²"
    if not (version.isascii() and version.isdigit()) or int(version) > MAX_VERSION:
        raise NotFound(f"version {version!r} of {resource_type}/{resource_id} does not exist")
    stored = store.vread(conn, resource_type, resource_id, int(version))
    if stored is None:
        raise NotFound(f"{resource_type}/{resource_id}/_history/{version} does not exist")
    if stored.deleted:
        raise Gone(f"{resource_type}/{resource_id} version {version} is a deletion")
    return Outcome(200, stored)


def search(
    conn: Connection,
    *,
    store: Store,
    resource_type: str,
    params: list[tuple[str, str]],
    paging: Paging = Paging(),
    strict: bool = False,
) -> tuple[SearchQuery, SearchResult]:
    check_type(resource_type)
    query = parse_query(
        resource_type, params, default_count=paging.default_count, max_count=paging.max_count
    )
    if query.unknown and strict:
        raise BadRequest(
            f"unknown search parameter(s) for {resource_type}: {', '.join(query.unknown)}",
            expression=query.unknown,
        )
    return query, run_search(conn, store=store, query=query)


def conditional_matches(
    conn: Connection, *, store: Store, resource_type: str, criteria: str
) -> list[StoredVersion]:
    params = parse_qsl(criteria.lstrip("?"), keep_blank_values=True)
    if not params:
        raise BadRequest("conditional criteria are empty")
    query = parse_query(resource_type, params, default_count=2, max_count=2)
    if query.unknown:
        raise PreconditionFailed(
            f"conditional criteria use unknown parameter(s): {', '.join(query.unknown)}"
        )
    query.count, query.total, query.includes = 2, "none", []
    return run_search(conn, store=store, query=query).matches


# -- writes --------------------------------------------------------------------------------
def _write(
    conn: Connection,
    store: Store,
    resource: dict[str, Any],
    method: str,
    expected: Current | None,
    *,
    fresh_id: bool = False,
    changed: frozenset[str] | None = None,
) -> StoredVersion:
    try:
        return store.write(
            conn,
            resource=resource,
            method=method,
            expected=expected,
            fresh_id=fresh_id,
            changed=changed,
        )
    except VersionConflict as exc:
        raise Conflict(f"{exc}; read it again and retry") from exc


def create(
    conn: Connection,
    *,
    store: Store,
    resource_type: str,
    resource: Any,
    if_none_exist: str | None = None,
    assigned_id: str | None = None,
) -> Outcome:
    """POST [base]/[type]: a new resource with a server-assigned id (client ids are ignored)."""
    check_type(resource_type)
    resource = validate_resource(resource, expected_type=resource_type)
    if if_none_exist:
        _lock_conditional(conn, store, resource_type, if_none_exist)
        found = conditional_matches(
            conn, store=store, resource_type=resource_type, criteria=if_none_exist
        )
        if len(found) > 1:
            raise PreconditionFailed(f"If-None-Exist matched several {resource_type} resources")
        if found:
            return Outcome(200, found[0])
    # ``assigned_id``: a transaction minted it already (a new UUID) to resolve urn:uuid refs
    resource["id"] = assigned_id or new_id()
    stored = _write(conn, store, resource, "POST", None, fresh_id=True)
    return Outcome(201, stored, created=True)


def update(
    conn: Connection,
    *,
    store: Store,
    resource_type: str,
    resource_id: str,
    resource: Any,
    if_match: str | None = None,
    trusted: bool = False,
    changed: frozenset[str] | None = None,
) -> Outcome:
    """PUT [base]/[type]/[id]: new version, or create with this id (update-as-create).

    ``trusted``: the server built this body from a stored, valid one (a Slot whose status it
    just changed), so the R4B validation is skipped; never for anything a client sent.
    ``changed``: with ``trusted``, the search parameters whose values changed (the rest of the
    index is left as it is).
    """
    check_type(resource_type)
    check_id(resource_id)
    if not trusted:
        resource = validate_resource(resource, expected_type=resource_type)
    body_id = resource.get("id")
    if body_id is None:
        raise InvalidResource("the resource in a PUT must carry its id", expression=["id"])
    if body_id != resource_id:
        raise InvalidResource(
            f"the body's id {body_id!r} does not match the URL's {resource_id!r}",
            expression=[f"{resource_type}.id"],
        )
    current = store.current(conn, resource_type, resource_id)
    if if_match is not None:
        wanted = parse_etag(if_match)
        if current is None or current.version != wanted:
            have = "nothing" if current is None else f'W/"{current.version}"'
            raise PreconditionFailed(
                f'If-Match W/"{wanted}" does not match the current version ({have})'
            )
    stored = _write(
        conn,
        store,
        resource,
        "PUT",
        current,
        changed=changed if trusted and current is not None and not current.deleted else None,
    )
    created = current is None or current.deleted
    return Outcome(201 if created else 200, stored, created=created)


def conditional_update(
    conn: Connection,
    *,
    store: Store,
    resource_type: str,
    criteria: str,
    resource: Any,
    if_match: str | None = None,
) -> Outcome:
    """PUT [base]/[type]?criteria: update the one match, create if none, 412 if several."""
    check_type(resource_type)
    resource = validate_resource(resource, expected_type=resource_type)
    _lock_conditional(conn, store, resource_type, criteria)
    found = conditional_matches(conn, store=store, resource_type=resource_type, criteria=criteria)
    if len(found) > 1:
        raise PreconditionFailed(f"the criteria matched several {resource_type} resources")
    if found:
        target = found[0].res_id
        if resource.get("id", target) != target:
            raise InvalidResource(
                f"the body's id does not match the resource found ({target})", expression=["id"]
            )
        resource["id"] = target
    else:
        resource.setdefault("id", new_id())
    return update(
        conn,
        store=store,
        resource_type=resource_type,
        resource_id=resource["id"],
        resource=resource,
        if_match=if_match,
    )


def patch(
    conn: Connection,
    *,
    store: Store,
    resource_type: str,
    resource_id: str,
    operations: Any,
    if_match: str | None = None,
) -> Outcome:
    """PATCH with a JSON Patch document (RFC 6902, ``test`` included)."""
    current = read(conn, store=store, resource_type=resource_type, resource_id=resource_id)
    assert current.stored is not None
    if if_match is not None and parse_etag(if_match) != current.stored.version:
        raise PreconditionFailed(
            f'If-Match {if_match} does not match the current version W/"{current.stored.version}"'
        )
    if not isinstance(operations, list) or not all(isinstance(op, dict) for op in operations):
        raise BadRequest("a JSON Patch body is a JSON array of operation objects")
    # Messages never echo the exception text: jsonpatch quotes the whole document (PHI).
    paths = ", ".join(str(op.get("path")) for op in operations)
    try:
        document = jsonpatch.JsonPatch(operations)
    except (jsonpatch.InvalidJsonPatch, jsonpatch.JsonPointerException, TypeError) as exc:
        raise BadRequest(
            "malformed JSON Patch: each operation needs a known op (add, remove, replace, "
            "move, copy, test), a path and, where required, a value or from"
        ) from exc
    try:
        patched = document.apply(current.stored.resource())
    except jsonpatch.JsonPatchTestFailed as exc:
        raise Unprocessable(f"JSON Patch test operation failed (paths: {paths})") from exc
    except jsonpatch.InvalidJsonPatch as exc:  # an operation lacks its value or from
        raise BadRequest(
            f"malformed JSON Patch: an operation lacks a required value or from (paths: {paths})"
        ) from exc
    except (jsonpatch.JsonPatchConflict, jsonpatch.JsonPointerException) as exc:
        raise Unprocessable(
            f"JSON Patch cannot be applied to this resource: a path does not exist or does not "
            f"fit (paths: {paths})"
        ) from exc
    if not isinstance(patched, dict):
        raise Unprocessable("the patch replaced the whole resource with a non-object")
    if patched.get("id") != resource_id or patched.get("resourceType") != resource_type:
        raise Unprocessable("a patch may not change the resource's id or type")
    try:
        validate_resource(patched, expected_type=resource_type)
    except InvalidResource as exc:
        raise Unprocessable(
            f"the patched resource is not valid: {exc.diagnostics}", expression=exc.expression
        ) from exc
    expected = store.current(conn, resource_type, resource_id)
    if expected is None or expected.version != current.stored.version:
        raise Conflict(f"{resource_type}/{resource_id} changed while patching; retry")
    return Outcome(200, _write(conn, store, patched, "PATCH", expected))


def delete(conn: Connection, *, store: Store, resource_type: str, resource_id: str) -> Outcome:
    """DELETE: soft delete (history keeps every version). Deleting twice is harmless."""
    check_type(resource_type)
    current = store.current(conn, resource_type, resource_id)
    if current is None:
        raise NotFound(f"{resource_type}/{resource_id} does not exist")
    if current.deleted:
        return Outcome(204)
    try:
        store.delete(conn, rtype=resource_type, rid=resource_id, expected=current)
    except VersionConflict as exc:
        raise Conflict(str(exc)) from exc
    return Outcome(204)


def _lock_conditional(conn: Connection, store: Store, resource_type: str, criteria: str) -> None:
    """Serialise conditional writes with the same criteria (PostgreSQL advisory lock)."""
    if conn.dialect.name != "postgresql":
        return  # SQLite writes already hold the database lock (BEGIN IMMEDIATE)
    from sqlalchemy import func

    key = f"{resource_type}?{criteria}"
    try:
        conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(key))))
    except DBAPIError as exc:  # pragma: no cover - surfaced as a 500 with an error id
        raise RuntimeError("could not lock conditional criteria") from exc


# -- history ---------------------------------------------------------------------------------
def history(
    conn: Connection,
    *,
    store: Store,
    resource_type: str,
    resource_id: str | None,
    count: int,
    since: Any = None,
    cursor: tuple[Any, ...] | None = None,
) -> tuple[list[StoredVersion], tuple[Any, ...] | None]:
    """Versions newest first; returns the page and the cursor of its last row if more exist."""
    check_type(resource_type)
    if resource_id is not None and store.current(conn, resource_type, resource_id) is None:
        raise NotFound(f"{resource_type}/{resource_id} does not exist")
    stmt: Select[Any] = select(V).where(V.c.res_type == resource_type)
    if resource_id is not None:
        stmt = stmt.where(V.c.res_id == resource_id)
    if since is not None:
        stmt = stmt.where(V.c.last_updated >= since)
    order = (V.c.last_updated, V.c.res_id, V.c.version)
    if cursor is not None:
        lu, rid, ver = cursor
        stmt = stmt.where(
            (V.c.last_updated < lu)
            | and_(V.c.last_updated == lu, V.c.res_id < rid)
            | and_(V.c.last_updated == lu, V.c.res_id == rid, V.c.version < ver)
        )
    rows = conn.execute(stmt.order_by(*(c.desc() for c in order)).limit(count + 1)).all()
    page = store.history_rows(rows[:count])
    nxt = None
    if len(rows) > count and page:
        last = page[-1]
        nxt = (last.last_updated, last.res_id, last.version)
    return page, nxt
