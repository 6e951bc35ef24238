"""``/metadata``, custom SearchParameters and health endpoints."""

from __future__ import annotations

from fastapi import APIRouter, Response
from sqlalchemy import text

from base.errors import NotFound
from conformance.capability import capability_statement, search_parameter_resource
from conformance.operations import OPERATIONS, operation_definition
from fhir_server.handlers import FHIRResponse
from fhir_server.http import ServicesDep, fhir_response
from fhir_server.openapi import answers

router = APIRouter()
health = APIRouter()
RELEASED = "2026-11-22"


@router.get("/metadata", summary="CapabilityStatement", responses=answers("Resource", 200))
def metadata(services: ServicesDep) -> Response:
    body = capability_statement(base_url=services.ctx.base_url, released=RELEASED)
    return fhir_response(FHIRResponse(200, body))


@router.get(
    "/SearchParameter/{sp_id}",
    summary="Read a custom SearchParameter",
    responses=answers("Resource", 200),
)
def read_search_parameter(sp_id: str) -> Response:
    found = search_parameter_resource(sp_id)
    if found is None:
        raise NotFound(f"SearchParameter/{sp_id} is not defined by this server")
    return fhir_response(FHIRResponse(200, found))


@router.get(
    "/OperationDefinition/{op_id}",
    summary="Read an OperationDefinition",
    responses=answers("Resource", 200),
)
def read_operation_definition(op_id: str) -> Response:
    op = OPERATIONS.get(op_id)
    if op is None:
        raise NotFound(f"OperationDefinition/{op_id} is not defined by this server")
    return fhir_response(FHIRResponse(200, operation_definition(op)))


@health.get("/healthz", summary="Liveness")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@health.get("/readyz", summary="Readiness: the database answers")
def readyz(services: ServicesDep) -> dict[str, str]:
    with services.db.read() as conn:
        conn.execute(text("SELECT 1"))
    return {"status": "ready"}
