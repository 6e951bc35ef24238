"""MLLP (HL7 Minimal Lower Layer Protocol, release 2) on asyncio: framing and a server.

A frame is ``<VT> message <FS><CR>`` (0x0B … 0x1C 0x0D). This module knows nothing of HL7:
it turns a byte stream into messages and sends back whatever the handler answers.

* Many messages per connection, handled strictly in order (the next one is read only after
  the previous one's answer was sent).
* A frame may arrive split across TCP reads, several may arrive in one read, and bytes outside
  a frame (line noise, keep-alive newlines) are skipped and counted, never fatal.
* A frame larger than ``max_size`` is dropped (logged with its size, never its content) and
  reading resumes at the next start block; so is input left unterminated when the peer closes.
* Many senders at once: one task per connection.

See HL7 Version 2 Transport Specification, MLLP Release 2.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

__all__ = ["END", "START", "FrameReader", "Handler", "MLLPServer", "Reply", "frame"]

START = b"\x0b"
END = b"\x1c\x0d"
DEFAULT_MAX_SIZE = 1024 * 1024

log = structlog.get_logger("hl7_bridge.mllp")

Reply = Callable[[bytes], Awaitable[None]]
# handler(message, peer, reply): answers by awaiting reply(ack) zero or more times
Handler = Callable[[bytes, str, Reply], Awaitable[None]]


def frame(message: bytes) -> bytes:
    """Wrap one message in MLLP start and end blocks."""
    return START + message + END


@dataclass
class FrameReader:
    """Incremental MLLP deframer: :meth:`feed` bytes, get the complete messages so far."""

    max_size: int = DEFAULT_MAX_SIZE
    stray_bytes: int = 0
    dropped: list[int] = field(default_factory=list)  # sizes of frames dropped as too large
    _buffer: bytearray = field(default_factory=bytearray)
    _in_frame: bool = False
    _skipping: bool = False  # inside an oversized frame: discard until its end block

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        self._buffer.extend(data)
        while self._buffer:
            if not self._in_frame:
                start = self._buffer.find(START)
                if start < 0:
                    self.stray_bytes += len(self._buffer)
                    self._buffer.clear()
                    break
                self.stray_bytes += start
                del self._buffer[: start + 1]
                self._in_frame, self._skipping = True, False
            end = self._buffer.find(END)
            if end < 0:
                if self._skipping or len(self._buffer) > self.max_size:
                    self._oversized(len(self._buffer))
                    # discard what was read, keeping a possible first half of the end block
                    keep = 1 if self._buffer.endswith(END[:1]) else 0
                    del self._buffer[: len(self._buffer) - keep]
                break
            if self._skipping or end > self.max_size:
                self._oversized(end)
            else:
                out.append(bytes(self._buffer[:end]))
            del self._buffer[: end + len(END)]
            self._in_frame = self._skipping = False
        return out

    def _oversized(self, size: int) -> None:
        if not self._skipping:
            self.dropped.append(size)
            log.warning("mllp.frame_too_large", size=size, limit=self.max_size)
        self._skipping = True

    def close(self) -> int:
        """The peer is gone: anything still inside a frame is dropped. Returns its size."""
        left = len(self._buffer) if self._in_frame else 0
        if left:
            log.warning("mllp.unterminated_frame", size=left)
        self._buffer.clear()
        self._in_frame = self._skipping = False
        return left


class MLLPServer:
    """Accepts MLLP connections; each message goes to ``handler(message, peer, reply)``, which
    answers through ``reply`` (once, or more: an accept ACK, then an application ACK)."""

    def __init__(self, handler: Handler, *, max_size: int = DEFAULT_MAX_SIZE) -> None:
        self.handler = handler
        self.max_size = max_size
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._connection, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = "{}:{}".format(*writer.get_extra_info("peername")[:2])
        frames = FrameReader(self.max_size)
        log.info("mllp.connected", peer=peer)

        async def reply(answer: bytes) -> None:
            writer.write(frame(answer))
            await writer.drain()

        try:
            while data := await reader.read(65536):
                for message in frames.feed(data):
                    await self.handler(message, peer, reply)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            frames.close()
            log.info("mllp.closed", peer=peer, stray_bytes=frames.stray_bytes)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
