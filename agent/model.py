"""Who answers: Claude through the ``anthropic`` SDK, or the offline rules (``agent/offline.py``).

Both take the same Messages API request (a system prompt, the conversation, the tools) and
return the same content blocks, so the engine (``agent/engine.py``) cannot tell them apart and
the evaluation runs each conversation through both.

The SDK retries 429, 529, other 5xx, connection errors and timeouts itself, with exponential
backoff that honours ``retry-after`` (``model_retries`` times); whatever still fails is
:class:`ModelUnavailable`, and the engine hands the conversation to staff.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import anthropic

from agent.config import AgentConfig

__all__ = ["ClaudeModel", "Model", "ModelReply", "ModelUnavailable", "make_model"]


class ModelUnavailable(Exception):
    """The model did not answer (after the SDK's retries)."""


@dataclass(frozen=True, slots=True)
class ModelReply:
    content: list[dict[str, Any]]  # text and tool_use blocks, as the Messages API gives them
    stop_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)


class Model(Protocol):
    label: str  # what the chat page and the CLI say is answering

    def reply(
        self, *, system: list[dict[str, Any]], messages: list[dict[str, Any]], tools: list[Any]
    ) -> ModelReply: ...


class ClaudeModel:
    """The Messages API with tool use, through the official SDK."""

    def __init__(self, config: AgentConfig) -> None:
        self.model = config.model
        self.label = f"Claude ({config.model})"
        self._client = anthropic.Anthropic(
            api_key=config.api_key,
            base_url=config.base_url,
            timeout=config.model_timeout,
            max_retries=config.model_retries,
        )

    def reply(
        self, *, system: list[dict[str, Any]], messages: list[dict[str, Any]], tools: list[Any]
    ) -> ModelReply:
        try:
            message = self._client.messages.create(
                model=self.model,
                max_tokens=1024,
                system=system,  # type: ignore[arg-type]
                messages=messages,  # type: ignore[arg-type]
                tools=tools,
            )
        except anthropic.APIError as exc:  # status errors, timeouts, connection errors
            raise ModelUnavailable(type(exc).__name__) from exc
        content: list[dict[str, Any]] = []
        for block in message.content:
            if block.type == "text":
                content.append({"type": "text", "text": block.text})
            elif block.type == "tool_use":
                content.append(
                    {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
                )
        usage = {
            "input_tokens": message.usage.input_tokens,
            "output_tokens": message.usage.output_tokens,
            "cache_read_input_tokens": message.usage.cache_read_input_tokens or 0,
        }
        return ModelReply(content, message.stop_reason, usage)


def make_model(config: AgentConfig, offline: Model) -> Model:
    """Claude when an API key is configured, else the offline rules."""
    return ClaudeModel(config) if config.api_key else offline
