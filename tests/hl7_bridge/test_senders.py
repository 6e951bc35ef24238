"""Each sender-shaped message (``sender_samples.py``) applied on both databases and checked
against the values worked out by hand: start, end, status, patient, practitioner, location
and the warnings kept on the message; the refused ones with their ERR."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Any

import hl7
import pytest
from sqlalchemy import select

from fhir_server.demo import DEMO_CLINIC as DEMO
from hl7_bridge.listener import BridgeConfig, Listener
from hl7_bridge.messages import HM
from resources import service
from resources.sql.engine import Database
from resources.store import Store
from scheduling.config import load_clinic_config
from security.crypto import KeyRing
from tests.hl7_bridge.samples import NY
from tests.hl7_bridge.sender_samples import CASES, REFUSED, Case, Refused

pytestmark = pytest.mark.anyio

DAY = datetime(2031, 1, 14).date()
VERSIONS = {"2.1", "2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1"}
VERSIONS |= {"2.8", "2.8.1", "2.8.2"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def listener(db: Database, keys: KeyRing, store: Store) -> Listener:
    clinic = load_clinic_config(DEMO)
    return Listener(db, keys, store, clinic=clinic, config=BridgeConfig(sender_tz=NY))


async def _send(listener: Listener, raw: bytes) -> list[bytes]:
    answers: list[bytes] = []

    async def reply(ack: bytes) -> None:
        answers.append(ack)

    await listener.handle(raw, "10.0.0.7:4000", reply)
    return answers


def _at(hhmm: str) -> datetime:
    if hhmm == "+1d":
        return datetime.combine(DAY + timedelta(days=1), time(0), tzinfo=NY)
    hh, mm = hhmm.split(":")
    return datetime.combine(DAY, time(int(hh), int(mm)), tzinfo=NY)


def _appointments(listener: Listener) -> list[dict[str, Any]]:
    with listener.db.read() as conn:
        _, result = service.search(
            conn, store=listener.store, resource_type="Appointment", params=[("_count", "50")]
        )
    return [m.resource() for m in result.matches]


def _refs(appt: dict[str, Any], rtype: str) -> list[str]:
    return [
        str(p["actor"]["reference"]).split("/", 1)[1]
        for p in appt["participant"]
        if str(p["actor"].get("reference", "")).startswith(f"{rtype}/")
    ]


def test_the_samples_cover_every_version_and_are_enough() -> None:
    versions = {c.raw.split(b"\n")[0].split(b"\r")[0].split(b"|")[11].decode() for c in CASES}
    assert versions == VERSIONS
    assert len(CASES) >= 30 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_a_sender_shaped_message_is_applied_as_worked_out(
    listener: Listener, case: Case
) -> None:
    acks = await _send(listener, case.raw)
    assert len(acks) == case.acks
    for ack in acks:
        msa = hl7.parse(ack.decode("utf-8")).segment("MSA")
        assert str(msa[1]) == "AA", ack
    [appt] = _appointments(listener)
    assert datetime.fromisoformat(appt["start"]) == _at(case.start)
    assert datetime.fromisoformat(appt["end"]) == _at(case.end)
    assert appt["status"] == case.status
    assert _refs(appt, "Practitioner") == ([case.practitioner] if case.practitioner else [])
    assert _refs(appt, "Location") == ([case.location] if case.location else [])
    [patient_id] = _refs(appt, "Patient")
    with listener.db.read() as conn:
        stored = listener.store.read(conn, "Patient", patient_id)
    assert stored is not None
    name = stored.resource()["name"][0]
    assert (name["family"], name["given"][0]) == (case.family, case.given)
    with listener.db.read() as conn:
        [row] = conn.execute(select(HM.c.status, HM.c.warnings)).all()
    assert row.status == "applied"
    assert tuple((row.warnings or "").split()) == case.warnings


@pytest.mark.parametrize("case", REFUSED, ids=[c.name for c in REFUSED])
async def test_a_message_nothing_can_be_applied_from_is_refused_with_words(
    listener: Listener, case: Refused
) -> None:
    [ack] = await _send(listener, case.raw)
    parsed = hl7.parse(ack.decode("utf-8"))
    assert str(parsed.segment("MSA")[1]) == case.code
    err = parsed.segment("ERR")
    assert str(err[3][0][0]) == case.error
    assert case.words in str(err[8])
    assert _appointments(listener) == []
    with listener.db.read() as conn:
        [status] = conn.execute(select(HM.c.status)).scalars().all()
    assert status == ("failed" if case.code == "AE" else "rejected")
