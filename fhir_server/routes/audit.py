"""AuditEvent over FHIR: read and search for compliance officers and audit clients only
(``fhir_server/audit_handlers.py``); every change refused (405) for everyone, whatever their
token."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from base.errors import MethodNotAllowed
from fhir_server import audit_handlers
from fhir_server.handlers import FHIRResponse
from fhir_server.http import ContextDep, ServicesDep, fhir_response, run_lookup, run_sync
from fhir_server.openapi import RESOURCE_ID, answers

router = APIRouter()


@router.get(
    "/AuditEvent", summary="Search the audit log (compliance)", responses=answers("Bundle", 200)
)
async def audit_search(request: Request, services: ServicesDep, ctx: ContextDep) -> Response:
    params = list(request.query_params.multi_items())

    def run() -> FHIRResponse:
        with services.db.read() as conn:
            return audit_handlers.search_log(ctx, conn, params)

    return fhir_response(await run_sync(run))


@router.get(
    "/AuditEvent/{event_id}",
    summary="Read one audit record (compliance)",
    responses=answers("Resource", 200),
)
async def audit_read(event_id: RESOURCE_ID, services: ServicesDep, ctx: ContextDep) -> Response:
    def run() -> FHIRResponse:
        with services.db.read() as conn:
            return audit_handlers.read(ctx, conn, event_id)

    return fhir_response(await run_lookup(services, run))


@router.api_route(
    "/AuditEvent", methods=["POST", "PUT", "PATCH", "DELETE"], include_in_schema=False
)
@router.api_route(
    "/AuditEvent/{event_id}", methods=["POST", "PUT", "PATCH", "DELETE"], include_in_schema=False
)
async def audit_immutable(request: Request) -> Response:
    raise MethodNotAllowed(
        f"{request.method} is not allowed: the audit log is written by the server only and "
        "never changed",
        headers={"Allow": "GET"},
    )
