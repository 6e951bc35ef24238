"""``create_app(settings)``: the ASGI application.

Everything is built here from the settings passed in (database, key ring, store); nothing is
read from the environment at import time.
"""

from __future__ import annotations

import asyncio
import threading
import time
import traceback
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import datetime

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from base.errors import (
    BadRequest,
    FHIRError,
    MethodNotAllowed,
    NotFound,
)
from base.logging import get_logger
from fhir_server import replies_runtime
from fhir_server.agent_runtime import build_agent
from fhir_server.auditing import AuditMiddleware, AuditWriter, unavailable
from fhir_server.handlers import Context
from fhir_server.hl7_runtime import install_outbox, start_bridge
from fhir_server.http import PrincipalCache, Services, error_response
from fhir_server.keyring import open_keys
from fhir_server.metrics import Metrics, MetricsMiddleware
from fhir_server.openapi import ERRORS
from fhir_server.openapi import install as install_openapi
from fhir_server.outreach_runtime import build_outreach, reminder_job, reminders_on
from fhir_server.risk_runtime import risk_job
from fhir_server.routes import agent as agent_routes
from fhir_server.routes import (
    audit,
    auth,
    authorize,
    console,
    docs,
    metadata,
    operations,
    resources,
)
from fhir_server.routes import chain as chain_routes
from fhir_server.routes import hl7 as hl7_routes
from fhir_server.routes import metrics as metrics_routes
from fhir_server.settings import Settings
from fhir_server.waitlist_runtime import install_waitlist_watch, run_waitlist, start_waitlist
from resources.service import Paging
from resources.sql.async_reads import AsyncReader
from resources.sql.engine import Database, migrate
from resources.store import Store
from scheduling.clinic import LoadReport, load_clinic, lock_clinic_loads
from scheduling.config import ClinicConfig, load_clinic_config
from security.audit_checkpoint import Checkpoint, CheckpointLog, read_head
from security.audit_status import ChainStatus
from security.crypto import KeyRing
from security.smart.server import SmartServer
from security.smart.signing import load_signer
from security.trail import AuditUnavailable

__all__ = ["create_app"]

log = get_logger("fhir_server.app")


class RequestContextMiddleware:
    """Pure ASGI middleware: request id, structlog context, one access event per request.

    Only the path is logged, never the query string (search values can be PHI).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if 0 < len(incoming) <= 64 and incoming.isprintable() else None
        request_id = request_id or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"x-request-id" for name, _ in headers):
                    headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            log.info(
                "http.request",
                method=scope.get("method"),
                path=scope.get("path"),
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
            structlog.contextvars.unbind_contextvars("request_id")


def extend_horizon(db: Database, store: Store, clinic: ClinicConfig) -> LoadReport | None:
    """One run of the scheduled job: materialise the rolling Slot horizon (idempotent). None
    if another process is loading the clinic right now (the other workers' jobs, started
    together, or ``fhir-sched clinic load``): that load extends the horizon too."""
    with db.write() as conn:
        if not lock_clinic_loads(conn, wait=False):
            return None
        return load_clinic(conn, store=store, config=clinic, today=datetime.now(clinic.tz).date())


async def _extend_horizon(db: Database, store: Store, clinic: ClinicConfig, every: int) -> None:
    """The scheduled job: :func:`extend_horizon` every ``every`` seconds."""
    while True:
        await asyncio.sleep(every)
        try:
            report = await asyncio.to_thread(extend_horizon, db, store, clinic)
        except Exception as exc:  # noqa: BLE001 - a failed run is logged and retried next time
            log.error("clinic.horizon_failed", error_type=type(exc).__name__)
            continue
        if report is None:
            log.info("clinic.horizon_skipped", reason="another process is loading the clinic")
        else:
            log.info("clinic.horizon_extended", slots_created=report.slots_created)


class AuditCheckpoints:
    """The scheduled job that anchors the audit chain outside the database: the head signed
    into the checkpoint file (``security/audit_checkpoint.py``) whenever it has moved since
    this process last wrote one, every few minutes and once more at shutdown. Several
    workers each write theirs; the lines are whole (O_APPEND, a lock) and each verifies."""

    def __init__(self, db: Database, keys: KeyRing, checkpoints: CheckpointLog) -> None:
        self.db, self.keys, self.checkpoints = db, keys, checkpoints
        self.last: tuple[int, bytes] | None = None
        self._lock = threading.Lock()  # the shutdown run may meet a run still in its thread

    def once(self) -> None:
        with self._lock:
            try:
                with self.db.read() as conn:
                    head = read_head(conn)
                if head != self.last:
                    self.checkpoints.write(self.keys, Checkpoint.now(head))
                    self.last = head
                    log.info("audit.checkpoint_written", seq=head[0])
            except Exception as exc:  # noqa: BLE001 - logged, and tried again next time
                log.error("audit.checkpoint_failed", error_type=type(exc).__name__)

    async def every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            await asyncio.to_thread(self.once)


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def _allowed_methods(request: Request) -> str:
    """The methods some route serves at this path (Starlette reports only the first route's)."""
    allowed = []
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
        scope = {**request.scope, "method": method}
        if any(r.matches(scope)[0] == Match.FULL for r in request.app.router.routes):
            allowed.append(method)
    return ", ".join(allowed)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(FHIRError)
    async def fhir_error(request: Request, exc: FHIRError) -> Response:
        log.info("http.error", status=exc.status, message_id=exc.message_id)
        request.state.audit_description = f"{exc.message_id} {exc.code}"  # no request data
        return error_response(exc, _request_id(request))

    @app.exception_handler(AuditUnavailable)
    async def audit_unavailable(request: Request, exc: AuditUnavailable) -> Response:
        log.error("audit.unavailable", request_id=_request_id(request))
        return error_response(unavailable(), _request_id(request))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        err: FHIRError
        if exc.status_code == 405:
            err = MethodNotAllowed(
                f"{request.method} is not allowed on {request.url.path}",
                headers={"Allow": _allowed_methods(request)},  # RFC 9110 §15.5.6
            )
        elif exc.status_code == 404:
            err = NotFound(f"nothing is served at {request.url.path}")
        else:
            err = BadRequest(str(exc.detail))
            err.status = exc.status_code  # type: ignore[misc]
        return error_response(err, _request_id(request))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return error_response(
            BadRequest(f"invalid request: {exc.errors()[:3]}"), _request_id(request)
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        error_id = uuid.uuid4().hex[:12]
        log.error(
            "http.unexpected_error",
            error_id=error_id,
            request_id=_request_id(request),
            error_type=type(exc).__name__,
            # frames only: exception messages can quote request data (PHI)
            where=[
                f"{f.filename}:{f.lineno}:{f.name}" for f in traceback.extract_tb(exc.__traceback__)
            ][-8:],
        )
        err = FHIRError(
            f"an unexpected error occurred; quote error id {error_id} when reporting it"
        )
        err.headers["X-Error-ID"] = error_id
        return error_response(err, _request_id(request))


def create_app(
    settings: Settings,
    *,
    keys: KeyRing | None = None,
    db: Database | None = None,
) -> FastAPI:
    """Build the FHIR server for ``settings`` (a key ring or database may be injected)."""
    db = db or Database(settings.database_url)
    migrate(db)
    keys = keys or open_keys(settings, db)
    store = Store(keys, base_url=settings.fhir_base)
    install_outbox(settings, store)
    ctx = Context(
        store=store,
        base_url=settings.fhir_base,
        paging=Paging(settings.default_page_size, settings.max_page_size),
    )
    reader = AsyncReader(db.url) if db.dialect == "postgresql" else None
    metrics = Metrics.from_environment()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if reader is not None:
            await reader.open()
        job = None
        clinic = app.state.services.clinic
        if clinic is not None and settings.clinic_refresh_seconds:
            job = asyncio.create_task(
                _extend_horizon(db, store, clinic, settings.clinic_refresh_seconds)
            )
        reminding = None
        if reminders_on(settings, clinic):
            reminding = asyncio.create_task(
                reminder_job(
                    app.state.outreach,
                    clinic=clinic,
                    conversations=app.state.conversations,
                    every=settings.reminder_seconds,
                )
            )
        scoring = None
        if clinic is not None and settings.risk_refresh_seconds:
            every, base = settings.risk_refresh_seconds, settings.fhir_base
            scoring = asyncio.create_task(risk_job(db, store, clinic, server=base, every=every))
        checkpoints, checkpointing = None, None
        if settings.audit_enabled and settings.audit_checkpoint_seconds:
            checkpoints = AuditCheckpoints(
                db,
                keys,
                CheckpointLog(
                    settings.audit_checkpoint_path, syslog=settings.audit_checkpoint_syslog
                ),
            )
            checkpointing = asyncio.create_task(
                checkpoints.every(settings.audit_checkpoint_seconds)
            )
        if app.state.agent is not None:  # messages a stopped process stored, unanswered
            waiting = asyncio.get_running_loop().run_in_executor(
                agent_pool, app.state.agent.answer_waiting
            )
            app.state.agent_tasks.add(waiting)
            waiting.add_done_callback(app.state.agent_tasks.discard)
        # inbound texts kept but not handled before a stop: handled now (outreach, then agent)
        replayed = asyncio.get_running_loop().run_in_executor(
            agent_pool, replies_runtime.handle_waiting, app
        )
        app.state.agent_tasks.add(replayed)
        replayed.add_done_callback(app.state.agent_tasks.discard)
        late = None
        if clinic is not None:  # late cancellations to the staff queue
            late = asyncio.create_task(replies_runtime.escalations(app))
        waitlisting = None
        if app.state.waitlist is not None and settings.waitlist_seconds:
            waitlisting = asyncio.create_task(
                run_waitlist(app.state.waitlist, settings.waitlist_seconds)
            )
        bridge = None
        if settings.hl7_listen:
            bridge = await start_bridge(settings, db=db, store=store, clinic=clinic)
            log.info("hl7.listening", host=settings.hl7_host, port=bridge.port)
        try:
            yield
        finally:
            if bridge is not None:
                await bridge.close()
            for task in (job, late, waitlisting, reminding, scoring):
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            if checkpoints is not None and checkpointing is not None:
                checkpointing.cancel()
                await asyncio.gather(checkpointing, return_exceptions=True)
                await asyncio.to_thread(checkpoints.once)  # the head as this process leaves it
            if app.state.agent_tasks:  # SMS turns still being answered
                await asyncio.gather(*app.state.agent_tasks, return_exceptions=True)
            agent_pool.shutdown(wait=True)
            if app.state.agent is not None:
                app.state.agent.fhir.close()
            if reader is not None:
                await reader.close()

    app = FastAPI(
        lifespan=lifespan,
        title="fhir-sched",
        version="0.1.0",
        description="FHIR R4 scheduling server",
        docs_url=None,  # served by routes/docs.py from packaged files, not from a CDN
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.services = Services(
        settings=settings,
        db=db,
        store=store,
        ctx=ctx,
        oauth=SmartServer(
            db=db,
            keys=keys,
            signer=load_signer(
                path=settings.signing_key_path,
                key_json=settings.signing_key.get_secret_value() if settings.signing_key else None,
            ),
            issuer=settings.public_root,
            fhir_base=settings.fhir_base,
            audit_enabled=settings.audit_enabled,
        ),
        principals=PrincipalCache(settings.token_cache_seconds),
        reader=reader,
        clinic=load_clinic_config(settings.clinic_file) if settings.clinic_file else None,
        metrics=metrics,
    )
    clinic_config = app.state.services.clinic
    # automated texts (outreach/): reminders, replies and waitlist offers share one Outreach
    app.state.outreach = build_outreach(settings, db=db, store=store, keys=keys)
    replies_runtime.install(app)
    install_waitlist_watch(store, clinic_config)
    start_waitlist(app, settings, db=db, store=store, keys=keys, clinic=clinic_config)
    app.state.agent = (
        build_agent(settings, db=db, keys=keys, clinic=clinic_config)
        if clinic_config is not None
        else None
    )
    # the agent's conversations as outreach sees them (whichever agent the app holds)
    app.state.conversations = replies_runtime.LiveConversations(app)
    agent_pool = ThreadPoolExecutor(settings.agent_threads, thread_name_prefix="agent")
    app.state.agent_pool = agent_pool
    app.state.agent_tasks = set()
    audit_writer = AuditWriter(
        db, keys, enabled=settings.audit_enabled, reader=reader, metrics=metrics
    )
    app.state.audit_writer = audit_writer
    # the chain's status for GET /audit/verify: walked incrementally, in full once a day
    app.state.chain_status = ChainStatus(
        keys,
        CheckpointLog(settings.audit_checkpoint_path, syslog=settings.audit_checkpoint_syslog),
    )
    app.include_router(metadata.health)
    app.include_router(agent_routes.router)
    app.include_router(hl7_routes.router)
    app.include_router(chain_routes.router)
    app.include_router(auth.router)
    app.include_router(authorize.router)
    app.include_router(docs.router)
    app.include_router(console.router)
    if settings.metrics_token is not None:
        app.include_router(metrics_routes.router)
    for fhir in (metadata, operations, audit, resources):
        # Response: the routes build their own, so FastAPI documents no JSON body of its own
        app.include_router(
            fhir.router, prefix="/fhir", responses=ERRORS, default_response_class=Response
        )
    _install_error_handlers(app)
    install_openapi(app, smart=auth.smart_configuration(app.state.services.oauth))
    app.add_middleware(
        CORSMiddleware,  # bearer tokens, not cookies: any origin may call with a token
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=[
            "Authorization",
            "Content-Type",
            "Prefer",
            "If-Match",
            "If-None-Exist",
            "Idempotency-Key",
            "X-Request-ID",
            "X-Conversation-Id",
        ],
        expose_headers=[
            "Location",
            "ETag",
            "Last-Modified",
            "Expires",
            "X-Request-ID",
            "WWW-Authenticate",
        ],
    )
    app.add_middleware(AuditMiddleware, writer=audit_writer, server=settings.fhir_base)
    app.add_middleware(RequestContextMiddleware)
    if settings.metrics_token is not None:  # outermost: counts and times every answer
        app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
