"""Arbitrary mutations of valid messages (fields dropped, repeated or given the wrong type,
stray separators, segments lost, doubled or swapped, bytes no charset expects, cut short) fed
to the listener: every answer is a clean ACK (AA, or AE/AR with an ERR that is not an
internal error), and a message that is not applied changes nothing but the message store and
the audit log."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import hl7
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from fhir_server.demo import DEMO_CLINIC as DEMO
from hl7_bridge.listener import BridgeConfig, Listener
from hl7_bridge.messages import HM
from resources.sql.engine import Database
from resources.sql.tables import BusyTime, HL7Link, ResourceRow, ResourceVersion
from resources.store import Store
from scheduling.config import ClinicConfig, load_clinic_config
from security.crypto import KeyRing
from tests.hl7_bridge.samples import NY
from tests.hl7_bridge.sender_samples import CASES

CLINIC: ClinicConfig = load_clinic_config(DEMO)
TABLES = [ResourceRow.__table__, ResourceVersion.__table__, BusyTime.__table__, HL7Link.__table__]
JUNK = ["", "abc", "99999999999999999999", "-1", "2031-01-14", "\\X41\\", "^^^", "&", '""']
SEPARATORS = ["|", "^", "~", "\\", "&", "\r", "\n", "\r\n"]

Op = Callable[[st.DrawFn, list[list[str]]], None]


def _segment(draw: st.DrawFn, segs: list[list[str]]) -> list[str]:
    return segs[draw(st.integers(0, len(segs) - 1))]


def _field(draw: st.DrawFn, seg: list[str]) -> int:
    return draw(st.integers(1, max(1, len(seg) - 1))) if len(seg) > 1 else 0


def drop_field(draw: st.DrawFn, segs: list[list[str]]) -> None:
    seg = _segment(draw, segs)
    if len(seg) > 1:
        del seg[_field(draw, seg)]


def blank_field(draw: st.DrawFn, segs: list[list[str]]) -> None:
    seg = _segment(draw, segs)
    if len(seg) > 1:
        seg[_field(draw, seg)] = ""


def repeat_field(draw: st.DrawFn, segs: list[list[str]]) -> None:
    seg = _segment(draw, segs)
    if len(seg) > 1:
        n = _field(draw, seg)
        seg[n] = f"{seg[n]}~{seg[n]}"


def wrong_type(draw: st.DrawFn, segs: list[list[str]]) -> None:
    seg = _segment(draw, segs)
    if len(seg) > 1:
        value = draw(st.sampled_from(JUNK) | st.text(max_size=12))
        seg[_field(draw, seg)] = value.encode("utf-8", "replace").decode("latin-1")


def stray_separator(draw: st.DrawFn, segs: list[list[str]]) -> None:
    seg = _segment(draw, segs)
    n = _field(draw, seg)
    at = draw(st.integers(0, len(seg[n])))
    seg[n] = seg[n][:at] + draw(st.sampled_from(SEPARATORS)) + seg[n][at:]


def bad_bytes(draw: st.DrawFn, segs: list[list[str]]) -> None:
    seg = _segment(draw, segs)
    n = _field(draw, seg)
    seg[n] += draw(st.binary(min_size=1, max_size=4)).decode("latin-1")


def drop_segment(draw: st.DrawFn, segs: list[list[str]]) -> None:
    if len(segs) > 1:
        del segs[draw(st.integers(0, len(segs) - 1))]


def double_segment(draw: st.DrawFn, segs: list[list[str]]) -> None:
    n = draw(st.integers(0, len(segs) - 1))
    segs.insert(n, list(segs[n]))


def swap_segments(draw: st.DrawFn, segs: list[list[str]]) -> None:
    a, b = draw(st.integers(0, len(segs) - 1)), draw(st.integers(0, len(segs) - 1))
    segs[a], segs[b] = segs[b], segs[a]


OPS: list[Op] = [
    drop_field,
    blank_field,
    repeat_field,
    wrong_type,
    stray_separator,
    bad_bytes,
    drop_segment,
    double_segment,
    swap_segments,
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    raw = draw(st.sampled_from(CASES)).raw.decode("latin-1")  # byte for byte
    segs = [line.split("|") for line in raw.replace("\r\n", "\r").replace("\n", "\r").split("\r")]
    for op in draw(st.lists(st.sampled_from(OPS), min_size=1, max_size=4)):
        op(draw, segs)
    text = "\r".join("|".join(seg) for seg in segs)
    if draw(st.booleans()) and len(text) > 20:
        text = text[: draw(st.integers(10, len(text)))]  # cut short
    return text.encode("latin-1")


def _counts(db: Database) -> list[int]:
    with db.read() as conn:
        return [conn.execute(select(func.count()).select_from(t)).scalar_one() for t in TABLES]


async def _send(listener: Listener, raw: bytes) -> list[bytes]:
    answers: list[bytes] = []

    async def reply(ack: bytes) -> None:
        answers.append(ack)

    await listener.handle(raw, "10.0.0.9:4000", reply)
    return answers


def _check_ack(ack: bytes) -> tuple[str, Any]:
    parsed = hl7.parse(ack.decode("utf-8", "replace").replace("\n", " "))
    code = str(parsed.segment("MSA")[1])
    assert code in ("AA", "AE", "AR", "CA"), ack
    err = None
    if code in ("AE", "AR"):
        err = parsed.segment("ERR")
        assert "internal error" not in str(err), ack
    return code, err


@pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(raw=mutated())
def test_mutated_messages_get_a_clean_answer_and_are_applied_whole_or_not_at_all(
    db: Database, keys: KeyRing, store: Store, raw: bytes
) -> None:
    listener = Listener(db, keys, store, clinic=CLINIC, config=BridgeConfig(sender_tz=NY))
    before = _counts(db)
    with db.read() as conn:
        stored = conn.execute(select(func.count()).select_from(HM)).scalar_one()
    acks = asyncio.run(_send(listener, raw))
    note(f"message {raw!r}, answers {acks!r}")
    codes = [_check_ack(a)[0] for a in acks]
    final = [c for c in codes if c != "CA"]
    with db.read() as conn:
        rows = conn.execute(select(HM.c.status).order_by(HM.c.seq)).scalars().all()
    new = len(rows) > stored  # else a resend of an earlier message: its first answer again
    if final and final[-1] in ("AE", "AR"):
        assert _counts(db) == before  # nothing of the message was applied
        assert not new or rows[-1] in ("failed", "rejected")
    elif final == ["AA"] and new:
        assert rows[-1] in ("applied", "conflict", "superseded")
