"""A stand-in EMR: an MLLP listener built on python-hl7's asyncio server (an implementation
independent of ours) that records every SIU it receives and answers as told."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import hl7
from hl7.mllp import HL7StreamReader, HL7StreamWriter, start_hl7_server

__all__ = ["StandInEMR"]

STRAY_ACK = "MSH|^~\\&|EMR||FHIRSCHED||20261201000000||ACK|X1|P|2.5.1\rMSA|AA|not-yours"


def _ack(message: hl7.Message, code: str) -> str:
    msh = message.segment("MSH")
    control = str(msh[10])
    return "\r".join(
        [
            f"MSH|^~\\&|{msh[5]}|{msh[6]}|{msh[3]}|{msh[4]}|20261201000000||ACK^"
            f"{msh[9][0][1]}^ACK|ACK{control}|P|{msh[12]}",
            f"MSA|{code}|{control}",
        ]
    )


class StandInEMR:
    """``answer(message)`` gives the ACK code (default AA); with ``stray_ack_first`` an ACK
    for some other message goes out before the real one."""

    def __init__(
        self,
        answer: Callable[[hl7.Message], str] = lambda _: "AA",
        *,
        stray_ack_first: bool = False,
    ) -> None:
        self.answer = answer
        self.stray_ack_first = stray_ack_first
        self.received: list[hl7.Message] = []
        self.port = 0
        self._server: Any = None
        self._writers: set[HL7StreamWriter] = set()
        self.arrived = asyncio.Event()

    async def start(self, port: int = 0) -> int:
        self._server = await start_hl7_server(self._client, "127.0.0.1", port or self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        """Go down hard: stop listening and drop every open connection."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()
            self._server = None

    async def _client(self, reader: HL7StreamReader, writer: HL7StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                message = await reader.readmessage()
                self.received.append(message)
                self.arrived.set()
                if self.stray_ack_first:  # an ACK for some other message comes first
                    writer.writemessage(hl7.parse(STRAY_ACK))
                writer.writemessage(hl7.parse(_ack(message, self.answer(message))))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def events(self) -> list[str]:
        return [str(m.segment("MSH")[9][0][1]) for m in self.received]

    def control_ids(self) -> list[str]:
        return [str(m.segment("MSH")[10]) for m in self.received]
