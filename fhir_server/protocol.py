"""The HTTP protocol the server runs under uvicorn: httptools, with deadlines.

uvicorn closes a connection that stays idle between requests (``timeout_keep_alive``), but
not one that sends its request line and headers, or its body, a byte at a time: such a
client holds a connection, and the memory behind it, for as long as it likes. This protocol
gives each request a deadline for its headers (from the connection's first byte, or from the
first byte of the next request on a kept-alive connection) and another for its body (from
the end of the headers). A request whose headers are late gets ``408 Request Timeout`` and
the connection is closed; one whose body is late has its connection closed, which the app
sees as the client going away.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from fhir_server.settings import Settings

__all__ = ["DeadlineProtocol", "use_settings"]

_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\n"
    b"content-length: 39\r\n\r\n"
    b"the request's headers came too slowly\r\n"
)


class DeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request's headers and body."""

    # Set once per process, before it serves (``use_settings``); uvicorn makes one instance
    # per connection and gives it no settings of ours.
    header_seconds: ClassVar[float] = 10.0
    body_seconds: ClassVar[float] = 60.0

    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_seconds, self._headers_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # the next request on a kept-alive connection
            self._arm(self.header_seconds, self._headers_late)

    def on_headers_complete(self) -> None:
        self._arm(self.body_seconds, self._body_late)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _arm(self, seconds: float, late: Callable[[], None]) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, late)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_late(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.write(_REQUEST_TIMEOUT)
            self.transport.close()

    def _body_late(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def use_settings(settings: Settings) -> None:
    """Give this process's connections the deadlines ``settings`` names."""
    DeadlineProtocol.header_seconds = settings.header_timeout_seconds
    DeadlineProtocol.body_seconds = settings.body_timeout_seconds
