"""What the agent reads in a patient's words and how it writes times back: masking of phone
numbers and identifiers before anything reaches the model, yes and no, and the read-back of an
option (calendar date, local time, clinician, location) that a booking waits for."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

__all__ = [
    "affirmative",
    "contains_read_back",
    "mask",
    "negative",
    "shown_date",
    "shown_time",
    "unmask",
]

_PHONE = re.compile(r"(?<![\w/-])\+?\(?\d[\d\s().-]{5,}\d(?![\w/])")
_ISO_DATE = re.compile(r"^\d{4}-\d{1,2}-\d{1,2}$")
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b")
# record numbers and member ids: "MRN-1002", "ID 55321", "A1234567"
_IDENTIFIER = re.compile(
    r"\b(?:(?:mrn|id|ssn|nhs|member|medicare|medicaid|policy)\s*(?:no\.?|number)?\s*[#:-]?\s*"
    r"[A-Za-z0-9-]*\d{3,}[A-Za-z0-9-]*|[A-Za-z]{1,5}-?\d{4,})\b",
    re.IGNORECASE,
)
_YES = re.compile(
    r"\b(yes|yeah|yep|yup|sure|ok|okay|confirm|confirmed|correct|book it|please do|"
    r"sounds good|that works|perfect|great|s[ií]|go ahead|do it)\b",
    re.IGNORECASE,
)
_NO = re.compile(r"\b(no|nope|not|don'?t|wait|stop|wrong|instead|other)\b", re.IGNORECASE)


def mask(text: str, masks: dict[str, str]) -> str:
    """``text`` with each phone number (7 digits or more, not a date), e-mail address and
    record or member number replaced by a token such as ``[phone-1]``; ``masks`` maps the
    tokens back (kept with the conversation, never sent to the model)."""

    def phone(m: re.Match[str]) -> str:
        raw = m.group(0)
        digits = re.sub(r"\D", "", raw)
        if len(digits) < 7 or _ISO_DATE.match(raw.strip()):
            return raw
        for token, value in masks.items():
            if value == raw.strip():
                return token
        token = f"[phone-{sum(1 for t in masks if t.startswith('[phone')) + 1}]"
        masks[token] = raw.strip()
        return token

    def email(m: re.Match[str]) -> str:
        token = f"[email-{sum(1 for t in masks if t.startswith('[email')) + 1}]"
        masks[token] = m.group(0)
        return token

    def identifier(m: re.Match[str]) -> str:
        token = f"[id-{sum(1 for t in masks if t.startswith('[id')) + 1}]"
        masks[token] = m.group(0)
        return token

    return _IDENTIFIER.sub(identifier, _EMAIL.sub(email, _PHONE.sub(phone, text)))


def unmask(value: str, masks: dict[str, str]) -> str:
    for token, real in masks.items():
        value = value.replace(token, real)
    return value


def affirmative(text: str) -> bool:
    return bool(_YES.search(text)) and not _NO.search(text)


def negative(text: str) -> bool:
    return bool(_NO.search(text)) and not _YES.search(text)


def shown_date(at: datetime) -> str:
    return f"{at:%A}, {at:%B} {at.day}, {at.year}"


def shown_time(at: datetime) -> str:
    return f"{at.hour % 12 or 12}:{at:%M} {'AM' if at.hour < 12 else 'PM'}"


def contains_read_back(text: str, shown: dict[str, Any]) -> bool:
    """Whether ``text`` reads back the calendar date, local time, clinician and location."""
    low = text.lower()
    return all(
        # whole words only: "2:00 PM" is not read back by "12:00 PM"
        re.search(rf"(?<![\w:]){re.escape(str(shown[k]).lower())}(?![\w:])", low)
        for k in ("date", "time", "clinician", "location")
    )
