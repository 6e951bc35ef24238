"""agent/offline.py read message by message: which option a yes books, a choice by time, a
yes to a list, a move named in the first message, and a move waiting on a texted code.

Each case is the Messages API conversation the engine would send (text, tool_use and
tool_result blocks); the answer is read from the blocks the model returns."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from agent.offline import OfflineModel
from agent.text import contains_read_back
from fhir_server.agent_runtime import directory_of
from tests.agent.harness import clinic_config

NOW = datetime(2026, 12, 14, 9, tzinfo=ZoneInfo("America/New_York"))
THURSDAY = "Thursday, December 17, 2026"


def _option(letter: str, at: str, clinician: str) -> dict[str, str]:
    return {
        "option": letter,
        "date": THURSDAY,
        "time": at,
        "clinician": clinician,
        "location": "Main Street Clinic",
        "visit": "Follow-up visit",
    }


NOON = [
    _option("A", "12:00 PM", "Dr. Robert Evans"),
    _option("B", "12:00 PM", "Dr. Alice Smith"),  # same date and time, another clinician
    _option("C", "12:15 PM", "Dr. Robert Evans"),
]
MORNING = [
    _option("A", "8:00 AM", "Dr. Robert Evans"),
    _option("B", "8:15 AM", "Dr. Robert Evans"),
    _option("C", "8:30 AM", "Dr. Robert Evans"),
]


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "text", "text": text}]}


def _said(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def _tool(n: int, name: str, args: dict[str, Any], result: dict[str, Any]) -> list[dict[str, Any]]:
    use = {"type": "tool_use", "id": f"toolu_{n}", "name": name, "input": args}
    back = {"type": "tool_result", "tool_use_id": f"toolu_{n}", "content": json.dumps(result)}
    return [{"role": "assistant", "content": [use]}, {"role": "user", "content": [back]}]


def _listed(options: list[dict[str, str]]) -> list[dict[str, Any]]:
    """The patient asked, the agent looked up and listed ``options``."""
    who = {"given_name": "Maria", "family_name": "Rivera", "birth_date": "1988-03-14"}
    return [
        _user("Follow-up on Thursday? Maria Rivera 03/14/1988"),
        *_tool(
            1,
            "find_options",
            {"visit_type": "follow-up", "when": "Thursday", **who},
            {"options": options, "searched": THURSDAY},
        ),
        _said("Here is what I found: A), B), C). Which would you like? Reply A, B or C."),
    ]


def _answer(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    model = OfflineModel(directory_of(clinic_config()), lambda: NOW)
    return model.reply(system=[], messages=messages, tools=[]).content


def _read_back(o: dict[str, str], move: bool = False) -> str:
    what = f"{o['visit']} on {o['date']} at {o['time']} with {o['clinician']} at {o['location']}"
    return f"Please confirm: {'move your appointment to ' if move else ''}{what}. (yes/no)"


def test_a_yes_books_the_option_read_back_not_one_at_the_same_time() -> None:
    said = _answer([*_listed(NOON), _user("B"), _said(_read_back(NOON[1])), _user("yes")])

    assert [(b["type"], b.get("name"), b.get("input")) for b in said] == [
        ("tool_use", "book", {"option": "B"})
    ]


def test_an_option_chosen_by_its_time() -> None:
    [said] = _answer([*_listed(MORNING), _user("8:30 works for me")])

    assert said["type"] == "text"
    assert said["text"] == _read_back(MORNING[2]).replace(
        ". (yes/no)", ". Shall I book it? (yes/no)"
    )


def test_a_bare_number_chooses_nothing() -> None:
    [said] = _answer([*_listed(MORNING), _user("I have 8 questions")])

    assert said.get("name") == "note_unable"


def test_a_yes_to_a_list_asks_which() -> None:
    [said] = _answer([*_listed(MORNING), _user("yes")])

    assert said["type"] == "text"
    assert "Which one" in said["text"]


def test_a_move_named_in_the_first_message_asks_only_when_to() -> None:
    [said] = _answer(
        [_user("Please move my appointment on Wednesday at 10am. Peter Chalmers 12/25/1974")]
    )

    assert said == {"type": "text", "text": "When would you like to come instead?"}


def test_a_move_waiting_on_a_code_is_read_back_again_once_verified() -> None:
    """The toolbox moves only on a yes to a read-back, and the code is not a yes."""
    old = {
        "date_time": "Wednesday at 10am",
        "given_name": "Peter",
        "family_name": "Chalmers",
        "birth_date": "1974-12-25",
    }
    messages = [
        *_listed(NOON),
        _user("A"),
        _said(_read_back(NOON[0], move=True)),
        _user("yes"),
        *_tool(
            2,
            "reschedule",
            {"option": "A", **old},
            {"error": "verify_phone", "message": "ask for the number"},
        ),
        _said("What mobile number do we have on file for you?"),
        _user("[phone-1]"),
        *_tool(3, "send_code", {"phone": "[phone-1]"}, {"sent_to": "***-**01"}),
        _said("I've texted a code. Please type it here."),
        _user("123456"),
        *_tool(4, "check_code", {"code": "123456"}, {"verified": True}),
    ]

    [said] = _answer(messages)

    assert said["type"] == "text"
    assert _read_back(NOON[0], move=True).removesuffix(". (yes/no)") in said["text"]


def test_a_read_back_names_the_time_whole() -> None:
    shown = {
        "date": "Monday, December 14, 2026",
        "time": "2:00 PM",
        "clinician": "Dr. Alice Smith",
        "location": "Main Street Clinic",
    }
    noon = "Monday, December 14, 2026 at 12:00 PM with Dr. Alice Smith at Main Street Clinic"
    assert not contains_read_back(noon, shown)
    assert contains_read_back(noon.replace("12:00 PM", "2:00 PM"), shown)
