"""The stand-in Messages API against the real ``anthropic`` client: its answers parse into the
SDK's types, its faults raise the SDK's exceptions, and its checks refuse what the real API
refuses. If these pass, a test of the agent that fails against the stand-in points at the
agent, not at the stand-in."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import pytest
from anthropic.types import Message, TextBlock, ToolUseBlock

from tests.agent.standin import MESSAGES_PATH, StandIn

MODEL = "claude-test"
ASK = [{"role": "user", "content": "Book me a slot on Tuesday"}]
FIND = {"type": "tool_use", "name": "find_slots", "input": {"day": "2026-12-08"}}


def _text(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "stop_reason": "end_turn"}


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with StandIn(lambda _request: _text("ok")) as server:
        yield server


@pytest.fixture
def client(standin: StandIn) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=standin.url, api_key="test-key", timeout=5.0, max_retries=2
    ) as sdk:
        yield sdk


def test_text_answer_parses(standin: StandIn, client: anthropic.Anthropic) -> None:
    message = client.messages.create(model=MODEL, max_tokens=100, messages=ASK)

    assert isinstance(message, Message)
    assert isinstance(message.content[0], TextBlock)
    assert message.content[0].text == "ok"
    assert message.stop_reason == "end_turn"
    assert message.model == MODEL
    assert message.id.startswith("msg_")
    assert message._request_id is not None
    assert message._request_id.startswith("req_")
    assert message.usage.input_tokens > 0
    assert message.usage.output_tokens > 0
    [request] = standin.requests
    assert request["path"] == MESSAGES_PATH
    assert request["headers"]["content-type"] == "application/json"
    assert "anthropic-version" in request["headers"]
    assert request["json"]["messages"] == ASK


def test_tool_use_answer_then_its_result(standin: StandIn, client: anthropic.Anthropic) -> None:
    """The brain leaves out the tool_use id and the stop_reason; the stand-in fills both in,
    and the conversation carrying the tool_result is accepted by the turn checks."""
    standin.brain = lambda _request: {"content": [FIND]}
    first = client.messages.create(model=MODEL, max_tokens=100, messages=ASK)

    block = first.content[0]
    assert isinstance(block, ToolUseBlock)
    assert block.id.startswith("toolu_")
    assert block.name == "find_slots"
    assert block.input == {"day": "2026-12-08"}
    assert first.stop_reason == "tool_use"

    seen: list[dict[str, Any]] = []

    def answer(request: dict[str, Any]) -> dict[str, Any]:
        seen.append(request)
        return _text("Tuesday 10:00 is free")

    standin.brain = answer
    result = {"type": "tool_result", "tool_use_id": block.id, "content": "10:00"}
    second = client.messages.create(
        model=MODEL,
        max_tokens=100,
        messages=[
            *ASK,
            {"role": "assistant", "content": first.content},
            {"role": "user", "content": [result]},
        ],
    )

    assert isinstance(second.content[0], TextBlock)
    assert seen[0]["messages"][1]["content"][0]["id"] == block.id
    assert seen[0]["messages"][2]["content"] == [result]


def test_rate_limit_is_retried_by_the_sdk(standin: StandIn, client: anthropic.Anthropic) -> None:
    """Two 429s, then the answer. Under a second: the SDK waits the 10 ms ``retry-after-ms``
    says, not its own backoff (0.5 s, then 1 s, less jitter)."""
    standin.fail_next(429, count=2)
    started = time.monotonic()

    message = client.messages.create(model=MODEL, max_tokens=100, messages=ASK)

    assert time.monotonic() - started < 1.0
    assert isinstance(message.content[0], TextBlock)
    retries = [r["headers"]["x-stainless-retry-count"] for r in standin.requests]
    assert retries == ["0", "1", "2"]


FAULTS = [
    (429, anthropic.RateLimitError, "rate_limit_error"),
    (529, anthropic.OverloadedError, "overloaded_error"),
    (500, anthropic.InternalServerError, "api_error"),
]


@pytest.mark.parametrize(("status", "raised", "kind"), FAULTS, ids=["429", "529", "500"])
def test_fault_beyond_retries_raises(
    standin: StandIn,
    client: anthropic.Anthropic,
    status: int,
    raised: type[anthropic.APIStatusError],
    kind: str,
) -> None:
    standin.fail_next(status, count=3)

    with pytest.raises(raised) as caught:
        client.messages.create(model=MODEL, max_tokens=100, messages=ASK)

    assert caught.value.status_code == status
    assert caught.value.type == kind
    assert caught.value.request_id is not None
    assert caught.value.request_id.startswith("req_")
    assert len(standin.requests) == 3  # the first try and max_retries=2


def test_overloaded_is_a_server_error() -> None:
    """Code that catches ``InternalServerError`` for 5xx also catches a 529."""
    assert issubclass(anthropic.OverloadedError, anthropic.InternalServerError)


def test_slow_answer_times_out(standin: StandIn, client: anthropic.Anthropic) -> None:
    standin.delay_next(2.0)
    impatient = client.with_options(timeout=0.3, max_retries=0)

    with pytest.raises(anthropic.APITimeoutError):
        impatient.messages.create(model=MODEL, max_tokens=100, messages=ASK)

    assert impatient.messages.create(model=MODEL, max_tokens=100, messages=ASK).content
    assert len(standin.requests) == 2


TOOL_TURN = {"role": "assistant", "content": [{**FIND, "id": "toolu_1"}]}
RESULT = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "10:00"}
REFUSED: list[tuple[list[Any], str]] = [
    ([*ASK, TOOL_TURN], "without `tool_result`"),
    ([*ASK, TOOL_TURN, {"role": "user", "content": "and?"}], "without `tool_result`"),
    (
        [*ASK, TOOL_TURN, {"role": "user", "content": [{"type": "text", "text": "x"}, RESULT]}],
        "at the beginning",
    ),
    (
        [*ASK, {"role": "assistant", "content": "hm"}, {"role": "user", "content": [RESULT]}],
        "unexpected",
    ),
    ([], "at least one message"),
    ([{"role": "assistant", "content": "hi"}], "first message"),
    ([*ASK, *ASK], "alternate"),
    ([{"role": "user", "content": ""}], "non-empty"),
    ([{"role": "system", "content": "Be brief"}, *ASK], "top-level `system`"),
]


@pytest.mark.parametrize(
    ("messages", "says"),
    REFUSED,
    ids=[
        "tool-use-last",
        "tool-result-missing",
        "tool-result-not-first",
        "tool-result-unasked",
        "no-messages",
        "assistant-first",
        "two-user-turns",
        "empty-content",
        "system-role",
    ],
)
def test_malformed_conversation_is_refused(
    standin: StandIn, client: anthropic.Anthropic, messages: list[Any], says: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model=MODEL, max_tokens=100, messages=messages)

    assert caught.value.status_code == 400
    assert caught.value.type == "invalid_request_error"
    assert caught.value.api_message is not None
    assert says in caught.value.api_message
    assert len(standin.requests) == 1  # a 400 is not retried


def test_max_tokens_must_be_an_integer(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        client.messages.create(model=MODEL, max_tokens="100", messages=ASK)  # type: ignore[arg-type]


def test_cached_system_prompt_is_read_back(client: anthropic.Anthropic) -> None:
    system: Any = [
        {
            "type": "text",
            "text": "You book clinic slots. " * 50,
            "cache_control": {"type": "ephemeral"},
        }
    ]

    def usage(system: Any) -> anthropic.types.Usage:
        return client.messages.create(
            model=MODEL, max_tokens=100, system=system, messages=ASK
        ).usage

    first, second = usage(system), usage(system)
    other = usage([{**system[0], "text": "You cancel clinic slots."}])
    plain = usage("You book clinic slots.")

    assert first.cache_creation_input_tokens and first.cache_creation_input_tokens > 0
    assert first.cache_read_input_tokens == 0
    assert second.cache_creation_input_tokens == 0
    assert second.cache_read_input_tokens == first.cache_creation_input_tokens
    assert second.input_tokens == first.input_tokens  # only the uncached part
    assert other.cache_creation_input_tokens and other.cache_creation_input_tokens > 0
    assert (plain.cache_creation_input_tokens, plain.cache_read_input_tokens) == (0, 0)


def _raises(_request: dict[str, Any]) -> dict[str, Any]:
    raise RuntimeError("no idea")


@pytest.mark.parametrize(
    ("brain", "raised"),
    [(_raises, RuntimeError), (lambda _request: {"text": "hi"}, KeyError)],
    ids=["raises", "no-content"],
)
def test_failing_brain_is_reported_not_retried(
    standin: StandIn,
    client: anthropic.Anthropic,
    brain: Callable[[dict[str, Any]], dict[str, Any]],
    raised: type[Exception],
) -> None:
    standin.brain = brain

    with pytest.raises(anthropic.InternalServerError) as caught:
        client.messages.create(model=MODEL, max_tokens=100, messages=ASK)

    assert caught.value.status_code == 500
    assert len(standin.requests) == 1
    [error] = standin.errors
    assert isinstance(error, raised)


def test_only_the_messages_path_is_served(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model=MODEL, messages=ASK)
