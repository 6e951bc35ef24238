"""Doors outside FHIR for signed-in staff (``/hl7/…``, ``/audit/…``): who may open one, and the
AuditEvent every request leaves, refusals included.

A door is opened by a user token whose role (``Principal.role``, read with the token, see
``security/smart/tokens.py``) is listed for it in ``security.smart.registry.ROLE_DOORS``, or by
a check of its own (``/audit/verify`` asks for a scope naming AuditEvent, as the log does).
The record's kind is the console's (``security.balp.CONSOLE``), its subtype the command that
does the same at the server's console (``hl7 show``, ``audit verify``…), so a compliance
officer finds both beside each other; the agent says who (the app, the user, the address).
A door that shows stored data records before it answers (``before=True``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from fastapi import Request

from base.errors import FHIRError, Forbidden
from fhir_server.auditing import AuditWriter
from fhir_server.http import Services, actor_of, get_principal
from security.balp import Actor, balp_event
from security.principal import Principal
from security.smart.registry import ROLE_DOORS

__all__ = ["Door", "record", "require_role", "through"]

T = TypeVar("T")


def require_role(principal: Principal, door: str) -> None:
    """403 unless a user signed in with a role this door admits."""
    allowed = ROLE_DOORS[door]
    if principal.user_id is None or principal.role not in allowed:
        roles = " or ".join(sorted(allowed))
        raise Forbidden(f"this is open to signed-in users with the role {roles}")


async def record(
    request: Request,
    kind: str,
    actor: Actor,
    status: int,
    *,
    detail: str = "",
    identifiers: list[tuple[str, str]] | None = None,
    patient: str | None = None,
) -> None:
    services: Services = request.app.state.services
    if not services.settings.audit_enabled:
        return
    outcome = "success" if status < 400 else ("minor" if status < 500 else "serious")
    event = balp_event(
        kind=kind,
        actor=actor,
        server=services.settings.fhir_base,
        outcome=outcome,
        description=detail or f"HTTP {status}",
        identifiers=identifiers,
        patient=patient,
    )
    writer: AuditWriter = request.app.state.audit_writer
    await writer.record([event])


class Door:
    """One request through a door: :meth:`enter` checks the token (401/403 recorded),
    :meth:`shown` records a disclosure before the answer, :func:`through` the rest."""

    def __init__(
        self, request: Request, kind: str, identifiers: list[tuple[str, str]] | None = None
    ) -> None:
        self.request = request
        self.kind = kind
        self.identifiers = identifiers
        self.actor = actor_of(request, None)
        self.recorded = False

    async def enter(self, check: Callable[[Principal], None]) -> Principal:
        try:
            principal = await get_principal(self.request)
            self.actor = actor_of(self.request, principal)
            check(principal)
        except FHIRError as exc:
            await self.done(exc.status, f"{exc.message_id} {exc.code}")
            raise
        return principal

    async def done(self, status: int, detail: str = "", patient: str | None = None) -> None:
        if self.recorded:
            return
        self.recorded = True
        await record(
            self.request,
            self.kind,
            self.actor,
            status,
            detail=detail,
            identifiers=self.identifiers,
            patient=patient,
        )


async def through(door: Door, work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work`` and record how it ended, unless it recorded already (a disclosure)."""
    try:
        result = await work()
    except FHIRError as exc:
        await door.done(exc.status, f"{exc.message_id} {exc.code}")
        raise
    except Exception as exc:  # answered 500 by the app's handler: recorded as such, not kept
        await door.done(500, type(exc).__name__)
        raise
    await door.done(200)
    return result
