"""Outbound SIU: the outbox commits with the change, the sender delivers to a stand-in EMR
(python-hl7's server) in order, accepts only the matching ACK, retries while the EMR is down,
sets aside what it rejects, and never echoes an EMR's own change back to it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import hl7
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from base.errors import Conflict
from fhir_server.app import create_app
from fhir_server.settings import Settings
from hl7_bridge.endpoint import HL7Endpoint
from hl7_bridge.messages import HM, MessageStore
from hl7_bridge.outbound import Outbox, Sender, trigger
from resources.sql.engine import Database
from resources.store import Store
from scheduling import booking
from scheduling.clinic import load_clinic
from scheduling.config import ClinicConfig
from scheduling.risk import RISK_URL, rescore_upcoming, risk_of
from security.crypto import KeyRing
from tests.builders import FHIR_JSON, create, make_patient
from tests.fakes.emr import StandInEMR
from tests.hl7_bridge.samples import NY
from tests.hl7_bridge.test_listener import DEMO, MONDAY, Bridge, at, book_here, msa, siu
from tests.smart import backend_token

pytestmark = pytest.mark.anyio


RISK = {"url": RISK_URL, "extension": [{"url": "score", "valueDecimal": 0.7}]}
OTHER = {"url": "urn:other", "valueString": "x"}


def _appt(status: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Appointment", "status": status, "start": "s", **extra}


@pytest.mark.parametrize(
    ("old", "new", "event"),
    [
        (None, _appt("booked"), "S12"),
        (_appt("pending"), _appt("booked"), "S12"),  # a hold booked
        (None, _appt("pending"), None),  # holds are not news to the EMR
        (_appt("pending"), _appt("cancelled"), None),  # nor is a hold let go
        (_appt("booked"), _appt("booked", start="t"), "S13"),
        (_appt("booked"), _appt("booked", comment="x"), "S14"),
        (_appt("booked"), _appt("booked", meta={"versionId": "2"}), None),
        (_appt("booked"), _appt("booked", extension=[RISK]), None),  # the server's own
        (_appt("booked", extension=[RISK]), _appt("booked", extension=[RISK, OTHER]), "S14"),
        (_appt("booked"), _appt("cancelled"), "S15"),
        (_appt("booked"), _appt("noshow"), "S26"),
        (_appt("booked"), _appt("entered-in-error"), "S17"),
        (_appt("booked"), None, "S17"),  # deleted
        (_appt("proposed"), None, None),
        (_appt("cancelled"), _appt("booked"), "S12"),
    ],
)
def test_trigger_events(old: Any, new: Any, event: str | None) -> None:
    assert trigger(old, new) == event


def _endpoint(port: int, name: str = "emr", senders: list[str] | None = None) -> HL7Endpoint:
    return HL7Endpoint(
        name=name, host="127.0.0.1", port=port, application="EMR", senders=senders or []
    )


def _book(bridge: Bridge, clinic: ClinicConfig, start: datetime) -> str:
    return book_here(bridge, clinic, start)  # a new patient with Dr Evans (Monday to Thursday)


def _outbox(bridge: Bridge) -> list[Any]:
    with bridge.db.read() as conn:
        return list(conn.execute(select(HM).where(HM.c.direction == "out").order_by(HM.c.seq)))


async def _until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


@pytest.fixture
async def emr() -> AsyncIterator[StandInEMR]:
    fake = StandInEMR()
    await fake.start()
    yield fake
    await fake.stop()


def _sender(bridge: Bridge, endpoint: HL7Endpoint) -> Sender:
    return Sender(
        bridge.db,
        bridge.store,
        endpoint,
        ack_timeout=2,
        poll_seconds=0.05,
        first_retry=0.05,
        max_retry=0.3,
    )


async def test_bookings_flow_to_the_emr_in_order(
    bridge: Bridge, clinic: ClinicConfig, emr: StandInEMR
) -> None:
    endpoint = _endpoint(emr.port)
    bridge.store.watch("Appointment", Outbox(bridge.store, [endpoint], facility="MSFP").on_change)
    first = _book(bridge, clinic, at(9))
    # a failed change queues nothing: the outbox row rolls back with it
    with pytest.raises(Conflict):
        _book(bridge, clinic, at(9))
    assert len(_outbox(bridge)) == 1
    with bridge.db.write() as conn:
        booking.cancel(
            conn,
            store=bridge.store,
            config=clinic,
            appointment_id=first,
            now=datetime.now(UTC),
        )
    second = _book(bridge, clinic, at(10))

    task = asyncio.create_task(_sender(bridge, endpoint).run())
    try:
        await _until(lambda: len(emr.received) == 3)
        await _until(lambda: {r.status for r in _outbox(bridge)} == {"sent"})
    finally:
        task.cancel()
    assert emr.events() == ["S12", "S15", "S12"]
    sch = [m.segment("SCH") for m in emr.received]
    assert [str(s[1][0][0]) for s in sch] == [first, first, second]
    assert str(sch[1][25]) == "Cancelled"
    s12 = emr.received[0]
    assert str(s12.segment("MSH")[5]) == "EMR" and str(s12.segment("MSH")[3]) == "FHIRSCHED"
    assert str(s12.segment("AIP")[3][0][0]) == "1245319599"  # Dr Evans's NPI
    assert [str(n[3]) for n in s12.segments("NTE")] == ["first line", "second \\F\\ line"]
    rows = _outbox(bridge)
    assert [r.ack_code for r in rows] == ["AA", "AA", "AA"]
    assert b"FHIRSCHED" not in rows[0].ciphertext
    exports = [e for e in bridge.audit_events() if e["type"]["code"] == "110106"]
    assert [e["subtype"][0]["code"] for e in exports] == ["S12", "S15", "S12"]


async def test_the_emr_down_mid_stream_gets_everything_when_it_returns(
    bridge: Bridge, clinic: ClinicConfig, emr: StandInEMR
) -> None:
    endpoint = _endpoint(emr.port)
    bridge.store.watch("Appointment", Outbox(bridge.store, [endpoint]).on_change)
    task = asyncio.create_task(_sender(bridge, endpoint).run())
    try:
        for hour in (8, 9):
            _book(bridge, clinic, at(hour))
        await _until(lambda: len(emr.received) == 2)
        await emr.stop()  # the EMR goes down; bookings go on
        for hour in (10, 11):
            _book(bridge, clinic, at(hour))
        await _until(lambda: any(r.attempts > 1 for r in _outbox(bridge)))
        assert [r.status for r in _outbox(bridge)] == ["sent", "sent", "pending", "pending"]
        await emr.start(emr.port)  # back on the same port
        await _until(lambda: {r.status for r in _outbox(bridge)} == {"sent"})
    finally:
        task.cancel()
    assert set(emr.control_ids()) == {r.control_id for r in _outbox(bridge)}
    firsts = list(dict.fromkeys(emr.control_ids()))  # resends keep their MSH-10
    assert firsts == [r.control_id for r in _outbox(bridge)]


async def test_a_risk_score_written_by_the_server_sends_nothing(
    bridge: Bridge, clinic: ClinicConfig
) -> None:
    bridge.store.watch("Appointment", Outbox(bridge.store, [_endpoint(9)]).on_change)
    booked = _book(bridge, clinic, at(9))
    assert [r.event for r in _outbox(bridge)] == ["SIU^S12"]
    with bridge.db.write() as conn:
        written = rescore_upcoming(conn, store=bridge.store, config=clinic, now=at(8))
        stored = bridge.store.read(conn, "Appointment", booked)
    assert written == 1
    assert stored is not None and risk_of(stored.resource()) is not None
    assert [r.event for r in _outbox(bridge)] == ["SIU^S12"]  # no S14 for the score


async def test_rejections_are_set_aside_and_stray_acks_ignored(
    bridge: Bridge, clinic: ClinicConfig
) -> None:
    fake = StandInEMR(
        lambda m: "AE" if str(m.segment("SCH")[25]) == "Cancelled" else "AA",
        stray_ack_first=True,
    )
    await fake.start()
    endpoint = _endpoint(fake.port)
    bridge.store.watch("Appointment", Outbox(bridge.store, [endpoint]).on_change)
    first = _book(bridge, clinic, at(9))
    with bridge.db.write() as conn:
        booking.cancel(
            conn, store=bridge.store, config=clinic, appointment_id=first, now=datetime.now(UTC)
        )
    _book(bridge, clinic, at(10))
    task = asyncio.create_task(_sender(bridge, endpoint).run())
    try:
        await _until(lambda: all(r.status != "pending" for r in _outbox(bridge)))
    finally:
        task.cancel()
        await fake.stop()
    assert [(r.status, r.ack_code) for r in _outbox(bridge)] == [
        ("sent", "AA"),
        ("rejected", "AE"),
        ("sent", "AA"),
    ]
    assert len(fake.received) == 3  # one each: the stray ACKs did not cause resends
    opened = MessageStore(bridge.keys).open(_outbox(bridge)[1])
    assert opened.ack is not None and b"MSA|AE" in opened.ack


async def test_an_emrs_own_changes_are_not_echoed_back(
    bridge: Bridge, clinic: ClinicConfig
) -> None:
    own = _endpoint(1, "emr", senders=["EMR.MSFP"])
    other = _endpoint(2, "lab")
    bridge.store.watch("Appointment", Outbox(bridge.store, [own, other]).on_change)
    [ack] = await bridge.send(siu("S12", "E1", at(9)))
    assert msa(ack) == ("AA", "E1")
    assert [(r.peer, r.event) for r in _outbox(bridge)] == [("lab", "SIU^S12")]
    store = MessageStore(bridge.keys)
    assert str(hl7.parse(store.open(_outbox(bridge)[0]).message.decode()).segment("SCH")[2]) == ""

    # cancelled here: both hear of it, and the EMR gets its own filler id back in SCH-2
    [appt] = bridge.appointments()
    with bridge.db.write() as conn:
        booking.cancel(
            conn,
            store=bridge.store,
            config=clinic,
            appointment_id=appt["id"],
            now=datetime.now(UTC),
        )
    rows = _outbox(bridge)[1:]
    assert sorted((r.peer, r.event) for r in rows) == [("emr", "SIU^S15"), ("lab", "SIU^S15")]
    to_emr = next(r for r in rows if r.peer == "emr")
    sch = hl7.parse(store.open(to_emr).message.decode()).segment("SCH")
    assert (str(sch[1][0][0]), str(sch[2])) == (appt["id"], "F-1")


async def test_a_booking_through_the_fhir_api_reaches_the_emr(
    db: Database, keys: KeyRing, store: Store, clinic: ClinicConfig, emr: StandInEMR, tmp_path: Path
) -> None:
    """The whole path as deployed: `serve` with the bridge inside, $find and $book over HTTP
    with a SMART token, the outbox, the sender in the server's event loop, the EMR."""
    with db.write() as conn:
        load_clinic(conn, store=store, config=clinic, today=MONDAY, weeks=1)
    settings = Settings(
        database_url="sqlite://",
        key_file=tmp_path / "k.json",
        base_url="http://testserver/fhir",
        clinic_file=DEMO,
        hl7_listen=True,
        hl7_port=0,
        hl7_endpoints=[HL7Endpoint(name="emr", host="127.0.0.1", port=emr.port)],
    )
    with TestClient(create_app(settings, keys=keys, db=db)) as client:
        client.headers["Authorization"] = f"Bearer {backend_token(client, db)}"
        patient = create(client, make_patient("Outbound", ["Olive"]))
        day = at(0)
        found = client.get(
            "/fhir/Appointment/$find",
            params={
                "start": day.astimezone(NY).isoformat(),
                "end": (day + timedelta(days=1)).astimezone(NY).isoformat(),
                "visit-type": "new-patient",
                "patient-reference": f"Patient/{patient['id']}",
                "_count": "1",
            },
        )
        proposed = found.json()["entry"][0]["resource"]
        body = {
            "resourceType": "Parameters",
            "parameter": [{"name": "appointment-resource", "resource": proposed}],
        }
        booked = client.post("/fhir/Appointment/$book", json=body, headers=FHIR_JSON)
        assert booked.status_code == 201, booked.text
        await _until(lambda: len(emr.received) == 1)
    [message] = emr.received
    assert str(message.segment("MSH")[9][0][1]) == "S12"
    assert str(message.segment("SCH")[1][0][0]) == booked.json()["id"]
    assert str(message.segment("SCH")[25]) == "Booked"


TABLE_0278 = {"Pending", "Waitlist", "Booked", "Started", "Complete", "Cancelled", "Dc"}
TABLE_0278 |= {"Deleted", "Blocked", "Overbook", "Noshow"}
OUT_VERSIONS = ["2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8"]
OUT_VERSIONS += ["2.8.1", "2.8.2"]
OUT_EVENTS = [
    ("S12", "booked"),
    ("S13", "booked"),
    ("S14", "arrived"),
    ("S15", "cancelled"),
    ("S17", "entered-in-error"),
    ("S26", "noshow"),
]


@pytest.mark.parametrize("version", OUT_VERSIONS)
@pytest.mark.parametrize(("event", "status"), OUT_EVENTS, ids=[e for e, _ in OUT_EVENTS])
def test_every_outbound_siu_reparses_and_validates_strictly(
    version: str, event: str, status: str
) -> None:
    """python-hl7 reads it, hl7apy validates it strictly against the version it declares,
    SCH-25 is a table 0278 code, and our own reader gets the same time back. hl7apy cannot
    check two versions as they stand: 2.3's MSH-9 has no message structure, so an S13 names
    none and is checked as the SIU_S12 structure every SIU event shares; 2.7's tables cannot
    read TQ1, so 2.7 and 2.7.1 are checked against 2.8's (as inbound messages are)."""
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    from hl7_bridge.fhir_to_siu import Envelope, build_siu
    from hl7_bridge.parse import parse
    from hl7_bridge.siu_to_fhir import read_siu

    appointment = {
        "resourceType": "Appointment",
        "id": "appt-1",
        "status": status,
        "start": "2031-01-14T09:00:00-05:00",
        "end": "2031-01-14T09:30:00-05:00",
        "minutesDuration": 30,
        "serviceType": [{"coding": [{"code": "follow-up", "display": "Follow-up visit"}]}],
        "reasonCode": [{"text": "Knee | pain"}],
        "comment": "first line\nsecond ^ line",
        "cancelationReason": {"text": "patient called"} if status == "cancelled" else None,
    }
    patient = {
        "resourceType": "Patient",
        "identifier": [
            {"system": "urn:oid:1.2.3", "value": "M1", "type": {"coding": [{"code": "MR"}]}}
        ],
        "name": [{"family": "MÜLLER", "given": ["ZOË", "A"]}],
        "birthDate": "1980-01-01",
        "gender": "female",
        "telecom": [{"system": "phone", "value": "413-555-0101"}],
    }
    practitioner = {
        "id": "dr-smith",
        "name": [{"family": "Smith", "given": ["Alice"]}],
        "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"}],
    }
    sent = datetime(2031, 1, 13, 12, tzinfo=UTC)
    raw = build_siu(
        event,
        appointment,
        Envelope("OUT-1", sent, version=version),
        patient=patient,
        practitioner=practitioner,
        location={"id": "loc-main", "name": "Main Street Clinic"},
        filler_id="F-1",
    )
    text = raw.decode("utf-8")
    independent = hl7.parse(text)
    assert str(independent.segment("MSH")[12]) == version
    assert str(independent.segment("SCH")[25]) in TABLE_0278
    checked = text.replace(f"SIU^{event}", "SIU^S12", 1) if version == "2.3" else text
    if version in ("2.7", "2.7.1"):
        checked = checked.replace(f"|{version}|", "|2.8|", 1)
    parse_message(checked, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True).validate()
    change = read_siu(parse(raw), sender_tz=UTC)
    assert change.start == datetime(2031, 1, 14, 14, tzinfo=UTC)
    assert change.end == datetime(2031, 1, 14, 14, 30, tzinfo=UTC)
    assert change.warnings == []
