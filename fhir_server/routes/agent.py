"""The booking agent's doors: the patient's web chat (page and JSON API), the SMS webhook, and
the staff's queue.

* ``GET /agent/chat``: the chat page. ``POST /agent/conversations`` starts a conversation
  (its id is the patient's only credential: random, unguessable, never listed);
  ``POST /agent/conversations/{id}/messages`` takes ``{"text"}`` and answers
  ``{"replies", "state", "handed_over"}``; ``GET /agent/conversations/{id}/replies?after=n``
  gives the replies after the first ``n`` (staff's, once a person holds the conversation).
* ``POST /agent/sms``: Twilio's incoming-message webhook, its ``X-Twilio-Signature`` checked;
  the text is stored before the webhook is acknowledged and answered through the SMS provider.
* Staff, with a user token that may read (``GET``) or write (``POST``) Communication, as the
  front desk's ``user/*.cruds`` does: ``GET /agent/queue``, ``GET /agent/conversations/{id}``
  (the transcript), ``POST /agent/conversations/{id}/take``, ``…/reply`` (``{"text"}``) and
  ``…/release`` (back to the agent).

Every request leaves an AuditEvent (``security.balp.AGENT``) naming the conversation, with its
outcome; a transcript or a reply is recorded before it is shown.
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import Awaitable, Callable
from importlib import resources as package_files
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse

from agent.engine import Agent, Turn
from agent.sms import EMPTY_TWIML, InboundSms, inbound, normalize_phone, signature_valid
from base.errors import BadRequest, FHIRError, Forbidden, NotFound
from base.logging import get_logger
from fhir_server import replies_runtime
from fhir_server.doors import record
from fhir_server.http import Services, actor_of, get_principal, json_body
from outreach.replies import Replies
from security.balp import CONVERSATION, Actor
from security.principal import Principal

__all__ = ["router"]

log = get_logger("fhir_server.agent")
router = APIRouter(prefix="/agent", tags=["booking agent"])
T = TypeVar("T")
MAX_TEXT = 2000  # characters in one patient or staff message


def _agent(request: Request) -> Agent:
    agent: Agent | None = getattr(request.app.state, "agent", None)
    if agent is None:
        raise NotFound(
            "the booking agent is not running here: it needs a clinic file and its client "
            "registered (`fhir-sched agent register`)"
        )
    return agent


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def _record(
    request: Request, kind: str, actor: Actor, cid: str | None, status: int, detail: str = ""
) -> None:
    """One AuditEvent of an agent door, naming the conversation (``fhir_server/doors.py``)."""
    identifiers = [(CONVERSATION, cid)] if cid else None
    await record(request, kind, actor, status, detail=detail, identifiers=identifiers)


async def _door(
    request: Request,
    kind: str,
    actor: Actor,
    cid: str | None,
    work: Callable[[], Awaitable[T]],
    *,
    before: bool = False,
) -> T:
    """Run ``work`` and record the request: before it when it shows stored data (a failure
    is recorded too), after it otherwise."""
    if before:
        await _record(request, kind, actor, cid, 200)
    try:
        result = await work()
    except FHIRError as exc:
        if not before:
            await _record(request, kind, actor, cid, exc.status, f"{exc.message_id} {exc.code}")
        raise
    if not before:
        await _record(request, kind, actor, cid, 200)
    return result


async def _in_pool(request: Request, fn: Callable[..., T], *args: Any) -> T:
    """Run a turn on the agent's own threads: a turn calls this server over HTTP, so it must
    not wait on the request threads its own calls need."""
    pool = request.app.state.agent_pool
    return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)


def _text(body: Any) -> str:
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise BadRequest('send {"text": "..."} with the message', expression=["text"])
    if len(text) > MAX_TEXT:
        raise BadRequest(f"a message holds at most {MAX_TEXT} characters", expression=["text"])
    return text


def _turn(turn: Turn) -> dict[str, Any]:
    return {"replies": turn.replies, "state": turn.state, "handed_over": turn.handed_over}


def _patient_actor(request: Request, channel: str) -> Actor:
    address = request.client.host if request.client else None
    return Actor(client_id=f"agent-{channel}", address=address)


# -- the patient's side -------------------------------------------------------------------


@router.get("/chat", response_class=HTMLResponse, summary="The patient's web chat page")
async def chat_page(request: Request) -> Response:
    agent = _agent(request)
    page = package_files.files("agent").joinpath("static/chat.html").read_text()
    page = page.replace("{{MODEL}}", html.escape(agent.model.label)).replace(
        "{{CLINIC}}", html.escape(agent.directory.name)
    )
    return HTMLResponse(page, headers={"Cache-Control": "no-store"})


@router.post("/conversations", summary="Start a web chat conversation", status_code=201)
async def start_conversation(request: Request) -> Response:
    agent = _agent(request)
    row, hello = await _in_pool(request, agent.start, "web")
    await _record(request, "agent-conversation:web", _patient_actor(request, "web"), row.id, 201)
    body = {"id": row.id, "replies": [hello], "state": row.state, "handed_over": False}
    return JSONResponse(body, status_code=201)


@router.post("/conversations/{cid}/messages", summary="A patient's message, answered")
async def patient_message(cid: str, request: Request) -> Response:
    agent = _agent(request)

    async def work() -> dict[str, Any]:
        text = _text(await json_body(request, allowed=("application/json",)))
        try:
            turn = await _in_pool(request, agent.receive, cid, text)
        except KeyError:
            raise NotFound("no such conversation") from None
        return _turn(turn)

    body = await _door(request, "agent-message:web", _patient_actor(request, "web"), cid, work)
    return JSONResponse(body)


@router.get("/conversations/{cid}/replies", summary="Replies after the first n")
async def replies(cid: str, request: Request, after: int = 0) -> Response:
    agent = _agent(request)

    async def work() -> dict[str, Any]:
        row = await _in_pool(request, agent.conversation, cid)
        if row is None:
            raise NotFound("no such conversation")
        lines = await _in_pool(request, agent.transcript, cid)
        said = [line.text for line in lines if line.sender in ("agent", "staff", "clinic")]
        return {
            "replies": said[max(after, 0) :],
            "count": len(said),
            "handed_over": row.state != "agent",
        }

    body = await _door(
        request, "agent-replies:web", _patient_actor(request, "web"), cid, work, before=True
    )
    return JSONResponse(body)


@router.post("/sms", summary="Twilio's incoming-message webhook")
async def sms_webhook(request: Request) -> Response:
    replies = replies_runtime.replies_for(request.app)
    if replies is None:
        _agent(request)  # neither outreach nor the agent here: 404
    settings = _services(request).settings
    actor = _patient_actor(request, "sms")
    form = await request.form()
    params = {k: str(v) for k, v in form.multi_items()}
    token = settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else ""
    url = settings.sms_webhook_url or f"{settings.public_root}/agent/sms"
    if not signature_valid(token, url, params, request.headers.get("x-twilio-signature")):
        await _record(request, "agent-message:sms", actor, None, 403, "bad signature")
        raise Forbidden("the X-Twilio-Signature does not match this request")
    try:
        message = inbound(params)
        normalize_phone(message.from_number)
        if replies is not None:
            # kept before Twilio is answered (a retried webhook is kept once); then outreach's
            # first (YES, CANCEL, STOP... to an automated text), after the acknowledgement, on
            # the agent's threads; what it does not take, the agent's
            opt_out = params.get("OptOutType", "")
            kept = await _in_pool(
                request,
                lambda: replies.outreach.receive(
                    message.from_number,
                    message.body,
                    sid=message.message_sid,
                    opt_out_type=opt_out,
                ),
            )
            if kept is None:  # Twilio sent this message before: it is being handled
                await _record(request, "agent-message:sms", actor, None, 200, "HTTP 200; resent")
            else:
                _background(
                    request, _outreach_reply(request, replies, message, opt_out, actor, kept)
                )
            return Response(EMPTY_TWIML, media_type="text/xml")
        agent = _agent(request)
        row = await _in_pool(request, agent.accept_sms, message.from_number, message.body)
    except ValueError as exc:  # no From or Body, or a From that is not a phone number
        await _record(request, "agent-message:sms", actor, None, 400, "malformed")
        raise BadRequest(str(exc)) from None
    await _record(request, "agent-message:sms", actor, row.id, 200)
    task = asyncio.get_running_loop().run_in_executor(
        request.app.state.agent_pool, agent.answer, row.id, message.body
    )
    _background(request, task)
    return Response(EMPTY_TWIML, media_type="text/xml")


def _background(request: Request, work: Awaitable[Any]) -> None:
    """Run ``work`` after the answer; the app waits for it at shutdown."""
    task = asyncio.ensure_future(work)
    request.app.state.agent_tasks.add(task)
    task.add_done_callback(request.app.state.agent_tasks.discard)


async def _outreach_reply(
    request: Request,
    replies: Replies,
    message: InboundSms,
    opt_out: str,
    actor: Actor,
    kept: str,
) -> None:
    """Hand the text to outreach on the agent's threads (a reply it does not take becomes an
    agent turn there), then record the message, naming the conversation if the agent got it.
    Outreach audits what it did itself (``outreach-received:<class>``), in its transaction."""
    try:
        handled = await _in_pool(
            request,
            lambda: replies.handle(
                message.from_number,
                message.body,
                message_sid=message.message_sid,
                opt_out_type=opt_out,
            ),
        )
    except Exception as exc:  # noqa: BLE001 - after the acknowledgement: logged and audited
        # the text stays in the inbox (``received``): the next start handles it again
        log.error("outreach.reply_failed", error_type=type(exc).__name__)
        await _record(request, "agent-message:sms", actor, None, 500, "reply failed")
        return
    await _in_pool(request, replies.outreach.handled, kept)
    cid = None
    agent: Agent | None = getattr(request.app.state, "agent", None)
    if handled.by_agent and agent is not None:
        row = await _in_pool(
            request, agent.store.by_address, "sms", normalize_phone(message.from_number)
        )
        cid = row.id if row is not None else None
    await _record(request, "agent-message:sms", actor, cid, 200, f"HTTP 200; {handled.kind}")


# -- the staff's side ---------------------------------------------------------------------


async def _staff(request: Request, permission: str) -> Principal:
    principal = await get_principal(request)
    if principal.user_id is None or not principal.grants.permits(
        "user", "Communication", permission
    ):
        raise Forbidden(
            "the booking agent's queue is for staff: a user token that may "
            + ("read" if permission == "r" else "write")
            + " Communication (e.g. user/Communication.cruds or user/*.cruds)"
        )
    return principal


async def _staff_door(
    request: Request,
    kind: str,
    permission: str,
    cid: str | None,
    work: Callable[[Principal], Awaitable[T]],
    *,
    before: bool = False,
) -> T:
    try:
        principal = await _staff(request, permission)
    except FHIRError as exc:
        await _record(request, kind, actor_of(request, None), cid, exc.status, exc.message_id)
        raise
    return await _door(
        request, kind, actor_of(request, principal), cid, lambda: work(principal), before=before
    )


@router.get("/queue", summary="Conversations handed to staff (staff)")
async def queue(request: Request) -> Response:
    agent = _agent(request)

    async def work(_: Principal) -> list[dict[str, Any]]:
        return await _in_pool(request, agent.queue)

    return JSONResponse(await _staff_door(request, "agent-queue:list", "r", None, work))


@router.get("/conversations/{cid}", summary="A conversation and its transcript (staff)")
async def transcript(cid: str, request: Request) -> Response:
    agent = _agent(request)

    async def work(_: Principal) -> dict[str, Any]:
        row = await _in_pool(request, agent.conversation, cid)
        if row is None:
            raise NotFound("no such conversation")
        lines = await _in_pool(request, agent.transcript, cid)
        return {
            "id": row.id,
            "channel": row.channel,
            "state": row.state,
            "holder": row.holder,
            "handover": row.facts.get("handover"),
            "transcript": [
                {"seq": x.seq, "sender": x.sender, "at": x.at.isoformat(), "text": x.text}
                for x in lines
            ],
        }

    body = await _staff_door(request, "agent-transcript:read", "r", cid, work, before=True)
    return JSONResponse(body)


def _staff_action(action: str) -> Any:
    async def route(cid: str, request: Request) -> Response:
        agent = _agent(request)

        async def work(principal: Principal) -> dict[str, Any]:
            who = principal.fhir_user or principal.user_id or principal.client_id
            try:
                if action == "reply":
                    text = _text(await json_body(request, allowed=("application/json",)))
                    row = await _in_pool(request, agent.staff_reply, cid, who, text)
                elif action == "take":
                    row = await _in_pool(request, agent.take, cid, who)
                else:
                    row = await _in_pool(request, agent.hand_back, cid, who)
            except KeyError:
                raise NotFound("no such conversation") from None
            return {"id": row.id, "state": row.state, "holder": row.holder}

        body = await _staff_door(request, f"agent-staff:{action}", "u", cid, work)
        return JSONResponse(body)

    route.__name__ = f"staff_{action}"
    return route


for _action, _summary in (
    ("take", "Take a conversation: the agent stays silent (staff)"),
    ("reply", "Answer the patient through their channel (staff)"),
    ("release", "Hand the conversation back to the agent (staff)"),
):
    router.add_api_route(
        f"/conversations/{{cid}}/{_action}",
        _staff_action(_action),
        methods=["POST"],
        summary=_summary,
    )
