"""FastAPI glue: the services object, body parsing with content negotiation, responses."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from base.errors import (
    BadRequest,
    FHIRError,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
)
from fhir_server.handlers import FHIR_JSON, Context, FHIRResponse
from fhir_server.metrics import Metrics
from fhir_server.settings import Settings
from resources.sql.async_reads import AsyncReader
from resources.sql.engine import Database
from resources.store import Store
from resources.validation import parse_json
from scheduling.config import ClinicConfig
from security.balp import Actor
from security.principal import Principal
from security.smart.server import SmartServer
from security.smart.tokens import (
    ACTIVE_ACCESS_SQL,
    active_principal,
    digest,
    principal_from_row,
    revocations,
)
from security.trail import Trail

__all__ = [
    "CONVERSATION_HEADER",
    "ContextDep",
    "PrincipalDep",
    "Services",
    "ServicesDep",
    "conversation_id",
    "fhir_response",
    "json_body",
    "run_lookup",
    "run_sync",
]

T = TypeVar("T")

JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")
PATCH_TYPES = ("application/json-patch+json",)


@dataclass
class Services:
    settings: Settings
    db: Database
    store: Store
    ctx: Context
    oauth: SmartServer
    principals: PrincipalCache
    reader: AsyncReader | None = None  # PostgreSQL only: async read-by-id
    clinic: ClinicConfig | None = None  # the rules $find applies
    metrics: Metrics = field(default_factory=Metrics)  # counted always, served if configured


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]

_PG_ACTIVE_ACCESS = ACTIVE_ACCESS_SQL.format(p="%s")


def bearer_credential(header: str | None) -> str:
    """The token of an ``Authorization: Bearer …`` header (RFC 6750 §2.1), else 401."""
    if not header:
        raise Unauthorized(
            "this request needs an access token: send Authorization: Bearer <token> "
            "(see /.well-known/smart-configuration for how to get one)",
            error=None,
        )
    scheme, _, credential = header.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential or " " in credential:
        raise Unauthorized("the Authorization header must be Bearer <token>")
    return credential


class PrincipalCache:
    """Checked tokens, trusted for ``seconds`` (and never past their own expiry, nor past a
    revocation made in this process)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._entries: dict[bytes, tuple[float, int, Principal]] = {}

    def get(self, key: bytes) -> Principal | None:
        hit = self._entries.get(key)
        if hit is None:
            return None
        until, generation, principal = hit
        if until < time.monotonic() or generation != revocations.generation:
            self._entries.pop(key, None)
            return None
        return principal

    def put(self, key: bytes, principal: Principal) -> None:
        if self.seconds <= 0:
            return
        if len(self._entries) > 10_000:
            self._entries.clear()
        until = time.monotonic() + self.seconds
        if principal.expires_at is not None:
            until = min(until, time.monotonic() + principal.expires_at - time.time())
        self._entries[key] = (until, revocations.generation, principal)


async def get_principal(request: Request) -> Principal:
    """Who is asking, from the bearer token; 401 when there is no usable one. The lookup is
    one primary-key read (inline on SQLite, on the async pool on PostgreSQL), skipped when
    this process checked the same token within ``token_cache_seconds``."""
    services: Services = request.app.state.services
    credential = bearer_credential(request.headers.get("authorization"))
    key = digest(credential)
    principal = services.principals.get(key)
    if principal is None:
        if services.reader is not None:
            principal = principal_from_row(await services.reader.one(_PG_ACTIVE_ACCESS, (key,)))
        else:
            with services.db.read() as conn:
                principal = active_principal(conn, credential)
        if principal is not None:
            services.principals.put(key, principal)
    if principal is None:
        raise Unauthorized("the access token is unknown, expired or revoked; get a new one")
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_context(request: Request, principal: PrincipalDep) -> Context:
    """The request's context: who acts, and the audit trail its handlers write to."""
    services: Services = request.app.state.services
    raw_conversation = request.headers.get(CONVERSATION_HEADER)
    if not services.settings.audit_enabled:  # measurement only (bench/read_by_id.py)
        conversation_id(raw_conversation)
        return services.ctx.acting(principal)
    trail = Trail(actor_of(request, principal), services.ctx.base_url)
    request.state.trail = trail  # before the check: a refused header is audited too
    trail.conversation = conversation_id(raw_conversation)
    return services.ctx.acting(principal, trail)


CONVERSATION_HEADER = "x-conversation-id"
_CONVERSATION_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def conversation_id(raw: str | None) -> str | None:
    """The ``X-Conversation-Id`` a request carries (1-64 of ``A-Z a-z 0-9 . _ -``), recorded on
    its AuditEvents; 400 for anything else (the value is not echoed)."""
    if raw is None:
        return None
    if not _CONVERSATION_ID.fullmatch(raw):
        raise BadRequest("X-Conversation-Id must be 1 to 64 characters of A-Z a-z 0-9 . _ -")
    return raw


ContextDep = Annotated[Context, Depends(get_context)]


def actor_of(request: Request, principal: Principal | None) -> Actor:
    """The BALP actor: client, user, network address, token id."""
    address = request.client.host if request.client else None
    if principal is None:
        return Actor(client_id=None, address=address)
    return Actor(
        client_id=principal.client_id,
        address=address,
        user=principal.fhir_user or principal.user_id,
        token_jti=principal.jti,
    )


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def json_body(
    request: Request, *, allowed: tuple[str, ...] = JSON_TYPES, limit: int | None = None
) -> Any:
    """The request's JSON body, parsed; 415 for another content type, 413 past ``limit``
    bytes (default ``FHIRSCHED_MAX_BODY_BYTES``)."""
    media = _media_type(request)
    if media not in allowed:
        raise UnsupportedMediaType(
            f"Content-Type {media or '(none)'} is not accepted here; send {allowed[0]}"
        )
    if limit is None:
        limit = request.app.state.services.settings.max_body_bytes
    return parse_json(await _body_within(request, limit))


async def _body_within(request: Request, limit: int) -> bytes:
    """Read the body, refusing it as soon as it passes ``limit``: by its Content-Length when
    it declares one, else (chunked) once the bytes read so far pass it."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:  # gone, or closed for missing the body's deadline (protocol.py)
        raise BadRequest("the request body did not arrive in full") from None
    return b"".join(chunks)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the request body is larger than this server accepts ({limit:,} bytes); "
        "split a Bundle into smaller ones, or ask the operator to raise the limit"
    )


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
    and halves throughput (docs/architecture.md, "Event loop or thread pool"). PostgreSQL
    lookups wait on the network, so they go to the thread pool like everything else.
    """
    if services.db.is_sqlite:
        return fn()
    return await run_in_threadpool(fn)
