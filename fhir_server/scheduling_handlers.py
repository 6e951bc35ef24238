"""The scheduling operations as framework-free request → response functions: Appointment
``$find`` (ITI-115), ``$hold`` (ITI-116) and ``$book`` (ITI-117).

Like the RESTful interactions in ``handlers.py`` (whose checks, audit notes and response
shapes they share), they authorise against the request's principal, confine a patient's token
to that patient, note what they touch for the audit log, and call the scheduling domain
(``scheduling/``) inside the caller's transaction.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, cast
from urllib.parse import urlencode

from anyio import to_thread
from sqlalchemy import Connection

from base.errors import BadRequest, FHIRError, Forbidden, Unprocessable
from conformance.operations import OPERATIONS, parse_operation
from fhir_server import authz, handlers
from fhir_server.authz import Access
from fhir_server.handlers import Context, FHIRResponse, version_headers
from resources.sql.async_reads import AsyncReader
from resources.sql.engine import Database
from resources.store import StoredVersion
from scheduling import booking, patients, waitlist
from scheduling.calendar_reads import read_calendar_async
from scheduling.config import ClinicConfig
from scheduling.find import (
    Found,
    compute_options,
    find_options,
    page_cursor,
    parse_find,
    proposed_appointment,
)
from scheduling.plan import FindRequest, plan_find, schedule_days
from security.trail import Fact

__all__ = [
    "SMALL_FIND_SCHEDULE_DAYS",
    "book",
    "find",
    "find_async",
    "find_is_small",
    "hold",
    "parse_quietly",
    "replay_book",
    "retry_key",
]


def _clinic(config: ClinicConfig | None) -> ClinicConfig:
    if config is None:
        raise Unprocessable("no clinic is configured here; set FHIRSCHED_CLINIC_FILE")
    return config


def find(
    ctx: Context,
    conn: Connection,
    config: ClinicConfig | None,
    params: list[tuple[str, Any]],
    *,
    now: datetime,
    parsed: FindRequest | None = None,
) -> FHIRResponse:
    """Appointment/$find: a searchset Bundle of proposed Appointments, ordered by start.
    ``parsed``: ``params`` as :func:`parse_quietly` read them, if the caller did."""
    access = authz.require(ctx.principal, "Appointment", "$find")
    config = _clinic(config)
    request = _confine_find(access, parsed or parse_find(params, max_count=ctx.paging.max_count))
    _note_find(ctx, params, request)
    found = find_options(
        conn,
        store=ctx.store,
        config=config,
        request=request,
        now=now,
        limit=request.count,
        explain=True,
    )
    return _find_bundle(ctx, config, request, params, found)


def _note_find(ctx: Context, params: list[tuple[str, Any]], request: FindRequest) -> None:
    shown = [(k, "(Patient resource)" if k == "patient-resource" else str(v)) for k, v in params]
    patients = {request.patient_id} if request.patient_id else set()
    query = f"Appointment/$find?{urlencode(shown)}"
    handlers.note(ctx, "$find", "Appointment", query=query, patients=patients)


async def find_async(
    ctx: Context,
    reader: AsyncReader,
    db: Database,
    config: ClinicConfig | None,
    params: list[tuple[str, Any]],
    *,
    now: datetime,
) -> FHIRResponse:
    """``$find`` on PostgreSQL: the reads on async connections, the rules inline when the
    window is small (in the thread pool when not). A ``patient-resource`` needs a Patient
    search, which runs on the synchronous path."""
    access = authz.require(ctx.principal, "Appointment", "$find")
    config = _clinic(config)
    request = _confine_find(access, parse_find(params, max_count=ctx.paging.max_count))
    if request.patient_resource is not None:

        def run() -> FHIRResponse:
            with db.read() as conn:
                return find(ctx, conn, config, params, now=now)

        return await to_thread.run_sync(run)
    _note_find(ctx, params, request)
    plan = plan_find(config, request)
    calendar = await read_calendar_async(reader, plan, request, now)

    def compute() -> Found:
        return compute_options(
            config, plan, request, calendar, now=now, limit=request.count, explain=True
        )

    if plan.schedule_days(request) <= SMALL_FIND_SCHEDULE_DAYS:
        found = compute()
    else:
        found = await to_thread.run_sync(compute)
    return _find_bundle(ctx, config, request, params, found)


def _confine_find(access: Access, request: FindRequest) -> FindRequest:
    """A patient's token finds only for that patient."""
    if access.patient is None:
        return request
    if request.patient_resource is not None:
        raise Forbidden("a patient's token finds for its own patient: use patient-reference")
    if request.patient_id not in (None, access.patient):
        raise Forbidden("a patient's token finds only for that patient")
    return replace(request, patient_id=access.patient)


def _find_bundle(
    ctx: Context,
    config: ClinicConfig,
    request: FindRequest,
    params: list[tuple[str, Any]],
    found: Found,
) -> FHIRResponse:
    """The searchset: a page of proposals, ``total`` counting every option in the window, the
    request as a GET ``self`` link and a ``next`` link while more options follow; an empty
    answer's reasons. A ``patient-resource`` fits in no URL: such an answer has no links, and
    while more options follow, an outcome gives the ``_cursor`` to send with the same
    Parameters for the next page."""
    entries = [
        {
            "resource": proposed_appointment(
                config, o, patient_id=request.patient_id, patient=request.patient_resource
            ),
            "search": {"mode": "match"},
        }
        for o in found.options
    ]
    if found.reasons:
        entries.append({"resource": _why_nothing(found), "search": {"mode": "outcome"}})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": found.total}
    cursor = page_cursor(found.next) if found.next else None
    if all(isinstance(v, str | int) for _, v in params):
        url = f"{ctx.base_url}/Appointment/$find"
        bundle["link"] = [{"relation": "self", "url": f"{url}?{urlencode(params)}"}]
        if cursor is not None:
            later = [*((k, v) for k, v in params if k != "_cursor"), ("_cursor", cursor)]
            bundle["link"].append({"relation": "next", "url": f"{url}?{urlencode(later)}"})
    elif cursor is not None:
        entries.append({"resource": _next_by_post(cursor), "search": {"mode": "outcome"}})
    if entries:
        bundle["entry"] = entries
    return FHIRResponse(200, bundle)


def _information(system: str, code: str, message_id: str, text: str, **more: Any) -> dict[str, Any]:
    """One information issue of a ``$find`` outcome entry: its rule or cursor in
    ``details.coding`` beside its message id, its words in ``details.text`` and
    ``diagnostics``."""
    return {
        "severity": "information",
        "code": "informational",
        "details": {
            "coding": [
                {"system": system, "code": code},
                {"system": "urn:fhir-sched:message-id", "code": message_id},
            ],
            "text": text,
        },
        "diagnostics": text,
        **more,
    }


def _next_by_post(cursor: str) -> dict[str, Any]:
    """More options follow a page found for a ``patient-resource``, which no next link can
    carry (it would put the patient in a URL): how to ask for them."""
    text = (
        "more options follow; a next link cannot carry a patient-resource: send the same "
        f"Parameters again with _cursor {cursor} for the next page, or ask for a narrower window"
    )
    issue = _information(
        "urn:fhir-sched:find-cursor", cursor, "FS-0606", text, expression=["_cursor"]
    )
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def _why_nothing(found: Found) -> dict[str, Any]:
    """An empty answer's reasons: one information issue per clinic rule that left nothing
    (``urn:fhir-sched:find-reason``), with the message id FS-0605."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            _information("urn:fhir-sched:find-reason", r.rule, "FS-0605", r.text)
            for r in found.reasons
        ],
    }


# A $find over at most this many schedule-days (a whole 50-practitioner clinic for two days:
# a few milliseconds) may run on the event loop where lookups do (SQLite, see
# http.run_lookup); anything larger goes to the thread pool so it cannot stall other requests.
SMALL_FIND_SCHEDULE_DAYS = 100


def parse_quietly(ctx: Context, params: list[tuple[str, Any]]) -> FindRequest | None:
    """``$find``'s parameters read, or None when they are invalid (:func:`find` says why)."""
    try:
        return parse_find(params, max_count=ctx.paging.max_count)
    except FHIRError:
        return None


def find_is_small(config: ClinicConfig | None, request: FindRequest | None) -> bool:
    """Whether a ``$find`` is cheap enough to run inline (invalid ones fail fast: yes)."""
    if config is None or request is None:
        return True
    return schedule_days(config, request) <= SMALL_FIND_SCHEDULE_DAYS


def _operation_appointment(
    op_id: str, params: list[tuple[str, Any]]
) -> tuple[Any, str | None, dict[str, list[Any]]]:
    values = parse_operation(OPERATIONS[op_id], params)
    resource = values.get("appointment-resource", [None])[0]
    reference = values.get("appointment-reference", [None])[0]
    if resource is None and reference is None:
        raise BadRequest("give appointment-resource or appointment-reference")
    return resource, reference, values


def hold(
    ctx: Context,
    conn: Connection,
    config: ClinicConfig | None,
    params: list[tuple[str, Any]],
    *,
    now: datetime,
) -> FHIRResponse:
    """Appointment/$hold (ITI-116): a pending Appointment and an ``Expires`` header."""
    access = authz.require(ctx.principal, "Appointment", "$hold")
    config = _clinic(config)
    resource, reference, _ = _operation_appointment("appointment-hold", params)
    if access.patient is not None:
        if reference is not None:
            raise Forbidden("a patient's token holds a proposed appointment-resource")
        handlers.confined_write(access, resource)
    _note_operation(ctx, "$hold", resource)
    if patients.contained_patient(resource) is not None:
        raise Unprocessable(
            "a proposal for a described patient (contained Patient) is not held: book it with "
            "$book, which matches the patient or creates them with the booking"
        )
    stored, expires = booking.hold(
        conn, store=ctx.store, config=config, appointment=resource, now=now
    )
    _operation_done(ctx, conn, stored)
    headers = {
        "Expires": format_datetime(expires.astimezone(UTC), usegmt=True),
        **version_headers(stored),
    }
    return FHIRResponse(200, stored.body, headers, stored)


def book(
    ctx: Context,
    conn: Connection,
    config: ClinicConfig | None,
    params: list[tuple[str, Any]],
    *,
    now: datetime,
    idempotency_key: str | None = None,
) -> FHIRResponse:
    """Appointment/$book (ITI-117): book (201), join the waitlist (status waitlist, 201),
    modify a booked one (200), cancel (status cancelled, 200), or reschedule
    (``cancelled-appointment-id``, or ``cancelled-appointment`` naming it by patient and
    start: the old one is cancelled only if the new one is booked; 201). A cancellation
    without an id names the Appointment by its patient and start. A proposal's contained
    Patient is matched again, or created with the booking."""
    access = authz.require(ctx.principal, "Appointment", "$book")
    resource, reference, values = _operation_appointment("appointment-book", params)
    old = values.get("cancelled-appointment-id", [None])[0]
    old_named = values.get("cancelled-appointment", [None])[0]
    if old is not None and old_named is not None:
        raise BadRequest("give cancelled-appointment-id or cancelled-appointment, not both")
    if old_named is not None and not isinstance(old_named, dict):
        raise BadRequest("cancelled-appointment is an Appointment (its patient and start)")
    if access.patient is not None:
        _confine_book(ctx, conn, access, resource, reference, old, old_named)
    _note_operation(ctx, "$book", resource, old)
    config = _clinic(config)
    action = _book_action(ctx, conn, resource, old, old_named)
    if action != "cancel":
        _require_patient(ctx, conn, resource, reference)
    key = retry_key(ctx, idempotency_key, resource, action, values)
    if key is not None:
        prior = booking.claim_key(conn, key=key, now=now)
        if prior is not None:  # a retry: the first result, never a second booking
            first = ctx.store.vread(conn, prior.res_type, prior.res_id, prior.version)
            assert first is not None
            _replay_visible(ctx, conn, access, first)
            _operation_done(ctx, conn, first)
            return FHIRResponse(int(prior.status), first.body, version_headers(first), first)
    status = 200
    if action == "waitlist":
        stored = _join_waitlist(ctx, conn, config, resource, now)
        status = 201
    elif action == "cancel":
        stored = booking.cancel(
            conn,
            store=ctx.store,
            config=config,
            appointment_id=str(resource.get("id") or _located(ctx, conn, resource)),
            now=now,
            reason=resource.get("cancelationReason"),
        )
    elif action == "modify":
        stored = booking.modify(conn, store=ctx.store, config=config, appointment=resource, now=now)
    else:
        # one transaction: if the new booking fails, the cancellation rolls back too
        if old or old_named is not None:
            booking.cancel(
                conn,
                store=ctx.store,
                config=config,
                appointment_id=str(old).split("/")[-1]
                if old
                else _located(ctx, conn, cast(dict[str, Any], old_named)),
                now=now,
            )
        resource, created = patients.booking_patient(conn, store=ctx.store, appointment=resource)
        stored = booking.book_new(
            conn,
            store=ctx.store,
            config=config,
            appointment=resource,
            reference=reference,
            now=now,
        )
        if created is not None:  # noted once the booking stands: a refusal created no one
            handlers.note(ctx, "create", "Patient", created.res_id, created)
        status = 201
    if key is not None:
        booking.remember(conn, key=key, status=status, stored=stored)
    _operation_done(ctx, conn, stored)
    headers = version_headers(stored)
    if status == 201:
        location = f"{ctx.base_url}/Appointment/{stored.res_id}/_history/{stored.version}"
        headers["Location"] = location
    return FHIRResponse(status, stored.body, headers, stored)


def _join_waitlist(
    ctx: Context, conn: Connection, config: ClinicConfig, resource: Any, now: datetime
) -> StoredVersion:
    """``$book`` of an Appointment with status ``waitlist``: the patient matched as for a
    booking (or created), the entry checked and stored; it claims no time."""
    if not config.waitlist.enabled:
        raise Unprocessable("this clinic keeps no waitlist (clinic file: waitlist.enabled)")
    resource, created = patients.booking_patient(conn, store=ctx.store, appointment=resource)
    stored = waitlist.join(conn, store=ctx.store, config=config, appointment=resource, now=now)
    if created is not None:
        handlers.note(ctx, "create", "Patient", created.res_id, created)
    return stored


def _located(ctx: Context, conn: Connection, named: dict[str, Any]) -> str:
    """The booked Appointment ``named`` names by patient and start (404 unless exactly one),
    noted on the operation's audit fact."""
    appointment_id = patients.booked_at(conn, store=ctx.store, appointment=named)
    fact = _operation_fact(ctx)
    ref = f"Appointment/{appointment_id}"
    if fact is not None and ref not in fact.refs:
        fact.refs.append(ref)
    return appointment_id


def _operation_fact(ctx: Context) -> Fact | None:
    """The audit fact of the operation itself (facts noted after it, such as a Patient
    created with a booking, come later)."""
    if ctx.trail is None:
        return None
    return next((f for f in reversed(ctx.trail.facts) if f.kind.startswith("$")), None)


def _note_operation(ctx: Context, kind: str, resource: Any, old: Any = None) -> None:
    """Noted before acting, so a refused or failed attempt is audited with its patient."""
    if ctx.trail is None:
        return
    patients = authz.patients_in(resource) if isinstance(resource, dict) else set()
    refs = []
    if isinstance(resource, dict) and resource.get("id"):
        refs.append(f"Appointment/{resource['id']}")
    if old:
        refs.append(f"Appointment/{str(old).split('/')[-1]}")
    ctx.trail.note(kind, refs=refs, patients=patients)


def _operation_done(ctx: Context, conn: Connection, stored: StoredVersion) -> None:
    fact = _operation_fact(ctx)
    if fact is None:
        return
    ref = f"Appointment/{stored.res_id}"
    if ref not in fact.refs:
        fact.refs.insert(0, ref)
    fact.patients |= handlers.patients_of("Appointment", stored.res_id, stored)
    handlers.commit_notes(ctx, conn)


def _confine_book(
    ctx: Context,
    conn: Connection,
    access: Access,
    resource: Any,
    reference: Any,
    old: Any,
    old_named: Any = None,
) -> None:
    """A patient's token books, changes and cancels only that patient's appointments (named
    by reference: a contained Patient is not theirs to describe)."""
    if reference is not None:
        target = str(reference.get("reference") if isinstance(reference, dict) else reference)
        handlers.current_visible(ctx, conn, access, target.split("/")[-1])
    if isinstance(resource, dict):
        if resource.get("id"):
            handlers.current_visible(ctx, conn, access, str(resource["id"]))
        if resource.get("status") != "cancelled" or resource.get("participant"):
            handlers.confined_write(access, resource)
    if old:
        handlers.current_visible(ctx, conn, access, str(old).split("/")[-1])
    if old_named is not None:
        handlers.confined_write(access, old_named)


def _book_action(ctx: Context, conn: Connection, resource: Any, old: Any, old_named: Any) -> str:
    """What a ``$book`` asks for: ``cancel``, ``modify``, ``reschedule``, ``book`` or
    ``waitlist`` (a new waitlist entry)."""
    if isinstance(resource, dict) and resource.get("status") == "waitlist":
        if old or old_named is not None or resource.get("id"):
            raise BadRequest(
                "a waitlist entry is new: give no id and no cancelled-appointment with it"
            )
        return "waitlist"
    if isinstance(resource, dict) and resource.get("status") == "cancelled":
        if not (resource.get("id") or resource.get("start")):
            raise BadRequest(
                "a cancellation names the Appointment by its id, or by its patient and start"
            )
        return "cancel"
    if old:
        return f"reschedule:{str(old).split('/')[-1]}"
    if old_named is not None:
        return "reschedule"
    if isinstance(resource, dict) and resource.get("id"):
        stored = ctx.store.read(conn, "Appointment", str(resource["id"]))
        if stored and not stored.deleted and stored.resource().get("status") == "booked":
            return "modify"
    return "book"


def _require_patient(ctx: Context, conn: Connection, resource: Any, reference: Any) -> None:
    """A booking is for a patient: the Appointment given (or the held one named) must have a
    participant that is a Patient, by reference or contained (matched or created with the
    booking). Checked here, for $book alone: an EMR's bookings arriving over HL7 are its own."""
    appointment = resource
    if appointment is None and reference is not None:
        target = str(reference.get("reference") if isinstance(reference, dict) else reference)
        held = ctx.store.read(conn, "Appointment", target.split("/")[-1])
        if held is None or held.deleted:
            return  # booking it answers 404
        appointment = held.resource()
    if not isinstance(appointment, dict):
        return
    if authz.patients_in(appointment) or patients.contained_patient(appointment) is not None:
        return
    raise Unprocessable(
        "Appointment.participant names no patient, and a booking needs one: ask $find with "
        "patient-reference (or patient-resource) so its proposals name the patient, or add a "
        'participant whose actor is the patient ({"actor": {"reference": "Patient/<id>"}}, '
        "or a contained Patient)",
        expression=["Appointment.participant"],
    )


def _idempotency_key(header: str | None, resource: Any, action: str) -> str | None:
    """``Idempotency-Key`` header, else the Appointment's first identifier (system|value) for
    that action: a modification, whose content differs each time, needs the header.

    Both forms are keys of the principal that sends them (:func:`retry_key`). An identifier
    is not made unique across principals: one that another client, user or patient already
    booked with is not a retry of theirs, so it books anew and nothing of theirs is returned
    or refused (a refusal would tell whoever guessed an identifier that it is in use)."""
    if header:
        return f"header:{header.strip()[:150]}"
    if isinstance(resource, dict) and action != "modify":
        for ident in resource.get("identifier", []):
            if isinstance(ident, dict) and ident.get("value"):
                prefix = "identifier" if action == "book" else f"identifier:{action}"
                return f"{prefix}:{ident.get('system', '')}|{ident['value']}"[:200]
    return None


def retry_key(
    ctx: Context,
    header: str | None,
    resource: Any,
    action: str,
    values: dict[str, list[Any]],
) -> booking.RetryKey | None:
    """The request's retry key, owned by its client, user and (patient-context token) patient,
    with the digest of its parameters; None without a header or identifier."""
    key = _idempotency_key(header, resource, action)
    principal = ctx.principal
    if key is None or principal is None:
        return None
    return booking.RetryKey(
        key=key,
        client_id=principal.client_id,
        user_id=principal.user_id or "",
        patient=principal.patient or "",
        request=booking.request_digest(parameters=values),
    )


def _replay_visible(ctx: Context, conn: Connection, access: Access, first: StoredVersion) -> None:
    """A replay shows the first result only if the asker may still see it: the Appointment as
    it is now (as a read would check it) and the version replayed (as a vread would)."""
    handlers.current_visible(ctx, conn, access, first.res_id)
    handlers.version_visible(ctx, conn, access, first)


def replay_book(ctx: Context, conn: Connection, key: booking.RetryKey) -> FHIRResponse | None:
    """After losing a race on the idempotency key: the winner's result, checked as
    :func:`book` checks a retry's."""
    access = authz.require(ctx.principal, "Appointment", "$book")
    found = booking.replay(conn, store=ctx.store, key=key)
    if found is None:
        return None
    status, stored = found
    _replay_visible(ctx, conn, access, stored)
    return FHIRResponse(status, stored.body, version_headers(stored), stored)
