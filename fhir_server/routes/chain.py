"""``GET /audit/verify``: the audit chain's status for the console's audit screen (compliance),
cheap enough for every page load (``security/audit_status.py``: the records added since the
last walk are walked, the whole chain once a day per process).

Open to the tokens that may read the audit log (``user/AuditEvent.rs``, the compliance role;
``system/AuditEvent.rs``, an audit client). Each request leaves an AuditEvent
``console-audit:audit verify`` (DICOM 110101 Audit Log Used), as the command does; refusals
too.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from fhir_server.audit_handlers import require_audit_scope
from fhir_server.doors import Door, through
from fhir_server.http import Services, run_sync
from fhir_server.openapi import CHAIN_STATUS, json_answer, token_door
from security.audit_status import ChainStatus

__all__ = ["router"]

router = APIRouter(prefix="/audit", tags=["audit log"])


@router.get(
    "/verify",
    summary="The audit chain: intact, up to which record, when verified (compliance)",
    responses=json_answer(CHAIN_STATUS, "The chain's status"),
    openapi_extra=token_door(),
)
async def verify(request: Request) -> JSONResponse:
    door = Door(request, "console-audit:audit verify")
    await door.enter(lambda p: require_audit_scope(p, "r"))
    services: Services = request.app.state.services
    status: ChainStatus = request.app.state.chain_status

    async def work() -> dict[str, Any]:
        def run() -> dict[str, Any]:
            with services.db.read() as conn:
                return status.check(conn)

        result: dict[str, Any] = await run_sync(run)
        return result

    return JSONResponse(await through(door, work), headers={"Cache-Control": "no-store"})
