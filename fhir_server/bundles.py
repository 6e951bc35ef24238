"""Transaction and batch Bundles (https://hl7.org/fhir/R4/http.html#transaction).

A transaction runs every entry in one database transaction: all succeed or nothing is kept.
Entries are processed DELETE, POST, PUT/PATCH, GET as the spec orders them; ``urn:uuid`` fullUrls
of created resources are resolved first and every reference to them is rewritten.  A batch runs
each entry in its own transaction and reports each outcome.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from sqlalchemy import Connection

from base.errors import BadRequest, FHIRError, MethodNotAllowed, PreconditionFailed
from fhir_server import handlers
from fhir_server.auditing import kind_of
from fhir_server.handlers import Context, FHIRResponse, Prefer
from resources import service
from resources.service import new_id
from resources.store import format_instant

__all__ = ["process_bundle"]

ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
REASONS = {200: "OK", 201: "Created", 204: "No Content"}

WriteUnit = Callable[[], AbstractContextManager[Connection]]


@dataclass
class Entry:
    index: int
    method: str
    url: str
    resource: Any
    full_url: str | None
    headers: dict[str, str]


def _entries(bundle: dict[str, Any]) -> list[Entry]:
    out = []
    for i, raw in enumerate(bundle.get("entry") or []):
        if not isinstance(raw, dict) or not isinstance(raw.get("request"), dict):
            raise BadRequest(f"Bundle.entry[{i}] has no request", expression=[f"Bundle.entry[{i}]"])
        req = raw["request"]
        method = str(req.get("method", "")).upper()
        url = req.get("url")
        if method not in ORDER or not isinstance(url, str) or not url:
            raise BadRequest(
                f"Bundle.entry[{i}].request needs a method (GET, POST, PUT, PATCH, DELETE) and url",
                expression=[f"Bundle.entry[{i}].request"],
            )
        headers = {}
        for key, name in (
            ("ifNoneExist", "if-none-exist"),
            ("ifMatch", "if-match"),
            ("ifNoneMatch", "if-none-match"),
        ):
            if isinstance(req.get(key), str):
                headers[name] = req[key]
        out.append(Entry(i, method, url, raw.get("resource"), raw.get("fullUrl"), headers))
    return out


def _walk_references(node: Any, mapping: dict[str, str]) -> None:
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str) and ref in mapping:
            node["reference"] = mapping[ref]
        for value in node.values():
            _walk_references(value, mapping)
    elif isinstance(node, list):
        for value in node:
            _walk_references(value, mapping)


def _patch_body(entry: Entry) -> Any:
    res = entry.resource
    if isinstance(res, dict) and res.get("resourceType") == "Binary" and res.get("data"):
        return __import__("orjson").loads(base64.b64decode(res["data"]))
    raise BadRequest(
        f"Bundle.entry[{entry.index}]: a PATCH entry carries a Binary holding a JSON Patch"
    )


def _split(url: str, base_url: str) -> tuple[list[str], list[tuple[str, str]]]:
    if url.startswith(base_url):
        url = url[len(base_url) :]
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    return segments, parse_qsl(parts.query, keep_blank_values=True)


def dispatch(ctx: Context, conn: Connection, entry: Entry, body: Any) -> FHIRResponse:
    """Route one entry to the same handler a standalone request would reach."""
    segs, params = _split(entry.url, ctx.base_url)
    m, h = entry.method, entry.headers
    n = len(segs)
    if m in ("GET", "HEAD"):
        if n == 1:
            return handlers.search(ctx, conn, segs[0], params, Prefer())
        if n == 2 and segs[1] == "_history":
            return handlers.history(ctx, conn, segs[0], None, params)
        if n == 2:
            return handlers.read(ctx, conn, segs[0], segs[1], params)
        if n == 3 and segs[2] == "_history":
            return handlers.history(ctx, conn, segs[0], segs[1], params)
        if n == 4 and segs[2] == "_history":
            return handlers.vread(ctx, conn, segs[0], segs[1], segs[3])
    elif m == "POST" and n == 1:
        return handlers.create(ctx, conn, segs[0], body, h)
    elif m == "PUT" and n == 1:
        return handlers.conditional_update(ctx, conn, segs[0], params, body, h)
    elif m == "PUT" and n == 2:
        return handlers.update(ctx, conn, segs[0], segs[1], body, h)
    elif m == "PATCH" and n == 2:
        return handlers.patch(ctx, conn, segs[0], segs[1], _patch_body(entry), h)
    elif m == "DELETE" and n == 2:
        return handlers.delete(ctx, conn, segs[0], segs[1])
    raise MethodNotAllowed(f"{m} {entry.url} is not an interaction this server supports")


def _response_entry(ctx: Context, resp: FHIRResponse, prefer: Prefer) -> dict[str, Any]:
    status = f"{resp.status} {REASONS.get(resp.status, '')}".strip()
    response: dict[str, Any] = {"status": status}
    if "Location" in resp.headers:
        response["location"] = resp.headers["Location"]
    if resp.stored is not None:
        response["etag"] = resp.stored.etag
        response["lastModified"] = format_instant(resp.stored.last_updated)
    entry: dict[str, Any] = {}
    if resp.stored is not None:
        entry["fullUrl"] = f"{ctx.base_url}/{resp.stored.res_type}/{resp.stored.res_id}"
    body = resp.body
    if body is not None and not (resp.stored is not None and prefer.ret == "minimal"):
        import orjson

        entry["resource"] = orjson.Fragment(body) if isinstance(body, bytes) else body
    entry["response"] = response
    return entry


def _error_entry(exc: FHIRError) -> dict[str, Any]:
    return {"response": {"status": str(exc.status), "outcome": exc.outcome()}}


def _resolve_creates(
    ctx: Context, conn: Connection, entries: list[Entry]
) -> tuple[dict[str, str], dict[int, str]]:
    """Give each POST its id up front (or its match, for ifNoneExist) and map its fullUrl."""
    mapping: dict[str, str] = {}
    existing: dict[int, str] = {}
    for e in entries:
        if e.method != "POST" or not isinstance(e.resource, dict):
            continue
        segs, _ = _split(e.url, ctx.base_url)
        if len(segs) != 1:
            continue
        rtype = segs[0]
        target_id = None
        if "if-none-exist" in e.headers:
            found = service.conditional_matches(
                conn, store=ctx.store, resource_type=rtype, criteria=e.headers["if-none-exist"]
            )
            if len(found) > 1:
                raise PreconditionFailed(
                    f"Bundle.entry[{e.index}]: ifNoneExist matched several {rtype} resources"
                )
            if found:
                target_id = found[0].res_id
                existing[e.index] = target_id
        if target_id is None:
            target_id = new_id()
            e.resource["id"] = target_id
        if e.full_url:
            mapping[e.full_url] = f"{rtype}/{target_id}"
    return mapping, existing


def transaction(
    ctx: Context, unit: WriteUnit, bundle: dict[str, Any], prefer: Prefer
) -> dict[str, Any]:
    entries = _entries(bundle)
    results: dict[int, dict[str, Any]] = {}
    with unit() as conn:
        mapping, existing = _resolve_creates(ctx, conn, entries)
        for e in entries:
            if e.resource is not None:
                _walk_references(e.resource, mapping)
        for e in sorted(entries, key=lambda x: ORDER[x.method]):
            try:
                if e.index in existing:
                    resp = handlers.read(
                        ctx, conn, e.url.split("?")[0].strip("/"), existing[e.index], []
                    )
                elif e.method == "POST" and isinstance(e.resource, dict) and "id" in e.resource:
                    resp = _create_with_id(ctx, conn, e)
                else:
                    resp = dispatch(ctx, conn, e, e.resource)
            except FHIRError as exc:
                exc.diagnostics = f"Bundle.entry[{e.index}] ({e.method} {e.url}): {exc.diagnostics}"
                raise
            results[e.index] = _response_entry(ctx, resp, prefer)
    return {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [results[i] for i in range(len(entries))],
    }


def _create_with_id(ctx: Context, conn: Connection, e: Entry) -> FHIRResponse:
    """A transaction POST whose id was assigned while resolving urn:uuid references."""
    segs, _ = _split(e.url, ctx.base_url)
    return handlers.create_with_id(ctx, conn, segs[0], e.resource)


def batch(ctx: Context, unit: WriteUnit, bundle: dict[str, Any], prefer: Prefer) -> dict[str, Any]:
    out = []
    for e in _entries(bundle):
        noted = len(ctx.trail.facts) if ctx.trail is not None else 0
        try:
            with unit() as conn:
                resp = dispatch(ctx, conn, e, e.resource)
            out.append(_response_entry(ctx, resp, prefer))
        except FHIRError as exc:
            _entry_failed(ctx, e, exc, noted)
            out.append(_error_entry(exc))
    return {"resourceType": "Bundle", "type": "batch-response", "entry": out}


def _entry_failed(ctx: Context, e: Entry, exc: FHIRError, noted: int) -> None:
    """A failed batch entry's accesses are audited as failures (its transaction, and any
    record staged in it, rolled back); one refused before touching anything, by its URL."""
    trail = ctx.trail
    if trail is None:
        return
    trail.staged = min(trail.staged, noted)
    outcome = "minor" if exc.status < 500 else "serious"
    why = f"{exc.message_id} {exc.code}"
    for fact in trail.facts[noted:]:
        fact.outcome, fact.description = outcome, why
    if len(trail.facts) == noted:
        path = "/fhir/" + e.url.split("?")[0].strip("/")
        trail.note(kind_of(e.method, path), outcome=outcome, description=why)


def process_bundle(ctx: Context, unit: WriteUnit, bundle: Any, prefer: Prefer) -> dict[str, Any]:
    """POST [base] with a transaction or batch Bundle."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise BadRequest("POST to the base URL takes a Bundle", expression=["resourceType"])
    kind = bundle.get("type")
    if not isinstance(bundle.get("entry", []), list):
        raise BadRequest("Bundle.entry must be a list", expression=["Bundle.entry"])
    if kind == "transaction":
        return transaction(ctx, unit, bundle, prefer)
    if kind == "batch":
        return batch(ctx, unit, bundle, prefer)
    raise BadRequest(
        f"Bundle.type must be transaction or batch, not {kind!r}", expression=["Bundle.type"]
    )
