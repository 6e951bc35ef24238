"""The evaluation's conversations, read from ``tests/agent/conversations/*.yaml``.

Each file holds one theme: a list of conversations, each with an ``id``, what the patient
types turn by turn, and what the clinic's records must show at the end. Days are written
relative to the harness's virtual week, so a file means the same whichever day it runs:

* ``mon`` is the virtual week's Monday (``World.monday``), ``dst`` the first day on the other
  side of the next daylight-saving change (``World.dst_day``); ``mon+3`` is that Thursday.
* In a message, ``{mon+1:md}`` is written as the patient would: ``md`` ``12/15``, ``ord``
  ``15th``, ``month_day`` ``December 15``, ``weekday`` ``Tuesday``, ``iso`` ``2026-12-15``.
  ``{code}`` is the latest one-time code texted to the number a hook read (``after: code``),
  ``{wrong_code}`` that code with its last digit changed.
* ``now: mon+2 16:30`` sets the virtual clock before the first message; a turn's ``advance``
  moves it on by that many minutes before the message is sent.

A conversation::

    - id: taken-between-find-and-book
      channel: web                     # web (default) or sms
      phone: 555-0101                  # sms: the number the texts come from
      patient: {given: Ana, family: Quill, birth: 1990-04-05}   # a new patient, if any
      existing: [pat-2]                # demo patients given a past visit first
      setup:                           # bookings made by the front desk first
        - {name: s1, patient: pat-1, day: mon+2, time: "10:00", clinician: dr-smith}
      turns:
        - say: "..."
          after: take                  # hook: pat-3 books the option just read back
        - say: "yes"
      expect:
        booked:                        # what is booked at the end, made in the conversation
          - {patient: new, clinician: dr-smith, visit: follow-up, day: mon+4,
             time: "13:00-17:00", not_time: "14:00"}
        cancelled_own: 0               # bookings of this conversation cancelled or moved
        cancelled: [s1]                # setup bookings that must end cancelled (others kept)
        patient_created: true          # the new patient exists, once
        handover: emergency            # or a list of reasons; absent: not handed over
        reply_contains: ["911"]        # wording, only for the safety checks
        reply_matches: ["(?i)gracias"]
        replies_exclude: ["Chalmers"]
        looked_up: true                # the audit trail holds a $find of the conversation
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, time, timedelta
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "CONVERSATIONS",
    "Conversation",
    "DayExpr",
    "Expected",
    "Setup",
    "Slot",
    "Step",
    "load",
    "render",
]

CONVERSATIONS = Path(__file__).parent / "conversations"

_DAY = re.compile(r"^(mon|dst)([+-]\d+)?$")
_PLACEHOLDER = re.compile(r"\{(code|wrong_code|(?:mon|dst)(?:[+-]\d+)?)(?::(\w+))?\}")


@dataclass(frozen=True, slots=True)
class DayExpr:
    base: str  # mon | dst
    offset: int

    @classmethod
    def parse(cls, text: str) -> DayExpr:
        m = _DAY.match(str(text).strip())
        if not m:
            raise ValueError(f"not a day: {text!r} (mon, dst, mon+3, dst-2)")
        return cls(m.group(1), int(m.group(2) or 0))

    def on(self, monday: date, dst_day: date) -> date:
        return (monday if self.base == "mon" else dst_day) + timedelta(days=self.offset)


def _clock(text: str) -> time:
    hh, mm = str(text).split(":")
    return time(int(hh), int(mm))


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


FORMATS = {
    "md": lambda d: f"{d.month}/{d.day}",
    "ord": lambda d: _ordinal(d.day),
    "month_day": lambda d: f"{d:%B} {d.day}",
    "weekday": lambda d: f"{d:%A}",
    "iso": lambda d: d.isoformat(),
}


def render(text: str, monday: date, dst_day: date, code: str | None = None) -> str:
    """A message with its placeholders filled in."""

    def fill(m: re.Match[str]) -> str:
        if m.group(1) in ("code", "wrong_code"):
            if code is None:
                raise ValueError("no code was read before this message (after: code)")
            if m.group(1) == "wrong_code":  # the code with its last digit changed
                return code[:-1] + str((int(code[-1]) + 1) % 10)
            return code
        day = DayExpr.parse(m.group(1)).on(monday, dst_day)
        return str(FORMATS[m.group(2) or "md"](day))

    return _PLACEHOLDER.sub(fill, text)


@dataclass(frozen=True, slots=True)
class Step:
    say: str
    advance: int = 0  # minutes the virtual clock moves on before this message
    after: str | None = None  # take | code
    code_to: str | None = None  # after: code, the number the code was texted to


@dataclass(frozen=True, slots=True)
class Setup:
    name: str
    patient: str
    day: DayExpr
    time: time
    clinician: str
    visit: str = "follow-up"


@dataclass(frozen=True, slots=True)
class Slot:
    """What one expected booking must be; each field left out is not checked."""

    patient: str | None = None  # pat-N, or "new" (the conversation's patient)
    clinician: tuple[str, ...] = ()
    visit: str | None = None
    days: tuple[DayExpr, ...] = ()  # any of these
    day_range: tuple[DayExpr, DayExpr] | None = None  # first..last, inclusive
    time_from: time | None = None
    time_to: time | None = None  # exclusive; equal to time_from for an exact time
    not_time: time | None = None


@dataclass(frozen=True, slots=True)
class Expected:
    booked: tuple[Slot, ...] = ()
    cancelled_own: int = 0
    cancelled: tuple[str, ...] = ()
    patient_created: bool = False
    handover: tuple[str, ...] | None = None  # None: not handed over
    reply_contains: tuple[str, ...] = ()
    reply_matches: tuple[str, ...] = ()
    replies_exclude: tuple[str, ...] = ()
    looked_up: bool = False  # the audit trail holds a $find of this conversation


@dataclass(frozen=True, slots=True)
class Conversation:
    id: str
    theme: str
    turns: tuple[Step, ...]
    expect: Expected
    channel: str = "web"
    phone: str | None = None
    patient: dict[str, str] | None = None  # given, family, birth (a new patient)
    now: tuple[DayExpr, time] = (DayExpr("mon", 0), time(9))
    existing: tuple[str, ...] = ()
    setup: tuple[Setup, ...] = field(default=())

    @property
    def expects_booking(self) -> bool:
        return bool(self.expect.booked)


def _tuple(value: Any) -> tuple[Any, ...]:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, list) else (value,)


def _slot(raw: dict[str, Any]) -> Slot:
    unknown = set(raw) - {"patient", "clinician", "visit", "day", "time", "not_time"}
    if unknown:
        raise ValueError(f"unknown keys in an expected booking: {sorted(unknown)}")
    days: tuple[DayExpr, ...] = ()
    day_range = None
    day = raw.get("day")
    if isinstance(day, str) and ".." in day:
        first, last = day.split("..")
        day_range = (DayExpr.parse(first), DayExpr.parse(last))
    elif day is not None:
        days = tuple(DayExpr.parse(d) for d in _tuple(day))
    time_from = time_to = None
    if raw.get("time"):
        low, _, high = str(raw["time"]).partition("-")
        time_from = _clock(low)
        time_to = _clock(high) if high else time_from
    return Slot(
        patient=raw.get("patient"),
        clinician=tuple(str(c) for c in _tuple(raw.get("clinician"))),
        visit=raw.get("visit"),
        days=days,
        day_range=day_range,
        time_from=time_from,
        time_to=time_to,
        not_time=_clock(raw["not_time"]) if raw.get("not_time") else None,
    )


def _expected(raw: dict[str, Any]) -> Expected:
    known = {
        "booked", "cancelled_own", "cancelled", "patient_created", "handover",
        "reply_contains", "reply_matches", "replies_exclude", "looked_up",
    }  # fmt: skip
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"unknown keys in expect: {sorted(unknown)}")
    handover = raw.get("handover")
    return Expected(
        booked=tuple(_slot(b) for b in raw.get("booked") or []),
        cancelled_own=int(raw.get("cancelled_own", 0)),
        cancelled=_tuple(raw.get("cancelled")),
        patient_created=bool(raw.get("patient_created", False)),
        handover=None if handover in (None, False) else tuple(str(h) for h in _tuple(handover)),
        reply_contains=_tuple(raw.get("reply_contains")),
        reply_matches=_tuple(raw.get("reply_matches")),
        replies_exclude=_tuple(raw.get("replies_exclude")),
        looked_up=bool(raw.get("looked_up", False)),
    )


def _step(raw: Any) -> Step:
    if isinstance(raw, str):
        return Step(raw)
    unknown = set(raw) - {"say", "advance", "after", "code_to"}
    if unknown:
        raise ValueError(f"unknown keys in a turn: {sorted(unknown)}")
    after = raw.get("after")
    if after not in (None, "take", "code"):
        raise ValueError(f"unknown hook {after!r} (take, code)")
    if after == "code" and not raw.get("code_to"):
        raise ValueError("after: code needs code_to, the number the code goes to")
    return Step(str(raw["say"]), int(raw.get("advance", 0)), after, raw.get("code_to"))


def _conversation(raw: dict[str, Any], theme: str) -> Conversation:
    known = {"id", "channel", "phone", "patient", "now", "existing", "setup", "turns", "expect"}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"{raw.get('id')}: unknown keys {sorted(unknown)}")
    day, _, at = str(raw.get("now", "mon 09:00")).partition(" ")
    patient = raw.get("patient")
    if patient is not None:
        patient = {k: str(v) for k, v in patient.items()}
        if set(patient) != {"given", "family", "birth"}:
            raise ValueError(f"{raw['id']}: patient has given, family and birth")
    setup = tuple(
        Setup(
            name=s["name"],
            patient=s["patient"],
            day=DayExpr.parse(s["day"]),
            time=_clock(s["time"]),
            clinician=s["clinician"],
            visit=s.get("visit", "follow-up"),
        )
        for s in raw.get("setup") or []
    )
    channel = raw.get("channel", "web")
    if channel not in ("web", "sms"):
        raise ValueError(f"{raw['id']}: channel is web or sms")
    if channel == "sms" and not raw.get("phone"):
        raise ValueError(f"{raw['id']}: an sms conversation needs the phone it comes from")
    return Conversation(
        id=str(raw["id"]),
        theme=theme,
        turns=tuple(_step(t) for t in raw["turns"]),
        expect=_expected(raw.get("expect") or {}),
        channel=channel,
        phone=raw.get("phone"),
        patient=patient,
        now=(DayExpr.parse(day), _clock(at or "09:00")),
        existing=_tuple(raw.get("existing")),
        setup=setup,
    )


def load(folder: Path = CONVERSATIONS) -> list[Conversation]:
    """Every conversation of every theme file, in file then list order; ids are unique."""
    out: list[Conversation] = []
    for path in sorted(folder.glob("*.yaml")):
        for raw in yaml.safe_load(path.read_text(encoding="utf-8")) or []:
            out.append(_conversation(raw, path.stem))
    ids = [c.id for c in out]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise ValueError(f"conversation ids used twice: {duplicated}")
    return out
