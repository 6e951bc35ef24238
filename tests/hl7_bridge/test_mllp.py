"""MLLP framing and the asyncio server: split frames, several per read, stray bytes, oversized
and unterminated input, many messages per connection in order, many senders at once. The
socket tests talk through python-hl7's asyncio MLLP client, an independent implementation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import hl7
import pytest
from hl7.mllp import open_hl7_connection

from hl7_bridge.mllp import END, START, FrameReader, MLLPServer, Reply, frame

pytestmark = pytest.mark.anyio


def _msg(control_id: str) -> bytes:
    return (
        f"MSH|^~\\&|EMR|CLINIC|FHIRSCHED|HOSP|20261123090000||SIU^S12|{control_id}|P|2.5.1\r"
        f"SCH|{control_id}|||||||||60|min"
    ).encode()


def test_split_frames_and_several_per_read() -> None:
    reader = FrameReader()
    stream = frame(_msg("1")) + frame(_msg("2")) + frame(_msg("3"))
    got: list[bytes] = []
    for i in range(0, len(stream), 7):  # 7-byte reads split everything, end blocks included
        got += reader.feed(stream[i : i + 7])
    assert got == [_msg("1"), _msg("2"), _msg("3")]
    assert FrameReader().feed(stream) == got


def test_stray_bytes_between_frames_are_skipped() -> None:
    reader = FrameReader()
    got = reader.feed(b"\r\n" + frame(_msg("1")) + b"noise\n" + frame(_msg("2")) + b"\r")
    assert got == [_msg("1"), _msg("2")]
    assert reader.stray_bytes == len(b"\r\n") + len(b"noise\n") + 1


@pytest.mark.parametrize("chunk", [5, 64, 10_000], ids=["5-byte reads", "64", "one read"])
def test_oversized_frame_is_dropped_and_reading_resumes(chunk: int) -> None:
    reader = FrameReader(max_size=100)
    stream = frame(b"x" * 500) + frame(_msg("ok"))
    got: list[bytes] = []
    for i in range(0, len(stream), chunk):
        got += reader.feed(stream[i : i + chunk])
    assert got == [_msg("ok")]
    assert len(reader.dropped) == 1


def test_unterminated_input_is_dropped_at_close() -> None:
    reader = FrameReader()
    assert reader.feed(frame(_msg("1")) + START + b"MSH|half a message") == [_msg("1")]
    assert reader.close() == len(b"MSH|half a message")
    assert reader.feed(frame(_msg("2"))) == [_msg("2")]


def _ack(message: bytes) -> bytes:
    msh = hl7.parse(message.decode()).segment("MSH")
    control = str(msh[10])
    return (
        f"MSH|^~\\&|FHIRSCHED|HOSP|EMR|CLINIC|20261123090001||ACK^S12|A{control}|P|2.5.1\r"
        f"MSA|AA|{control}"
    ).encode()


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, list[str]]]:
    seen: list[str] = []

    async def handler(message: bytes, peer: str, reply: Reply) -> None:
        seen.append(str(hl7.parse(message.decode()).segment("MSH")[10]))
        await asyncio.sleep(0)  # let other connections interleave
        await reply(_ack(message))

    mllp = MLLPServer(handler, max_size=4096)
    port = await mllp.start("127.0.0.1", 0)
    yield port, seen
    await mllp.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_many_messages_per_connection_in_order(server: tuple[int, list[str]]) -> None:
    port, seen = server
    reader, writer = await open_hl7_connection("127.0.0.1", port)
    try:
        for n in range(20):
            writer.writemessage(hl7.parse(_msg(f"M{n}").decode()))
            await writer.drain()
            ack = await asyncio.wait_for(reader.readmessage(), 5)
            assert str(ack.segment("MSA")[2]) == f"M{n}"
    finally:
        writer.close()
        await writer.wait_closed()
    assert seen == [f"M{n}" for n in range(20)]


async def test_many_senders_at_once(server: tuple[int, list[str]]) -> None:
    port, seen = server

    async def sender(k: int) -> list[str]:
        reader, writer = await open_hl7_connection("127.0.0.1", port)
        acks = []
        try:
            for n in range(10):
                writer.writemessage(hl7.parse(_msg(f"S{k}-{n}").decode()))
                await writer.drain()
                acks.append(
                    str((await asyncio.wait_for(reader.readmessage(), 5)).segment("MSA")[2])
                )
        finally:
            writer.close()
            await writer.wait_closed()
        return acks

    results = await asyncio.gather(*(sender(k) for k in range(8)))
    for k, acks in enumerate(results):
        assert acks == [f"S{k}-{n}" for n in range(10)]
    assert len(seen) == 80


async def test_garbage_and_oversized_input_do_not_break_the_server(
    server: tuple[int, list[str]],
) -> None:
    port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # noise, an oversized frame, two frames in one write, then a half frame and a hang-up
    writer.write(b"hello\r\n" + frame(b"y" * 10_000) + frame(_msg("A")) + frame(_msg("B")))
    writer.write(START + b"MSH|never finished")
    await writer.drain()
    answers = b""
    while answers.count(END) < 2:
        answers += await asyncio.wait_for(reader.read(65536), 5)
    assert b"MSA|AA|A" in answers and b"MSA|AA|B" in answers
    writer.close()
    await writer.wait_closed()
    # the server is still there for the next sender
    reader2, writer2 = await open_hl7_connection("127.0.0.1", port)
    writer2.writemessage(hl7.parse(_msg("C").decode()))
    await writer2.drain()
    assert str((await asyncio.wait_for(reader2.readmessage(), 5)).segment("MSA")[2]) == "C"
    writer2.close()
    await writer2.wait_closed()
