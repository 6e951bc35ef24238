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

router = APIRouter()


def _params(request: Request) -> list[tuple[str, str]]:
    return list(request.query_params.multi_items())


def _headers(request: Request) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.items()}


@router.post("", summary="Transaction or batch Bundle")
async def bundle(request: Request, services: ServicesDep, ctx: ContextDep) -> Response:
    body = await json_body(request, limit=services.settings.max_bundle_bytes)
    prefer = parse_prefer(request.headers.get("prefer"))
    result = await run_sync(bundles.process_bundle, ctx, services.db.write, body, prefer)
    return fhir_response(handlers.FHIRResponse(200, result))


@router.get("/{rtype}", summary="Search")
def search(rtype: str, request: Request, services: ServicesDep, ctx: ContextDep) -> Response:
    prefer = parse_prefer(request.headers.get("prefer"))
    with services.db.read() as conn:
        resp = handlers.search(ctx, conn, rtype, _params(request), prefer)
    return fhir_response(resp)


@router.post("/{rtype}/_search", summary="Search by POST (form-encoded)")
async def search_post(
    rtype: str, request: Request, services: ServicesDep, ctx: ContextDep
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


@router.post("/{rtype}", summary="Create")
async def create(rtype: str, request: Request, services: ServicesDep, ctx: ContextDep) -> Response:
    body = await json_body(request)
    headers = _headers(request)

    def run() -> handlers.FHIRResponse:
        with services.db.write() as conn:
            return handlers.create(ctx, conn, rtype, body, headers)

    return fhir_response(await run_sync(run))


@router.put("/{rtype}", summary="Conditional update")
async def conditional_update(
    rtype: str, request: Request, services: ServicesDep, ctx: ContextDep
) -> Response:
    body = await json_body(request)
    headers, params = _headers(request), _params(request)

    def run() -> handlers.FHIRResponse:
        with services.db.write() as conn:
            return handlers.conditional_update(ctx, conn, rtype, params, body, headers)

    return fhir_response(await run_sync(run))


@router.get("/{rtype}/_history", summary="Type history")
def type_history(rtype: str, request: Request, services: ServicesDep, ctx: ContextDep) -> Response:
    with services.db.read() as conn:
        return fhir_response(handlers.history(ctx, conn, rtype, None, _params(request)))


@router.get("/{rtype}/{rid}", summary="Read")
async def read(
    rtype: str, rid: str, request: Request, services: ServicesDep, ctx: ContextDep
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


@router.put("/{rtype}/{rid}", summary="Update (or create with this id)")
async def update(
    rtype: str, rid: str, request: Request, services: ServicesDep, ctx: ContextDep
) -> Response:
    body = await json_body(request)
    headers = _headers(request)

    def run() -> handlers.FHIRResponse:
        with services.db.write() as conn:
            return handlers.update(ctx, conn, rtype, rid, body, headers)

    return fhir_response(await run_sync(run))


@router.patch("/{rtype}/{rid}", summary="JSON Patch")
async def patch(
    rtype: str, rid: str, request: Request, services: ServicesDep, ctx: ContextDep
) -> Response:
    body = await json_body(request, allowed=PATCH_TYPES)
    headers = _headers(request)

    def run() -> handlers.FHIRResponse:
        with services.db.write() as conn:
            return handlers.patch(ctx, conn, rtype, rid, body, headers)

    return fhir_response(await run_sync(run))


@router.delete("/{rtype}/{rid}", summary="Delete (soft)")
def delete(rtype: str, rid: str, services: ServicesDep, ctx: ContextDep) -> Response:
    with services.db.write() as conn:
        return fhir_response(handlers.delete(ctx, conn, rtype, rid))


@router.get("/{rtype}/{rid}/_history", summary="Instance history")
def instance_history(
    rtype: str, rid: str, request: Request, services: ServicesDep, ctx: ContextDep
) -> Response:
    with services.db.read() as conn:
        return fhir_response(handlers.history(ctx, conn, rtype, rid, _params(request)))


@router.get("/{rtype}/{rid}/_history/{vid}", summary="Version read")
async def vread(rtype: str, rid: str, vid: str, services: ServicesDep, ctx: ContextDep) -> Response:

    def run() -> handlers.FHIRResponse:
        with services.db.read() as conn:
            return handlers.vread(ctx, conn, rtype, rid, vid)

    return fhir_response(await run_lookup(services, run))
