"""Slow clients against the real `fhir-sched serve`: headers and bodies have deadlines, and
idle kept-alive connections close (FHIRSCHED_HEADER_TIMEOUT_SECONDS, _BODY_, _KEEP_ALIVE_)."""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.integration.server import Server, running_server, server_env

DEADLINE = 1.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp: Path = tmp_path_factory.mktemp("timeouts")
    env = server_env(
        tmp,
        f"sqlite:///{tmp}/t.db",
        FHIRSCHED_HEADER_TIMEOUT_SECONDS=str(DEADLINE),
        FHIRSCHED_BODY_TIMEOUT_SECONDS=str(DEADLINE),
        FHIRSCHED_KEEP_ALIVE_SECONDS=str(DEADLINE),
    )
    with running_server(tmp, env) as s:
        yield s


def _connect(server: Server) -> socket.socket:
    url = urlsplit(server.root)
    sock = socket.create_connection((url.hostname, url.port), timeout=10)
    return sock


def _read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took."""
    sock.settimeout(10)
    start, out = time.monotonic(), b""
    while chunk := sock.recv(65536):
        out += chunk
    return out, time.monotonic() - start


def _open_for(sock: socket.socket, seconds: float) -> bool:
    """Whether the server keeps the connection open for ``seconds`` more."""
    sock.settimeout(seconds)
    try:
        return sock.recv(1) != b""
    except TimeoutError:
        return True


def test_slow_headers_get_408_and_the_connection_closes(server: Server) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # the headers never end
        time.sleep(DEADLINE / 2)
        sock.sendall(b"X-Slow: 1\r\n")  # a trickle does not reset the deadline
        answer, waited = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert waited < DEADLINE * 5


def test_a_connection_that_sends_nothing_is_closed(server: Server) -> None:
    with _connect(server) as sock:
        answer, _ = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_slow_body_closes_the_connection(server: Server) -> None:
    token = server.headers["Authorization"].encode()
    with _connect(server) as sock:
        sock.sendall(
            b"POST /fhir/Patient HTTP/1.1\r\nHost: x\r\ncontent-type: application/fhir+json\r\n"
            b"authorization: " + token + b'\r\ncontent-length: 100\r\n\r\n{"resourceType":'
        )
        answer, waited = _read_until_closed(sock)
    assert answer == b""  # nothing was stored or answered: the app saw the client go away
    assert waited < DEADLINE * 5
    assert '"status": 400' in _last_request(server, "/fhir/Patient")  # not a 500


def _last_request(server: Server, path: str) -> str:
    """The server's last ``http.request`` log line for ``path`` (written as it answers)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [
            line
            for line in server.log_path.read_text().splitlines()
            if '"http.request"' in line and f'"path": "{path}"' in line
        ]
        if lines:
            return lines[-1]
        time.sleep(0.1)
    raise AssertionError(f"no http.request line for {path}")


def test_idle_kept_alive_connection_closes_and_a_prompt_one_is_served(server: Server) -> None:
    url = urlsplit(server.root)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    try:
        for _ in range(2):  # two requests on one connection, each well inside its deadlines
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            assert response.status == 200
            assert response.read() == b'{"status":"ok"}'
        assert conn.sock is not None
        assert _open_for(conn.sock, DEADLINE / 4)
        answer, waited = _read_until_closed(conn.sock)  # then idle: closed after keep-alive
    finally:
        conn.close()
    assert answer == b""
    assert waited < DEADLINE * 5
