"""The inbound bridge end to end: python-hl7's asyncio MLLP client → real sockets → our listener
→ the database (SQLite and PostgreSQL), with the ACKs, the message store, the Appointment,
its Slots and the audit log checked after each exchange."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from time import monotonic, sleep
from typing import Any

import hl7
import pytest
import structlog.testing
from hl7.mllp import open_hl7_connection
from sqlalchemy import func, insert, select, text, update

from base.logging import configure_logging
from fhir_server.demo import DEMO_CLINIC as DEMO
from hl7_bridge.inbound import CONFLICT_TAG
from hl7_bridge.listener import BridgeConfig, Listener
from hl7_bridge.messages import HM, MessageStore
from hl7_bridge.mllp import MLLPServer
from hl7_bridge.status import FILLER_STATUS_EXTENSION
from resources import service
from resources.fhirdate import as_utc
from resources.sql.engine import Database
from resources.sql.tables import AuditLog, BusyTime
from resources.store import Store
from scheduling import booking
from scheduling.clinic import VISIT_TYPE_SYSTEM, load_clinic
from scheduling.config import ClinicConfig, VisitType, load_clinic_config
from security.audit import open_event
from security.crypto import KeyRing
from tests.conftest import someone_waits_for_a_lock
from tests.hl7_bridge.samples import NY, epic_like, hl7_time, seg, vendor_samples

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _monday() -> date:
    day = datetime.now(UTC).date() + timedelta(days=7)
    return day + timedelta(days=(7 - day.weekday()) % 7)


MONDAY = _monday()


def at(hh: int, mm: int = 0, day: int = 0) -> datetime:
    """A Monday-week wall-clock time at the clinic, in UTC."""
    return datetime.combine(MONDAY + timedelta(days=day), time(hh, mm), tzinfo=NY).astimezone(UTC)


@dataclass
class Bridge:
    port: int
    listener: Listener
    db: Database
    store: Store
    keys: KeyRing

    async def send(self, *messages: bytes, answers: int = 1) -> list[bytes]:
        """Send over one connection, in order; ``answers`` ACK frames expected per message."""
        reader, writer = await open_hl7_connection("127.0.0.1", self.port)
        got: list[bytes] = []
        try:
            for message in messages:
                writer.writeblock(message)
                await writer.drain()
                for _ in range(answers):
                    got.append(await asyncio.wait_for(reader.readblock(), 10))
        finally:
            writer.close()
            await writer.wait_closed()
        return got

    def appointments(self) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            _, result = service.search(
                conn, store=self.store, resource_type="Appointment", params=[("_count", "100")]
            )
        return [m.resource() for m in result.matches]

    def message_rows(self) -> list[Any]:
        with self.db.read() as conn:
            return list(conn.execute(select(HM).order_by(HM.c.seq)))

    def slot_status(self, when: datetime) -> str:
        slot = f"slot-dr-smith-loc-main-{when:%Y%m%d%H%M}"
        with self.db.read() as conn:
            stored = self.store.read(conn, "Slot", slot)
        assert stored is not None, slot
        return str(stored.resource()["status"])

    def audit_events(self) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            rows = conn.execute(select(AuditLog.__table__).order_by(text("seq")))
            return [open_event(self.keys, r) for r in rows]


@pytest.fixture
def clinic() -> ClinicConfig:
    return load_clinic_config(DEMO)


@pytest.fixture
async def bridge(
    db: Database, keys: KeyRing, store: Store, clinic: ClinicConfig
) -> AsyncIterator[Bridge]:
    with db.write() as conn:
        load_clinic(conn, store=store, config=clinic, today=MONDAY, weeks=1)
    listener = Listener(
        db, keys, store, clinic=clinic, config=BridgeConfig(sender_tz=NY, server="test-server")
    )
    server = MLLPServer(listener.handle)
    port = await server.start("127.0.0.1", 0)
    yield Bridge(port, listener, db, store, keys)
    await server.close()


def book_here(
    bridge: Bridge,
    clinic: ClinicConfig,
    start: datetime,
    practitioner: str = "dr-evans",
    visit: str = "new-patient",
    minutes: int = 45,
) -> str:
    """Book through the scheduling service, as $book does (every rule checked); the id."""
    proposed = {
        "resourceType": "Appointment",
        "status": "proposed",
        "serviceType": [{"coding": [{"system": VISIT_TYPE_SYSTEM, "code": visit}]}],
        "start": start.isoformat(),
        "end": (start + timedelta(minutes=minutes)).isoformat(),
        "comment": "first line\nsecond | line",
        "participant": [
            {"actor": {"reference": f"Practitioner/{practitioner}"}, "status": "needs-action"},
            {"actor": {"reference": "Location/loc-main"}, "status": "needs-action"},
        ],
    }
    with bridge.db.write() as conn:
        stored = booking.book_new(
            conn,
            store=bridge.store,
            config=clinic,
            appointment=proposed,
            reference=None,
            now=datetime.now(UTC),
        )
    return stored.res_id


def msa(ack: bytes) -> tuple[str, str]:
    parsed = hl7.parse(ack.decode("utf-8"))
    return str(parsed.segment("MSA")[1]), str(parsed.segment("MSA")[2])


def siu(
    event: str,
    control: str,
    start: datetime,
    *,
    minutes: int = 30,
    key: str = "F-1",
    sent: datetime | None = None,
    status: str = "Booked",
    extra: dict[int, str] | None = None,
    ack_modes: tuple[str, str] = ("", ""),
) -> bytes:
    """A plain 2.5.1 SIU for Dr Smith at Main Street (TQ1 times with offsets)."""
    head = {3: "EMR", 4: "MSFP", 5: "FHIRSCHED", 6: "MSFP", 7: hl7_time(sent or datetime.now(UTC))}
    head |= {9: f"SIU^{event}^SIU_S12", 10: control, 11: "P", 12: "2.5.1"}
    head |= {15: ack_modes[0], 16: ack_modes[1]}
    return "\r".join(
        [
            seg("MSH", head),
            seg("SCH", {1: f"P-{key}^EMR", 2: f"{key}^EMR", 25: status, **(extra or {})}),
            seg(
                "TQ1",
                {1: "1", 7: hl7_time(start), 8: hl7_time(start + timedelta(minutes=minutes))},
            ),
            seg("NTE", {1: "1", 3: f"note {control}"}),
            seg("PID", {1: "1", 3: "MRN42^^^MSFP^MR", 5: "RIVERA^ANA", 7: "19800101", 8: "F"}),
            seg("RGS", {1: "1"}),
            seg("AIS", {1: "1", 3: "follow-up^Follow-up visit"}),
            seg("AIP", {1: "1", 3: "1234567893^SMITH^ALICE"}),
            seg("AIL", {1: "1", 3: "loc-main"}),
        ]
    ).encode()


async def test_s12_is_applied_before_aa_and_everything_is_kept(bridge: Bridge) -> None:
    start = at(10)
    message = siu("S12", "C1", start)
    [ack] = await bridge.send(message)
    code, control = msa(ack)
    assert (code, control) == ("AA", "C1")
    parsed = hl7.parse(ack.decode())
    msh = parsed.segment("MSH")
    assert (str(msh[3]), str(msh[4]), str(msh[5]), str(msh[6])) == (
        "FHIRSCHED",
        "MSFP",
        "EMR",
        "MSFP",
    )
    assert str(msh[12]) == "2.5.1" and str(msh[10]) not in ("", "C1")

    [appt] = bridge.appointments()
    assert appt["status"] == "booked"
    assert appt["start"] == start.astimezone(NY).isoformat()  # the clinic's offset
    assert datetime.fromisoformat(appt["end"]) == start + timedelta(minutes=30)
    refs = {p["actor"].get("reference") for p in appt["participant"]}
    assert {"Practitioner/dr-smith", "Location/loc-main"} <= refs
    patient_ref = next(r for r in refs if r and r.startswith("Patient/"))
    systems = {i["system"]: i["value"] for i in appt["identifier"]}
    assert systems == {
        "urn:fhir-sched:hl7:EMR.MSFP:placer": "P-F-1",
        "urn:fhir-sched:hl7:EMR.MSFP:filler": "F-1",
    }
    assert appt["comment"] == "note C1"
    assert any(c["code"] == "follow-up" for c in appt["serviceType"][0]["coding"])
    assert bridge.slot_status(start) == "busy"
    assert bridge.slot_status(start + timedelta(minutes=15)) == "busy"
    assert bridge.slot_status(start + timedelta(minutes=30)) == "free"

    [row] = bridge.message_rows()
    assert (row.status, row.ack_code, row.control_id) == ("applied", "AA", "C1")
    assert row.peer == "EMR.MSFP"
    assert b"RIVERA" not in row.ciphertext and b"MRN42" not in row.ciphertext
    opened = MessageStore(bridge.keys).open(row)
    assert opened.message == message and opened.ack == ack
    assert opened.address and opened.address.startswith("127.0.0.1")

    [event] = [e for e in bridge.audit_events() if e["type"]["code"] == "110107"]
    assert event["subtype"][0]["code"] == "S12" and event["action"] == "C"
    assert event["agent"][0]["who"]["identifier"]["value"] == "hl7:EMR.MSFP"
    assert event["agent"][0]["network"]["address"] == "127.0.0.1"
    whats = {e["what"]["reference"] for e in event["entity"]}
    assert whats == {patient_ref, f"Appointment/{appt['id']}"}


async def test_resend_changes_nothing_and_gets_the_first_ack(bridge: Bridge) -> None:
    first = await bridge.send(siu("S12", "R1", at(11)))
    again = await bridge.send(siu("S12", "R1", at(11)), siu("S12", "R1", at(11)))
    assert again == first * 2
    assert len(bridge.appointments()) == 1
    assert len(bridge.message_rows()) == 1


async def test_a_resend_restamped_with_trailing_separators_is_still_a_resend(
    bridge: Bridge,
) -> None:
    """Senders restamp MSH-7 and pad fields when they resend: the same content all the same."""
    first = siu("S12", "R2", at(11), sent=datetime.now(UTC) - timedelta(minutes=5))
    lines = siu("S12", "R2", at(11)).split(b"\r")  # a later MSH-7
    again = b"\r\n".join([lines[0] + b"||", *[line + b"^^|" for line in lines[1:]]])
    acks = await bridge.send(first, again)
    assert acks[1] == acks[0]
    assert len(bridge.message_rows()) == 1 and len(bridge.appointments()) == 1
    # a row stored before digests were kept (migration 0014) is opened and compared
    with bridge.db.write() as conn:
        conn.execute(update(HM).values(digest=None))
    assert await bridge.send(again) == acks[:1]
    assert len(bridge.message_rows()) == 1


async def test_a_reused_control_id_with_new_content_is_new_work(bridge: Bridge) -> None:
    """Two different messages under one MSH-10: the second is applied (it used to be answered
    AA as a "resend" and dropped), and the reuse is a warning; resending either still gets
    its own first answer."""
    t0 = datetime.now(UTC)
    book = siu("S12", "SAME", at(9), key="Q-1", sent=t0)
    other = siu("S12", "SAME", at(14), key="Q-2", sent=t0 + timedelta(seconds=1))
    acks = await bridge.send(book, other, book, other)
    assert [msa(a) for a in acks] == [("AA", "SAME")] * 4
    assert acks[1] != acks[0] and acks[2] == acks[0] and acks[3] == acks[1]
    keys = {i["value"] for a in bridge.appointments() for i in a["identifier"]}
    assert {"Q-1", "Q-2"} <= keys
    assert bridge.slot_status(at(9)) == "busy" and bridge.slot_status(at(14)) == "busy"
    rows = bridge.message_rows()
    assert [(r.control_id, r.status, r.warnings) for r in rows] == [
        ("SAME", "applied", None),
        ("SAME", "applied", "control-id-reused"),
    ]
    [words] = MessageStore(bridge.keys).open(rows[1]).warnings
    assert rows[0].id in words and "processed as new" in words


async def test_a_known_key_is_never_booked_twice(bridge: Bridge) -> None:
    # a second S12 for the same filler id (new control id) updates the same Appointment
    await bridge.send(siu("S12", "K1", at(9)), siu("S12", "K2", at(9, 30)))
    [appt] = bridge.appointments()
    assert datetime.fromisoformat(appt["start"]) == at(9, 30)
    assert bridge.slot_status(at(9)) == "free"


async def test_reschedule_modify_cancel_no_show_delete(bridge: Bridge) -> None:
    t0 = datetime.now(UTC)
    sent = [t0 + timedelta(seconds=n) for n in range(6)]
    acks = await bridge.send(
        siu("S12", "L1", at(13), sent=sent[0]),
        siu("S13", "L2", at(14), sent=sent[1]),  # moved
        siu("S14", "L3", at(14), sent=sent[2], extra={7: "^Knee pain"}),  # details
    )
    assert [msa(a)[0] for a in acks] == ["AA", "AA", "AA"]
    [appt] = bridge.appointments()
    assert datetime.fromisoformat(appt["start"]) == at(14)
    assert appt["reasonCode"] == [{"text": "Knee pain"}] and appt["comment"] == "note L3"
    assert bridge.slot_status(at(13)) == "free" and bridge.slot_status(at(14)) == "busy"

    await bridge.send(siu("S15", "L4", at(14), sent=sent[3]))
    [appt] = bridge.appointments()
    assert appt["status"] == "cancelled" and "slot" not in appt
    assert bridge.slot_status(at(14)) == "free"
    with bridge.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(BusyTime.__table__)).scalar() == 0

    await bridge.send(siu("S26", "L5", at(14), sent=sent[4]))
    assert bridge.appointments()[0]["status"] == "noshow"
    await bridge.send(siu("S17", "L6", at(14), sent=sent[5]))
    assert bridge.appointments()[0]["status"] == "entered-in-error"
    actions = [e["action"] for e in bridge.audit_events() if e["type"]["code"] == "110107"]
    assert actions == ["C", "U", "U", "U", "U", "D"]


async def test_a_slot_two_visits_share_stays_busy_until_both_give_it_up(bridge: Bridge) -> None:
    """EMR visits off the Slots' grid: 09:00-09:20 and 09:20-09:40 share the 09:15 Slot.
    Cancelling the first leaves it busy (the second still covers it); moving the second away
    frees it."""
    t0 = datetime.now(UTC)
    acks = await bridge.send(
        siu("S12", "H1", at(9), minutes=20, key="H-1", sent=t0),
        siu("S12", "H2", at(9, 20), minutes=20, key="H-2", sent=t0),
        siu("S15", "H3", at(9), minutes=20, key="H-1", sent=t0 + timedelta(seconds=1)),
    )
    assert [msa(a)[0] for a in acks] == ["AA", "AA", "AA"]
    assert bridge.slot_status(at(9)) == "free"
    assert bridge.slot_status(at(9, 15)) == "busy"  # 09:20-09:30 of it is still booked
    assert bridge.slot_status(at(9, 30)) == "busy"
    later = t0 + timedelta(seconds=2)
    await bridge.send(siu("S13", "H4", at(11), minutes=20, key="H-2", sent=later))
    assert bridge.slot_status(at(9, 15)) == "free" and bridge.slot_status(at(9, 30)) == "free"
    assert bridge.slot_status(at(11)) == "busy" and bridge.slot_status(at(11, 15)) == "busy"


async def test_an_older_message_arriving_late_does_not_roll_back(bridge: Bridge) -> None:
    t0 = datetime.now(UTC)
    cancel = siu("S15", "O2", at(15), sent=t0 + timedelta(minutes=1))
    book = siu("S12", "O1", at(15), sent=t0)
    acks = await bridge.send(cancel, book)
    assert [msa(a) for a in acks] == [("AA", "O2"), ("AA", "O1")]
    [appt] = bridge.appointments()
    assert appt["status"] == "cancelled"
    assert bridge.slot_status(at(15)) == "free"
    statuses = {r.control_id: r.status for r in bridge.message_rows()}
    assert statuses == {"O2": "applied", "O1": "superseded"}


async def test_a_deadlock_with_a_booking_here_is_tried_again_not_answered_ae(
    bridge: Bridge,
) -> None:
    """PostgreSQL: a `$book` locks its Slots before it claims their time; the bridge claims
    first and marks the Slots after. A `$book` holding the 10:00 Slot's lock, while the EMR's
    10:00 booking has claimed the time and waits for that lock, then claims the same time: a
    deadlock, and PostgreSQL ends the message's transaction (it waited first). The message is
    tried again, finds the time taken here and is kept as a conflict: AA, not AE."""
    if bridge.db.is_sqlite:
        pytest.skip("SQLite runs one writer at a time: writers never deadlock")
    slot = f"slot-dr-smith-loc-main-{at(10):%Y%m%d%H%M}"
    locked, outcome = threading.Event(), []

    def book_here() -> None:
        with bridge.db.write() as conn:
            conn.execute(
                text("SELECT seq FROM resource WHERE res_type = 'Slot' AND res_id = :s FOR UPDATE"),
                {"s": slot},
            )
            locked.set()
            deadline = monotonic() + 30
            while monotonic() < deadline and not someone_waits_for_a_lock(bridge.db):
                sleep(0.02)
            row = {"schedule_id": "sched-dr-smith-loc-main", "start": at(10), "end": at(10, 30)}
            row |= {"appointment_id": "booked-here", "kind": "booked"}
            conn.execute(insert(BusyTime.__table__).values(row))
        outcome.append("committed")

    holder = threading.Thread(target=book_here)
    holder.start()
    assert locked.wait(30)
    [ack] = await bridge.send(siu("S12", "D1", at(10)))
    holder.join(30)
    assert outcome == ["committed"]
    assert msa(ack) == ("AA", "D1")
    [row] = bridge.message_rows()
    assert row.status == "conflict"
    [theirs] = bridge.appointments()
    assert CONFLICT_TAG in theirs["meta"]["tag"]
    with bridge.db.read() as conn:
        claims = conn.execute(select(BusyTime.__table__.c.appointment_id)).scalars().all()
    assert claims == ["booked-here"]


async def test_a_booking_over_time_taken_here_is_kept_as_a_conflict(
    bridge: Bridge, clinic: ClinicConfig
) -> None:
    # a booking made through FHIR on Tuesday at 10:00 (an unknown patient: new-patient rules)
    ours = book_here(bridge, clinic, at(10, day=1), "dr-smith", "procedure", 30)
    [ack] = await bridge.send(siu("S12", "X1", at(10, 15, day=1)))
    assert msa(ack) == ("AA", "X1")  # the EMR's calendar is its own: recorded, not refused
    theirs = next(a for a in bridge.appointments() if a["id"] != ours)
    assert theirs["status"] == "booked" and CONFLICT_TAG in theirs["meta"]["tag"]
    assert "slot" not in theirs
    [row] = bridge.message_rows()
    assert row.status == "conflict"
    with bridge.db.read() as conn:
        claims = conn.execute(select(BusyTime.__table__)).all()
    assert {c.appointment_id for c in claims} == {ours}  # the guard was not weakened
    assert bridge.slot_status(at(10, day=1)) == "busy"

    # the EMR moves it to a free time: the conflict is resolved and its time claimed
    later = datetime.now(UTC) + timedelta(hours=1)
    await bridge.send(siu("S13", "X2", at(11, day=1), sent=later))
    theirs = next(a for a in bridge.appointments() if a["id"] != ours)
    assert CONFLICT_TAG not in theirs.get("meta", {}).get("tag", [])
    assert bridge.slot_status(at(11, day=1)) == "busy"
    assert bridge.slot_status(at(10, day=1)) == "busy"  # ours, untouched


def swap(raw: bytes, name: str, *lines: str) -> bytes:
    """``raw`` with its ``name`` segments replaced by ``lines`` (none: dropped)."""
    out: list[bytes] = []
    for line in raw.split(b"\r"):
        if line.startswith(name.encode() + b"|"):
            out += [x.encode() for x in lines]
            lines = ()
        else:
            out.append(line)
    return b"\r".join(out)


def no_time(control: str, key: str) -> bytes:
    """An S12 with no time anywhere (AE: nothing can be applied)."""
    return swap(siu("S12", control, at(16), key=key), "TQ1")


async def test_failures_get_ae_are_kept_and_replay_after_the_fix(
    bridge: Bridge, clinic: ClinicConfig
) -> None:
    # a start, but no end, no duration and a visit type the clinic file does not know
    start_only = swap(
        siu("S12", "F1", at(16)),
        "TQ1",
        seg("TQ1", {1: "1", 7: hl7_time(at(16))}),
    ).replace(b"follow-up^Follow-up visit", b"consult^Consultation")
    acks = await bridge.send(start_only, no_time("F2", "F-2"))
    assert [msa(a) for a in acks] == [("AE", "F1"), ("AE", "F2")]
    err = hl7.parse(acks[0].decode()).segment("ERR")
    assert "AIS-3 'consult' is no visit type of the clinic file" in str(err[8])
    assert bridge.appointments() == []
    rows = bridge.message_rows()
    assert [(r.status, r.ack_code) for r in rows] == [("failed", "AE"), ("failed", "AE")]
    failures = [e for e in bridge.audit_events() if e["type"]["code"] == "110107"]
    assert [e["outcome"] for e in failures] == ["8", "8"]

    # the cause is fixed (the visit type is added to the clinic file) and the message replayed
    consult = VisitType(code="consult", display="Consultation", minutes=45)
    fixed = Listener(
        bridge.db,
        bridge.keys,
        bridge.store,
        clinic=clinic.model_copy(update={"visit_types": [*clinic.visit_types, consult]}),
        config=bridge.listener.config,
    )
    assert fixed.replay(rows[0].id) == "applied"
    [appt] = bridge.appointments()
    assert appt["status"] == "booked"
    assert datetime.fromisoformat(appt["end"]) == at(16, 45)
    # a resend still gets the first answer (the sender was told AE; replay is staff's tool)
    [ack] = await bridge.send(start_only)
    assert msa(ack)[0] == "AA"


async def test_an_unknown_status_is_applied_by_its_event_and_kept(bridge: Bridge) -> None:
    """SCH-25 in a local code no table knows: the S12 books, the S14 keeps the status the
    Appointment has, and each keeps the sender's value and a warning."""
    t0 = datetime.now(UTC)
    acks = await bridge.send(
        siu("S12", "W1", at(9), key="W-1", sent=t0, status="1^SCH"),
        siu("S14", "W2", at(9), key="W-1", sent=t0 + timedelta(seconds=1), status="Arrived"),
        siu("S14", "W3", at(9), key="W-1", sent=t0 + timedelta(seconds=2), status="ZZ^Odd^LOCAL"),
    )
    assert [msa(a) for a in acks] == [("AA", "W1"), ("AA", "W2"), ("AA", "W3")]
    [appt] = bridge.appointments()
    assert appt["status"] == "arrived"  # the W2 status, kept by W3
    assert appt["extension"] == [
        {
            "url": FILLER_STATUS_EXTENSION,
            "valueCoding": {"code": "ZZ", "display": "Odd", "system": "LOCAL"},
        }
    ]
    rows = {r.control_id: r for r in bridge.message_rows()}
    assert {c: (r.status, r.warnings) for c, r in rows.items()} == {
        "W1": ("applied", "status-unknown"),
        "W2": ("applied", None),
        "W3": ("applied", "status-unknown"),
    }
    opened = MessageStore(bridge.keys).open(rows["W1"])
    [words] = opened.warnings
    assert "'1^SCH'" in words and "applied as 'booked'" in words
    assert bridge.slot_status(at(9)) == "busy"


async def test_times_fall_back_with_warnings_rather_than_fail(bridge: Bridge) -> None:
    """A date alone is an all-day Appointment claiming no time; a duration in units nobody
    reads takes the visit type's length (AIS-3 follow-up: 30 minutes); a move with a start
    alone keeps the Appointment's length."""
    t0 = datetime.now(UTC)
    day = at(9).astimezone(NY).strftime("%Y%m%d")
    all_day = swap(siu("S12", "T1", at(9), key="T-1"), "TQ1").replace(
        b"SCH|P-T-1^EMR|T-1^EMR|", f"SCH|P-T-1^EMR|T-1^EMR|||||||||^^^{day}|".encode()
    )
    junk = swap(
        siu("S12", "T2", at(11), key="T-2", sent=t0, extra={9: "20", 10: "000000"}),
        "TQ1",
        seg("TQ1", {1: "1", 7: hl7_time(at(11))}),
    )
    move = swap(
        siu("S13", "T3", at(13), key="T-2", sent=t0 + timedelta(seconds=1)),
        "TQ1",
        seg("TQ1", {1: "1", 7: hl7_time(at(13))}),
    ).replace(b"follow-up^Follow-up visit", b"consult^Consultation")  # no visit type here
    acks = await bridge.send(all_day, junk)
    assert [msa(a) for a in acks] == [("AA", "T1"), ("AA", "T2")]
    by_key = {
        next(i["value"] for i in a["identifier"] if i["system"].endswith(":filler")): a
        for a in bridge.appointments()
    }
    whole_day = by_key["T-1"]
    midnight = datetime.combine(MONDAY, time(0), tzinfo=NY)
    assert datetime.fromisoformat(whole_day["start"]) == midnight
    assert datetime.fromisoformat(whole_day["end"]) == midnight + timedelta(days=1)
    assert "slot" not in whole_day and bridge.slot_status(at(9)) == "free"
    assert datetime.fromisoformat(by_key["T-2"]["end"]) == at(11, 30)
    rows = {r.control_id: r.warnings for r in bridge.message_rows()}
    assert rows == {"T1": "date-only", "T2": "unit-unknown"}

    [ack] = await bridge.send(move)
    assert msa(ack) == ("AA", "T3")
    moved = next(a for a in bridge.appointments() if a["id"] == by_key["T-2"]["id"])
    assert datetime.fromisoformat(moved["start"]) == at(13)
    assert datetime.fromisoformat(moved["end"]) == at(13, 30)  # the length it had
    assert bridge.slot_status(at(11)) == "free" and bridge.slot_status(at(13, 15)) == "busy"


async def test_unsupported_messages_get_ar_and_are_kept(bridge: Bridge) -> None:
    adt = siu("S12", "U1", at(9)).replace(b"SIU^S12^SIU_S12", b"ADT^A01^ADT_A01")
    s99 = siu("S12", "U2", at(9)).replace(b"SIU^S12^SIU_S12", b"SIU^S99")
    unknown_version = siu("S12", "U3", at(9)).replace(b"|2.5.1", b"|2.9", 1)
    acks = await bridge.send(adt, s99, unknown_version, b"this is not HL7")
    codes = [hl7.parse(a.decode()).segment("MSA") for a in acks]
    assert [str(m[1]) for m in codes] == ["AR", "AR", "AR", "AR"]
    errs = [str(hl7.parse(a.decode()).segment("ERR")[3][0][0]) for a in acks]
    assert errs == ["200", "201", "203", "100"]
    assert bridge.appointments() == []
    assert [r.status for r in bridge.message_rows()] == ["rejected"] * 4


@pytest.mark.parametrize("version", ["2.1", "2.2", "2.8.1", "2.8.2"])
async def test_versions_beyond_2_3_to_2_8_are_applied(bridge: Bridge, version: str) -> None:
    """2.1 and 2.2 predate SCH and the AIx segments in hl7apy's tables, 2.8.1 and 2.8.2 came
    later: all are read by position and applied."""
    raw = siu("S12", "V1", at(10)).replace(b"|2.5.1", f"|{version}".encode(), 1)
    [ack] = await bridge.send(raw)
    assert msa(ack) == ("AA", "V1")
    assert hl7.parse(ack.decode()).segment("MSH")[12][0] == version
    [appt] = bridge.appointments()
    assert datetime.fromisoformat(appt["start"]) == at(10)
    assert bridge.slot_status(at(10)) == "busy"


async def test_enhanced_mode_commit_accept_then_application_ack(bridge: Bridge) -> None:
    both = siu("S12", "H1", at(9), key="H-1", ack_modes=("AL", "AL"))
    acks = await bridge.send(both, answers=2)
    assert [msa(a) for a in acks] == [("CA", "H1"), ("AA", "H1")]
    # MSH-16 NE: only the accept acknowledgement comes back, the change is still applied
    accept_only = siu("S12", "H2", at(11), key="H-2", ack_modes=("AL", "NE"))
    [ack] = await bridge.send(accept_only)
    assert msa(ack) == ("CA", "H2")
    await asyncio.sleep(0.5)
    assert bridge.slot_status(at(11)) == "busy"
    assert {r.status for r in bridge.message_rows()} == {"applied"}


@pytest.mark.parametrize("vendor", [v[0] for v in vendor_samples(at(10))])
async def test_vendor_shaped_messages(bridge: Bridge, vendor: str) -> None:
    start = at(10, day=1)  # Tuesday 10:00 in New York
    _, message, expected = next(v for v in vendor_samples(start) if v[0] == vendor)
    [ack] = await bridge.send(message)
    assert msa(ack)[0] == "AA", ack
    [appt] = bridge.appointments()
    assert datetime.fromisoformat(appt["start"]) == expected.start
    assert datetime.fromisoformat(appt["end"]) == expected.end
    refs = {p["actor"].get("reference") for p in appt["participant"]}
    assert {"Practitioner/dr-smith", "Location/loc-main"} <= refs
    patient_id = next(r for r in refs if r and r.startswith("Patient/")).split("/")[1]
    with bridge.db.read() as conn:
        patient = bridge.store.read(conn, "Patient", patient_id)
    assert patient is not None
    name = patient.resource()["name"][0]
    assert (name["family"], name["given"][0]) == (expected.family, expected.given)
    assert bridge.slot_status(start) == "busy"


async def test_a_known_patient_is_reused(bridge: Bridge) -> None:
    await bridge.send(siu("S12", "P1", at(9), key="A"), siu("S12", "P2", at(11), key="B"))
    patients = {
        p["actor"]["reference"]
        for a in bridge.appointments()
        for p in a["participant"]
        if p["actor"].get("reference", "").startswith("Patient/")
    }
    assert len(patients) == 1


def test_epic_sample_has_the_key_it_claims() -> None:
    assert b"98765^EPC" in epic_like("E", at(9))


async def test_staff_find_conflicts_by_tag(bridge: Bridge, clinic: ClinicConfig) -> None:
    await bridge.send(siu("S12", "T1", at(9), key="T-1"), siu("S12", "T2", at(9, 15), key="T-2"))
    with bridge.db.read() as conn:
        _, result = service.search(
            conn,
            store=bridge.store,
            resource_type="Appointment",
            params=[("_tag", "urn:fhir-sched:tags|hl7-conflict")],
        )
    [conflict] = [m.resource() for m in result.matches]
    assert any(i["value"] == "T-2" for i in conflict["identifier"])


class _Recording(Listener):
    """The real listener, noting the size of each group it is handed and the thread that
    writes it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.groups: list[int] = []
        self.threads: list[int] = []

    def process_many(self, msgs: list[Any]) -> list[bytes]:
        self.groups.append(len(msgs))
        self.threads.append(threading.get_ident())
        return super().process_many(msgs)


async def test_messages_arriving_together_commit_together_and_a_bad_one_alone(
    bridge: Bridge, clinic: ClinicConfig
) -> None:
    listener = _Recording(
        bridge.db, bridge.keys, bridge.store, clinic=clinic, config=bridge.listener.config
    )
    answers: dict[str, list[bytes]] = {}

    def reply_for(name: str) -> Any:
        async def reply(ack: bytes) -> None:
            answers.setdefault(name, []).append(ack)

        return reply

    sent = {
        "a": siu("S12", "G1", at(9), key="G-1"),
        "bad": no_time("G2", "G-2"),
        "b": siu("S12", "G3", at(11), key="G-3"),
    }
    # three connections' messages ready in the same turn of the event loop
    configure_logging("info", stream=io.StringIO())  # the retry is logged at info
    try:
        with structlog.testing.capture_logs() as logs:
            await asyncio.gather(
                *(
                    listener.handle(raw, f"10.0.0.{n}:5000", reply_for(k))
                    for n, (k, raw) in enumerate(sent.items())
                )
            )
    finally:
        configure_logging("warning")
    assert listener.groups == [3]  # one group, one transaction tried
    retried = [e for e in logs if e["event"] == "hl7.group_retried_alone"]
    assert [(e["messages"], e["log_level"]) for e in retried] == [(3, "info")]
    assert {k: [msa(a) for a in v] for k, v in answers.items()} == {
        "a": [("AA", "G1")],
        "bad": [("AE", "G2")],
        "b": [("AA", "G3")],
    }
    # the failed group rolled back and each message was applied on its own
    booked = {i["value"] for a in bridge.appointments() for i in a["identifier"]}
    assert {"G-1", "G-3"} <= booked and "G-2" not in booked
    rows = {r.control_id: (r.status, r.ack_code) for r in bridge.message_rows()}
    assert rows == {"G1": ("applied", "AA"), "G2": ("failed", "AE"), "G3": ("applied", "AA")}
    assert bridge.slot_status(at(9)) == "busy" and bridge.slot_status(at(11)) == "busy"
    imports = [e for e in bridge.audit_events() if e["type"]["code"] == "110107"]
    assert sorted(e["outcome"] for e in imports) == ["0", "0", "8"]

    # a group that applies cleanly commits as one: both AA, both kept, both audited
    answers.clear()
    await asyncio.gather(
        listener.handle(siu("S12", "G4", at(13), key="G-4"), "10.0.0.1:5000", reply_for("c")),
        listener.handle(siu("S12", "G5", at(14), key="G-5"), "10.0.0.2:5000", reply_for("d")),
    )
    assert listener.groups == [3, 2]
    assert [msa(a)[0] for k in "cd" for a in answers[k]] == ["AA", "AA"]
    assert bridge.slot_status(at(13)) == "busy" and bridge.slot_status(at(14)) == "busy"
    assert len([e for e in bridge.audit_events() if e["type"]["code"] == "110107"]) == 5


async def test_a_group_applies_its_messages_as_one_after_the_other_would(
    bridge: Bridge, clinic: ClinicConfig
) -> None:
    """Messages of one group that touch each other: each sees what the ones before it wrote,
    although the group reads its messages' keys together first and writes its rows at its
    end (a booking then its move, a resend of the booking, and a second booking whose patient
    the first one created and which only its name and birth date find)."""
    listener = _Recording(
        bridge.db, bridge.keys, bridge.store, clinic=clinic, config=bridge.listener.config
    )
    t0 = datetime.now(UTC)
    book = siu("S12", "J1", at(9), key="J-1", sent=t0)
    sent = {
        "book": book,
        "move": siu("S13", "J2", at(10), key="J-1", sent=t0 + timedelta(seconds=1)),
        "resend": book,
        "other": siu("S12", "J3", at(11), key="J-2", sent=t0).replace(b"MRN42", b"MRN43"),
    }
    answers: dict[str, bytes] = {}

    def reply_for(name: str) -> Any:
        async def reply(ack: bytes) -> None:
            answers[name] = ack

        return reply

    configure_logging("info", stream=io.StringIO())  # a retry is logged at info
    try:
        with structlog.testing.capture_logs() as logs:
            await asyncio.gather(
                *(listener.handle(raw, "10.0.0.9:5000", reply_for(k)) for k, raw in sent.items())
            )
    finally:
        configure_logging("warning")
    assert listener.groups == [4]  # one transaction, which committed: nothing was retried alone
    assert [e["event"] for e in logs if e["event"] == "hl7.group_retried_alone"] == []
    assert {k: msa(a) for k, a in answers.items()} == {
        "book": ("AA", "J1"),
        "move": ("AA", "J2"),
        "resend": ("AA", "J1"),
        "other": ("AA", "J3"),
    }
    assert answers["resend"] == answers["book"]  # the first answer, byte for byte
    by_key = {
        next(i["value"] for i in a["identifier"] if i["system"].endswith(":filler")): a
        for a in bridge.appointments()
    }
    assert sorted(by_key) == ["J-1", "J-2"]  # the move found the booking's link
    assert datetime.fromisoformat(by_key["J-1"]["start"]) == at(10)
    assert by_key["J-1"]["meta"]["versionId"] == "2"
    patients = {
        p["actor"]["reference"]
        for a in by_key.values()
        for p in a["participant"]
        if p["actor"].get("reference", "").startswith("Patient/")
    }
    assert len(patients) == 1  # found by name and birth date, though created in this group
    assert bridge.slot_status(at(9)) == "free"  # booked, then given up by the move
    assert bridge.slot_status(at(10)) == "busy" and bridge.slot_status(at(11)) == "busy"
    rows = [(r.control_id, r.status) for r in bridge.message_rows()]
    assert rows == [("J1", "applied"), ("J2", "applied"), ("J3", "applied")]


async def test_many_senders_at_once_are_all_applied(bridge: Bridge) -> None:
    async def sender(n: int) -> list[bytes]:
        messages = [
            siu("S12", f"M{n}-{k}", at(9 + k, 15 * n, day=n % 5), key=f"M-{n}-{k}")
            for k in range(3)
        ]
        return await bridge.send(*messages)

    acks = await asyncio.gather(*(sender(n) for n in range(4)))
    assert [msa(a)[0] for group in acks for a in group] == ["AA"] * 12
    assert len(bridge.appointments()) == 12
    assert {r.status for r in bridge.message_rows()} == {"applied"}


async def test_groups_written_on_the_event_loop_are_answered_and_kept_alike(
    bridge: Bridge, clinic: ClinicConfig
) -> None:
    """``hl7 listen`` on SQLite writes its groups on the event loop (``inline_writes``): the
    same answers, Appointments and records as through a worker thread, a bad message
    included."""
    listener = _Recording(
        bridge.db,
        bridge.keys,
        bridge.store,
        clinic=clinic,
        config=bridge.listener.config,
        inline_writes=True,
    )
    server = MLLPServer(listener.handle)
    inline = replace(bridge, port=await server.start("127.0.0.1", 0), listener=listener)

    async def sender(n: int) -> list[bytes]:
        messages = [
            siu("S12", f"L{n}-{k}", at(9 + k, 15 * n, day=n % 5), key=f"L-{n}-{k}")
            for k in range(3)
        ]
        return await inline.send(*messages)

    try:
        acks = await asyncio.gather(*(sender(n) for n in range(4)))
        [bad] = await inline.send(no_time("L-bad", "L-B"))
    finally:
        await server.close()
    assert [msa(a)[0] for group in acks for a in group] == ["AA"] * 12
    assert msa(bad) == ("AE", "L-bad")
    assert set(listener.threads) == {threading.get_ident()}  # the loop's own thread
    assert len(bridge.appointments()) == 12
    rows = {r.control_id: r.status for r in bridge.message_rows()}
    assert rows.pop("L-bad") == "failed" and set(rows.values()) == {"applied"}
    assert bridge.slot_status(at(9)) == "busy"


async def test_an_expired_hold_gives_way_to_the_emr_and_a_live_one_does_not(
    bridge: Bridge, clinic: ClinicConfig
) -> None:
    def proposed(start: datetime) -> dict[str, Any]:
        return {
            "resourceType": "Appointment",
            "status": "proposed",
            "serviceType": [{"coding": [{"system": VISIT_TYPE_SYSTEM, "code": "procedure"}]}],
            "start": start.isoformat(),
            "end": (start + timedelta(minutes=30)).isoformat(),
            "participant": [
                {"actor": {"reference": "Practitioner/dr-smith"}, "status": "needs-action"},
                {"actor": {"reference": "Location/loc-main"}, "status": "needs-action"},
            ],
        }

    long_ago = datetime.now(UTC) - timedelta(seconds=clinic.hold_seconds + 60)
    with bridge.db.write() as conn:  # one hold that has run out, one still running
        booking.hold(
            conn,
            store=bridge.store,
            config=clinic,
            appointment=proposed(at(10, day=1)),
            now=long_ago,
        )
        booking.hold(
            conn,
            store=bridge.store,
            config=clinic,
            appointment=proposed(at(11, day=1)),
            now=datetime.now(UTC),
        )
    acks = await bridge.send(
        siu("S12", "H1", at(10, day=1), key="H-1"), siu("S12", "H2", at(11, day=1), key="H-2")
    )
    assert [msa(a) for a in acks] == [("AA", "H1"), ("AA", "H2")]
    statuses = {r.control_id: r.status for r in bridge.message_rows()}
    assert statuses == {"H1": "applied", "H2": "conflict"}
    with bridge.db.read() as conn:
        claims = {(as_utc(c.start), c.kind) for c in conn.execute(select(BusyTime.__table__))}
    assert claims == {(at(10, day=1), "booked"), (at(11, day=1), "held")}
    assert bridge.slot_status(at(10, day=1)) == "busy"


async def test_a_header_without_encoding_characters_is_answered_and_kept(bridge: Bridge) -> None:
    lines = siu("S12", "E1", at(9)).split(b"\r")
    lines[0] = lines[0].replace(b"MSH|^~\\&|", b"MSH||", 1)
    [ack] = await bridge.send(b"\r".join(lines))
    assert msa(ack)[1] == "E1" and msa(ack)[0] in ("AE", "AR")
    [row] = bridge.message_rows()
    assert (row.event, row.status) == ("SIU^S12^SIU_S12", "failed")
    assert bridge.appointments() == []


async def test_a_slot_longer_than_a_day_is_still_found_under_a_booking(bridge: Bridge) -> None:
    """Covered Slots are found by a bounded scan plus a partial index of long Slots (see
    scheduling/spans.py): an on-call Slot that began two days earlier counts."""
    on_call = {
        "resourceType": "Slot",
        "id": "on-call",
        "schedule": {"reference": "Schedule/sched-dr-smith-loc-main"},
        "status": "free",
        "start": (at(8) - timedelta(days=2)).isoformat(),
        "end": (at(8) + timedelta(days=1)).isoformat(),
    }
    with bridge.db.write() as conn:
        service.create(
            conn, store=bridge.store, resource_type="Slot", resource=on_call, assigned_id="on-call"
        )
    [ack] = await bridge.send(siu("S12", "C-LONG", at(10)))
    assert msa(ack)[0] == "AA"
    with bridge.db.read() as conn:
        stored = bridge.store.read(conn, "Slot", "on-call")
    assert stored is not None and stored.resource()["status"] == "busy"
    assert bridge.slot_status(at(10)) == "busy" and bridge.slot_status(at(10, 30)) == "free"
