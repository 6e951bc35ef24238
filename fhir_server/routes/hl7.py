"""The HL7 message store for staff over HTTP (``fhir_server/hl7_review.py``), the doors the
console's HL7 screen uses; what ``fhir-sched hl7 messages``, ``show`` and ``replay`` do.

* ``GET /hl7/messages?status=failed,conflict&direction=in&warnings=true&_count=100&before=``:
  newest first, no message content; roles ``interface`` and ``front-desk``.
* ``GET /hl7/messages/{id}``: the message, its ACK and why it failed (PHI); role
  ``interface``. Recorded (with the Patient of its Appointment) before it is answered.
* ``POST /hl7/messages/{id}/replay``: apply a failed inbound message again; role
  ``interface``. Answers the message as it now stands (``applied``, or ``failed`` and why).

Every request leaves an AuditEvent (``fhir_server/doors.py``): ``console-query:hl7 messages``,
``console-export:hl7 show``, ``console-import:hl7 replay``, naming the message
(``urn:fhir-sched:hl7-message``), refusals included.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse

from fhir_server import hl7_review
from fhir_server.doors import Door, require_role, through
from fhir_server.http import Services, run_sync
from fhir_server.openapi import HL7_LIST, HL7_OPENED, json_answer, token_door
from hl7_bridge.messages import HL7_MESSAGE, STATUSES

__all__ = ["router"]

router = APIRouter(prefix="/hl7", tags=["HL7 messages"])
MESSAGE_ID = Annotated[
    str,
    Path(description="a stored message's id", json_schema_extra={"pattern": "^[0-9a-f-]{36}$"}),
]


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


@router.get(
    "/messages",
    summary="Stored HL7 messages, newest first, without content (roles interface, front-desk)",
    responses=json_answer(HL7_LIST, "The messages and the next page's before"),
    openapi_extra=token_door(
        parameters=[
            {
                "name": "status",
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": f"comma-separated, or repeated: {', '.join(STATUSES)}",
            },
            {
                "name": "direction",
                "in": "query",
                "required": False,
                "schema": {"enum": ["in", "out"]},
            },
            {
                "name": "warnings",
                "in": "query",
                "required": False,
                "schema": {"enum": ["true", "false"]},
                "description": "true: only messages applied with warnings",
            },
            {
                "name": "_count",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": hl7_review.MAX_COUNT},
            },
            {
                "name": "before",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": 1},
                "description": "the next page: the previous answer's next_before",
            },
        ]
    ),
)
async def messages(request: Request) -> JSONResponse:
    door = Door(request, "console-query:hl7 messages")
    await door.enter(lambda p: require_role(p, "hl7.list"))
    services = _services(request)

    async def work() -> dict[str, Any]:
        query = hl7_review.parse_listing(list(request.query_params.multi_items()))
        result: dict[str, Any] = await run_sync(
            hl7_review.listing, services.db, services.store.keys, query
        )
        return result

    return JSONResponse(await through(door, work))


@router.get(
    "/messages/{message_id}",
    summary="One message, its ACK and why it failed: patient data (role interface)",
    responses=json_answer(HL7_OPENED, "The message as `fhir-sched hl7 show` prints it"),
    openapi_extra=token_door(),
)
async def message(message_id: MESSAGE_ID, request: Request) -> JSONResponse:
    door = Door(request, "console-export:hl7 show", [(HL7_MESSAGE, message_id)])
    await door.enter(lambda p: require_role(p, "hl7.show"))
    services = _services(request)

    async def work() -> dict[str, Any]:
        body, appointment = await run_sync(
            hl7_review.show, services.db, services.store.keys, message_id
        )
        patient = await run_sync(hl7_review.patient_of, services.db, services.store, appointment)
        await door.done(200, patient=patient)  # before anything is shown
        shown: dict[str, Any] = body
        return shown

    return JSONResponse(await through(door, work), headers={"Cache-Control": "no-store"})


@router.post(
    "/messages/{message_id}/replay",
    summary="Apply a failed inbound message again (role interface)",
    responses=json_answer(HL7_OPENED, "The message as it now stands (no message text)"),
    openapi_extra=token_door(),
)
async def replay(message_id: MESSAGE_ID, request: Request) -> JSONResponse:
    door = Door(request, "console-import:hl7 replay", [(HL7_MESSAGE, message_id)])
    await door.enter(lambda p: require_role(p, "hl7.replay"))
    services = _services(request)

    async def work() -> dict[str, Any]:
        def run() -> dict[str, Any]:
            return hl7_review.replay(
                services.settings,
                db=services.db,
                keys=services.store.keys,
                store=services.store,
                clinic=services.clinic,
                message_id=message_id,
            )

        result: dict[str, Any] = await run_sync(run)
        return result

    return JSONResponse(await through(door, work), headers={"Cache-Control": "no-store"})
