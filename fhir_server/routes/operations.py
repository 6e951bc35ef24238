"""Scheduling operations: ``Appointment/$find``, ``$hold`` and ``$book`` (IHE ITI-115/116/117)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request, Response

from base.errors import Conflict
from conformance.operations import OPERATIONS, require_parameters
from fhir_server import handlers, scheduling_handlers
from fhir_server.http import (
    ContextDep,
    Services,
    ServicesDep,
    fhir_response,
    json_body,
    run_lookup,
    run_sync,
)
from fhir_server.openapi import answers, parameters
from fhir_server.openapi_operations import operation_body, operation_query
from scheduling.booking import KeyInFlight
from scheduling.find import parameters_pairs

router = APIRouter()


def _pairs(operation: str, body: Any) -> list[tuple[str, Any]]:
    """An operation's POSTed input as (name, value) pairs; a body that is not Parameters is
    answered with what the operation takes."""
    return parameters_pairs(require_parameters(OPERATIONS[operation], body))


@router.get(
    "/Appointment/$find",
    summary="Find bookable appointments (IHE ITI-115)",
    responses=answers("Bundle", 200),
    openapi_extra=operation_query("appointment-find"),
)
async def find_get(request: Request, services: ServicesDep, ctx: ContextDep) -> Response:
    params: list[tuple[str, Any]] = list(request.query_params.multi_items())
    return await _find(services, ctx, params)


@router.post(
    "/Appointment/$find",
    summary="Find bookable appointments (IHE ITI-115)",
    responses=answers("Bundle", 200),
    openapi_extra=operation_body("appointment-find"),
)
async def find_post(request: Request, services: ServicesDep, ctx: ContextDep) -> Response:
    params = _pairs("appointment-find", await json_body(request))
    return await _find(services, ctx, params)


async def _find(
    services: Services, ctx: handlers.Context, params: list[tuple[str, Any]]
) -> Response:
    now = datetime.now(UTC)
    if services.reader is not None:  # PostgreSQL
        resp = await scheduling_handlers.find_async(
            ctx, services.reader, services.db, services.clinic, params, now=now
        )
        return fhir_response(resp)

    parsed = scheduling_handlers.parse_quietly(ctx, params)

    def run() -> handlers.FHIRResponse:
        with services.db.read() as conn:
            return scheduling_handlers.find(
                ctx, conn, services.clinic, params, now=now, parsed=parsed
            )

    if scheduling_handlers.find_is_small(services.clinic, parsed):
        return fhir_response(await run_lookup(services, run))
    return fhir_response(await run_sync(run))


@router.post(
    "/Appointment/$hold",
    summary="Hold a proposed appointment (IHE ITI-116)",
    responses=answers("Resource", 200),
    openapi_extra=operation_body("appointment-hold"),
)
async def hold(request: Request, services: ServicesDep, ctx: ContextDep) -> Response:
    pairs = _pairs("appointment-hold", await json_body(request))

    def run() -> handlers.FHIRResponse:
        with services.db.write() as conn:
            return scheduling_handlers.hold(
                ctx, conn, services.clinic, pairs, now=datetime.now(UTC)
            )

    return fhir_response(await run_sync(run))


@router.post(
    "/Appointment/$book",
    summary="Book an appointment (IHE ITI-117)",
    responses=answers("Resource", 200, 201),
    openapi_extra=operation_body("appointment-book")
    | parameters("header", {"Idempotency-Key": "a retry with the same key gets the first answer"}),
)
async def book(request: Request, services: ServicesDep, ctx: ContextDep) -> Response:
    pairs = _pairs("appointment-book", await json_body(request))
    key = request.headers.get("idempotency-key")

    def run() -> handlers.FHIRResponse:
        now = datetime.now(UTC)
        try:
            with services.db.write() as conn:
                return scheduling_handlers.book(
                    ctx, conn, services.clinic, pairs, now=now, idempotency_key=key
                )
        except KeyInFlight as exc:
            with services.db.read() as conn:
                replayed = scheduling_handlers.replay_book(ctx, conn, exc.key)
            if replayed is None:
                raise Conflict("a request with this idempotency key is still in progress") from None
            return replayed

    try:
        answer: handlers.FHIRResponse = await run_sync(run)
    except Exception as exc:
        services.metrics.book_failed(exc)
        raise
    services.metrics.booked(answer.status, _cancelled(answer))
    return fhir_response(answer)


def _cancelled(answer: handlers.FHIRResponse) -> bool:
    """Whether a 200 from $book cancelled (else it modified); a 201 booked."""
    if answer.status != 200 or answer.stored is None or answer.stored.body is None:
        return False
    return answer.stored.resource().get("status") == "cancelled"
