"""FastAPI glue: the services object, body parsing with content negotiation, responses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from fhir_server.errors import FHIRError, UnsupportedMediaType
from fhir_server.handlers import FHIR_JSON, Context, FHIRResponse
from fhir_server.scheduling.config import ClinicConfig
from fhir_server.settings import Settings
from resources.sql.async_reads import AsyncReader
from resources.sql.engine import Database
from resources.store import Store
from resources.validation import parse_json

__all__ = ["Services", "ServicesDep", "fhir_response", "json_body", "run_lookup", "run_sync"]

T = TypeVar("T")

JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")
PATCH_TYPES = ("application/json-patch+json",)


@dataclass
class Services:
    settings: Settings
    db: Database
    store: Store
    ctx: Context
    reader: AsyncReader | None = None  # PostgreSQL only: async read-by-id
    clinic: ClinicConfig | None = None  # the rules $find applies


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def json_body(request: Request, *, allowed: tuple[str, ...] = JSON_TYPES) -> Any:
    media = _media_type(request)
    if media not in allowed:
        raise UnsupportedMediaType(
            f"Content-Type {media or '(none)'} is not accepted here; send {allowed[0]}"
        )
    return parse_json(await request.body())


def fhir_response(resp: FHIRResponse) -> Response:
    content = resp.content()
    headers = dict(resp.headers)
    return Response(
        content=content,
        status_code=resp.status,
        headers=headers,
        media_type=FHIR_JSON if content else None,
    )


def error_response(exc: FHIRError, request_id: str | None = None) -> Response:
    import orjson

    headers = dict(exc.headers)
    if request_id:
        headers["X-Request-ID"] = request_id
    return Response(
        content=orjson.dumps(exc.outcome()),
        status_code=exc.status,
        headers=headers,
        media_type=FHIR_JSON,
    )


async def run_sync(fn: Any, *args: Any) -> Any:
    return await run_in_threadpool(fn, *args)


async def run_lookup(services: Services, fn: Callable[[], T]) -> T:
    """Run a bounded primary-key lookup.

    On the embedded SQLite database the call is an in-process B-tree read that never waits for
    a lock (WAL readers do not block), so it runs inline: a thread hop costs more than the read
    and halves throughput (see BENCHMARKS.md). PostgreSQL lookups wait on the network, so they
    go to the thread pool like everything else.
    """
    if services.db.is_sqlite:
        return fn()
    return await run_in_threadpool(fn)
