"""A stand-in for Anthropic's Messages API, for driving the real ``anthropic.Anthropic`` client
in tests where the real API cannot be reached.

It is a real HTTP server on loopback, so the SDK's own request building, retries, timeouts
and response parsing all run as they would against the API; only the model is replaced, by a
``brain`` the test supplies. It refuses the requests the real API refuses (a conversation
whose ``tool_use`` blocks go unanswered, turns out of order, a missing ``max_tokens``), so a
client bug shows up here as the same 400 it would cause in production.

Shapes follow the API reference: https://platform.claude.com/docs/en/api/messages (request,
``Message``, ``usage``) and https://platform.claude.com/docs/en/api/errors (error body,
``request-id`` header).

    with StandIn(lambda request: {"content": [{"type": "text", "text": "hi"}]}) as api:
        client = anthropic.Anthropic(base_url=api.url, api_key="test")
        client.messages.create(model="m", max_tokens=10, messages=[...])

As a fixture: ``with StandIn() as api: yield api``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import secrets
import threading
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = ["ERROR_TYPES", "MESSAGES_PATH", "Brain", "StandIn"]

Brain = Callable[[dict[str, Any]], dict[str, Any]]
"""Takes the request's JSON; returns ``{"content": [...], "stop_reason": ...}``
(``stop_reason`` and ``stop_sequence`` optional)."""

MESSAGES_PATH = "/v1/messages"

# https://platform.claude.com/docs/en/api/errors, "HTTP errors"
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}

# The SDK reads ``retry-after-ms`` before ``retry-after``. Without a header it backs off
# 0.5 s, then 1 s, ..., which would make each retried test take seconds.
QUICK_RETRY_MS = "10"


class _Refused(Exception):
    """A request the real API would answer with an error; ``str()`` is the error message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _tokens(value: Any) -> int:
    """A rough token count, about four characters of JSON each: enough for tests to see that
    usage grows with the prompt, not a tokenizer."""
    return max(1, len(json.dumps(value, separators=(",", ":"))) // 4)


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if isinstance(content, list) and all(
        isinstance(b, dict) and isinstance(b.get("type"), str) for b in content
    ):
        return content
    raise _Refused(400, f"{where}.content: expected a string or a list of content blocks")


def _check_request(body: Any, headers: dict[str, str]) -> None:
    """The top-level fields the real API requires; the turns are checked by `_check_turns`."""
    if "x-api-key" not in headers and "authorization" not in headers:
        raise _Refused(401, "x-api-key header is required")
    if "anthropic-version" not in headers:
        raise _Refused(400, "anthropic-version: header is required")
    if not isinstance(body, dict):
        raise _Refused(400, "the request body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _Refused(400, "model: Field required")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
        raise _Refused(400, "max_tokens: Field required, a non-negative integer")
    if body.get("stream"):
        # Not the real API's answer: the stand-in does not stream, and saying so beats
        # answering a streaming client with a body it cannot read.
        raise _Refused(400, "stream: the stand-in does not stream; call create() without it")
    _check_turns(body.get("messages"))


def _check_turns(messages: Any) -> None:
    """Each ``tool_use`` is answered by a ``tool_result`` at the start of the next user turn,
    as the real API requires (its wording is kept in the messages). See
    https://platform.claude.com/docs/en/agents-and-tools/tool-use/handle-tool-calls.

    Stricter than the API in three ways, each catching a client that builds its history
    wrongly: turns must alternate (the API merges consecutive turns of one role), the first
    must be ``user``, and a ``system`` role in ``messages`` (which the SDK's types allow) is
    refused in favour of the top-level ``system`` parameter."""
    if not isinstance(messages, list) or not messages:
        raise _Refused(400, "messages: at least one message is required")
    pending: list[str] = []  # tool_use ids the next turn must answer
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            raise _Refused(
                400,
                f'messages.{i}.role: expected "user" or "assistant"; put a system prompt in '
                "the top-level `system` parameter",
            )
        if i == 0 and role != "user":
            raise _Refused(400, 'messages.0: the first message must use the "user" role')
        if i > 0 and role == messages[i - 1]["role"]:
            raise _Refused(400, f'messages.{i}: roles must alternate, found two "{role}" turns')
        blocks = _blocks(message.get("content"), f"messages.{i}")
        if not blocks and not (role == "assistant" and i == len(messages) - 1):
            raise _Refused(400, f"messages.{i}: all messages must have non-empty content")
        if role == "user":
            _check_results(blocks, pending, i)
            pending = []
        else:
            pending = [b.get("id", "") for b in blocks if b["type"] == "tool_use"]
    if pending:
        raise _unanswered(len(messages) - 1, pending)


def _check_results(blocks: list[dict[str, Any]], pending: list[str], i: int) -> None:
    results = [b.get("tool_use_id") for b in blocks if b["type"] == "tool_result"]
    for j, block in enumerate(blocks):
        if block["type"] == "tool_result" and block.get("tool_use_id") not in pending:
            raise _Refused(
                400,
                f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` "
                f"blocks: {block.get('tool_use_id')}. Each `tool_result` block must have a "
                "corresponding `tool_use` block in the previous message.",
            )
    missing = [tool_use_id for tool_use_id in pending if tool_use_id not in results]
    if missing:
        raise _unanswered(i - 1, missing)
    if any(b["type"] != "tool_result" for b in blocks[: len(pending)]):
        raise _Refused(
            400,
            f"messages.{i}: Did not find {len(pending)} `tool_result` block(s) at the beginning "
            "of this message. Messages following `tool_use` blocks must begin with a matching "
            "number of `tool_result` blocks.",
        )


def _unanswered(i: int, ids: list[str]) -> _Refused:
    return _Refused(
        400,
        f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately "
        f"after: {', '.join(ids)}. Each `tool_use` block must have a corresponding "
        "`tool_result` block in the next message.",
    )


def _cached_prefix(body: dict[str, Any]) -> list[Any] | None:
    """What a ``cache_control`` mark on a system block caches: the tools and the system blocks
    up to the last mark, the prefix order the API uses (tools, system, messages). None when
    no system block is marked. Marks on tools or messages, the top-level ``cache_control``
    and the API's minimum cacheable length are not modelled.
    https://docs.claude.com/en/docs/build-with-claude/prompt-caching
    """
    system = body.get("system")
    if not isinstance(system, list):
        return None
    marked = [k for k, b in enumerate(system) if isinstance(b, dict) and "cache_control" in b]
    if not marked:
        return None
    texts = [b.get("text") if isinstance(b, dict) else b for b in system[: marked[-1] + 1]]
    return [body["model"], body.get("tools", []), texts]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, standin: StandIn) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.standin = standin


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest shows stderr of failing tests, and access lines would bury the cause."""

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        status, payload, extra = self.server.standin._answer(
            self.path, {k.lower(): v for k, v in self.headers.items()}, body
        )
        request_id = f"req_{secrets.token_hex(12)}"
        if status >= 400:
            payload["request_id"] = request_id
        data = json.dumps(payload).encode()
        # The client may have timed out and gone while a delayed answer slept.
        with contextlib.suppress(ConnectionError):
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.send_header("request-id", request_id)
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)


class StandIn:
    """The Messages API on ``127.0.0.1``, an ephemeral port, served from a background thread
    from construction until `close` (or the end of a ``with`` block).

    ``brain`` may be swapped at any time (``standin.brain = f``); ``requests`` records every
    request, faulted ones included, as ``{"path", "headers", "json"}`` with lower-cased header
    names. The default brain answers the text "ok". A brain that raises, or answers without a
    ``content`` list, is answered 500 with ``x-should-retry: false`` (so the SDK gives up at
    once) and the exception is kept in ``errors`` for the test to re-raise or inspect.
    """

    def __init__(self, brain: Brain | None = None) -> None:
        self.brain: Brain = brain or (
            lambda _request: {"content": [{"type": "text", "text": "ok"}]}
        )
        self._lock = threading.Lock()
        self._requests: list[dict[str, Any]] = []
        self._errors: list[BaseException] = []
        self._faults: deque[tuple[int, float | None]] = deque()
        self._delays: deque[float] = deque()
        self._cached: set[str] = set()
        self._closing = threading.Event()
        self._server = _Server(self)
        # serve_forever notices shutdown() only between polls; at its default 0.5 s every
        # test using a stand-in paid half a second in teardown.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="anthropic-standin",
            daemon=True,
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """The ``base_url`` for ``anthropic.Anthropic``."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def requests(self) -> list[dict[str, Any]]:
        """A copy of what has been received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def errors(self) -> list[BaseException]:
        """What the brain raised, oldest first."""
        with self._lock:
            return list(self._errors)

    def fail_next(self, status: int, count: int = 1, retry_after: float | None = None) -> None:
        """Answer the next ``count`` requests with ``status`` and its error body (429
        ``rate_limit_error``, 529 ``overloaded_error``, 500 ``api_error``, ...).

        ``retry_after`` (seconds) is sent as ``retry-after`` and ``retry-after-ms``; without
        it only ``retry-after-ms: 10`` is sent, so the SDK's retries take milliseconds."""
        with self._lock:
            self._faults.extend([(status, retry_after)] * count)

    def delay_next(self, seconds: float, count: int = 1) -> None:
        """Sleep ``seconds`` before answering each of the next ``count`` requests, to run the
        client into its timeout. `close` cuts the sleep short."""
        with self._lock:
            self._delays.extend([seconds] * count)

    def close(self) -> None:
        if self._closing.is_set():
            return
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> StandIn:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _answer(
        self, path: str, headers: dict[str, str], body: Any
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Status, JSON body and extra headers for one request (called on a server thread)."""
        with self._lock:
            self._requests.append({"path": path, "headers": headers, "json": body})
            delay = self._delays.popleft() if self._delays else 0.0
            fault = self._faults.popleft() if self._faults else None
        if delay:
            self._closing.wait(delay)
        if fault is not None:
            status, retry_after = fault
            message = f"{_kind(status)} from fail_next"
            return status, _error(status, message), _retry_headers(retry_after)
        try:
            if path.partition("?")[0] != MESSAGES_PATH:
                raise _Refused(404, f"the stand-in serves only POST {MESSAGES_PATH}")
            _check_request(body, headers)
        except _Refused as refused:
            return refused.status, _error(refused.status, str(refused)), {}
        try:
            return 200, self._message(body, self.brain(copy.deepcopy(body))), {}
        except Exception as exc:  # noqa: BLE001 - handed to the test through `errors`
            with self._lock:
                self._errors.append(exc)
            message = f"the brain raised {type(exc).__name__}; see StandIn.errors"
            return 500, _error(500, message), {"x-should-retry": "false"}

    def _message(self, body: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
        content = [dict(block) for block in answer["content"]]
        for block in content:
            if block.get("type") == "tool_use":
                block.setdefault("id", f"toolu_{secrets.token_hex(12)}")
        stop_reason = answer.get("stop_reason") or (
            "tool_use" if any(b.get("type") == "tool_use" for b in content) else "end_turn"
        )
        return {
            "id": f"msg_{secrets.token_hex(12)}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": answer.get("stop_sequence"),
            "usage": self._usage(body, content),
        }

    def _usage(self, body: dict[str, Any], content: list[dict[str, Any]]) -> dict[str, int]:
        """``input_tokens`` counts only what was neither written to nor read from the cache,
        as the API reports it; the three together are the whole prompt."""
        prompt = [body.get("tools", []), body.get("system", ""), body["messages"]]
        total = _tokens(prompt)
        written = read = 0
        prefix = _cached_prefix(body)
        if prefix is not None:
            size = min(_tokens(prefix), total)
            key = hashlib.sha256(json.dumps(prefix, sort_keys=True).encode()).hexdigest()
            with self._lock:
                seen = key in self._cached
                self._cached.add(key)
            written, read = (0, size) if seen else (size, 0)
        return {
            "input_tokens": total - written - read,
            "output_tokens": _tokens(content),
            "cache_creation_input_tokens": written,
            "cache_read_input_tokens": read,
        }


def _kind(status: int) -> str:
    """The error type for a status; the API uses ``invalid_request_error`` for 4xx codes it
    lists no type for, and ``api_error`` for unexpected failures."""
    return ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def _error(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": _kind(status), "message": message}}


def _retry_headers(retry_after: float | None) -> dict[str, str]:
    if retry_after is None:
        return {"retry-after-ms": QUICK_RETRY_MS}
    return {
        "retry-after": str(math.ceil(retry_after)),
        "retry-after-ms": str(round(retry_after * 1000)),
    }
