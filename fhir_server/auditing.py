"""Audit at the HTTP edge: nothing leaves without its record.

:class:`AuditMiddleware` holds every response to a FHIR or authorization endpoint until the
request's remaining audit records (reads, searches, and everything of a request that failed or
was refused) are written; if they cannot be, the client gets a 503 OperationOutcome instead of
the data. Writes have already put their records in their own transaction (``security/trail``).

:class:`AuditWriter` groups the records of concurrent requests into one transaction (a group
commit): each request still waits for its own records to be durable, but a busy server writes
one transaction per batch, not per read.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from anyio import to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from base.errors import BadRequest, ServiceUnavailable
from base.logging import get_logger
from fhir_server.http import CONVERSATION_HEADER, conversation_id, error_response
from fhir_server.metrics import Metrics
from resources.sql.async_reads import AsyncReader
from resources.sql.engine import Database
from resources.sql.group_commit import GroupCommit
from security.audit import AsyncChain, append, append_dbapi
from security.balp import Actor
from security.crypto import KeyRing
from security.trail import AuditUnavailable, Trail

__all__ = ["AuditMiddleware", "AuditWriter", "kind_of", "unavailable"]

log = get_logger("fhir_server.auditing")


class AuditWriter:
    """Appends batches of AuditEvents; callers await their own batch's commit."""

    def __init__(
        self,
        db: Database,
        keys: KeyRing,
        *,
        enabled: bool = True,
        reader: AsyncReader | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.db = db
        self.metrics = metrics
        self.keys = keys
        self.enabled = enabled
        self.reader = reader  # PostgreSQL: async connections, so a batch blocks no thread
        self._chain = AsyncChain(keys)
        self._group: GroupCommit[list[dict[str, Any]], None] = GroupCommit(self._append_group)

    async def record(self, events: list[dict[str, Any]]) -> None:
        if self.enabled and events:
            await self._group.submit(events)

    def record_now(self, events: list[dict[str, Any]]) -> None:
        """Synchronous append in a transaction of its own (command-line and thread callers)."""
        if self.enabled and events:
            with self.db.write() as conn:
                append(conn, self.keys, events)

    async def _append_group(self, requests: list[list[dict[str, Any]]]) -> list[None]:
        """The records of every request waiting, in one transaction."""
        events = [e for request in requests for e in request]
        try:
            await self._append(events)
        except Exception as exc:  # every failure means "not recorded"
            log.error("audit.write_failed", error_type=type(exc).__name__, events=len(events))
            if self.metrics is not None:
                self.metrics.audit_failures.inc()
            raise AuditUnavailable("the audit log refused the records") from exc
        return [None] * len(requests)

    async def _append(self, events: list[dict[str, Any]]) -> None:
        """One batch, by the cheapest way open: PostgreSQL in one statement on an async
        connection; SQLite in a thread, where its commit may wait for the disk
        (``synchronous=FULL``, the default); with ``synchronous=normal`` and no other writer
        in this process inline (a thread hop then costs more than the write); otherwise (the
        async pool is not open yet) in a thread."""
        if self.reader is not None and self.reader.is_open:
            async with self.reader.connection() as conn:
                await self._chain.append(conn, events)
            return
        inline = partial(append_dbapi, dialect="sqlite", keys=self.keys, events=events)
        if self.db.is_sqlite and self.db.synchronous == "FULL":  # waits for the disk: a thread
            await to_thread.run_sync(partial(self.db.try_write_now, inline, wait=True))
        elif not self.db.try_write_now(inline):
            await to_thread.run_sync(self.record_now, events)


def kind_of(method: str, path: str) -> str:
    """The interaction a request asked for, from its method and path (for requests refused
    before any handler noted what they touched)."""
    parts = [p for p in path.split("/") if p][1:]  # after "fhir"
    if parts and parts[-1].startswith("$"):
        return parts[-1]
    if method == "POST" and not parts:
        return "transaction"
    if method in ("GET", "HEAD"):
        if "_history" in parts:
            return "history-instance" if len(parts) >= 3 else "history-type"
        return "read" if len(parts) == 2 else "search-type"
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(
        method, "operation"
    )


def _conversation(scope: Scope) -> str | None:
    """A refused request's valid ``X-Conversation-Id`` (one that is not valid is left out)."""
    for name, value in scope.get("headers") or []:
        if name == CONVERSATION_HEADER.encode():
            try:
                return conversation_id(value.decode("latin-1"))
            except BadRequest:
                return None
    return None


def _outcome(status: int) -> str:
    return "success" if status < 400 else ("minor" if status < 500 else "serious")


class AuditMiddleware:
    """Writes each FHIR request's remaining audit records before its response starts."""

    def __init__(self, app: ASGIApp, *, writer: AuditWriter, server: str) -> None:
        self.app = app
        self.writer = writer
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not path.startswith("/fhir") or path in ("/fhir/metadata",) or ".well-known" in path:
            await self.app(scope, receive, send)
            return
        replaced = False

        async def send_wrapper(message: Message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start":
                try:
                    await self._flush(scope, int(message["status"]))
                except AuditUnavailable:
                    replaced = True
                    await error_response(unavailable())(scope, receive, send)
                    return
            if not replaced:
                await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            # an unexpected error is answered outside this middleware (Starlette's
            # ServerErrorMiddleware): record the failure on its way out
            try:
                await self._flush(scope, 500)
            except AuditUnavailable:
                log.error("audit.failure_not_recorded")
            raise

    async def _flush(self, scope: Scope, status: int) -> None:
        state = scope.setdefault("state", {})
        trail: Trail | None = state.get("trail")
        failed = status >= 400
        if trail is None:
            if not failed:
                return
            client = scope.get("client")
            actor = Actor(client_id=None, address=client[0] if client else None)
            trail = Trail(actor, self.server, conversation=_conversation(scope))
        facts = trail.remaining(failed=failed)
        if failed and not facts:
            trail.note(kind_of(scope.get("method", "GET"), scope.get("path", "")))
            facts = trail.facts
        description = state.get("audit_description") or (f"HTTP {status}" if failed else None)
        events = trail.events(facts, outcome=_outcome(status), description=description)
        await self.writer.record(events)


def unavailable() -> ServiceUnavailable:
    """The answer to a request whose audit record could not be written."""
    err = ServiceUnavailable("the audit log cannot record this access right now; try again")
    err.headers["Retry-After"] = "5"
    return err
