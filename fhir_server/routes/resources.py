"""CRUD, search, history and bundle routes for every served type."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from fhir_server import bundles, handlers
from fhir_server.handlers import parse_prefer
from fhir_server.http import (
    PATCH_TYPES,
    ContextDep,
    ServicesDep,
    fhir_response,
    json_body,
    run_lookup,
    run_sync,
)
from fhir_server.openapi import (
    RESOURCE_ID,
    RESOURCE_TYPE,
    VERSION_ID,
    answers,
    body,
    parameters,
)

router = APIRouter()

_SEARCH = parameters(
    "query",
    {
        "_id": "logical id(s), comma-separated",
        "_lastUpdated": "a date with an optional prefix (ge2026-01-01)",
        "_count": {"type": "integer"},
        "_sort": "parameters to sort by, comma-separated, - for descending",
        "_include": "Type:parameter[:target]",
        "_revinclude": "Type:parameter[:target]",
        "_summary": {"enum": ["true", "false", "count", "text", "data"]},
        "_elements": "elements to return, comma-separated",
        "_total": {"enum": ["none", "estimate", "accurate"]},
        "_cursor": "the next page, from a searchset's next link",
    },
)
_SHAPE = parameters(
    "query",
    {"_summary": {"enum": ["true", "false", "text", "data"]}, "_elements": "comma-separated"},
)
_HISTORY = parameters(
    "query",
    {"_since": "an instant", "_count": {"type": "integer"}, "_cursor": "the next page"},
)
_IF_MATCH = parameters("header", {"If-Match": 'the version updated, W/"3"'})
_FORM = {
    "type": "object",
    "additionalProperties": {"type": "string"},
    "description": "search parameters, as in the query string",
}


def _params(request: Request) -> list[tuple[str, str]]:
    return list(request.query_params.multi_items())


def _headers(request: Request) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.items()}


@router.post(
    "",
    summary="Transaction or batch Bundle",
    responses=answers("Bundle", 200),
    openapi_extra=body("TransactionBundle"),
)
async def bundle(request: Request, services: ServicesDep, ctx: ContextDep) -> Response:
    body = await json_body(request, limit=services.settings.max_bundle_bytes)
    prefer = parse_prefer(request.headers.get("prefer"))
    result = await run_sync(bundles.process_bundle, ctx, services.db.write, body, prefer)
    return fhir_response(handlers.FHIRResponse(200, result))


@router.get("/{rtype}", summary="Search", responses=answers("Bundle", 200), openapi_extra=_SEARCH)
def search(
    rtype: RESOURCE_TYPE, request: Request, services: ServicesDep, ctx: ContextDep
) -> Response:
    prefer = parse_prefer(request.headers.get("prefer"))
    with services.db.read() as conn:
        resp = handlers.search(ctx, conn, rtype, _params(request), prefer)
    return fhir_response(resp)


@router.post(
    "/{rtype}/_search",
    summary="Search by POST (form-encoded)",
    responses=answers("Bundle", 200),
    openapi_extra=body(_FORM, "application/x-www-form-urlencoded"),
)
async def search_post(
    rtype: RESOURCE_TYPE, request: Request, services: ServicesDep, ctx: ContextDep
) -> Response:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media not in ("application/x-www-form-urlencoded", ""):
        from base.errors import UnsupportedMediaType

        raise UnsupportedMediaType("POST _search takes application/x-www-form-urlencoded")
    form = await request.form()
    params = _params(request) + [(k, str(v)) for k, v in form.multi_items()]
    prefer = parse_prefer(request.headers.get("prefer"))

    def run() -> handlers.FHIRResponse:
        with services.db.read() as conn:
            return handlers.search(ctx, conn, rtype, params, prefer)

    return fhir_response(await run_sync(run))


@router.post(
    "/{rtype}",
    summary="Create",
    status_code=201,
    responses=answers("Resource", 201, 200),
    openapi_extra=body("NewResource")
    | parameters("header", {"If-None-Exist": "search criteria: create only if none match"}),
)
async def create(
    rtype: RESOURCE_TYPE, request: Request, services: ServicesDep, ctx: ContextDep
) -> Response:
    body = await json_body(request)
    headers = _headers(request)

    def run() -> handlers.FHIRResponse:
        with services.db.write() as conn:
            return handlers.create(ctx, conn, rtype, body, headers)

    return fhir_response(await run_sync(run))


@router.put(
    "/{rtype}",
    summary="Conditional update",
    responses=answers("Resource", 200, 201),
    openapi_extra=body("NewResource") | _IF_MATCH,
)
async def conditional_update(
    rtype: RESOURCE_TYPE, request: Request, services: ServicesDep, ctx: ContextDep
) -> Response:
    body = await json_body(request)
    headers, params = _headers(request), _params(request)

    def run() -> handlers.FHIRResponse:
        with services.db.write() as conn:
            return handlers.conditional_update(ctx, conn, rtype, params, body, headers)

    return fhir_response(await run_sync(run))


@router.get(
    "/{rtype}/_history",
    summary="Type history",
    responses=answers("Bundle", 200),
    openapi_extra=_HISTORY,
)
def type_history(
    rtype: RESOURCE_TYPE, request: Request, services: ServicesDep, ctx: ContextDep
) -> Response:
    with services.db.read() as conn:
        return fhir_response(handlers.history(ctx, conn, rtype, None, _params(request)))


@router.get(
    "/{rtype}/{rid}", summary="Read", responses=answers("Resource", 200), openapi_extra=_SHAPE
)
async def read(
    rtype: RESOURCE_TYPE, rid: RESOURCE_ID, request: Request, services: ServicesDep, ctx: ContextDep
) -> Response:
    params = _params(request)
    if services.reader is not None:
        answer = await handlers.read_async(ctx, services.reader, rtype, rid, params)
        if answer is not None:
            return fhir_response(answer)

    def run() -> handlers.FHIRResponse:
        with services.db.read() as conn:
            return handlers.read(ctx, conn, rtype, rid, params)

    return fhir_response(await run_lookup(services, run))


@router.put(
    "/{rtype}/{rid}",
    summary="Update (or create with this id)",
    responses=answers("Resource", 200, 201),
    openapi_extra=body("NewResource") | _IF_MATCH,
)
async def update(
    rtype: RESOURCE_TYPE, rid: RESOURCE_ID, request: Request, services: ServicesDep, ctx: ContextDep
) -> Response:
    body = await json_body(request)
    headers = _headers(request)

    def run() -> handlers.FHIRResponse:
        with services.db.write() as conn:
            return handlers.update(ctx, conn, rtype, rid, body, headers)

    return fhir_response(await run_sync(run))


@router.patch(
    "/{rtype}/{rid}",
    summary="JSON Patch",
    responses=answers("Resource", 200),
    openapi_extra=body("JsonPatch", "application/json-patch+json") | _IF_MATCH,
)
async def patch(
    rtype: RESOURCE_TYPE, rid: RESOURCE_ID, request: Request, services: ServicesDep, ctx: ContextDep
) -> Response:
    body = await json_body(request, allowed=PATCH_TYPES)
    headers = _headers(request)

    def run() -> handlers.FHIRResponse:
        with services.db.write() as conn:
            return handlers.patch(ctx, conn, rtype, rid, body, headers)

    return fhir_response(await run_sync(run))


@router.delete("/{rtype}/{rid}", summary="Delete (soft)", status_code=204)
def delete(
    rtype: RESOURCE_TYPE, rid: RESOURCE_ID, services: ServicesDep, ctx: ContextDep
) -> Response:
    with services.db.write() as conn:
        return fhir_response(handlers.delete(ctx, conn, rtype, rid))


@router.get(
    "/{rtype}/{rid}/_history",
    summary="Instance history",
    responses=answers("Bundle", 200),
    openapi_extra=_HISTORY,
)
def instance_history(
    rtype: RESOURCE_TYPE, rid: RESOURCE_ID, request: Request, services: ServicesDep, ctx: ContextDep
) -> Response:
    with services.db.read() as conn:
        return fhir_response(handlers.history(ctx, conn, rtype, rid, _params(request)))


@router.get(
    "/{rtype}/{rid}/_history/{vid}", summary="Version read", responses=answers("Resource", 200)
)
async def vread(
    rtype: RESOURCE_TYPE, rid: RESOURCE_ID, vid: VERSION_ID, services: ServicesDep, ctx: ContextDep
) -> Response:

    def run() -> handlers.FHIRResponse:
        with services.db.read() as conn:
            return handlers.vread(ctx, conn, rtype, rid, vid)

    return fhir_response(await run_lookup(services, run))
