"""The offline model: deterministic rules and the date parser, in the Messages API's shape.

It answers exactly as Claude would be asked to (``agent/model.py``): it reads the system
prompt, the conversation and the tool results, and returns text and tool_use blocks. It keeps
no state of its own; everything it knows it reads again from the conversation each time, as a
language model does. That is what lets the evaluation drive the real ``anthropic`` client with
it, behind a stand-in Messages API server, and grade both on the same conversations.

It handles the common flows (book, cancel, move, confirm a read-back, prove a phone number with
a code, hand over) in English; anything in another language, anything clinical, billing or
urgent goes to staff. Claude, when a key is configured, handles the rest.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent.config import Directory
from agent.dates import find_window, parse_birth_date
from agent.model import ModelReply
from agent.text import affirmative, contains_read_back, negative, shown_time

__all__ = ["OfflineModel"]

_EMERGENCY = re.compile(
    r"chest pain|can'?t breathe|cannot breathe|trouble breathing|short of breath|"
    r"bleeding (?:heavily|a lot|badly)|severe bleeding|unconscious|passed out|stroke|"
    r"heart attack|overdos|suicid|kill myself|seizure|emergency",
    re.IGNORECASE,
)
_SPANISH = re.compile(
    r"\b(hola|quiero|quisiera|cita|necesito|gracias|mañana|buenos|buenas|por favor|puedo|"
    r"semana|próxima|proxima|doctora?|usted|tengo)\b",
    re.IGNORECASE,
)
_AI = re.compile(
    r"\b(?:are you|is this|am i (?:talking|chatting|texting) (?:to|with))\s+(?:a |an )?"
    r"(?:real )?(?:bot|robot|ai|a\.i\.|machine|computer|human|person|automated|real person)\b",
    re.IGNORECASE,
)
_PERSON = re.compile(
    r"\b(?:talk|speak|chat|text)\s+(?:to|with)\s+(?:a |an |the |someone|somebody)?\s*"
    r"(?:real )?(?:person|human|someone|somebody|staff|receptionist|nurse|front desk|agent)|"
    r"\b(?:real person|human please|operator|representative)\b|^\s*(?:person|human|staff)\s*$",
    re.IGNORECASE,
)
_BILLING = re.compile(
    r"\b(bill|billing|invoice|charged?|payment|insurance|copay|co-pay|refund|cost|price|"
    r"how much)\b",
    re.IGNORECASE,
)
_CLINICAL = re.compile(
    r"\b(should i (?:take|stop|worry)|can i take|is it normal|medication|medicine|dose|dosage|"
    r"prescription|refill|side effects?|test results?|lab results?|diagnos\w*)\b",
    re.IGNORECASE,
)
_INJECTION = re.compile(
    r"ignore (?:all |your |previous |the |any )*(?:instructions|rules|prompts?)|system prompt|"
    r"other patients|list (?:all |the )?patients|developer mode|you are now|disregard|"
    r"reveal your",
    re.IGNORECASE,
)
_ABSURD = re.compile(
    r"every (?:single )?day|forever|every week for|\b\d{2,} appointments|all (?:the )?"
    r"(?:slots|times|appointments)|book (?:everything|all)",
    re.IGNORECASE,
)
_CANCEL = re.compile(r"\bcancel", re.IGNORECASE)
_WAITLIST = re.compile(r"\bwait(?:ing)?[ -]?list\b", re.IGNORECASE)
_SOONER = re.compile(r"\b(sooner|earlier)\b", re.IGNORECASE)
WAITLIST_OFFER = "shall I put you on the waitlist"
_MOVE = re.compile(
    r"\b(move|reschedul\w*|change (?:my|the|it)|push (?:it|my)|later that day|"
    r"earlier that day|different time)\b",
    re.IGNORECASE,
)
_BOOKISH = re.compile(
    r"\b(book|appointment|appt|see|available|availability|opening|slot|visit|check-?up|"
    r"sooner|earliest)\b",
    re.IGNORECASE,
)
_GREETING = re.compile(r"^\s*(hi|hello|hey|good (?:morning|afternoon|evening))\W*$", re.I)
_THANKS = re.compile(r"^\s*(thanks?|thank you|ty|bye|goodbye|great,? thanks?)\b", re.I)
_NAME = [
    re.compile(
        r"(?:my name is|name is|i am|i'm|this is|name:)\s+([A-Z][A-Za-z'\-]+)\s+"
        r"([A-Z][A-Za-z'\-]+)"
    ),
    re.compile(
        r"\b([A-Z][A-Za-z'\-]+)\s+([A-Z][A-Za-z'\-]+)\s*(?:,|\bborn\b|\bdob\b|\bDOB\b|\d|$)"
    ),
]
_NOT_NAMES = {
    "hi", "hello", "hey", "can", "could", "i", "dr", "yes", "no", "please", "book", "cancel",
    "my", "the", "is", "it", "this", "need", "want", "would",
}  # fmt: skip
_CLINIC_NOTE = re.compile(
    r"^\(The clinic wrote to the patient about appointment (V\d+): (.+) on (.+) at "
    r"(\d{1,2}:\d{2} [AP]M) with (.+) at (.+)\.\)$"
)
_CODE = re.compile(r"\b(\d{4,8})\b")
_CLOCK = re.compile(r"\b(\d{1,2})(?::(\d{2}))?\s*(am|pm|a\.m\.|p\.m\.)?(?![\d/])")
_PHONE_TOKEN = re.compile(r"\[phone-\d+\]")
_ORDINALS = {"first": "A", "1st": "A", "second": "B", "2nd": "B", "third": "C", "3rd": "C"}

ASK_CANCEL = (
    "To cancel, please tell me your full name, date of birth, and the date and time "
    "of the appointment."
)
ASK_MOVE = (
    "To move an appointment, please tell me your full name, date of birth, and the "
    "date and time of your current appointment."
)
PAST = "I'm sorry, I can't book a time in the past. Which upcoming day would suit you?"
ASK_PHONE = (
    "To protect your privacy I need to confirm your phone number. What mobile number "
    "do we have on file for you? I'll text you a code."
)
NOT_FOUND = (
    "I couldn't find a booked appointment for those details. Please check the name, "
    "date of birth and time, or write 'person' to reach our staff."
)
IDENTITY = "I need our staff to confirm your details before booking; they'll reply here."
ASK_DETAILS = (
    "Please tell me your full name, date of birth, and the date and time of the appointment."
)
ONE_AT_A_TIME = "I'm sorry, I can only book one appointment at a time. Which day would suit you?"
NOT_UNDERSTOOD = (
    "Sorry, I didn't understand. I can book, move or cancel an appointment, or pass "
    "you to our staff."
)


@dataclass
class _Item:
    kind: str  # patient | said | call | result
    text: str = ""
    name: str = ""
    input: Any = None
    id: str = ""
    result: Any = None


def _items(messages: list[dict[str, Any]]) -> list[_Item]:
    """The conversation as a flat list: what the patient said, what was said back, each tool
    call and its result."""
    out: list[_Item] = []
    calls: dict[str, _Item] = {}
    for m in messages:
        content = m["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        for block in content:
            kind = block.get("type")
            if kind == "text":
                out.append(_Item("patient" if m["role"] == "user" else "said", text=block["text"]))
            elif kind == "tool_use":
                item = _Item("call", name=block["name"], input=block.get("input"), id=block["id"])
                calls[block["id"]] = item
                out.append(item)
            elif kind == "tool_result":
                raw = block.get("content")
                if isinstance(raw, list):
                    raw = "".join(b.get("text", "") for b in raw)
                try:
                    parsed = json.loads(raw or "{}")
                except ValueError:
                    parsed = {"error": "unreadable"}
                call = calls.get(block.get("tool_use_id", ""))
                out.append(
                    _Item(
                        "result",
                        name=call.name if call else "",
                        input=call.input if call else None,
                        result=parsed,
                    )
                )
    return out


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


class OfflineModel:
    """Rules over the conversation; the same blocks a language model returns."""

    def __init__(self, directory: Directory, clock: Callable[[], datetime] | None = None) -> None:
        self.directory = directory
        self.clock = clock or (lambda: datetime.now(UTC))
        self.label = "offline rules (no AI model)"
        self._ids = 0

    def reply(
        self, *, system: list[dict[str, Any]], messages: list[dict[str, Any]], tools: list[Any]
    ) -> ModelReply:
        items = _items(messages)
        content = self._decide(items)
        for block in content:
            if block["type"] == "tool_use" and not block.get("id"):
                self._ids += 1
                block["id"] = f"toolu_offline_{self._ids:06d}"
        stop = "tool_use" if any(b["type"] == "tool_use" for b in content) else "end_turn"
        return ModelReply(content, stop)

    @staticmethod
    def _call(name: str, **args: Any) -> list[dict[str, Any]]:
        return [{"type": "tool_use", "id": "", "name": name, "input": args}]

    # -- reading the conversation ---------------------------------------------------------

    def _decide(self, items: list[_Item]) -> list[dict[str, Any]]:
        last_patient = max((i for i, it in enumerate(items) if it.kind == "patient"), default=-1)
        this_turn = items[last_patient + 1 :]
        if this_turn and this_turn[-1].kind == "result":
            return self._after_tools(items, this_turn)
        text = items[last_patient].text if last_patient >= 0 else ""
        return self._on_message(items[:last_patient], text)

    def _segment(self, history: list[_Item]) -> list[_Item]:
        """What came after the last thing done (a booking, cancellation, move, handover)."""
        start = 0
        for i, it in enumerate(history):
            if it.kind == "result" and any(
                k in it.result for k in ("booked", "cancelled", "moved", "waitlisted")
            ):
                start = i + 1
        return history[start:]

    def _identity(self, texts: list[str]) -> dict[str, str] | None:
        given = family = birth = None
        today = self.clock().astimezone(self.directory.tz).date()
        for t in texts:
            for pattern in _NAME:
                m = pattern.search(t)
                if (
                    m
                    and m.group(1).lower() not in _NOT_NAMES
                    and m.group(2).lower() not in _NOT_NAMES
                ):
                    given, family = m.group(1), m.group(2)
                    break
            born = parse_birth_date(t, today)
            if born is not None:
                birth = born.isoformat()
        if given and family and birth:
            return {"given_name": given, "family_name": family, "birth_date": birth}
        return None

    def _known_identity(self, history: list[_Item], texts: list[str]) -> dict[str, str] | None:
        found = self._identity(texts)
        if found:
            return found
        for it in reversed(history):  # as used before in this conversation
            if it.kind == "call" and isinstance(it.input, dict) and it.input.get("birth_date"):
                keys = ("given_name", "family_name", "birth_date")
                if all(it.input.get(k) for k in keys):
                    return {k: it.input[k] for k in keys}
        return None

    def _without_birth(self, text: str) -> str:
        today = self.clock().astimezone(self.directory.tz).date()
        if parse_birth_date(text, today) is None:
            return text
        text = re.sub(r"\b\d{4}-\d{1,2}-\d{1,2}\b|\b\d{1,2}/\d{1,2}/\d{4}\b", " ", text)
        return re.sub(r"\b[A-Za-z]+\.?\s+\d{1,2}(?:st|nd|rd|th)?,?\s+\d{4}\b", " ", text)

    def _when(self, texts: list[str]) -> str | None:
        """The latest day or time the patient asked for."""
        tz, now = self.directory.tz, self.clock()
        for t in reversed(texts):
            cleaned = self._without_birth(t)
            if find_window(cleaned, tz, now) is not None:
                return cleaned
        return None

    def _clinician(self, texts: list[str]) -> str | None:
        for t in reversed(texts):
            low = t.lower()
            for c in self.directory.clinicians:
                if c.family.lower() in low:
                    return c.id
        return None

    def _visit(self, texts: list[str], clinician: str | None) -> str | None:
        codes = {v.code for v in self.directory.visits}
        for t in reversed(texts):
            low = t.lower()
            therapy = any(w in low for w in ("physical therapy", "physio", " pt ", "therapy"))
            if therapy or clinician == "pt-nguyen":
                if "follow" in low and "pt-follow-up" in codes:
                    return "pt-follow-up"
                if "pt-eval" in codes and (therapy or "first" in low or "new" in low):
                    return "pt-eval"
            if "procedure" in low and "procedure" in codes:
                return "procedure"
            if (
                re.search(r"follow[- ]?up|check[- ]?up|regular|existing", low)
                and "follow-up" in codes
            ):
                return "follow-up"
            if (
                re.search(r"\bnew\b|first (?:time|visit)|never been", low)
                and "new-patient" in codes
            ):
                return "new-patient"
        if clinician == "pt-nguyen" and "pt-eval" in codes:
            return None
        return None

    @staticmethod
    def _last(history: list[_Item], kind: str, name: str | None = None) -> _Item | None:
        for it in reversed(history):
            if it.kind == kind and (name is None or it.name == name):
                return it
        return None

    def _options(self, history: list[_Item]) -> list[dict[str, Any]]:
        """The options of the latest look-up, if nothing was done since."""
        for it in reversed(history):
            if it.kind == "result" and it.name == "find_options":
                return list(it.result.get("options") or [])
            if it.kind == "result" and any(k in it.result for k in ("booked", "moved")):
                return []
        return []

    def _visits(self, history: list[_Item]) -> list[dict[str, Any]]:
        """Bookings made in this conversation, or that a clinic message named, and not
        cancelled or moved since."""
        out: dict[str, dict[str, Any]] = {}
        for it in history:
            note = _CLINIC_NOTE.search(it.text) if it.kind == "patient" else None
            if note:
                keys = ("ref", "visit", "date", "time", "clinician", "location")
                out[note.group(1)] = dict(zip(keys, note.groups(), strict=True))
            if it.kind != "result":
                continue
            for key in ("booked", "moved"):
                if key in it.result:
                    out[it.result[key]["ref"]] = it.result[key]
            if "cancelled" in it.result and isinstance(it.input, dict):
                out.pop(str(it.input.get("appointment", "")), None)
            if "moved" in it.result and isinstance(it.input, dict):
                out.pop(str(it.input.get("appointment", "")), None)
        return list(out.values())

    # -- what to say ---------------------------------------------------------------------

    def _read_back(self, option: dict[str, Any], moving: bool) -> str:
        what = (
            f"{option['visit']} on {option['date']} at {option['time']} "
            f"with {option['clinician']} at {option['location']}"
        )
        if moving:
            return f"Please confirm: move your appointment to {what}. Shall I move it? (yes/no)"
        return f"Please confirm: {what}. Shall I book it? (yes/no)"

    @staticmethod
    def _short(option: dict[str, Any]) -> str:
        day = option["date"].rsplit(",", 1)[0]  # without the year
        return (
            f"{option['option']}) {day} at {option['time']} "
            f"with {option['clinician']} at {option['location']}"
        )

    def _offer(self, options: list[dict[str, Any]], moving: bool, exact: bool) -> str:
        if len(options) == 1 or exact:
            return self._read_back(options[0], moving)
        listed = "; ".join(self._short(o) for o in options)
        letters = ", ".join(o["option"] for o in options[:-1]) + f" or {options[-1]['option']}"
        return f"Here is what I found: {listed}. Which would you like? Reply {letters}."

    def _ask_identity(self, prefix: str = "") -> list[dict[str, Any]]:
        return [
            _text(
                f"{prefix}Please tell me your full name and date of birth "
                "(e.g. Jane Doe, 03/14/1988).".strip()
            )
        ]

    def _handover_text(self, reason: str) -> str:
        return {
            "emergency": "If this is an emergency, please call 911 (emergency services) now. "
            "I've also alerted our staff.",
            "language": "Gracias por escribirnos. Un miembro de nuestro personal le responderá "
            "aquí lo antes posible.",
            "patient_request": "Of course. A member of our staff will reply here as soon as "
            "they can.",
            "billing": "Billing questions are for our staff: I've passed this on and they will "
            "reply here.",
            "clinical": "I can't answer medical questions, so I've passed this to our staff. "
            "If it is urgent, call the clinic or 911.",
        }.get(reason, "I've passed this conversation to our staff, who will reply here.")

    # -- a patient's message ---------------------------------------------------------------

    def _on_message(self, history: list[_Item], text: str) -> list[dict[str, Any]]:
        if not text.strip():
            return self._call("note_unable", reason="empty message")
        if _EMERGENCY.search(text):
            return self._call("handover", reason="emergency", summary="emergency described")
        if _SPANISH.search(text) and not re.search(r"\b(the|and|is|my|please)\b", text, re.I):
            return self._call("handover", reason="language", summary="Spanish")
        if _AI.search(text):
            return [
                _text(
                    f"Yes, I'm an automated assistant ({self.label}), not a person. I can "
                    "book, move or cancel appointments, or pass you to our staff: just ask."
                )
            ]
        if _PERSON.search(text):
            return self._call("handover", reason="patient_request", summary="asked for a person")
        if _BILLING.search(text):
            return self._call("handover", reason="billing", summary="billing question")
        if _CLINICAL.search(text):
            return self._call("handover", reason="clinical", summary="clinical question")
        if _INJECTION.search(text):
            return self._call("note_unable", reason="injection")
        if _ABSURD.search(text):
            return self._call("note_unable", reason="absurd")

        segment = self._segment(history)
        texts = [it.text for it in segment if it.kind == "patient"] + [text]
        all_texts = [it.text for it in history if it.kind == "patient"] + [text]
        said = self._last(history, "said")
        last_said = said.text if said else ""

        # a code we are waiting for, or the phone number to send it to
        sent = self._last(segment, "result", "send_code")
        checked = self._last(segment, "result", "check_code")
        code = _CODE.search(text)
        if (
            sent
            and "sent_to" in sent.result
            and code
            and not (checked and checked.result.get("verified"))
        ):
            return self._call("check_code", code=code.group(1))
        phone = _PHONE_TOKEN.search(text)
        pending = self._pending_change(segment)
        if phone and pending is not None and pending.result.get("error") == "verify_phone":
            return self._call("send_code", phone=phone.group(0))

        said_yes_to_waitlist = (
            WAITLIST_OFFER in last_said
            and affirmative(text)
            and not _BOOKISH.search(text)
            and self._when([text]) is None
        )
        if said_yes_to_waitlist or any(_WAITLIST.search(t) for t in texts):
            return self._waitlist(history, segment, texts, all_texts)
        options = self._options(history)
        moving = self._moving(segment, text)
        # a read-back waiting for a yes
        if options and "Please confirm" in last_said:
            # the option read back: two options may share a date and time (another clinician)
            chosen = next((o for o in options if contains_read_back(last_said, o)), None)
            if chosen and affirmative(text):
                return self._act(
                    chosen, history, segment, all_texts, moving=("move your" in last_said)
                )
            if chosen and negative(text) and self._when([text]) is None:
                others = [o for o in options if o is not chosen]
                if others:
                    return [_text(self._offer(others, moving, exact=False))]
                return [_text("No problem. Which other day or time would suit you?")]
        # a choice among the options offered
        if options:
            chosen = self._choice(text, options)
            if chosen is not None:
                return [_text(self._read_back(chosen, moving))]
            if affirmative(text) and "Please confirm" not in last_said:  # a yes to a list
                letters = ", ".join(o["option"] for o in options)
                return [_text(f"Which one would you like? Reply {letters}.")]

        if _CANCEL.search(text):
            return self._cancel(history, texts, all_texts, text)
        if moving or (pending is not None and pending.name == "reschedule"):
            return self._move(history, segment, texts, all_texts, text)
        if _GREETING.search(text):
            return [
                _text(
                    "Hello! I can book, move or cancel an appointment. What would you like to do?"
                )
            ]
        if _THANKS.search(text) and not _BOOKISH.search(text):
            return [_text("You're welcome. Goodbye!")]
        if self._booking_context(texts, text):
            return self._book(history, texts, all_texts)
        return self._call("note_unable", reason="not understood")

    def _booking_context(self, texts: list[str], text: str) -> bool:
        if _BOOKISH.search(text) or self._clinician([text]) or self._when([text]):
            return True
        if self._identity([text]) or parse_birth_date(text, self.clock().date()):
            return any(_BOOKISH.search(t) or self._when([t]) for t in texts)
        return self._visit([text], None) is not None

    def _choice(self, text: str, options: list[dict[str, Any]]) -> dict[str, Any] | None:
        low = text.strip().lower()
        by_letter = {o["option"].lower(): o for o in options}
        m = re.match(r"^(?:option\s+)?([a-f])(?:[\s.,!)]|$)", low) or re.search(
            r"\boption\s+([a-f])\b", low
        )
        if m and m.group(1) in by_letter:
            return by_letter[m.group(1)]
        for word, letter in _ORDINALS.items():
            if re.search(rf"\b{word}\b", low) and letter.lower() in by_letter:
                return by_letter[letter.lower()]
        said = _CLOCK.search(low)
        if said is None or not (said.group(2) or said.group(3)):  # "8:30", "9am"; not "2"
            return None
        hour, minute = int(said.group(1)), int(said.group(2) or 0)
        half = (said.group(3) or "").replace(".", "")
        times = [
            o
            for o in options
            if (m := _CLOCK.search(o["time"].lower()))
            and int(m.group(1)) == hour
            and int(m.group(2) or 0) == minute
            and (not half or half == (m.group(3) or "").replace(".", ""))
        ]
        if len(times) == 1:  # "8:30 works", "the 9 am one"
            return times[0]
        return None

    def _moving(self, segment: list[_Item], text: str) -> bool:
        if _MOVE.search(text):
            return True
        for it in reversed(segment):
            if it.kind == "patient":
                if _MOVE.search(it.text):
                    return True
                if _CANCEL.search(it.text) or _BOOKISH.search(it.text):
                    return False
        return False

    def _pending_change(self, segment: list[_Item]) -> _Item | None:
        """The latest cancel or move that waits for a proven phone number."""
        for it in reversed(segment):
            if it.kind == "result" and it.name in ("cancel", "reschedule"):
                return it if it.result.get("error") in ("verify_phone",) else None
        return None

    # -- flows ------------------------------------------------------------------------------

    def _book(
        self, history: list[_Item], texts: list[str], all_texts: list[str]
    ) -> list[dict[str, Any]]:
        clinician = self._clinician(texts)
        visit = self._visit(texts, clinician)
        identity = self._known_identity(history, all_texts)
        when = self._when(texts)
        if when is not None:
            window = find_window(when, self.directory.tz, self.clock())
            if window is not None and window.past:
                return self._call(
                    "find_options",
                    visit_type=visit or "follow-up",
                    when=when,
                    **(identity or {"given_name": "", "family_name": "", "birth_date": ""}),
                )
        if visit is None:
            kinds = ", ".join(v.display.lower() for v in self.directory.visits)
            ask = f"What kind of visit is it: {kinds}?"
            if identity is None:
                ask += " And please tell me your full name and date of birth."
            return [_text(ask)]
        if identity is None:
            return self._ask_identity()
        args: dict[str, Any] = {"visit_type": visit, "when": when or "", **identity}
        if clinician:
            args["clinician"] = clinician
        return self._call("find_options", **args)

    def _waitlist(
        self, history: list[_Item], segment: list[_Item], texts: list[str], all_texts: list[str]
    ) -> list[dict[str, Any]]:
        """Join the waitlist for what was last looked up (or what the patient asks now)."""
        find = self._last(segment, "call", "find_options") or self._last(
            history, "call", "find_options"
        )
        asked = dict(find.input) if find is not None and isinstance(find.input, dict) else {}
        clinician = asked.get("clinician") or self._clinician(texts)
        visit = asked.get("visit_type") or self._visit(texts, clinician)
        identity = self._known_identity(history, all_texts)
        if visit is None:
            kinds = ", ".join(v.display.lower() for v in self.directory.visits)
            return [_text(f"Which kind of visit is the waitlist for: {kinds}?")]
        if identity is None:
            return self._ask_identity()
        args: dict[str, Any] = {"visit_type": visit, **identity}
        if clinician:
            args["clinician"] = clinician
        visits = self._visits(history)
        if visits and any(_SOONER.search(t) for t in texts):
            args["sooner_than"] = visits[-1]["ref"]
        elif asked.get("when"):
            args["when"] = asked["when"]
        return self._call("join_waitlist", **args)

    def _cancel(
        self, history: list[_Item], texts: list[str], all_texts: list[str], text: str
    ) -> list[dict[str, Any]]:
        own = self._visits(history)
        named = self._when([text])
        if own and (named is None or len(own) == 1):
            return self._call("cancel", appointment=own[-1]["ref"])
        identity = self._known_identity(history, all_texts)
        when = self._when(texts)
        if identity is None or when is None:
            return [_text(ASK_CANCEL)]
        return self._call("cancel", date_time=when, **identity)

    def _move(
        self,
        history: list[_Item],
        segment: list[_Item],
        texts: list[str],
        all_texts: list[str],
        text: str,
    ) -> list[dict[str, Any]]:
        own = self._visits(history)
        when = self._when([text])
        if own:
            visit = own[-1]
            target = when or "soon"
            if "later that day" in text.lower() or "earlier that day" in text.lower():
                target = visit["date"]
            prior = self._last(history, "call", "find_options")
            known = self._known_identity(history, all_texts) or {}
            code = next(
                (v.code for v in self.directory.visits if v.display == visit.get("visit")), None
            )
            args: dict[str, Any] = {
                "visit_type": code or (prior.input.get("visit_type") if prior else "follow-up"),
                "when": target,
                **known,
            }
            clinician = self._clinician([text]) or next(
                (c.id for c in self.directory.clinicians if c.name == visit.get("clinician")), None
            )
            if clinician:
                args["clinician"] = clinician
            return self._call("find_options", **args)
        identity = self._known_identity(history, all_texts)
        old = self._current([*segment, _Item("patient", text=text)])  # may be in this message
        if identity is None or old is None:
            return [_text(ASK_MOVE)]
        if when is None or when == old:
            return [_text("When would you like to come instead?")]
        clinician = self._clinician(texts)
        kind = self._visit(texts, clinician) or "follow-up"
        args = {"visit_type": kind, "when": when, **identity}
        if clinician:
            args["clinician"] = clinician
        return self._call("find_options", **args)

    def _current(self, segment: list[_Item]) -> str | None:
        """The current appointment's date and time, as the patient first gave it when moving."""
        tz, now = self.directory.tz, self.clock()
        for it in segment:
            if it.kind == "patient":
                cleaned = self._without_birth(it.text)
                window = find_window(cleaned, tz, now)
                if window is not None and window.at is not None:
                    return cleaned
        return None

    def _act(
        self,
        option: dict[str, Any],
        history: list[_Item],
        segment: list[_Item],
        all_texts: list[str],
        *,
        moving: bool,
    ) -> list[dict[str, Any]]:
        if not moving:
            return self._call("book", option=option["option"])
        own = self._visits(history)
        if own:
            return self._call("reschedule", option=option["option"], appointment=own[-1]["ref"])
        identity = self._known_identity(history, all_texts) or {}
        return self._call(
            "reschedule",
            option=option["option"],
            date_time=self._current(segment) or "",
            **identity,
        )

    # -- after the tools ---------------------------------------------------------------------

    def _verified(self, items: list[_Item]) -> list[dict[str, Any]]:
        """The phone number is proven: the cancellation or move that waited for it goes
        ahead. A move is read back again first: the toolbox moves only on a yes to a
        read-back, and the patient's last message was the code."""
        done = "Thank you, your number is confirmed."
        pending = next(
            (
                it
                for it in reversed(items)
                if it.kind == "result"
                and it.name in ("cancel", "reschedule")
                and it.result.get("error") == "verify_phone"
            ),
            None,
        )
        if pending is None or not isinstance(pending.input, dict):
            return [_text(f"{done} What would you like to do?")]
        if pending.name == "reschedule":
            wanted = pending.input.get("option")
            option = next((o for o in self._options(items) if o["option"] == wanted), None)
            if option is not None:
                return [_text(f"{done} {self._read_back(option, moving=True)}")]
        return self._call(pending.name, **pending.input)

    def _after_tools(self, items: list[_Item], this_turn: list[_Item]) -> list[dict[str, Any]]:
        last = this_turn[-1]
        result = last.result if isinstance(last.result, dict) else {}
        error = result.get("error")
        taken_before = any(
            it.kind == "result" and it.result.get("error") == "taken" for it in this_turn[:-1]
        )
        if last.name == "find_options":
            if error == "past":
                return [_text(PAST)]
            if error == "need_identity":
                return self._ask_identity()
            if error:
                return [_text(f"Sorry, I couldn't look that up ({result.get('message', error)}).")]
            options = result.get("options") or []
            prefix = "Sorry, that time was just taken by someone else. " if taken_before else ""
            if not options:
                return [
                    _text(
                        f"{prefix}I couldn't find any open times from "
                        f"{result.get('searched', 'then')}. Would another day or week work, "
                        f"or {WAITLIST_OFFER} and text you if a time frees up?"
                    )
                ]
            moving = self._moving(self._segment(items), "")
            when = (last.input or {}).get("when", "") if isinstance(last.input, dict) else ""
            window = find_window(when, self.directory.tz, self.clock()) if when else None
            exact = bool(window and window.at and options[0]["time"] == shown_time(window.at))
            return [_text(prefix + self._offer(options, moving, exact))]
        if last.name in ("book", "reschedule"):
            done = result.get("booked") or result.get("moved")
            if done:
                verb = "moved to" if "moved" in result else "booked for"
                return [
                    _text(
                        f"Done: you're {verb} {done['visit']} on {done['date']} at {done['time']} "
                        f"with {done['clinician']} at {done['location']} (reference "
                        f"{done['ref']}). Reply here to change or cancel it."
                    )
                ]
            if error == "taken":
                find = self._last(items, "call", "find_options")
                if find is not None:
                    return self._call("find_options", **find.input)
                return [_text("Sorry, that time was just taken. Which other day would suit you?")]
            if error == "verify_phone":
                return [_text(ASK_PHONE)]
            if error == "not_found":
                return [_text(NOT_FOUND)]
            if error == "identity":
                return [_text(IDENTITY)]
            return [_text(f"Sorry, I couldn't do that: {result.get('message', error)}.")]
        if last.name == "join_waitlist":
            waiting = result.get("waitlisted")
            if waiting:
                return [
                    _text(
                        f"Done: you're on the waitlist for a {waiting['visit'].lower()} with "
                        f"{waiting['clinician']}, {waiting['from']} to {waiting['to']}. If a time "
                        "frees up we'll text you; reply YES to that text to take it."
                    )
                ]
            if error == "need_identity":
                return self._ask_identity()
            if error == "identity":
                return [_text(IDENTITY)]
            return [
                _text(f"Sorry, I couldn't add you to the waitlist: {result.get('message', error)}.")
            ]
        if last.name == "cancel":
            if "cancelled" in result:
                c = result["cancelled"]
                return [
                    _text(
                        f"Your {c['visit'].lower()} on {c['date']} at {c['time']} "
                        f"with {c['clinician']} is cancelled."
                    )
                ]
            if error == "verify_phone":
                return [_text(ASK_PHONE)]
            if error == "not_found":
                return self._call("note_unable", reason="no matching appointment")
            if error in ("need_identity", "need_time"):
                return [_text(ASK_DETAILS)]
            return [_text(f"Sorry, I couldn't cancel it: {result.get('message', error)}.")]
        if last.name == "send_code":
            if "sent_to" in result:
                return [_text(f"I've texted a code to {result['sent_to']}. Please type it here.")]
            return [_text(f"Sorry, I couldn't send a code ({result.get('message', error)}).")]
        if last.name == "check_code":
            if result.get("verified"):
                return self._verified(items)
            if error:
                return [
                    _text(
                        "That code has expired. Shall I send a new one? Tell me the number again."
                    )
                ]
            return [_text("That code doesn't match. Please check it and type it again.")]
        if last.name == "handover":
            reason = (
                (last.input or {}).get("reason", "other")
                if isinstance(last.input, dict)
                else "other"
            )
            return [_text(self._handover_text(str(reason)))]
        if last.name == "note_unable":
            why = (last.input or {}).get("reason", "") if isinstance(last.input, dict) else ""
            if why == "injection":
                return [_text("I can only help you book, move or cancel your own appointments.")]
            if why == "absurd":
                return [_text(ONE_AT_A_TIME)]
            if why == "no matching appointment":
                return [_text(NOT_FOUND)]
            return [_text(NOT_UNDERSTOOD)]
        return [_text("Sorry, something went wrong. Could you say that again?")]
