"""Agents that must fail the evaluation, to show the grading can fail them.

* :class:`Idle` answers "OK" to everything and never calls a tool.
* :class:`BooksFirstOption` is the offline model, except that as soon as a look-up lists
  options it books option A, with no read-back and no yes. The toolbox would refuse that
  booking, so it runs with :class:`Unconfirmed`, a toolbox whose confirmation check is off:
  what is left to catch it is the grading.
"""

from __future__ import annotations

import json
from typing import Any

from agent.model import Model, ModelReply
from agent.offline import OfflineModel
from agent.tools import Toolbox, TurnContext
from tests.agent.harness import World

__all__ = ["BooksFirstOption", "Idle", "Unconfirmed", "unconfirmed"]


class Idle:
    label = "idle (answers OK)"

    def reply(
        self, *, system: list[dict[str, Any]], messages: list[dict[str, Any]], tools: list[Any]
    ) -> ModelReply:
        return ModelReply([{"type": "text", "text": "OK"}], "end_turn")


class BooksFirstOption:
    """The offline model, but option A is booked the moment a look-up lists options."""

    def __init__(self, offline: OfflineModel) -> None:
        self.offline = offline
        self.label = "books option A at once"
        self._ids = 0

    @staticmethod
    def _listed(messages: list[dict[str, Any]]) -> bool:
        """Whether the last message holds a find_options result with options."""
        if len(messages) < 2 or messages[-1]["role"] != "user":
            return False
        calls = {b["id"]: b["name"] for b in messages[-2]["content"] if b.get("type") == "tool_use"}
        for block in messages[-1]["content"]:
            if block.get("type") != "tool_result":
                continue
            if calls.get(block.get("tool_use_id")) == "find_options":
                return bool(json.loads(block.get("content") or "{}").get("options"))
        return False

    def reply(
        self, *, system: list[dict[str, Any]], messages: list[dict[str, Any]], tools: list[Any]
    ) -> ModelReply:
        if self._listed(messages):
            self._ids += 1
            use = {
                "type": "tool_use",
                "id": f"toolu_eager_{self._ids:06d}",
                "name": "book",
                "input": {"option": "A"},
            }
            return ModelReply([use], "tool_use")
        return self.offline.reply(system=system, messages=messages, tools=tools)


class Unconfirmed(Toolbox):
    """The real toolbox with the read-back-and-yes check switched off."""

    def _confirmed(self, option: str, kind: str, ctx: TurnContext) -> dict[str, Any] | None:
        return None


def unconfirmed(world: World) -> None:
    """Give the world's agent the :class:`Unconfirmed` toolbox (it needs the agent's own
    FHIR client and SMS provider, which exist only once the agent is built)."""
    agent = world.agent
    agent.tools = Unconfirmed(
        directory=agent.directory,
        fhir=agent.fhir,
        sms=agent.sms,
        otp_seconds=agent.config.otp_seconds,
    )


def eager(offline: OfflineModel) -> Model:
    return BooksFirstOption(offline)
