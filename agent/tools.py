"""The tools the model may call, and what each one does: the only way a conversation reaches
the clinic, always through ``$find`` and ``$book`` (``agent/fhir.py``).

The model sees options as letters (A, B, C) and bookings as references (V1, V2) with their
calendar date, local time, clinician and location; never an id, a Patient, or anything else
the server holds. The rules that keep patients safe are enforced here, not left to the model:

* a booking or a move goes ahead only after the agent's previous message read back that
  option's date, time, clinician and location and the patient's answer was a yes;
* dates in the past are refused before the server is asked;
* cancelling or moving an appointment this conversation did not book needs a phone number the
  conversation has proven (the SMS sender's number, or a code sent to the number), and the
  server acts only if that number is on file for the patient;
* options shown more than :data:`STALE_AFTER` ago are looked up again with ``$find`` before
  they are booked.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from agent.config import Directory
from agent.dates import find_window, parse_start
from agent.fhir import FhirClient, FhirRefused, FhirUnavailable, named_appointment
from agent.sms import mask_phone, normalize_phone
from agent.text import affirmative, shown_date, shown_time, unmask

VISIT_TYPE_SYSTEM = "urn:fhir-sched:visit-type"  # how $find's proposals code the visit type

__all__ = ["STALE_AFTER", "TOOLS", "Sender", "Toolbox", "TurnContext"]

STALE_AFTER = timedelta(minutes=10)
MAX_OPTIONS = 3
MAX_CODES = 3
MAX_CODE_TRIES = 5
HANDOVER_REASONS = [
    "patient_request",
    "billing",
    "clinical",
    "urgent",
    "emergency",
    "language",
    "identity",
    "cannot_help",
    "other",
]


class Sender(Protocol):
    def send(self, to: str, body: str) -> str: ...


def tool_definitions(directory: Directory) -> list[dict[str, Any]]:
    """The tools, as the Messages API takes them."""
    visits = [v.code for v in directory.visits]
    clinicians = [c.id for c in directory.clinicians]
    identity = {
        "given_name": {"type": "string", "description": "the patient's first name"},
        "family_name": {"type": "string", "description": "the patient's last name"},
        "birth_date": {"type": "string", "description": "the patient's birth date, YYYY-MM-DD"},
    }
    existing = {
        "appointment": {
            "type": "string",
            "description": "a booking made in this conversation (V1, V2...), if it is one",
        },
        "date_time": {
            "type": "string",
            "description": "otherwise the appointment's date and time in the patient's words",
        },
        **identity,
    }
    return [
        {
            "name": "find_options",
            "description": "Look up open appointment times. Needs the visit type and the "
            "patient's name and birth date. Returns options A, B, C with date, time, clinician "
            "and location.",
            "input_schema": {
                "type": "object",
                "properties": {
                    "visit_type": {"type": "string", "enum": visits},
                    "when": {
                        "type": "string",
                        "description": "the day or time the patient asked for, in their words "
                        "(e.g. 'next Friday morning', 'tomorrow at 2pm'); empty for soonest",
                    },
                    "clinician": {"type": "string", "enum": clinicians},
                    **identity,
                },
                "required": ["visit_type", "given_name", "family_name", "birth_date"],
            },
        },
        {
            "name": "book",
            "description": "Book an option. Only after your previous message read back its "
            "date, time, clinician and location and the patient said yes.",
            "input_schema": {
                "type": "object",
                "properties": {"option": {"type": "string"}},
                "required": ["option"],
            },
        },
        {
            "name": "cancel",
            "description": "Cancel a booked appointment.",
            "input_schema": {"type": "object", "properties": existing},
        },
        {
            "name": "reschedule",
            "description": "Move a booked appointment to an option, after a read-back of the "
            "new date, time, clinician and location and the patient's yes.",
            "input_schema": {
                "type": "object",
                "properties": {"option": {"type": "string"}, **existing},
                "required": ["option"],
            },
        },
        {
            "name": "join_waitlist",
            "description": "Put the patient on the clinic's waitlist for a visit type, after "
            "they said yes to it: when no suitable time is open, or they want something "
            "sooner. The clinic texts them if a time frees up. Give 'when' (the days they "
            "could come, in their words) or 'sooner_than' (their booked appointment: from now "
            "until it).",
            "input_schema": {
                "type": "object",
                "properties": {
                    "visit_type": {"type": "string", "enum": visits},
                    "clinician": {"type": "string", "enum": clinicians},
                    "when": {"type": "string"},
                    "sooner_than": {
                        "type": "string",
                        "description": "a booking (V1...) or its date and time in the patient's "
                        "words",
                    },
                    **identity,
                },
                "required": ["visit_type", "given_name", "family_name", "birth_date"],
            },
        },
        {
            "name": "send_code",
            "description": "Text a one-time code to the phone number the patient says is on "
            "file, to prove it is theirs (needed on web chat to cancel or move an appointment "
            "not booked in this conversation).",
            "input_schema": {
                "type": "object",
                "properties": {"phone": {"type": "string"}},
                "required": ["phone"],
            },
        },
        {
            "name": "check_code",
            "description": "Check the one-time code the patient typed.",
            "input_schema": {
                "type": "object",
                "properties": {"code": {"type": "string"}},
                "required": ["code"],
            },
        },
        {
            "name": "handover",
            "description": "Hand the conversation to the clinic's staff: when the patient asks "
            "for a person; for billing, clinical, urgent or emergency matters; for another "
            "language; or when you cannot help.",
            "input_schema": {
                "type": "object",
                "properties": {
                    "reason": {"type": "string", "enum": HANDOVER_REASONS},
                    "summary": {"type": "string"},
                },
                "required": ["reason"],
            },
        },
        {
            "name": "note_unable",
            "description": "Record that you could not act on the patient's message (not "
            "understood, out of scope, refused). After two, staff take over.",
            "input_schema": {
                "type": "object",
                "properties": {"reason": {"type": "string"}},
                "required": ["reason"],
            },
        },
    ]


TOOLS = tool_definitions  # the name the engine uses


@dataclass
class TurnContext:
    """One patient message being answered."""

    conversation: str
    channel: str
    facts: dict[str, Any]
    patient_text: str
    now: datetime
    handed_over: str | None = None
    progress: bool = False
    unable: bool = False
    failed: bool = False
    calls: list[str] = field(default_factory=list)


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"error": kind, "message": message}


class Toolbox:
    """Runs the model's tool calls for one conversation turn."""

    def __init__(
        self,
        *,
        directory: Directory,
        fhir: FhirClient,
        sms: Sender | None,
        otp_seconds: int = 600,
    ) -> None:
        self.directory, self.fhir, self.sms, self.otp_seconds = directory, fhir, sms, otp_seconds

    def run(self, name: str, args: Any, ctx: TurnContext) -> dict[str, Any]:
        ctx.calls.append(name)
        if not isinstance(args, dict):
            return _error("bad_input", "the tool input must be an object")
        handler = getattr(self, f"_{name}", None)
        if handler is None:
            return _error("unknown_tool", f"there is no tool {name!r}")
        try:
            result: dict[str, Any] = handler(args, ctx)
        except FhirUnavailable:
            ctx.failed = True
            return _error("unavailable", "the clinic's system did not answer; try again later")
        return result

    # -- helpers --------------------------------------------------------------------------

    def _shown(self, appointment: dict[str, Any]) -> dict[str, str]:
        tz = self.directory.tz
        start = datetime.fromisoformat(appointment["start"]).astimezone(tz)
        names = {}
        for p in appointment.get("participant", []):
            actor = p.get("actor") or {}
            ref = str(actor.get("reference", ""))
            if ref.startswith(("Practitioner/", "Location/")):
                kind = "clinician" if ref.startswith("Practitioner/") else "location"
                known = (
                    self.directory.clinician(ref)
                    if kind == "clinician"
                    else self.directory.place(ref)
                )
                names[kind] = actor.get("display") or (known.name if known else "the clinic")
        visit = next(
            (c.get("display") for s in appointment.get("serviceType", []) for c in s["coding"]),
            "Appointment",
        )
        return {
            "date": shown_date(start),
            "time": shown_time(start),
            "clinician": names.get("clinician", "the clinician"),
            "location": names.get("location", self.directory.name),
            "visit": str(visit),
        }

    def _patient(self, args: dict[str, Any], ctx: TurnContext) -> dict[str, Any] | None:
        given = str(args.get("given_name") or "").strip()
        family = str(args.get("family_name") or "").strip()
        birth = str(args.get("birth_date") or "").strip()
        if not (given and family and birth):
            known = ctx.facts.get("patient")
            return dict(known) if known else None
        try:
            born = datetime.strptime(birth, "%Y-%m-%d").date()
        except ValueError:
            return None
        if born >= ctx.now.date() or born.year < 1900:
            return None
        patient = {
            "resourceType": "Patient",
            "name": [{"family": family, "given": [given]}],
            "birthDate": born.isoformat(),
        }
        ctx.facts["patient"] = patient
        return patient

    def _with_phone(self, patient: dict[str, Any], ctx: TurnContext) -> dict[str, Any]:
        phone = ctx.facts.get("verified_phone")
        if not phone:
            return patient
        return {**patient, "telecom": [{"system": "phone", "value": phone, "use": "mobile"}]}

    # -- the tools --------------------------------------------------------------------------

    def _find_options(self, args: dict[str, Any], ctx: TurnContext) -> dict[str, Any]:
        visit = self.directory.visit(str(args.get("visit_type", "")))
        if visit is None:
            return _error("bad_input", "unknown visit type")
        clinician = args.get("clinician") or None
        if clinician and self.directory.clinician(str(clinician)) is None:
            return _error("bad_input", "unknown clinician")
        when = str(args.get("when") or "").strip()
        tz = self.directory.tz
        window = find_window(when, tz, ctx.now) if when else None
        if window is None:
            window = find_window("soon", tz, ctx.now)
        assert window is not None
        if window.past:
            return _error("past", "that time has already passed; only future times can be booked")
        patient = self._patient(args, ctx)
        if patient is None:
            return _error("need_identity", "ask for the patient's full name and birth date")
        start = max(window.start, ctx.now)
        end = min(window.end, start + timedelta(days=31))
        query = {
            "visit_type": visit.code,
            "clinician": clinician,
            "start": start.isoformat(),
            "end": end.isoformat(),
            "at": window.at.isoformat() if window.at else None,
            "part": [window.part[0].isoformat(), window.part[1].isoformat()]
            if window.part
            else None,
        }
        options = self._search(query, self._with_phone(patient, ctx), ctx)
        ctx.facts["options"] = {
            chr(ord("A") + i): {
                "proposal": p,
                "shown": self._shown(p),
                "found_at": ctx.now.isoformat(),
                "query": query,
            }
            for i, p in enumerate(options)
        }
        ctx.facts["read_back"] = None
        ctx.progress = True
        shown = [{"option": k, **v["shown"]} for k, v in ctx.facts["options"].items()]
        searched = f"{shown_date(start)} to {shown_date(end - timedelta(seconds=1))}"
        if not shown:
            return {"options": [], "searched": searched, "message": "no open times then"}
        return {"options": shown, "searched": searched}

    def _search(
        self, query: dict[str, Any], patient: dict[str, Any], ctx: TurnContext
    ) -> list[dict[str, Any]]:
        tz = self.directory.tz
        found = self.fhir.find(
            start=datetime.fromisoformat(query["start"]),
            end=datetime.fromisoformat(query["end"]),
            visit_type=query["visit_type"],
            practitioner=f"Practitioner/{query['clinician']}" if query["clinician"] else None,
            patient=patient,
            conversation=ctx.conversation,
            count=60,
        )
        if query.get("part"):
            low, high = (datetime.fromisoformat(f"2000-01-01T{t}").time() for t in query["part"])
            found = [
                p
                for p in found
                if low <= datetime.fromisoformat(p["start"]).astimezone(tz).time() < high
            ]
        if query.get("at"):
            at = datetime.fromisoformat(query["at"])
            found.sort(key=lambda p: abs((datetime.fromisoformat(p["start"]) - at).total_seconds()))
        return found[:MAX_OPTIONS]

    def _confirmed(self, option: str, kind: str, ctx: TurnContext) -> dict[str, Any] | None:
        """None if the patient confirmed ``option``'s read-back; else the tool's error."""
        if ctx.facts.get("read_back") != option or ctx.facts.get("read_back_kind") != kind:
            return _error(
                "not_confirmed",
                "first read back the option's date, time, clinician and location exactly as "
                "given and ask the patient to confirm",
            )
        if not affirmative(ctx.patient_text):
            return _error("not_confirmed", "the patient has not said yes to the read-back")
        return None

    def _fresh(self, label: str, ctx: TurnContext) -> dict[str, Any] | None:
        """The option's proposal, looked up again if it was found a while ago; None if it is
        no longer offered."""
        option = ctx.facts["options"][label]
        if ctx.now - datetime.fromisoformat(option["found_at"]) < STALE_AFTER:
            return dict(option["proposal"])
        patient = self._with_phone(ctx.facts.get("patient") or {}, ctx)
        proposal = option["proposal"]
        # from the option's own start: $find answers the earliest times first, so a search
        # from now could fill its page before reaching a time days away
        start = max(datetime.fromisoformat(proposal["start"]), ctx.now)
        query = {**option["query"], "start": start.isoformat()}
        for again in self._search({**query, "at": proposal["start"]}, patient, ctx):
            if again["start"] == proposal["start"] and self._shown(again) == option["shown"]:
                return again
        return None

    def _booked(
        self, appointment: dict[str, Any], patient: dict[str, Any], visit: str, ctx: TurnContext
    ) -> dict[str, Any]:
        visits = ctx.facts.setdefault("visits", {})
        label = f"V{len(visits) + 1}"
        shown = self._shown(appointment)
        visits[label] = {
            "start": appointment["start"],
            "patient": {k: v for k, v in patient.items() if k != "telecom"},
            "visit_type": visit,
            "clinician": next(
                (
                    str(p["actor"]["reference"]).split("/", 1)[1]
                    for p in appointment.get("participant", [])
                    if str((p.get("actor") or {}).get("reference", "")).startswith("Practitioner/")
                ),
                None,
            ),
            "shown": shown,
            "status": "booked",
        }
        ctx.facts["options"] = {}
        ctx.facts["read_back"] = None
        ctx.progress = True
        return {"ref": label, **shown}

    def _refused(self, exc: FhirRefused, ctx: TurnContext) -> dict[str, Any]:
        if exc.status == 409:
            ctx.facts["options"] = {}
            ctx.facts["read_back"] = None
            return _error("taken", "that time was just taken by someone else; look again")
        if exc.message_id == "FS-0603":
            ctx.handed_over = "identity"
            return _error("identity", "the clinic must confirm who the patient is; hand over")
        if exc.status == 404:
            return _error(
                "not_found",
                "no single booked appointment matches that patient, phone number and time",
            )
        if exc.status == 422:
            return _error("refused", exc.diagnostics[:200])
        return _error("refused", f"the clinic's system refused the request ({exc.status})")

    def _book(self, args: dict[str, Any], ctx: TurnContext) -> dict[str, Any]:
        label = str(args.get("option", "")).strip().upper()
        if label not in ctx.facts.get("options", {}):
            return _error("unknown_option", "offer options with find_options first")
        refused = self._confirmed(label, "book", ctx)
        if refused:
            return refused
        proposal = self._fresh(label, ctx)
        if proposal is None:
            ctx.facts["options"] = {}
            return _error("taken", "that time is no longer available; look again")
        patient = ctx.facts.get("patient") or {}
        visit = ctx.facts["options"][label]["query"]["visit_type"]
        try:
            booked = self.fhir.book(proposal, conversation=ctx.conversation)
        except FhirRefused as exc:
            return self._refused(exc, ctx)
        return {"booked": self._booked(booked, patient, visit, ctx)}

    def _waitlist_window(
        self, args: dict[str, Any], ctx: TurnContext
    ) -> tuple[datetime, datetime] | dict[str, Any]:
        """From now until the appointment ``sooner_than`` names, or the ``when`` asked for
        (the next four weeks when neither is given)."""
        tz = self.directory.tz
        sooner = str(args.get("sooner_than") or "").strip()
        if sooner:
            visit = ctx.facts.get("visits", {}).get(sooner.upper())
            until = (
                datetime.fromisoformat(visit["start"])
                if visit
                else parse_start(sooner, tz, ctx.now)
            )
            if until is None:
                return _error("need_time", "ask for the booked appointment's date and time")
            if until <= ctx.now:
                return _error("past", "that appointment has already started or passed")
            return ctx.now, until
        when = str(args.get("when") or "").strip()
        window = find_window(when, tz, ctx.now) if when else None
        if window is None:
            return ctx.now, ctx.now + timedelta(days=28)
        if window.past:
            return _error("past", "that time has already passed")
        return max(window.start, ctx.now), window.end

    def _join_waitlist(self, args: dict[str, Any], ctx: TurnContext) -> dict[str, Any]:
        visit = self.directory.visit(str(args.get("visit_type", "")))
        if visit is None:
            return _error("bad_input", "unknown visit type")
        clinician = args.get("clinician") or None
        known = self.directory.clinician(str(clinician)) if clinician else None
        if clinician and known is None:
            return _error("bad_input", "unknown clinician")
        patient = self._patient(args, ctx)
        if patient is None:
            return _error("need_identity", "ask for the patient's full name and birth date")
        window = self._waitlist_window(args, ctx)
        if isinstance(window, dict):
            return window
        start, end = window
        participants: list[dict[str, Any]] = [
            {"actor": {"reference": "#patient"}, "status": "needs-action"}
        ]
        if clinician:
            participants.append(
                {"actor": {"reference": f"Practitioner/{clinician}"}, "status": "needs-action"}
            )
        entry = {
            "resourceType": "Appointment",
            "status": "waitlist",
            "serviceType": [
                {
                    "coding": [{"system": VISIT_TYPE_SYSTEM, "code": visit.code}],
                    "text": visit.display,
                }
            ],
            "requestedPeriod": [{"start": start.isoformat(), "end": end.isoformat()}],
            "contained": [{**self._with_phone(patient, ctx), "id": "patient"}],
            "participant": participants,
        }
        try:
            self.fhir.join_waitlist(entry, conversation=ctx.conversation)
        except FhirRefused as exc:
            return self._refused(exc, ctx)
        ctx.progress = True
        return {
            "waitlisted": {
                "visit": visit.display,
                "from": shown_date(start),
                "to": shown_date(end - timedelta(seconds=1)),
                "clinician": known.name if known else "any clinician",
            }
        }

    def _existing(self, args: dict[str, Any], ctx: TurnContext) -> dict[str, Any]:
        """The booked appointment a cancel or move names, as an Appointment naming it by
        patient and start; or the tool's error."""
        ref = str(args.get("appointment") or "").strip().upper()
        visits = ctx.facts.get("visits", {})
        if ref in visits and visits[ref]["status"] == "booked":
            visit = visits[ref]
            return {"named": named_appointment(visit["patient"], visit["start"]), "ref": ref}
        if not ctx.facts.get("verified_phone"):
            return _error(
                "verify_phone",
                "to change an appointment not booked in this conversation, ask for the mobile "
                "number on file and call send_code",
            )
        patient = self._patient(args, ctx)
        if patient is None:
            return _error("need_identity", "ask for the patient's full name and birth date")
        start = parse_start(str(args.get("date_time") or ""), self.directory.tz, ctx.now)
        if start is None:
            return _error("need_time", "ask for the appointment's date and time")
        if start <= ctx.now:
            return _error("past", "that appointment has already started or passed")
        return {"named": named_appointment(self._with_phone(patient, ctx), start.isoformat())}

    def _cancel(self, args: dict[str, Any], ctx: TurnContext) -> dict[str, Any]:
        existing = self._existing(args, ctx)
        if "error" in existing:
            return existing
        try:
            cancelled = self.fhir.cancel(existing["named"], conversation=ctx.conversation)
        except FhirRefused as exc:
            return self._refused(exc, ctx)
        if "ref" in existing:
            ctx.facts["visits"][existing["ref"]]["status"] = "cancelled"
        ctx.progress = True
        return {"cancelled": self._shown(cancelled)}

    def _reschedule(self, args: dict[str, Any], ctx: TurnContext) -> dict[str, Any]:
        label = str(args.get("option", "")).strip().upper()
        if label not in ctx.facts.get("options", {}):
            return _error("unknown_option", "offer options with find_options first")
        refused = self._confirmed(label, "move", ctx)
        if refused:
            return refused
        existing = self._existing(args, ctx)
        if "error" in existing:
            return existing
        proposal = self._fresh(label, ctx)
        if proposal is None:
            ctx.facts["options"] = {}
            return _error("taken", "that time is no longer available; look again")
        visit = ctx.facts["options"][label]["query"]["visit_type"]
        named = existing["named"]
        try:
            booked = self.fhir.book(proposal, conversation=ctx.conversation, replaces=named)
        except FhirRefused as exc:
            return self._refused(exc, ctx)
        if "ref" in existing:
            ctx.facts["visits"][existing["ref"]]["status"] = "cancelled"
        patient = ctx.facts.get("patient") or named["contained"][0]
        return {"moved": self._booked(booked, patient, visit, ctx)}

    def _send_code(self, args: dict[str, Any], ctx: TurnContext) -> dict[str, Any]:
        if self.sms is None:
            return _error("unavailable", "codes cannot be sent; hand over to staff")
        masks = ctx.facts.setdefault("masks", {})
        phone = normalize_phone(unmask(str(args.get("phone", "")), masks))
        if sum(c.isdigit() for c in phone) < 7:
            return _error("bad_input", "ask for the full mobile number")
        sent = ctx.facts.get("codes_sent", 0)
        if sent >= MAX_CODES:
            return _error("limit", "too many codes sent; hand over to staff")
        code = f"{secrets.randbelow(1_000_000):06d}"
        ctx.facts["codes_sent"] = sent + 1
        ctx.facts["otp"] = {
            "phone": phone,
            "digest": self._code_digest(ctx.conversation, code),
            "expires": (ctx.now + timedelta(seconds=self.otp_seconds)).isoformat(),
            "tries": 0,
        }
        self.sms.send(phone, f"{self.directory.name}: your code is {code}. It expires soon.")
        return {"sent_to": mask_phone(phone)}

    @staticmethod
    def _code_digest(conversation: str, code: str) -> str:
        return hashlib.sha256(f"{conversation}:{code}".encode()).hexdigest()

    def _check_code(self, args: dict[str, Any], ctx: TurnContext) -> dict[str, Any]:
        otp = ctx.facts.get("otp")
        if not otp:
            return _error("no_code", "no code was sent")
        if otp["tries"] >= MAX_CODE_TRIES or ctx.now > datetime.fromisoformat(otp["expires"]):
            ctx.facts["otp"] = None
            return _error("expired", "the code expired or was tried too often; send a new one")
        otp["tries"] += 1
        code = "".join(ch for ch in str(args.get("code", "")) if ch.isdigit())
        if not hmac.compare_digest(self._code_digest(ctx.conversation, code), otp["digest"]):
            return {"verified": False}
        ctx.facts["verified_phone"] = otp["phone"]
        ctx.facts["otp"] = None
        ctx.progress = True
        return {"verified": True}

    def _handover(self, args: dict[str, Any], ctx: TurnContext) -> dict[str, Any]:
        reason = str(args.get("reason") or "other")
        ctx.handed_over = reason if reason in HANDOVER_REASONS else "other"
        ctx.facts["handover"] = {
            "reason": ctx.handed_over,
            "summary": str(args.get("summary") or "")[:500],
            "at": ctx.now.isoformat(),
        }
        return {"handed_over": True}

    def _note_unable(self, args: dict[str, Any], ctx: TurnContext) -> dict[str, Any]:
        ctx.unable = True
        return {"noted": True}
